//! Look-ahead of a zero-copy lane. Between replies, a peek shows what the socket holds
//! ([`RecvBuf::peek_frames`]); the lane takes the slots of the replies whose frames are
//! whole in view, and one linked chain of ring operations receives their heads into the
//! lane's buffer and their data into their own fixed buffers ([`RecvBuf::receive_chain`]).
//! The lane then decodes those heads as usual, their data already in place. A fixed
//! buffer has no user mapping, so without this every read reply costs its own receives
//! (the head, then the data); see the README's "Design decisions" for the measurements.

use std::os::fd::RawFd;
use std::rc::Rc;

use io_uring::{opcode, squeue, types};
use wire::{FrameDecoder, FramePrefix, Progress, Reply, PREFIX_LEN};

use super::{recv_direct, RecvBuf};
use crate::client::slot::{BufRef, Slot};
use crate::client::transfer::{os_error, recv_into};
use crate::client::uring::{linked_room, submit_linked};
use crate::error::{HostError, Result};

/// Largest payload the look-ahead takes: it pays off for small reads, where system calls,
/// not bytes, are the cost. After a larger one the lane peeks only [`SMALL_PEEK`] bytes,
/// so big reads are not copied twice.
const AHEAD_MAX_PAYLOAD: usize = 16 * 1024;
/// Bytes a peek looks at while replies are small (all copied by the peek: at 4 KiB reads,
/// about fifteen replies).
const AHEAD_WINDOW: usize = 64 * 1024;
/// Bytes a peek looks at after a large reply: a head and a small read's data.
const SMALL_PEEK: usize = 4096 + 64;
/// Most replies one chain takes (the lane holds their slots meanwhile).
const AHEAD_MAX_REPLIES: usize = 256;

impl RecvBuf {
    /// At a frame boundary with nothing buffered, waits for bytes in the socket and looks
    /// at them without taking them (`MSG_PEEK`): returns the replies whose frames (head
    /// and data) are whole in view, in stream order, as many as one
    /// [`RecvBuf::receive_chain`] takes (none when the first frame is not whole yet or
    /// its payload is large: the usual path takes it).
    pub async fn peek_frames(&mut self, fd: RawFd) -> Result<Vec<Ahead>> {
        if !self.bytes().is_empty() || self.decoder.payload_remaining() > 0 {
            return Ok(Vec::new());
        }
        if self.ahead.is_empty() {
            self.ahead = vec![0; AHEAD_WINDOW]; // only zero-copy lanes ever look ahead
        }
        let window = self.peek_len.min(self.ahead.len());
        let scratch = self.ahead.as_mut_ptr();
        // SAFETY: the scratch buffer holds `window >= 1` bytes, untouched until the
        // receive completes (awaited here).
        let peeked = match unsafe { recv_direct(fd, scratch, window, libc::MSG_PEEK) } {
            Some(peeked) => peeked,
            // SAFETY: as above.
            None => unsafe { recv_into(fd, BufRef::Ptr(scratch), window, libc::MSG_PEEK).await },
        }?;
        let seen = &self.ahead[..peeked];
        if let Some(prefix) = seen.first_chunk::<PREFIX_LEN>() {
            let large = FramePrefix::decode(prefix, self.limits)
                .is_ok_and(|prefix| prefix.payload_len as usize > AHEAD_MAX_PAYLOAD);
            self.peek_len = if large { SMALL_PEEK } else { AHEAD_WINDOW };
            if large {
                return Ok(Vec::new());
            }
        }
        Ok(whole_frames(seen, self.limits, linked_room()))
    }

    /// Receives, as one linked chain of ring operations (one system call), for each of
    /// `next` in order (what [`RecvBuf::peek_frames`] returned, with the slot each
    /// answers) its head into this buffer and its payload into the slot's buffer. Returns
    /// how many bytes of each payload arrived: give them to [`RecvBuf::receive_payload`]
    /// when the head is decoded. A short or cancelled operation ends the chain early;
    /// whatever it did not take is received as usual.
    pub async fn receive_chain(
        &mut self,
        fd: RawFd,
        next: &[(Ahead, Rc<Slot>)],
    ) -> Result<Vec<usize>> {
        let heads: usize = next.iter().map(|(ahead, _)| ahead.head_len).sum();
        self.make_room(heads);
        let mut ops = Vec::with_capacity(2 * next.len());
        let mut sqes = Vec::with_capacity(ops.capacity());
        let mut head_at = self.end;
        // Heads are received in runs: every head up to and including the next one that
        // announces a payload, then that payload (write replies cost no operation of
        // their own).
        let mut run = 0;
        for (i, (ahead, slot)) in next.iter().enumerate() {
            run += ahead.head_len;
            let last = i + 1 == next.len();
            if ahead.payload_len == 0 && !last {
                continue;
            }
            // SAFETY: `make_room` left `heads` free bytes from `end`; the run ends inside.
            let dest = unsafe { self.data.as_mut_ptr().add(head_at) };
            sqes.push(
                opcode::Recv::new(types::Fd(fd), dest, run as u32)
                    .flags(libc::MSG_WAITALL)
                    .build(),
            );
            ops.push(ChainOp::Heads(run));
            head_at += run;
            run = 0;
            if ahead.payload_len > 0 {
                sqes.push(payload_sqe(fd, slot.buf, ahead.payload_len)?);
                ops.push(ChainOp::Payload(i, ahead.payload_len));
            }
        }
        next.iter().for_each(|(_, slot)| slot.set_busy(true));
        // SAFETY: the heads go to the buffer's free tail, untouched until the chain is
        // done; the payloads to slot buffers that hold them (`check_reply` matched each
        // length to its request) and stay valid while the slots are unfinished and busy.
        let results = unsafe { submit_linked(sqes) }.await;
        next.iter().for_each(|(_, slot)| slot.set_busy(false));
        let mut received = vec![0; next.len()];
        for (op, result) in ops.into_iter().zip(results) {
            let result = match result {
                0 => return Err(HostError::Closed),
                n if n < 0 => return Err(os_error("receiving replies", n)),
                n => n as usize,
            };
            let complete = match op {
                ChainOp::Heads(len) => {
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
        Ok(received)
    }
}

/// The replies of the whole frames at the start of `seen`, up to the first large payload
/// and as many as a chain of at most `max_ops` operations receives (two per frame with a
/// payload, one for a run of heads after the last). Only whole frames: then no operation
/// of the chain waits for the peer. A reply taken ahead is out of the lane's in-flight
/// set, so a chain that waited on a stalled server would escape dead-lane detection.
fn whole_frames(seen: &[u8], limits: wire::Limits, max_ops: usize) -> Vec<Ahead> {
    let mut found = Vec::new();
    let mut at = 0;
    // Frames with a payload so far: each costs its run of heads and its payload.
    let mut payloads = 0;
    while found.len() < AHEAD_MAX_REPLIES && at < seen.len() {
        // A decoder of its own: the lane's own decoder meets these heads again when they
        // are received, so the stream is checked exactly as without the peek.
        let mut decoder = FrameDecoder::new(limits);
        let Ok(Progress::Ready(head)) = decoder.next_head::<Reply>(&seen[at..]) else {
            break;
        };
        let payload_len = head.prefix.payload_len as usize;
        let frame_end = at + head.prefix.head_len() + payload_len;
        if frame_end > seen.len() || payload_len > AHEAD_MAX_PAYLOAD {
            break;
        }
        let with_payload = payloads + usize::from(payload_len > 0);
        let ops = 2 * with_payload + usize::from(payload_len == 0);
        if ops > max_ops {
            break;
        }
        payloads = with_payload;
        found.push(Ahead {
            reply: head.message,
            head_len: head.prefix.head_len(),
            payload_len,
        });
        at = frame_end;
    }
    found
}

/// A reply whose whole frame a peek saw ([`RecvBuf::peek_frames`]).
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
    /// Heads of this many bytes in all, into the buffer.
    Heads(usize),
    /// The payload (this many bytes) of the `n`th reply.
    Payload(usize, usize),
}

/// A receive of `len` payload bytes into `buf` (a fixed-buffer read for a fixed buffer).
pub(super) fn payload_sqe(fd: RawFd, buf: BufRef, len: usize) -> Result<squeue::Entry> {
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
    /// sequence: a peek, one chain for the whole frames, the heads decoded from the buffer
    /// with their data already in place, the usual path for the rest; checks every read's data landed in its own buffer and nothing is left unread.
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
                let seen = buf.peek_frames(fd).await.unwrap();
                let tags: Vec<u32> = seen.iter().map(|a| a.reply.tag).collect();
                let whole: &[u32] = if cut == 0 { &[0, 1, 9, 2] } else { &[0, 1, 9] };
                assert_eq!(tags, whole, "every whole frame in view is seen");
                let next: Vec<(Ahead, Rc<Slot>)> = seen
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
                let received = buf.receive_chain(fd, &next).await.unwrap();
                let expected: &[usize] = if cut == 0 {
                    &[BLOCK, BLOCK, 0, BLOCK]
                } else {
                    &[BLOCK, BLOCK, 0]
                };
                assert_eq!(received, expected, "one chain took every frame seen");
                peer.write_all(&later).unwrap();
                for ((ahead, next), received) in next.iter().zip(received) {
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

    #[test]
    fn whole_frames_fit_the_chain_and_stop_at_a_cut_frame() {
        let limits = Limits::data(1 << 20);
        let stream = [
            write_reply_frame(1),
            write_reply_frame(2),
            read_reply_frame(3, 0),
            write_reply_frame(4),
            read_reply_frame(5, 0),
            write_reply_frame(6),
        ]
        .concat();
        let tags = |max_ops: usize, bytes: &[u8]| -> Vec<u32> {
            whole_frames(bytes, limits, max_ops)
                .iter()
                .map(|ahead| ahead.reply.tag)
                .collect()
        };
        // Receives: [1 2 3] heads, 3's data, [4 5] heads, 5's data, [6] head.
        assert_eq!(tags(5, &stream), [1, 2, 3, 4, 5, 6]);
        assert_eq!(tags(4, &stream), [1, 2, 3, 4, 5]);
        assert_eq!(tags(3, &stream), [1, 2, 3, 4]);
        assert_eq!(tags(32, &stream[..stream.len() - 1]), [1, 2, 3, 4, 5]);
        let two_heads = 2 * write_reply_frame(1).len();
        let cut = &stream[..two_heads + 30];
        assert_eq!(tags(32, cut), [1, 2], "the read's data is cut");
    }
}
