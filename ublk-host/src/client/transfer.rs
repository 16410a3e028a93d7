//! Socket I/O of a lane on the queue's io_uring: batched sends with short-send resumption,
//! and the reply receiver.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use io_uring::{opcode, types};
use wire::{FrameDecoder, Limits, Progress, Reply, Status};

use crate::client::lane::Lane;
use crate::client::slot::Slot;
use crate::client::uring::submit;
use crate::error::{Errno, HostError, Result};

/// Size of a lane's reply buffer: many reply headers per receive, and the start of a
/// read's data (copied out; the rest is received straight into the caller's buffer).
const RECV_BUF_LEN: usize = 32 * 1024;

fn os_error(context: &'static str, result: i32) -> HostError {
    HostError::io(context, io::Error::from_raw_os_error(-result))
}

/// Sends the frames of `batch` (head, then a write's payload from the caller's buffer)
/// with as few `sendmsg` calls as the socket allows.
pub(crate) async fn send_batch(fd: RawFd, batch: &[Rc<Slot>]) -> Result<()> {
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(batch.len() * 2);
    for slot in batch {
        iovecs.push(libc::iovec {
            iov_base: slot.head.as_ptr() as *mut libc::c_void,
            iov_len: slot.head.len(),
        });
        let payload = slot.request.payload_len() as usize;
        if payload > 0 {
            iovecs.push(libc::iovec {
                iov_base: slot.buf.cast(),
                iov_len: payload,
            });
        }
    }
    let mut first = 0;
    while first < iovecs.len() {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = iovecs[first..].as_mut_ptr();
        message.msg_iovlen = iovecs.len() - first;
        let sqe = opcode::SendMsg::new(types::Fd(fd), &message)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        let sent = submit(sqe).await;
        if sent < 0 {
            return Err(os_error("sending requests", sent));
        }
        if sent == 0 {
            return Err(HostError::Closed);
        }
        first = advance(&mut iovecs, first, sent as usize);
    }
    Ok(())
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

/// Receives once into `[ptr, ptr + len)`; `MSG_WAITALL` asks for all of it at once.
/// `Ok(0)` at end of stream.
async fn recv_into(fd: RawFd, ptr: *mut u8, len: usize, flags: i32) -> Result<usize> {
    let len = len.min(u32::MAX as usize) as u32;
    let sqe = opcode::Recv::new(types::Fd(fd), ptr, len)
        .flags(flags)
        .build();
    match submit(sqe).await {
        n if n < 0 => Err(os_error("receiving replies", n)),
        n => Ok(n as usize),
    }
}

/// Buffered reply bytes `data[start..end]`, and wire's decoder that walks them.
struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    decoder: FrameDecoder,
}

impl RecvBuf {
    fn new(limits: Limits) -> RecvBuf {
        RecvBuf {
            data: vec![0; RECV_BUF_LEN],
            start: 0,
            end: 0,
            decoder: FrameDecoder::new(limits),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Receives more bytes, making room for at least `want` buffered bytes first.
    async fn fill(&mut self, fd: RawFd, want: usize) -> Result<()> {
        if self.start + want > self.data.len() {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if want > self.data.len() {
            self.data.resize(want, 0);
        }
        let free = self.data.len() - self.end;
        // SAFETY: `end <= len`, so the pointer stays inside (or one past) the buffer; the
        // buffer is not touched until the receive completes (we await it here).
        let ptr = unsafe { self.data.as_mut_ptr().add(self.end) };
        let received = recv_into(fd, ptr, free, 0).await?;
        if received == 0 {
            self.decoder.eof(self.bytes())?;
            return Err(HostError::Closed);
        }
        self.end += received;
        Ok(())
    }

    /// Waits for the next reply's prefix and header; consumes them. The reply's payload
    /// (`reply.len` bytes) is owed next.
    async fn next_reply(&mut self, fd: RawFd) -> Result<Reply> {
        loop {
            let buffered = &self.data[self.start..self.end];
            match self.decoder.next_head::<Reply>(buffered)? {
                Progress::Ready(head) => {
                    self.consume(head.prefix.head_len());
                    return Ok(head.message);
                }
                Progress::NeedMore(more) => self.fill(fd, self.bytes().len() + more).await?,
            }
        }
    }
}

/// Runs a lane's receive side until the connection fails; returns why it stopped.
pub(crate) async fn receive_replies(lane: &Lane, fd: RawFd, limits: Limits) -> HostError {
    let mut buf = RecvBuf::new(limits);
    loop {
        let reply = match buf.next_reply(fd).await {
            Ok(reply) => reply,
            Err(error) => return error,
        };
        let Some(slot) = lane.take_inflight(reply.tag) else {
            return HostError::Protocol(format!("reply for unknown tag {}", reply.tag));
        };
        if let Err(error) = check_reply(&slot, &reply) {
            lane.restore_inflight(slot);
            return error;
        }
        if reply.len > 0 {
            if let Err(error) = receive_payload(&mut buf, fd, &slot, reply.len as usize).await {
                lane.restore_inflight(slot);
                return error;
            }
        }
        slot.finish(match reply.status {
            Status::Ok => Ok(()),
            Status::Errno(e) => Err(Errno(e)),
        });
    }
}

fn check_reply(slot: &Slot, reply: &Reply) -> Result<()> {
    let expected = match reply.status {
        Status::Ok if Lane::expects_data(&slot.request) => slot.request.len,
        _ => 0,
    };
    if reply.len != expected {
        return Err(HostError::Protocol(format!(
            "reply to tag {} carries {} bytes, expected {expected}",
            reply.tag, reply.len
        )));
    }
    Ok(())
}

/// Moves a read's data into the slot's buffer: what is buffered already by copy, the rest
/// straight from the socket.
async fn receive_payload(buf: &mut RecvBuf, fd: RawFd, slot: &Slot, len: usize) -> Result<()> {
    let owed = buf.decoder.payload_remaining();
    if owed != len {
        return Err(HostError::Protocol(format!(
            "reply to tag {} owes {owed} payload bytes, expected {len}",
            slot.request.tag
        )));
    }
    let have = buf.decoder.consume_payload(buf.bytes().len());
    // SAFETY: the slot's buffer holds `request.len == len` bytes (checked by
    // `check_reply`), its issuer keeps it alive until the slot completes, and `have <= len`.
    unsafe { std::ptr::copy_nonoverlapping(buf.bytes().as_ptr(), slot.buf, have) };
    buf.consume(have);
    slot.set_busy(true);
    let mut outcome = Ok(());
    while buf.decoder.payload_remaining() > 0 {
        let done = len - buf.decoder.payload_remaining();
        // SAFETY: `done < len`, inside the slot's buffer (see above).
        let ptr = unsafe { slot.buf.add(done) };
        outcome = match recv_into(fd, ptr, len - done, libc::MSG_WAITALL).await {
            Ok(received) => buf
                .decoder
                .payload_received(received)
                .map_err(HostError::from),
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            break;
        }
    }
    slot.set_busy(false);
    outcome
}

#[cfg(test)]
mod tests {
    use super::advance;

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
