//! The transmission phase of one NBD connection, on the connection's queue engine thread:
//! a reader decodes requests and starts one task per request on the engine; a writer sends
//! the simple replies in completion order. Socket I/O goes through the thread's io_uring,
//! like the lanes' own.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, types};
use smol::channel::{Receiver, Sender};
use smol::lock::Semaphore;
use wire::Op;

use crate::client::uring::submit;
use crate::client::{BlockIo, QueueEngine};
use crate::error::{HostError, Result};
use crate::nbd::negotiate::Export;
use crate::nbd::proto::{self, Request};

/// Requests of one connection in flight at once; the reader waits for a free one before
/// reading the next request, which bounds the memory a client can make us hold.
pub const MAX_IN_FLIGHT: usize = 64;

/// One reply: header, and the data of a successful read.
#[derive(Debug)]
struct Reply {
    header: [u8; proto::SIMPLE_REPLY_LEN],
    data: Vec<u8>,
}

impl Reply {
    fn error(cookie: u64, error: u32) -> Reply {
        Reply {
            header: proto::simple_reply(cookie, error),
            data: Vec::new(),
        }
    }
}

fn os_error(context: &'static str, result: i32) -> HostError {
    HostError::io(context, std::io::Error::from_raw_os_error(-result))
}

/// Receives exactly `buf.len()` bytes; `Ok(false)` at a clean end of stream before the
/// first byte.
async fn recv_exact(fd: RawFd, buf: &mut [u8]) -> Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let sqe = opcode::Recv::new(types::Fd(fd), rest.as_mut_ptr(), rest.len() as u32)
            .flags(libc::MSG_WAITALL)
            .build();
        // SAFETY: `rest` is borrowed from `buf` until this await completes, right here;
        // nothing else touches it meanwhile, and the future is never dropped early (every
        // caller awaits `recv_exact` to completion on the connection's only task).
        let got = unsafe { submit(sqe) }.await;
        match got {
            0 if done == 0 => return Ok(false),
            0 => return Err(HostError::Closed),
            n if n < 0 => return Err(os_error("receiving from the NBD client", n)),
            n => done += n as usize,
        }
    }
    Ok(true)
}

/// Sends all of `buf`.
async fn send_all(fd: RawFd, buf: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        let sqe = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: `rest` is borrowed from `buf` until this await completes, right here, and
        // the future is awaited to completion (the writer task is awaited by `serve`).
        match unsafe { submit(sqe) }.await {
            0 => return Err(HostError::Closed),
            n if n < 0 => return Err(os_error("sending to the NBD client", n)),
            n => done += n as usize,
        }
    }
    Ok(())
}

async fn write_replies(fd: RawFd, replies: Receiver<Reply>) -> Result<()> {
    while let Ok(reply) = replies.recv().await {
        send_all(fd, &reply.header).await?;
        send_all(fd, &reply.data).await?;
    }
    Ok(())
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Run it on the engine.
    Run(BlockIo),
    /// Answer at once with this NBD errno (after reading a write's payload).
    Refuse(u32),
    /// `NBD_CMD_DISC`: stop reading, finish what runs, close.
    Disconnect,
}

/// Decides what `request` is, against `export`. Never trusts a length: a payload the
/// caller still has to read is at most [`proto::MAX_REQUEST_LEN`] (checked by the caller),
/// and so is a read (its reply buffer). TRIM and WRITE_ZEROES move no data and may be
/// longer, as the NBD spec allows (the kernel's nbd driver trims a whole disk at once);
/// the engine cuts them into parts the server takes.
fn plan(request: &Request, export: &Export) -> Plan {
    let op = match request.command {
        proto::CMD_READ => Op::Read,
        proto::CMD_WRITE => Op::Write,
        proto::CMD_FLUSH => Op::Flush,
        proto::CMD_TRIM => Op::Discard,
        proto::CMD_WRITE_ZEROES => Op::WriteZeroes,
        proto::CMD_DISC => return Plan::Disconnect,
        _ => return Plan::Refuse(proto::NBD_EINVAL),
    };
    let writes = op != Op::Read;
    if writes && export.flags & proto::TX_READ_ONLY != 0 {
        return Plan::Refuse(proto::NBD_EPERM);
    }
    let io = BlockIo {
        op,
        offset: request.offset,
        len: request.len,
        fua: request.flags & proto::CMD_FLAG_FUA != 0,
    };
    if op == Op::Flush {
        return Plan::Run(BlockIo {
            offset: 0,
            len: 0,
            ..io
        });
    }
    let end = request.offset.checked_add(u64::from(request.len));
    let block = u64::from(export.block);
    let moves_data = matches!(op, Op::Read | Op::Write);
    if (moves_data && request.len > proto::MAX_REQUEST_LEN)
        || request.len == 0
        || request.offset % block != 0
        || u64::from(request.len) % block != 0
    {
        return Plan::Refuse(proto::NBD_EINVAL);
    }
    match end {
        Some(end) if end <= export.size => Plan::Run(io),
        _ if matches!(op, Op::Write | Op::WriteZeroes) => Plan::Refuse(proto::NBD_ENOSPC),
        _ => Plan::Refuse(proto::NBD_EINVAL),
    }
}

/// Serves transmission on the connected socket `fd` until the client disconnects or breaks
/// the protocol (then the connection closes; requests already running finish first).
pub async fn serve(engine: Rc<QueueEngine>, fd: RawFd, export: Export) -> Result<()> {
    let (replies, queue) = smol::channel::unbounded::<Reply>();
    let writer = engine.spawn(async move {
        let outcome = write_replies(fd, queue).await;
        if outcome.is_err() {
            // SAFETY: shutdown takes no pointers; `fd` stays open until `serve` returns.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        outcome
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let read = read_requests(&engine, fd, &export, &replies, &slots).await;
    // Every request task holds a slot: taking them all waits for the last to finish.
    let mut all = Vec::with_capacity(MAX_IN_FLIGHT);
    for _ in 0..MAX_IN_FLIGHT {
        all.push(slots.acquire_arc().await);
    }
    drop(replies);
    let written = writer.await;
    read.and(written)
}

async fn read_requests(
    engine: &Rc<QueueEngine>,
    fd: RawFd,
    export: &Export,
    replies: &Sender<Reply>,
    slots: &Arc<Semaphore>,
) -> Result<()> {
    loop {
        let slot = slots.acquire_arc().await;
        let mut raw = [0u8; proto::REQUEST_LEN];
        if !recv_exact(fd, &mut raw).await? {
            return Ok(());
        }
        let request = Request::decode(&raw)?;
        let payload = request.payload_len();
        if payload > proto::MAX_REQUEST_LEN {
            return Err(HostError::Nbd(format!(
                "a write of {payload} bytes (at most {})",
                proto::MAX_REQUEST_LEN
            )));
        }
        let mut data = vec![0u8; payload as usize];
        if !recv_exact(fd, &mut data).await? && payload > 0 {
            return Err(HostError::Closed);
        }
        let io = match plan(&request, export) {
            Plan::Disconnect => return Ok(()),
            Plan::Refuse(error) => {
                let _ = replies.send(Reply::error(request.cookie, error)).await;
                continue;
            }
            Plan::Run(io) => io,
        };
        if io.op == Op::Read {
            data = vec![0u8; io.len as usize];
        }
        let (engine_ref, replies) = (engine.clone(), replies.clone());
        engine
            .spawn(async move {
                let (outcome, mut data) = engine_ref.execute_owned(io, data).await;
                let reply = match outcome {
                    Ok(()) => {
                        if io.op != Op::Read {
                            data = Vec::new();
                        }
                        Reply {
                            header: proto::simple_reply(request.cookie, 0),
                            data,
                        }
                    }
                    Err(errno) => Reply::error(request.cookie, proto::nbd_errno(errno.0)),
                };
                let _ = replies.send(reply).await;
                drop(slot);
            })
            .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(flags: u16) -> Export {
        Export {
            name: "v".into(),
            size: 1 << 20,
            flags,
            block: 512,
        }
    }

    fn request(command: u16, offset: u64, len: u32) -> Request {
        Request {
            flags: proto::CMD_FLAG_FUA,
            command,
            cookie: 7,
            offset,
            len,
        }
    }

    #[test]
    fn requests_plan_into_engine_operations_or_errnos() {
        let rw = export(proto::TX_HAS_FLAGS);
        let write = plan(&request(proto::CMD_WRITE, 4096, 8192), &rw);
        assert_eq!(
            write,
            Plan::Run(BlockIo {
                op: Op::Write,
                offset: 4096,
                len: 8192,
                fua: true
            })
        );
        let flush = plan(&request(proto::CMD_FLUSH, 99, 3), &rw);
        assert!(matches!(
            flush,
            Plan::Run(BlockIo {
                op: Op::Flush,
                len: 0,
                ..
            })
        ));
        assert_eq!(plan(&request(proto::CMD_DISC, 0, 0), &rw), Plan::Disconnect);
        let refused = |command, offset, len| match plan(&request(command, offset, len), &rw) {
            Plan::Refuse(errno) => errno,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(42, 0, 512), proto::NBD_EINVAL, "unknown command");
        assert_eq!(
            refused(proto::CMD_READ, 100, 512),
            proto::NBD_EINVAL,
            "misaligned"
        );
        assert_eq!(refused(proto::CMD_READ, 0, 0), proto::NBD_EINVAL, "empty");
        assert_eq!(
            refused(proto::CMD_READ, 1 << 20, 512),
            proto::NBD_EINVAL,
            "past the end"
        );
        assert_eq!(refused(proto::CMD_WRITE, 1 << 20, 512), proto::NBD_ENOSPC);
        assert_eq!(
            refused(proto::CMD_WRITE_ZEROES, u64::MAX - 511, 512),
            proto::NBD_ENOSPC
        );
        assert_eq!(
            refused(proto::CMD_READ, 0, proto::MAX_REQUEST_LEN + 512),
            proto::NBD_EINVAL,
            "oversized read"
        );
        let whole = plan(
            &request(proto::CMD_TRIM, 0, 1 << 20),
            &export(proto::TX_HAS_FLAGS),
        );
        assert!(matches!(
            whole,
            Plan::Run(BlockIo {
                op: Op::Discard,
                ..
            })
        ));
        let mut big = export(proto::TX_HAS_FLAGS);
        big.size = 1 << 32;
        let long_trim = plan(&request(proto::CMD_TRIM, 0, 64 << 20), &big);
        assert!(matches!(long_trim, Plan::Run(BlockIo { len, .. }) if len == 64 << 20));
        let long_zeroes = plan(&request(proto::CMD_WRITE_ZEROES, 0, 64 << 20), &big);
        assert!(
            matches!(long_zeroes, Plan::Run(_)),
            "longer than a read may be"
        );
        let ro = export(proto::TX_HAS_FLAGS | proto::TX_READ_ONLY);
        assert_eq!(
            plan(&request(proto::CMD_TRIM, 0, 512), &ro),
            Plan::Refuse(proto::NBD_EPERM)
        );
        assert!(matches!(
            plan(&request(proto::CMD_READ, 0, 512), &ro),
            Plan::Run(_)
        ));
    }
}
