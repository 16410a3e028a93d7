//! Reply parsing of a lane: buffered reply headers, and a read's data received straight
//! into its slot's buffer. Self-contained (it knows slots and sockets, not lanes), so the
//! frame decoding can be swapped without touching the lane.

use std::os::fd::RawFd;

use wire::frame::decode_reply;
use wire::{FramePrefix, Limits, Op, Reply, Status, PREFIX_LEN};

use crate::client::slot::Slot;
use crate::client::transfer::recv_into;
use crate::error::{HostError, Result};

/// Size of a lane's reply buffer: many reply headers per receive, and the start of a
/// read's data (copied out; the rest is received straight into the caller's buffer).
const RECV_BUF_LEN: usize = 32 * 1024;

/// Buffered reply bytes: `data[start..end]`.
pub(crate) struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    /// An empty buffer.
    pub fn new() -> RecvBuf {
        RecvBuf {
            data: vec![0; RECV_BUF_LEN],
            start: 0,
            end: 0,
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
        // SAFETY: `end <= len`, so `[end, len)` lies inside the buffer, which is not
        // touched until the receive completes (awaited here).
        let received = unsafe {
            let ptr = self.data.as_mut_ptr().add(self.end);
            recv_into(fd, ptr, free, 0).await?
        };
        self.end += received;
        Ok(())
    }

    /// Waits for the next reply's prefix and header; consumes them.
    pub async fn next_reply(&mut self, fd: RawFd, limits: Limits) -> Result<Reply> {
        loop {
            if let Some(prefix_bytes) = self.bytes().first_chunk::<PREFIX_LEN>() {
                let prefix = FramePrefix::decode(prefix_bytes, limits)?;
                let head = prefix.head_len();
                if self.bytes().len() >= head {
                    let reply = decode_reply(&self.bytes()[PREFIX_LEN..head], prefix)?;
                    self.consume(head);
                    return Ok(reply);
                }
                self.fill(fd, head).await?;
            } else {
                self.fill(fd, PREFIX_LEN).await?;
            }
        }
    }

    /// Moves a read's data into the slot's buffer: what is buffered already by copy,
    /// the rest straight from the socket.
    pub async fn receive_payload(&mut self, fd: RawFd, slot: &Slot, len: usize) -> Result<()> {
        let have = self.bytes().len().min(len);
        // SAFETY: the slot's buffer holds `request.len == len` bytes (checked by
        // `check_reply`) and stays valid while the slot is unfinished (`Slot::new`'s
        // contract); `have <= len`.
        unsafe { std::ptr::copy_nonoverlapping(self.bytes().as_ptr(), slot.buf, have) };
        self.consume(have);
        let mut done = have;
        slot.set_busy(true);
        let mut outcome = Ok(());
        while done < len {
            // SAFETY: `done < len`, inside the slot's buffer (see above), which is marked
            // busy so its issuer does not release it before the receive completes.
            let received =
                unsafe { recv_into(fd, slot.buf.add(done), len - done, libc::MSG_WAITALL).await };
            match received {
                Ok(n) => done += n,
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        slot.set_busy(false);
        outcome
    }
}

/// Checks that a reply carries the data its request expects (a successful read's length,
/// nothing otherwise).
pub(crate) fn check_reply(slot: &Slot, reply: &Reply) -> Result<()> {
    let expected = match reply.status {
        Status::Ok if slot.request.op == Op::Read => slot.request.len,
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
