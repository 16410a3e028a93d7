//! One ublk hardware queue: its thread runs one task per tag and the queue's engine, all
//! on the queue's io_uring.

use std::cell::Cell;
use std::rc::Rc;

use libublk::ctrl::UblkQueueAffinity;
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys, BufDesc, UblkError};
use wire::{Op, PartitionInfo};

use crate::client::uring::init_thread_ring;
use crate::client::{BlockIo, BufRef, EngineConfig, QueueEngine};
use crate::error::Errno;
use crate::ublk::params::SECTOR_SHIFT;

/// Ring operations each lane may have in flight (send, receive, reconnect wait + timer).
const RING_OPS_PER_LANE: u32 = 4;
/// Seconds of idleness after which libublk lets the queue go idle.
const IDLE_SECS: u64 = 20;
/// The low byte of a ublk descriptor's `op_flags` is the operation.
const OP_MASK: u32 = 0xff;

/// Serves queue `qid` of `dev` until the device stops: moves to the queue's `cpus` (when
/// known), opens the queue's own lanes and answers every tag's I/O through them.
pub fn serve_queue(
    qid: u16,
    dev: &UblkDev,
    cpus: Option<UblkQueueAffinity>,
    config: &EngineConfig,
    partition: &PartitionInfo,
) {
    if let Some(cpus) = cpus {
        run_on(qid, &cpus);
    }
    let depth = u32::from(dev.dev_info.queue_depth);
    let lanes = u32::from(config.lanes_per_queue);
    if let Err(error) = init_thread_ring(depth * 2 + lanes * RING_OPS_PER_LANE) {
        log::error!("queue {qid}: {error}");
    }
    let queue = match UblkQueue::new(qid, dev) {
        Ok(queue) => Rc::new(queue),
        Err(error) => {
            log::error!("queue {qid}: cannot set up the ublk queue: {error}");
            return;
        }
    };
    let lane_executor = Rc::new(smol::LocalExecutor::new());
    let config = EngineConfig {
        zero_copy: queue.support_auto_buf_zc(),
        ..config.clone()
    };
    let engine = match QueueEngine::open(&config, partition, qid, lane_executor.clone()) {
        Ok(engine) => Some(Rc::new(engine)),
        Err(error) => {
            log::error!("queue {qid}: cannot open its lanes, every I/O fails with EIO: {error}");
            None
        }
    };
    let tag_executor = smol::LocalExecutor::new();
    let tasks: Vec<_> = queue
        .tags()
        .map(|tag| {
            let (queue, engine) = (queue.clone(), engine.clone());
            tag_executor.spawn(async move {
                match serve_tag(&queue, tag, engine.as_deref()).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(error) => log::error!("queue {qid} tag {tag}: {error}"),
                }
            })
        })
        .collect();
    let closing = Cell::new(false);
    let run_ops = || while tag_executor.try_tick() | lane_executor.try_tick() {};
    let is_done = || {
        if !tasks.iter().all(|task| task.is_finished()) {
            return false;
        }
        let Some(engine) = &engine else {
            return true;
        };
        if !closing.replace(true) {
            engine.close();
        }
        engine.lanes_closed()
    };
    let served = libublk::wait_and_handle_io_events(&queue, Some(IDLE_SECS), run_ops, is_done);
    if let Err(error) = smol::block_on(served) {
        log::error!("queue {qid}: event loop failed: {error}");
    }
}

/// Moves the calling queue thread to `cpus` before its lanes connect.
///
/// libublk pins a queue thread to its queue's CPUs too, but from the main thread once the
/// queue thread runs, which may be after the lanes dialled. Dialling from the queue's own
/// CPU matters: a server that steers connections by incoming CPU (array-server's default,
/// see its `net/placement.rs`) then serves the lane on a thread on that CPU when it runs on
/// this machine, and a reconnect helper thread started from here inherits the affinity.
fn run_on(qid: u16, cpus: &UblkQueueAffinity) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: `cpus` is a live bitmap of `buf_len()` bytes laid out as a cpu_set_t prefix;
    // pid 0 is the calling thread.
    let done = unsafe { libc::sched_setaffinity(0, cpus.buf_len(), cpus.addr().cast()) };
    if done != 0 {
        let error = std::io::Error::last_os_error();
        log::warn!(
            "queue {qid}: cannot move to CPUs {:?}: {error}",
            cpus.to_bits_vec()
        );
    }
}

/// Fetches and completes one tag's I/O until the queue goes down: in copy mode through the
/// tag's own buffer, in zero-copy mode through the request's pages, which the driver
/// registers in the queue's ring at index `tag` for as long as the request is ours
/// (automatic buffer registration).
async fn serve_tag(
    queue: &UblkQueue<'_>,
    tag: u16,
    engine: Option<&QueueEngine>,
) -> Result<(), UblkError> {
    if queue.support_auto_buf_zc() {
        let reg = sys::ublk_auto_buf_reg {
            index: tag,
            ..Default::default()
        };
        let fixed = BufRef::Fixed {
            index: tag,
            addr: 0,
        };
        let room = queue.dev.dev_info.max_io_buf_bytes as usize;
        queue
            .submit_io_prep_cmd(tag, BufDesc::AutoReg(reg), 0, None)
            .await?;
        loop {
            let result = match engine {
                Some(engine) => handle(queue, tag, engine, fixed, room).await,
                None => Errno::EIO.to_ublk_result(),
            };
            queue
                .submit_io_commit_cmd(tag, BufDesc::AutoReg(reg), result)
                .await?;
        }
    }
    let buf = IoBuf::<u8>::new(queue.dev.dev_info.max_io_buf_bytes as usize);
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let result = match engine {
            Some(engine) => {
                handle(queue, tag, engine, BufRef::Ptr(buf.as_mut_ptr()), buf.len()).await
            }
            None => Errno::EIO.to_ublk_result(),
        };
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}

/// Runs the tag's current I/O with its data at `buf` (`room` bytes); returns what it
/// completes with (bytes, or `-errno`).
async fn handle(
    queue: &UblkQueue<'_>,
    tag: u16,
    engine: &QueueEngine,
    buf: BufRef,
    room: usize,
) -> i32 {
    let iod = queue.get_iod(tag);
    let Some(io) = block_io(iod.op_flags, iod.start_sector, iod.nr_sectors) else {
        return Errno::EOPNOTSUPP.to_ublk_result();
    };
    if io.has_data() && io.len as usize > room {
        return Errno::EINVAL.to_ublk_result();
    }
    // SAFETY: the tag's buffer (its own, or the request's pages the driver registered
    // at index `tag` until the commit) holds `room >= io.len` bytes (checked above), is
    // used by nobody else until the commit below, and the future is awaited to
    // completion right here.
    match unsafe { engine.execute(io, buf) }.await {
        Ok(()) if io.op == Op::Flush => 0,
        Ok(()) => io.len as i32,
        Err(errno) => errno.to_ublk_result(),
    }
}

/// Translates a ublk descriptor into a block operation (`None`: unsupported).
fn block_io(op_flags: u32, start_sector: u64, nr_sectors: u32) -> Option<BlockIo> {
    let op = match op_flags & OP_MASK {
        sys::UBLK_IO_OP_READ => Op::Read,
        sys::UBLK_IO_OP_WRITE => Op::Write,
        sys::UBLK_IO_OP_FLUSH => Op::Flush,
        sys::UBLK_IO_OP_DISCARD => Op::Discard,
        sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
        _ => return None,
    };
    Some(BlockIo {
        op,
        offset: start_sector << SECTOR_SHIFT,
        len: nr_sectors << SECTOR_SHIFT,
        fua: op_flags & sys::UBLK_IO_F_FUA != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_translate() {
        let write_fua = sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA;
        let io = block_io(write_fua, 8, 16).unwrap();
        assert_eq!(
            (io.op, io.offset, io.len, io.fua),
            (Op::Write, 4096, 8192, true)
        );
        assert_eq!(block_io(sys::UBLK_IO_OP_FLUSH, 0, 0).unwrap().op, Op::Flush);
        assert!(block_io(sys::UBLK_IO_OP_ZONE_OPEN, 0, 8).is_none());
    }
}
