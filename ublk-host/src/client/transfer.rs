//! Socket I/O of a lane on the queue's io_uring: batched sends with short-send resumption,
//! and single receives (the reply parsing built on them is in `receive.rs`).

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use io_uring::{opcode, types};
use wire::frame::InlineHead;

use crate::client::request_run::{self, Step};
use crate::client::slot::{BufRef, Slot};
use crate::client::uring::{linked_room, submit, submit_linked};
use crate::error::{HostError, Result};

pub(crate) fn os_error(context: &'static str, result: i32) -> HostError {
    HostError::io(context, io::Error::from_raw_os_error(-result))
}

/// A batch with several payloads in fixed buffers, one of them below this size, is sent
/// corked (see [`cork_needed`]). Measured with `bench --fixed-buffers` on loopback, random
/// writes at depth 32, corked against not: 4k 1.4-1.9x, 16k 1.05-1.1x, 32k 0.7x, 64k
/// 0.6-0.8x (larger payloads fill segments by themselves; the cork only delays them).
const CORK_BELOW: usize = 32 * 1024;

/// One `sendmsg` carries the iovecs up to and including the one that brings it to this
/// many bytes: a batch of small requests still leaves in one call, a batch of 1 MiB
/// writes in one call per write. One call copying a whole batch of them (up to the
/// socket's 4 MiB buffer) holds the socket for that long, and the acknowledgements
/// arriving meanwhile are handled in a burst when it lets go; on loopback with BBR (this
/// machine's default) the segments then arrived out of order and 1.4 % were retransmitted,
/// against 0.04 % for fio's nbd engine (one request per call). `bench --rw write --bs 1m
/// --iodepth 8` on loopback, rounds alternating: 7.0-7.3 GB/s in calls of one write
/// against 5.7-5.8 GB/s in calls of the batch under BBR, level under CUBIC (6.8-7.6
/// against 6.8-7.8). Calls of 256 KiB did as well at 1 MiB but cost 128 KiB writes at
/// depth 16 about 5 % (two writes per call instead of eight); calls of 1 MiB gave those
/// 0.96x of the old median (10 rounds, paired ratios' median 0.99: noise here), with
/// few retransmissions either way (20-160 per 3 s run).
const SEND_CALL_BYTES: usize = 1 << 20;

/// One step of sending a batch: frames (with any payloads in ordinary memory) by
/// `sendmsg`, or a payload in a fixed buffer by a fixed-buffer write.
#[derive(Debug)]
enum Piece {
    /// Heads and payloads gathered from ordinary memory.
    Frames(Vec<libc::iovec>),
    /// `len` bytes of fixed buffer `index` from `addr`.
    Fixed { index: u16, addr: u64, len: usize },
}

impl Piece {
    /// Bytes still to send.
    fn len(&self) -> usize {
        match self {
            Piece::Frames(iovecs) => iovecs.iter().map(|iovec| iovec.iov_len).sum(),
            Piece::Fixed { len, .. } => *len,
        }
    }

    /// Drops the first `sent` bytes (fewer than [`Piece::len`]).
    fn advance(&mut self, sent: usize) {
        match self {
            Piece::Frames(iovecs) => {
                let first = advance(iovecs, 0, sent);
                iovecs.drain(..first);
            }
            Piece::Fixed { addr, len, .. } => {
                *addr += sent as u64;
                *len -= sent;
            }
        }
    }
}

/// Sends the frames of `batch` (head, then a write's payload from the caller's buffer),
/// small writes from fixed buffers in runs where `run_bytes` (the server's `max_io`) is
/// given (see [`request_run`]). Without fixed buffers that is one `sendmsg` (more only if
/// the socket takes part of it); a payload in a fixed buffer goes out with a fixed-buffer
/// write between the `sendmsg`s of the frames around it, all submitted as one linked
/// chain (see [`send_chain`]). Returns the runs sent and the writes they carried.
pub(crate) async fn send_batch(
    fd: RawFd,
    batch: &[Rc<Slot>],
    run_bytes: Option<u32>,
) -> Result<(usize, usize)> {
    if request_run::runs_apply(batch, run_bytes).is_none() {
        let frames = gather(batch, request_run::plain_steps(batch), &[])?;
        return send_frames(fd, frames).await.map(|()| (0, 0));
    }
    // Not moved or changed until the send is done: the iovecs point into its heads.
    let layout = request_run::layout(batch, run_bytes);
    let steps = layout.steps.iter().copied();
    let frames = gather(batch, steps, &layout.heads)?;
    send_frames(fd, frames).await?;
    Ok((layout.runs, layout.run_writes))
}

/// A batch's bytes, gathered: iovecs only, or pieces for a chain with fixed buffers.
enum Frames {
    Iovecs(Vec<libc::iovec>),
    Pieces(Vec<Piece>),
}

/// Gathers the bytes `steps` name: heads of the slots of `batch` or of `heads`, and the
/// slots' payloads.
fn gather(
    batch: &[Rc<Slot>],
    steps: impl Iterator<Item = Step>,
    heads: &[InlineHead],
) -> Result<Frames> {
    let mut pieces = Vec::new();
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(batch.len() * 2);
    for step in steps {
        let bytes = match step {
            Step::SlotHead(index) => batch[index].head.as_bytes(),
            Step::OwnHead(index) => heads[index].as_bytes(),
            Step::Payload(index) => {
                push_payload(&batch[index], &mut iovecs, &mut pieces)?;
                continue;
            }
        };
        iovecs.push(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
    }
    if pieces.is_empty() {
        return Ok(Frames::Iovecs(iovecs));
    }
    if !iovecs.is_empty() {
        pieces.push(Piece::Frames(iovecs));
    }
    Ok(Frames::Pieces(pieces))
}

/// Adds `slot`'s payload: to the iovecs from ordinary memory, or as a fixed-buffer piece
/// after the iovecs gathered so far.
fn push_payload(slot: &Slot, iovecs: &mut Vec<libc::iovec>, pieces: &mut Vec<Piece>) -> Result<()> {
    let payload = slot.request.len as usize;
    match slot.buf {
        BufRef::Ptr(ptr) => iovecs.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: payload,
        }),
        BufRef::Fixed { index, addr } => {
            pieces.push(Piece::Frames(std::mem::take(iovecs)));
            pieces.push(Piece::Fixed {
                index,
                addr,
                len: payload,
            });
        }
        BufRef::None => {
            return Err(HostError::Protocol(format!(
                "tag {} carries data but has no buffer",
                slot.request.tag
            )))
        }
    }
    Ok(())
}

/// Sends gathered `frames`: iovecs by `sendmsg`, pieces as linked chains, corked where
/// [`cork_needed`].
async fn send_frames(fd: RawFd, frames: Frames) -> Result<()> {
    let pieces = match frames {
        Frames::Iovecs(mut iovecs) => return send_iovecs(fd, &mut iovecs, 0).await,
        Frames::Pieces(pieces) => pieces,
    };
    let cork = cork_needed(&pieces);
    if cork {
        set_cork(fd, true);
    }
    // SAFETY: every piece points at a head (owned by a slot, which the caller's batch
    // keeps alive, or by the caller's layout, alive and unchanged until the send is done)
    // or a payload (valid and, for a fixed buffer, registered while the slot is
    // unfinished, by `Slot::new`'s contract; the caller marked the slots busy).
    let sent = unsafe { send_chain(fd, pieces).await };
    if cork {
        set_cork(fd, false);
    }
    sent
}

/// Whether a batch of `pieces` goes out corked. A fixed-buffer write has no MSG_MORE:
/// without the cork each payload would leave as a segment of its own (a 4k payload, then
/// a head of a few bytes), and the TCP work per segment on both ends, not system calls,
/// then bounds small writes. A batch with one fixed payload needs no cork: its head waits
/// for the payload (MSG_MORE) and the payload, the batch's last byte, ends the segment;
/// the two `setsockopt` calls would only add to each request at queue depth 1 (4k
/// zero-copy writes at QD1 in the 7.3 lab ran 0.66x of copy mode corked, 0.99x not).
fn cork_needed(pieces: &[Piece]) -> bool {
    let payloads = || {
        pieces.iter().filter_map(|piece| match piece {
            Piece::Fixed { len, .. } => Some(*len),
            Piece::Frames(_) => None,
        })
    };
    payloads().count() > 1 && payloads().any(|len| len < CORK_BELOW)
}

/// Sets the socket's receive low-water mark (`SO_RCVLOWAT`): it reports itself readable,
/// and wakes a waiting receive, only once `bytes` are there (or it closes, or its buffer
/// fills). Returns whether it took; a failure is logged: it costs wakeups, not data.
pub(crate) fn set_receive_low_water(fd: RawFd, bytes: usize) -> bool {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, value);
    if let Err(error) = &set {
        log::debug!("SO_RCVLOWAT {bytes}: {error}");
    }
    set.is_ok()
}

/// Corks or uncorks the socket (`TCP_CORK`): while corked, only full segments leave;
/// uncorking sends what is queued. A failure is logged: it costs speed, not data.
fn set_cork(fd: RawFd, cork: bool) {
    let set = set_int_option(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_CORK,
        libc::c_int::from(cork),
    );
    if let Err(error) = set {
        log::debug!("TCP_CORK {cork}: {error}");
    }
}

/// Sets the socket option `level`/`name` to the integer `value`.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a live c_int and its size; the call is synchronous.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Sends `pieces` in order as linked chains of ring operations: one submission (one
/// system call) for many pieces, where awaiting each fixed-buffer write in turn cost an
/// event-loop round trip per write (4k writes at depth 32 from fixed buffers ran at 0.3x
/// of copy mode that way). A short send or write ends its chain (the kernel cancels the
/// rest); the next chain resumes at the first unsent byte, so the stream stays in order.
///
/// # Safety
///
/// Every piece's memory must stay valid (fixed buffers: registered) and unmodified until
/// the returned future completes; it must be polled to completion.
async unsafe fn send_chain(fd: RawFd, mut pieces: Vec<Piece>) -> Result<()> {
    pieces.retain(|piece| piece.len() > 0);
    let room = linked_room();
    let mut next = 0;
    while next < pieces.len() {
        let end = (next + room).min(pieces.len());
        let chain = &pieces[next..end];
        // The headers the sendmsg entries point at: allocated in full before any
        // pointer is taken, and kept until every completion is in.
        let mut messages: Vec<libc::msghdr> = Vec::with_capacity(chain.len());
        let mut sqes = Vec::with_capacity(chain.len());
        for (i, piece) in chain.iter().enumerate() {
            // MSG_MORE until the batch's last byte: the frames wait for their payloads.
            let more = if next + i + 1 < pieces.len() {
                libc::MSG_MORE
            } else {
                0
            };
            sqes.push(match piece {
                Piece::Frames(iovecs) => {
                    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
                    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
                    message.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
                    message.msg_iovlen = iovecs.len();
                    messages.push(message);
                    let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL | more;
                    opcode::SendMsg::new(types::Fd(fd), messages.last().expect("pushed"))
                        .flags(flags as u32)
                        .build()
                }
                Piece::Fixed { index, addr, len } => {
                    let len = (*len).min(u32::MAX as usize) as u32;
                    opcode::WriteFixed::new(types::Fd(fd), *addr as *const u8, len, *index).build()
                }
            });
        }
        // SAFETY: the pieces' memory is the caller's promise; `messages` (never grown
        // after a pointer was taken) and the iovecs they point at live in this frame
        // until every result is in.
        let results = unsafe { submit_linked(sqes) }.await;
        drop(messages);
        for result in results {
            let piece = &mut pieces[next];
            match result {
                0 => return Err(HostError::Closed),
                n if n < 0 => return Err(os_error("sending requests", n)),
                n if n as usize >= piece.len() => next += 1,
                n => {
                    // Short: the rest of this chain was cancelled, unsent.
                    piece.advance(n as usize);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Sends everything `iovecs` points at (nothing if empty), in calls of up to
/// [`SEND_CALL_BYTES`], resuming short sends.
///
/// A call is first tried as a direct non-blocking `sendmsg`: with room in the socket
/// buffer (nearly always) it leaves at once and saves a ring round trip (an
/// `io_uring_enter` that returns with only the send's completion, and a wakeup of this
/// task). Direct calls go on while the socket takes each whole; what it does not take goes
/// through the ring, which waits for room, and the call after that is tried directly again.
async fn send_iovecs(fd: RawFd, iovecs: &mut [libc::iovec], flags: i32) -> Result<()> {
    let mut first = 0;
    let mut direct = true;
    while first < iovecs.len() {
        let end = call_end(iovecs, first);
        // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = iovecs[first..].as_mut_ptr();
        message.msg_iovlen = end - first;
        let flags = libc::MSG_NOSIGNAL | flags;
        let sent = if direct {
            // SAFETY: `message` points at live iovecs (see below); the call is synchronous.
            let sent = unsafe { libc::sendmsg(fd, &message, flags | libc::MSG_DONTWAIT) };
            let whole: usize = iovecs[first..end].iter().map(|iovec| iovec.iov_len).sum();
            direct = usize::try_from(sent).is_ok_and(|sent| sent == whole);
            match sent {
                n if n >= 0 => n as i32,
                _ => match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => continue,
                    Some(errno) => -errno,
                    None => -libc::EIO,
                },
            }
        } else {
            direct = true;
            let sqe = opcode::SendMsg::new(types::Fd(fd), &message)
                .flags(flags as u32)
                .build();
            // SAFETY: `message` and `iovecs` live until the send completes (awaited
            // here); the iovecs point at the slots' heads (owned by the slots, kept
            // alive by the caller's batch) and payloads (valid while the slot is
            // unfinished, by `Slot::new`'s contract, and marked busy by the caller so
            // they are not released meanwhile).
            unsafe { submit(sqe) }.await
        };
        if sent < 0 {
            return Err(os_error("sending requests", sent));
        }
        if sent == 0 {
            return Err(HostError::Closed);
        }
        first = advance(iovecs, first, sent as usize);
    }
    Ok(())
}

/// The end (exclusive) of the iovecs one `sendmsg` from `first` carries: at least one,
/// and up to the one that reaches [`SEND_CALL_BYTES`].
fn call_end(iovecs: &[libc::iovec], first: usize) -> usize {
    let mut bytes = 0;
    for (index, iovec) in iovecs.iter().enumerate().skip(first) {
        bytes += iovec.iov_len;
        if bytes >= SEND_CALL_BYTES {
            return index + 1;
        }
    }
    iovecs.len()
}

/// Consumes `sent` bytes from `iovecs[first..]`; returns the new first unsent iovec.
fn advance(iovecs: &mut [libc::iovec], mut first: usize, mut sent: usize) -> usize {
    while sent > 0 {
        let iovec = &mut iovecs[first];
        if sent >= iovec.iov_len {
            sent -= iovec.iov_len;
            first += 1;
        } else {
            // SAFETY: `sent < iov_len`, so the new base stays inside the same buffer.
            iovec.iov_base = unsafe { iovec.iov_base.cast::<u8>().add(sent) }.cast();
            iovec.iov_len -= sent;
            sent = 0;
        }
    }
    first
}

/// Receives once into `dest` (up to `len` bytes); `MSG_WAITALL` asks for all of it at
/// once (a fixed buffer is read with a fixed-buffer read, which takes what is there).
///
/// # Safety
///
/// `dest` must hold `len` writable bytes (a fixed buffer: registered in the thread's ring)
/// that are not otherwise accessed until the returned future completes; the future must
/// be polled to completion.
pub(crate) async unsafe fn recv_into(
    fd: RawFd,
    dest: BufRef,
    len: usize,
    flags: i32,
) -> Result<usize> {
    // SAFETY: the caller's contract, passed on.
    unsafe { recv_into_when(fd, dest, len, flags, ReceiveWhen::AtOnce) }.await
}

/// `IORING_RECVSEND_POLL_FIRST` (`linux/io_uring.h`, 5.19): a receive's `ioprio` flag that
/// waits for readiness before the first try.
const RECVSEND_POLL_FIRST: u16 = 1;

/// When a receive first tries the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiveWhen {
    /// Right away, taking what is there.
    AtOnce,
    /// Once the socket reports itself readable (`IORING_RECVSEND_POLL_FIRST`): with a
    /// raised low-water mark, once all of it is there. Fixed-buffer reads ignore it.
    Readable,
}

/// [`recv_into`], first trying the socket `when` asked.
///
/// # Safety
///
/// As [`recv_into`].
pub(crate) async unsafe fn recv_into_when(
    fd: RawFd,
    dest: BufRef,
    len: usize,
    flags: i32,
    when: ReceiveWhen,
) -> Result<usize> {
    let len = len.min(u32::MAX as usize) as u32;
    let ioprio = match when {
        ReceiveWhen::AtOnce => 0,
        ReceiveWhen::Readable => RECVSEND_POLL_FIRST,
    };
    let sqe = match dest {
        BufRef::Ptr(ptr) => opcode::Recv::new(types::Fd(fd), ptr, len)
            .flags(flags)
            .ioprio(ioprio)
            .build(),
        BufRef::Fixed { index, addr } => {
            opcode::ReadFixed::new(types::Fd(fd), addr as *mut u8, len, index).build()
        }
        BufRef::None => return Err(HostError::Protocol("a receive without a buffer".into())),
    };
    // SAFETY: the caller vouches for the buffer and for polling to completion.
    match unsafe { submit(sqe) }.await {
        0 => Err(HostError::Closed),
        n if n < 0 => Err(os_error("receiving replies", n)),
        n => Ok(n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::{advance, call_end, cork_needed, Piece, CORK_BELOW, SEND_CALL_BYTES};

    fn fixed(len: usize) -> Piece {
        Piece::Fixed {
            index: 0,
            addr: 0,
            len,
        }
    }

    #[test]
    fn only_batches_of_several_small_fixed_payloads_are_corked() {
        let head = || Piece::Frames(Vec::new());
        let small = 4096;
        assert!(!cork_needed(&[head(), fixed(small)]), "one write: no cork");
        assert!(cork_needed(&[head(), fixed(small), head(), fixed(small)]));
        assert!(cork_needed(&[
            head(),
            fixed(CORK_BELOW),
            head(),
            fixed(small)
        ]));
        assert!(
            !cork_needed(&[head(), fixed(CORK_BELOW), head(), fixed(2 * CORK_BELOW)]),
            "large payloads fill segments by themselves"
        );
        assert!(!cork_needed(&[head()]), "no payload");
    }

    fn iovecs(lens: &[usize]) -> Vec<libc::iovec> {
        lens.iter()
            .map(|&iov_len| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len,
            })
            .collect()
    }

    #[test]
    fn a_call_carries_small_requests_together_and_large_ones_alone() {
        let head = 32;
        let small: Vec<usize> = (0..300).flat_map(|_| [head, 4096]).collect();
        assert_eq!(
            call_end(&iovecs(&small), 0),
            2 * 255,
            "255 4k writes reach it"
        );
        assert_eq!(
            call_end(&iovecs(&small[..20]), 0),
            20,
            "a short batch goes whole"
        );
        let large = iovecs(&[head, 1 << 20, head, 1 << 20, head]);
        assert_eq!(call_end(&large, 0), 2, "one 1 MiB write per call");
        assert_eq!(call_end(&large, 2), 4);
        assert_eq!(call_end(&large, 4), 5, "a trailing head alone");
        let exact = iovecs(&[SEND_CALL_BYTES, 1]);
        assert_eq!(call_end(&exact, 0), 1);
    }

    #[test]
    fn advance_handles_partial_iovecs() {
        let a = [0u8; 10];
        let b = [0u8; 20];
        let mut iovecs = [
            libc::iovec {
                iov_base: a.as_ptr() as *mut _,
                iov_len: 10,
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: 20,
            },
        ];
        let first = advance(&mut iovecs, 0, 13);
        assert_eq!(first, 1);
        assert_eq!(iovecs[1].iov_len, 17);
        assert_eq!(advance(&mut iovecs, first, 17), 2);
    }
}
