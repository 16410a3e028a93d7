//! Look-ahead of a zero-copy lane: after a small read's head, a peek shows the replies
//! behind its data ([`RecvBuf::peek_ahead`]), and one linked chain of ring operations
//! receives that data, the heads that follow into the lane's buffer and their data into
//! their own fixed buffers ([`RecvBuf::receive_chain`]). A fixed buffer has no user
//! mapping, so without this every read reply costs its own receives; see the README's
//! "Design decisions" for the measurements.

use std::os::fd::RawFd;
use std::rc::Rc;

use io_uring::{opcode, squeue, types};
use wire::{FrameDecoder, Progress, Reply};

use super::{recv_direct, RecvBuf};
use crate::client::slot::{BufRef, Slot};
use crate::client::transfer::os_error;
use crate::client::uring::{linked_room, submit_linked};
use crate::error::{HostError, Result};

/// Largest payload after which [`RecvBuf::peek_ahead`] looks for more replies: the chain
/// pays off for small reads, where system calls, not bytes, are the cost.
const AHEAD_MAX_PAYLOAD: usize = 16 * 1024;
/// Bytes [`RecvBuf::peek_ahead`] looks at (copied by the peek: at 4 KiB reads, a window
/// shows about fifteen replies).
const AHEAD_WINDOW: usize = 64 * 1024;
/// Most replies one chain takes ahead.
const AHEAD_MAX_REPLIES: usize = 15;

impl RecvBuf {
    /// Looks past the payload owed now (at most [`AHEAD_MAX_PAYLOAD`] bytes, none of it
    /// taken yet) at the replies that follow it, with a non-blocking peek: returns those
    /// whose frames (head and data) are whole in view, in stream order, as many as one
    /// [`RecvBuf::receive_chain`] takes. Empty when nothing more is there.
    pub fn peek_ahead(&mut self, fd: RawFd) -> Vec<Ahead> {
        let owed = self.decoder.payload_remaining();
        if owed == 0 || owed > AHEAD_MAX_PAYLOAD || !self.bytes().is_empty() {
            return Vec::new();
        }
        if self.ahead.is_empty() {
            self.ahead = vec![0; AHEAD_WINDOW]; // only zero-copy lanes ever look ahead
        }
        let window = self.ahead.len();
        // SAFETY: the scratch buffer holds `window` bytes, untouched during the call.
        let peeked =
            match unsafe { recv_direct(fd, self.ahead.as_mut_ptr(), window, libc::MSG_PEEK) } {
                Some(Ok(peeked)) => peeked,
                _ => return Vec::new(),
            };
        let seen = &self.ahead[..peeked];
        // Operations one chain may hold: the owed payload's read, then a head and a
        // payload per reply ahead.
        let most = (linked_room().saturating_sub(1) / 2).min(AHEAD_MAX_REPLIES);
        let mut found = Vec::new();
        let mut at = owed;
        while found.len() < most && at < seen.len() {
            // A decoder of its own: the lane's own decoder meets these heads again when
            // they are received, so the stream is checked exactly as without the peek.
            let mut decoder = FrameDecoder::new(self.limits);
            let Ok(Progress::Ready(head)) = decoder.next_head::<Reply>(&seen[at..]) else {
                break;
            };
            let payload_len = head.prefix.payload_len as usize;
            let frame_end = at + head.prefix.head_len() + payload_len;
            if frame_end > seen.len() {
                // Only whole frames: then no operation of the chain waits for the peer.
                // A reply taken ahead is out of the lane's in-flight set, so a chain that
                // waited on a stalled server would escape dead-lane detection.
                break;
            }
            found.push(Ahead {
                reply: head.message,
                head_len: head.prefix.head_len(),
                payload_len,
            });
            at = frame_end;
        }
        found
    }

    /// Receives, as one linked chain of ring operations (one system call), the payload
    /// owed now into `first` and, for each of `next` in order (what [`RecvBuf::peek_ahead`]
    /// returned, with the slot each answers), its head into this buffer and its payload
    /// into the slot's buffer. Returns how many bytes of `first`'s payload arrived (give
    /// them to [`RecvBuf::receive_payload`], which takes the rest, if any), and of each of
    /// `next`'s (the same, when the lane meets its head in this buffer). A short or
    /// cancelled operation ends the chain early; whatever it did not take is received as
    /// usual.
    ///
    /// Without it a zero-copy lane spends three system calls on every read reply (a peek,
    /// the head, the data): one chain does the next ones of a window at once.
    pub async fn receive_chain(
        &mut self,
        fd: RawFd,
        first: &Slot,
        next: &[(Ahead, Rc<Slot>)],
    ) -> Result<(usize, Vec<usize>)> {
        let owed = self.decoder.payload_remaining();
        let heads: usize = next.iter().map(|(ahead, _)| ahead.head_len).sum();
        self.make_room(heads);
        let mut ops = Vec::with_capacity(1 + 2 * next.len());
        let mut sqes = Vec::with_capacity(ops.capacity());
        sqes.push(payload_sqe(fd, first.buf, owed)?);
        ops.push(ChainOp::FirstPayload);
        let mut head_at = self.end;
        for (i, (ahead, slot)) in next.iter().enumerate() {
            // SAFETY: `make_room` left `heads` free bytes from `end`; `head_at` stays in them.
            let dest = unsafe { self.data.as_mut_ptr().add(head_at) };
            sqes.push(
                opcode::Recv::new(types::Fd(fd), dest, ahead.head_len as u32)
                    .flags(libc::MSG_WAITALL)
                    .build(),
            );
            ops.push(ChainOp::Head(ahead.head_len));
            head_at += ahead.head_len;
            if ahead.payload_len > 0 {
                sqes.push(payload_sqe(fd, slot.buf, ahead.payload_len)?);
                ops.push(ChainOp::Payload(i, ahead.payload_len));
            }
        }
        first.set_busy(true);
        next.iter().for_each(|(_, slot)| slot.set_busy(true));
        // SAFETY: the heads go to the buffer's free tail, untouched until the chain is
        // done; the payloads to slot buffers that hold them (`check_reply` matched each
        // length to its request) and stay valid while the slots are unfinished and busy.
        let results = unsafe { submit_linked(sqes) }.await;
        first.set_busy(false);
        next.iter().for_each(|(_, slot)| slot.set_busy(false));
        let mut first_received = 0;
        let mut received = vec![0; next.len()];
        for (op, result) in ops.into_iter().zip(results) {
            let result = match result {
                0 => return Err(HostError::Closed),
                n if n < 0 => return Err(os_error("receiving replies", n)),
                n => n as usize,
            };
            let complete = match op {
                ChainOp::FirstPayload => {
                    first_received = result;
                    result == owed
                }
                ChainOp::Head(len) => {
                    self.end += result;
                    result == len
                }
                ChainOp::Payload(i, len) => {
                    received[i] = result;
                    result == len
                }
            };
            if !complete {
                break; // the kernel cancelled the rest of the chain
            }
        }
        Ok((first_received, received))
    }

    /// Makes room for `more` bytes after `end`.
    fn make_room(&mut self, more: usize) {
        if self.end + more > self.data.len() {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end + more > self.data.len() {
            self.data.resize(self.end + more, 0);
        }
    }
}

/// A reply whose head a peek saw after the payload owed now ([`RecvBuf::peek_ahead`]).
#[derive(Debug, Clone)]
pub(crate) struct Ahead {
    /// The reply, as its head will decode when it is received.
    pub reply: Reply,
    /// Bytes of its frame head.
    head_len: usize,
    /// Bytes of its payload.
    payload_len: usize,
}

/// What each operation of a [`RecvBuf::receive_chain`] receives.
#[derive(Debug, Clone, Copy)]
enum ChainOp {
    /// The rest of the payload owed now.
    FirstPayload,
    /// A head of this many bytes, into the buffer.
    Head(usize),
    /// The payload (this many bytes) of the `n`th reply ahead.
    Payload(usize, usize),
}

/// A receive of `len` payload bytes into `buf` (a fixed-buffer read for a fixed buffer).
fn payload_sqe(fd: RawFd, buf: BufRef, len: usize) -> Result<squeue::Entry> {
    let len =
        u32::try_from(len).map_err(|_| HostError::Protocol(format!("a payload of {len} bytes")))?;
    Ok(match buf {
        BufRef::Ptr(ptr) => opcode::Recv::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_WAITALL)
            .build(),
        BufRef::Fixed { index, addr } => {
            opcode::ReadFixed::new(types::Fd(fd), addr as *mut u8, len, index).build()
        }
        BufRef::None => return Err(HostError::Protocol("a payload without a buffer".into())),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use wire::{Limits, Op, Request, Status};

    use super::*;
    use crate::client::uring::{init_thread_ring, register_buffer, run_until};

    const BLOCK: usize = 4096;

    fn read_reply_frame(tag: u32, fill: u8) -> Vec<u8> {
        let reply = Reply {
            tag,
            status: Status::Ok,
            len: BLOCK as u32,
        };
        let mut frame = Vec::new();
        wire::frame::encode_head(&reply, BLOCK as u32, &mut frame).unwrap();
        frame.resize(frame.len() + BLOCK, fill);
        frame
    }

    fn write_reply_frame(tag: u32) -> Vec<u8> {
        let reply = Reply {
            tag,
            status: Status::Ok,
            len: 0,
        };
        let mut frame = Vec::new();
        wire::frame::encode_head(&reply, 0, &mut frame).unwrap();
        frame
    }

    /// Three reads with fixed buffers and a write in flight; the peer's replies are all in
    /// the socket (the third read's data only in part when `cut` is set). Runs the lane's
    /// sequence: the first head, a look ahead, one chain, then the usual path for the rest;
    /// checks every read's data landed in its own buffer and nothing is left unread.
    fn replies_ahead(cut: usize) {
        std::thread::spawn(move || {
            init_thread_ring(64).unwrap();
            let (ours, mut peer) = UnixStream::pair().unwrap();
            let mut arena = vec![0u8; 3 * BLOCK];
            // SAFETY: `arena` outlives the thread's ring (dropped after it, at thread exit,
            // and no operation is in flight then).
            unsafe { register_buffer(arena.as_mut_ptr(), arena.len()) }.unwrap();
            let base = arena.as_mut_ptr() as u64;
            let slot = |tag: u32, op: Op| {
                let buf = match op {
                    Op::Read => BufRef::Fixed {
                        index: 0,
                        addr: base + u64::from(tag) * BLOCK as u64,
                    },
                    _ => BufRef::Ptr(std::ptr::null_mut()),
                };
                let request = Request {
                    tag,
                    op,
                    offset: 0,
                    len: BLOCK as u32,
                    flags: 0,
                };
                // SAFETY: a read's buffer is its own registered 4 KiB of `arena`; a write's
                // payload is never sent here.
                Rc::new(unsafe { Slot::new(request, buf, None) })
            };
            let stream = [
                read_reply_frame(0, 0xa0),
                read_reply_frame(1, 0xa1),
                write_reply_frame(9),
                read_reply_frame(2, 0xa2),
            ]
            .concat();
            let (now, later) = stream.split_at(stream.len() - cut);
            peer.write_all(now).unwrap();
            let fd = ours.as_raw_fd();
            let executor = smol::LocalExecutor::new();
            let later = later.to_vec();
            let task = executor.spawn(async move {
                let mut buf = RecvBuf::new(Limits::data(1 << 20));
                let first = buf.next_reply(fd, true).await.unwrap();
                assert_eq!(first.tag, 0);
                let seen: Vec<u32> = buf.peek_ahead(fd).iter().map(|a| a.reply.tag).collect();
                let whole: &[u32] = if cut == 0 { &[1, 9, 2] } else { &[1, 9] };
                assert_eq!(seen, whole, "every whole frame in view is seen ahead");
                let next: Vec<(Ahead, Rc<Slot>)> = buf
                    .peek_ahead(fd)
                    .into_iter()
                    .map(|ahead| {
                        let op = if ahead.payload_len > 0 {
                            Op::Read
                        } else {
                            Op::Write
                        };
                        let next = slot(ahead.reply.tag, op);
                        (ahead, next)
                    })
                    .collect();
                let slot0 = slot(0, Op::Read);
                let (got, ahead) = buf.receive_chain(fd, &slot0, &next).await.unwrap();
                assert_eq!(got, BLOCK);
                let expected: &[usize] = if cut == 0 {
                    &[BLOCK, 0, BLOCK]
                } else {
                    &[BLOCK, 0]
                };
                assert_eq!(ahead, expected, "one chain took every frame seen");
                buf.receive_payload(fd, &slot0, BLOCK, got).await.unwrap();
                peer.write_all(&later).unwrap();
                for ((ahead, next), received) in next.iter().zip(ahead) {
                    let reply = buf.next_reply(fd, true).await.unwrap();
                    assert_eq!(reply.tag, ahead.reply.tag);
                    if reply.len > 0 {
                        let len = reply.len as usize;
                        buf.receive_payload(fd, next, len, received).await.unwrap();
                    }
                }
                if cut > 0 {
                    // The read whose data was cut comes the usual way.
                    let reply = buf.next_reply(fd, true).await.unwrap();
                    assert_eq!(reply.tag, 2);
                    buf.receive_payload(fd, &slot(2, Op::Read), BLOCK, 0)
                        .await
                        .unwrap();
                }
                // SAFETY: a 4 KiB scratch; the call is synchronous.
                let left = unsafe { recv_direct(fd, [0u8; 16].as_mut_ptr(), 16, 0) };
                assert!(left.is_none(), "the stream was consumed exactly: {left:?}");
                peer
            });
            run_until(&executor, task, Duration::ZERO).unwrap();
            for (i, fill) in [0xa0u8, 0xa1, 0xa2].iter().enumerate() {
                let block = &arena[i * BLOCK..(i + 1) * BLOCK];
                assert!(
                    block.iter().all(|b| b == fill),
                    "read {i} landed in its buffer"
                );
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn replies_seen_ahead_arrive_in_one_chain() {
        replies_ahead(0);
    }

    #[test]
    fn a_reply_whose_data_is_not_all_there_is_left_to_the_usual_path() {
        replies_ahead(1000);
    }
}
