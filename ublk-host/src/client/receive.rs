//! Reply parsing of a lane: buffered reply headers, and a read's data received straight
//! into its slot's buffer. Self-contained (it knows slots and sockets, not lanes), so the
//! frame decoding can be swapped without touching the lane.

use std::os::fd::RawFd;

use wire::{FrameDecoder, Limits, Op, Progress, Reply, Status};

use crate::client::slot::{BufRef, Slot};
use crate::client::transfer::recv_into;
use crate::error::{HostError, Result};

/// Size of a lane's reply buffer: many reply headers per receive, and the start of a
/// read's data (copied out; the rest is received straight into the caller's buffer).
const RECV_BUF_LEN: usize = 32 * 1024;

/// Buffered reply bytes `data[start..end]`, and wire's decoder that walks them (the one
/// decoder every reader of the protocol uses).
pub(crate) struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    decoder: FrameDecoder,
}

impl RecvBuf {
    /// An empty buffer for frames within `limits`.
    pub fn new(limits: Limits) -> RecvBuf {
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

    /// Receives more bytes, making room for at least `want` buffered bytes first; `exact`
    /// receives no more than `want` buffered bytes in all (nothing past the frame head).
    async fn fill(&mut self, fd: RawFd, want: usize, exact: bool) -> Result<()> {
        if self.start + want > self.data.len() {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if want > self.data.len() {
            self.data.resize(want, 0);
        }
        let mut free = self.data.len() - self.end;
        if exact {
            free = free.min(want.saturating_sub(self.bytes().len()).max(1));
        }
        // SAFETY: `end <= len`, so `[end, len)` lies inside the buffer, which is not
        // touched until the receive completes (awaited here).
        let ptr = unsafe { self.data.as_mut_ptr().add(self.end) };
        // Mid-frame the rest is nearly always in the socket already: a direct
        // non-blocking receive saves a ring round trip (exact mode takes a header in two
        // steps, the prefix then the head).
        let direct = if self.bytes().is_empty() {
            None
        } else {
            // SAFETY: `[ptr, ptr + free)` is the free tail of the buffer (see above).
            match unsafe { libc::recv(fd, ptr.cast(), free, libc::MSG_DONTWAIT) } {
                n if n > 0 => Some(Ok(n as usize)),
                0 => Some(Err(HostError::Closed)),
                _ => match std::io::Error::last_os_error() {
                    e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => None,
                    e => Some(Err(HostError::io("receiving replies", e))),
                },
            }
        };
        let received = match direct {
            Some(received) => received,
            // SAFETY: as above; the future is awaited here.
            None => unsafe { recv_into(fd, BufRef::Ptr(ptr), free, 0).await },
        };
        match received {
            Ok(received) => {
                self.end += received;
                Ok(())
            }
            // The peer closed: mid-frame that is a protocol error, between frames a
            // plain close.
            Err(HostError::Closed) => {
                self.decoder.eof(self.bytes())?;
                Err(HostError::Closed)
            }
            Err(error) => Err(error),
        }
    }

    /// Waits for the next reply's prefix and header; consumes them. The reply's payload
    /// (`reply.len` bytes) is owed next. `exact` takes no byte past the header from the
    /// socket (the payload may be owed to a fixed buffer).
    pub async fn next_reply(&mut self, fd: RawFd, exact: bool) -> Result<Reply> {
        loop {
            let buffered = &self.data[self.start..self.end];
            match self.decoder.next_head::<Reply>(buffered)? {
                Progress::Ready(head) => {
                    self.consume(head.prefix.head_len());
                    return Ok(head.message);
                }
                Progress::NeedMore(more) => self.fill(fd, self.bytes().len() + more, exact).await?,
            }
        }
    }

    /// Moves a read's data into the slot's buffer: what is buffered already by copy,
    /// the rest straight from the socket (into a fixed buffer by fixed-buffer reads).
    pub async fn receive_payload(&mut self, fd: RawFd, slot: &Slot, len: usize) -> Result<()> {
        let owed = self.decoder.payload_remaining();
        if owed != len {
            return Err(HostError::Protocol(format!(
                "reply to tag {} owes {owed} payload bytes, expected {len}",
                slot.request.tag
            )));
        }
        let have = self.decoder.consume_payload(self.bytes().len());
        match slot.buf {
            // SAFETY: the slot's buffer holds `request.len == len` bytes (checked by
            // `check_reply`) and stays valid while the slot is unfinished (`Slot::new`'s
            // contract); `have <= len`.
            BufRef::Ptr(ptr) => unsafe {
                std::ptr::copy_nonoverlapping(self.bytes().as_ptr(), ptr, have)
            },
            BufRef::Fixed { .. } if have > 0 => {
                return Err(HostError::Protocol(format!(
                    "{have} payload bytes of tag {} were taken with its header, but its \
                     buffer is a fixed one (the lane must receive replies exactly)",
                    slot.request.tag
                )))
            }
            BufRef::Fixed { .. } => {}
            BufRef::None => {
                return Err(HostError::Protocol(format!(
                    "tag {} carries data but has no buffer",
                    slot.request.tag
                )))
            }
        }
        self.consume(have);
        slot.set_busy(true);
        let mut outcome = Ok(());
        while self.decoder.payload_remaining() > 0 {
            let done = len - self.decoder.payload_remaining();
            // SAFETY: `done < len`, inside the slot's buffer (see above), which is marked
            // busy so its issuer does not release it before the receive completes.
            let received = unsafe {
                let dest = slot.buf.add(done);
                recv_into(fd, dest, len - done, libc::MSG_WAITALL).await
            };
            outcome = match received {
                Ok(n) => self.decoder.payload_received(n).map_err(HostError::from),
                Err(error) => Err(error),
            };
            if outcome.is_err() {
                break;
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
