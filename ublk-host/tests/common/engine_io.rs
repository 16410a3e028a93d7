//! One block request at a time through a [`QueueEngine`], with owned buffers: the
//! helpers the engine tests share.

use ublk_host::client::{BlockIo, QueueEngine};
use ublk_host::Errno;
use wire::Op;

/// A request without FUA.
pub fn io(op: Op, offset: u64, len: u32) -> BlockIo {
    BlockIo {
        op,
        offset,
        len,
        fua: false,
    }
}

/// Writes `data` at `offset`.
pub async fn write(engine: &QueueEngine, offset: u64, data: Vec<u8>) -> Result<(), Errno> {
    let len = data.len() as u32;
    engine
        .execute_owned(io(Op::Write, offset, len), data)
        .await
        .0
}

/// Reads `len` bytes at `offset`.
pub async fn read(engine: &QueueEngine, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
    let (outcome, data) = engine
        .execute_owned(io(Op::Read, offset, len), vec![0; len as usize])
        .await;
    outcome.map(|()| data)
}

/// Flushes the partition.
pub async fn flush(engine: &QueueEngine) -> Result<(), Errno> {
    engine
        .execute_owned(io(Op::Flush, 0, 0), Vec::new())
        .await
        .0
}
