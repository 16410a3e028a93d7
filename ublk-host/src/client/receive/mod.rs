//! Reply parsing of a lane: buffered reply headers, and a read's data received straight
//! into its slot's buffer. Self-contained (it knows slots and sockets, not lanes), so the
//! frame decoding can be swapped without touching the lane.
//!
//! # Layout
//!
//! - this module: [`RecvBuf`], the lane's reply buffer and its receives (buffered, or
//!   exact on a zero-copy lane), and [`check_reply`];
//! - `ahead`: a zero-copy lane's look-ahead, many small reads received in one chain;
//! - `run`: a run's data (wire's `Status::Run`), received into its replies' buffers.

mod ahead;
mod run;

use std::os::fd::RawFd;

use wire::{FrameDecoder, FramePrefix, Limits, Op, Progress, Reply, Status, PREFIX_LEN};

use crate::client::slot::{BufRef, Slot};
use crate::client::transfer::{recv_into, recv_into_when, set_receive_low_water, ReceiveWhen};
use crate::error::{HostError, Result};

/// Size of a lane's reply buffer: many reply headers per receive, and the start of a
/// read's data (copied out; the rest is received straight into the caller's buffer).
const RECV_BUF_LEN: usize = 32 * 1024;
/// Most bytes an exact receive looks at ahead (`MSG_PEEK`): room for some sixty reply heads
/// (a run's, or a batch of write replies), little to copy twice when what follows is a
/// read's data.
const PEEK_LEN: usize = 1024;
/// A read's data owed from this size on is received with the socket's low-water mark
/// raised to what is owed ([`LowWater`]).
const LOW_WATER_FROM: usize = 128 * 1024;

/// Buffered reply bytes `data[start..end]`, and wire's decoder that walks them (the one
/// decoder every reader of the protocol uses).
pub(crate) struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    decoder: FrameDecoder,
    limits: Limits,
    /// Scratch for [`RecvBuf::peek_frames`] (allocated on first use).
    ahead: Vec<u8>,
    /// Bytes the next [`RecvBuf::peek_frames`] looks at.
    peek_len: usize,
}

impl RecvBuf {
    /// An empty buffer for frames within `limits`.
    pub fn new(limits: Limits) -> RecvBuf {
        RecvBuf {
            data: vec![0; RECV_BUF_LEN],
            start: 0,
            end: 0,
            decoder: FrameDecoder::new(limits),
            limits,
            ahead: Vec::new(),
            peek_len: usize::MAX,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Makes room for `more` bytes after `end` (moving the buffered bytes to the front,
    /// growing the buffer if that is not enough).
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

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Receives more bytes, making room for at least `want` buffered bytes first; `exact`
    /// takes no byte of a payload ([`RecvBuf::fill_exact`]).
    async fn fill(&mut self, fd: RawFd, want: usize, exact: bool) -> Result<()> {
        self.make_room(want.saturating_sub(self.bytes().len()));
        let free = self.data.len() - self.end;
        if exact {
            return self.fill_exact(fd, free.min(PEEK_LEN.max(want))).await;
        }
        // SAFETY: `end <= len`, so `[end, len)` lies inside the buffer, which is not
        // touched until the receive completes (awaited here).
        let ptr = unsafe { self.data.as_mut_ptr().add(self.end) };
        // Mid-frame the rest is nearly always in the socket already: a direct
        // non-blocking receive saves a ring round trip.
        let direct = if self.bytes().is_empty() {
            None
        } else {
            // SAFETY: `[ptr, ptr + free)` is the free tail of the buffer (see above).
            unsafe { recv_direct(fd, ptr, free, 0) }
        };
        let received = match direct {
            Some(received) => received,
            // SAFETY: as above; the future is awaited here.
            None => unsafe { recv_into(fd, BufRef::Ptr(ptr), free, 0).await },
        };
        self.received(received)
    }

    /// Receives, without taking any byte of a payload a fixed buffer may be owed: looks
    /// at up to `len` bytes ahead (`MSG_PEEK`), then takes every byte up to the end of the
    /// next head that announces a payload (all of the heads before it, which have none:
    /// write, flush and error replies). A lane of fixed buffers thus receives the replies
    /// of many writes at once, where taking each head on its own cost two receives per
    /// reply.
    async fn fill_exact(&mut self, fd: RawFd, len: usize) -> Result<()> {
        // SAFETY: `end <= len`, so `[end, end + len)` lies inside the buffer (the caller
        // passes no more than the free room), which is not touched until the receive
        // completes (awaited here).
        let ptr = unsafe { self.data.as_mut_ptr().add(self.end) };
        // SAFETY: `[ptr, ptr + len)` is free room of the buffer (see above).
        let peeked = match unsafe { recv_direct(fd, ptr, len, libc::MSG_PEEK) } {
            Some(peeked) => peeked,
            // SAFETY: as above; the receive is awaited here.
            None => unsafe { recv_into(fd, BufRef::Ptr(ptr), len, libc::MSG_PEEK).await },
        };
        let peeked = match peeked {
            Ok(peeked) => peeked,
            error => return self.received(error),
        };
        let ahead = &self.data[self.start..self.end + peeked];
        let take = head_bytes_ahead(ahead, self.limits).saturating_sub(self.bytes().len());
        if take == 0 {
            return Err(HostError::Protocol(
                "a reply head is buffered whole but was not decoded".into(),
            ));
        }
        // The bytes are in the socket (just seen): a non-blocking receive takes them.
        // SAFETY: `take <= peeked <= len`, inside the buffer as above.
        let taken = unsafe { recv_direct(fd, ptr, take, 0) }
            .unwrap_or_else(|| Err(HostError::Protocol("peeked reply bytes vanished".into())));
        self.received(taken)
    }

    /// Accounts for a receive into the buffer's free tail.
    fn received(&mut self, received: Result<usize>) -> Result<()> {
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

    /// Moves a read's data into the slot's buffer: the first `already` bytes are there
    /// (a [`RecvBuf::receive_chain`] took them), what is buffered by copy, the rest
    /// straight from the socket (into a fixed buffer by fixed-buffer reads).
    pub async fn receive_payload(
        &mut self,
        fd: RawFd,
        slot: &Slot,
        len: usize,
        already: usize,
    ) -> Result<()> {
        let owed = self.decoder.payload_remaining();
        if owed != len || already > len {
            return Err(HostError::Protocol(format!(
                "reply to tag {} owes {owed} payload bytes, expected {len} ({already} in)",
                slot.request.tag
            )));
        }
        if already > 0 {
            self.decoder.payload_received(already)?;
        }
        let have = self.decoder.consume_payload(self.bytes().len());
        match slot.buf {
            // SAFETY: the slot's buffer holds `request.len == len` bytes (checked by
            // `check_reply`) and stays valid while the slot is unfinished (`Slot::new`'s
            // contract); `already + have <= len`.
            BufRef::Ptr(ptr) => unsafe {
                std::ptr::copy_nonoverlapping(self.bytes().as_ptr(), ptr.add(already), have)
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
        let mut low_water = LowWater { fd, raised: false };
        while self.decoder.payload_remaining() > 0 {
            let done = len - self.decoder.payload_remaining();
            let (flags, when) = match low_water.raise(len - done) {
                // One wakeup when all of it is there; the loop takes a short receive.
                true => (0, ReceiveWhen::Readable),
                false => (libc::MSG_WAITALL, ReceiveWhen::AtOnce),
            };
            // SAFETY: `done < len`, inside the slot's buffer (see above), which is marked
            // busy so its issuer does not release it before the receive completes.
            let received = unsafe {
                let dest = slot.buf.add(done);
                recv_into_when(fd, dest, len - done, flags, when).await
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

/// The socket's receive low-water mark while a large payload is owed.
///
/// At the default mark every arriving segment wakes the receive, which takes what is there
/// and waits again: a 1 MiB read's data cost about one wakeup per 64 KiB on loopback, each
/// paid by the sender too (the server's `sendmsg` runs the wakeup; a profile of 1 MiB reads
/// put a fifth of the server thread's time there). Raised to the bytes still owed, the
/// socket wakes the receive once they are all there. The mark never exceeds what is owed,
/// so it is always reached (the kernel also wakes a receive whose buffer fills, and caps
/// the mark at half the largest buffer, so a mark above that means several wakeups, never
/// none); with `MSG_WAITALL` the ring would retry with the mark left above what is still
/// owed, so a raised receive takes what one wakeup brings and the loop asks again. Put
/// back to one byte when dropped, before any reply head is awaited.
struct LowWater {
    fd: RawFd,
    raised: bool,
}

impl LowWater {
    /// Raises the mark to `owed` bytes when that is at least [`LOW_WATER_FROM`]; returns
    /// whether the mark is raised.
    fn raise(&mut self, owed: usize) -> bool {
        if owed < LOW_WATER_FROM {
            self.lower();
            return false;
        }
        self.raised = set_receive_low_water(self.fd, owed);
        self.raised
    }

    fn lower(&mut self) {
        if std::mem::take(&mut self.raised) {
            set_receive_low_water(self.fd, 1);
        }
    }
}

impl Drop for LowWater {
    fn drop(&mut self) {
        self.lower();
    }
}

/// A non-blocking receive of up to `len` bytes into `ptr`; `None` when nothing is there
/// yet.
///
/// # Safety
///
/// `ptr` must hold `len` writable bytes.
unsafe fn recv_direct(fd: RawFd, ptr: *mut u8, len: usize, flags: i32) -> Option<Result<usize>> {
    // SAFETY: the caller vouches for `[ptr, ptr + len)`; the call is synchronous.
    match unsafe { libc::recv(fd, ptr.cast(), len, flags | libc::MSG_DONTWAIT) } {
        n if n > 0 => Some(Ok(n as usize)),
        0 => Some(Err(HostError::Closed)),
        _ => match std::io::Error::last_os_error() {
            e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => None,
            e => Some(Err(HostError::io("receiving replies", e))),
        },
    }
}

/// How many of `bytes` (which start at a frame boundary) belong to frame heads, counting
/// from the start up to the end of the first head that announces a payload: the bytes a
/// receive may take without taking any payload. Everything when no head announces one
/// (a prefix or head cut short is head bytes too) or a prefix is malformed (the decoder
/// then reports it).
fn head_bytes_ahead(bytes: &[u8], limits: Limits) -> usize {
    let mut at = 0;
    while let Some(prefix) = bytes
        .get(at..)
        .and_then(|rest| rest.first_chunk::<PREFIX_LEN>())
    {
        match FramePrefix::decode(prefix, limits) {
            Ok(prefix) if prefix.payload_len > 0 => {
                return (at + prefix.head_len()).min(bytes.len())
            }
            Ok(prefix) => at += prefix.head_len(),
            Err(_) => break,
        }
    }
    bytes.len()
}

/// Checks that a reply carries the data its request expects (a successful read's length,
/// nothing otherwise; a `Later` reply, the length its run will carry, only for a read the
/// lane let go into runs). A `Run` frame answers no request: the lane takes it apart.
pub(crate) fn check_reply(slot: &Slot, reply: &Reply) -> Result<()> {
    let expected = match reply.status {
        Status::Ok if slot.request.op == Op::Read => slot.request.len,
        Status::Later if slot.request.may_run() && slot.request.len > 0 => slot.request.len,
        Status::Later | Status::Run => {
            return Err(HostError::Protocol(format!(
                "reply to tag {} is {:?}, which its request does not allow",
                reply.tag, reply.status
            )))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header: 64,
        max_payload: 1 << 20,
    };

    fn frame(header_len: u32, payload_len: u32) -> Vec<u8> {
        let mut bytes = FramePrefix {
            header_len,
            payload_len,
        }
        .encode()
        .to_vec();
        bytes.resize(bytes.len() + header_len as usize, 0xab);
        bytes.resize(bytes.len() + payload_len as usize, 0xcd);
        bytes
    }

    #[test]
    fn heads_ahead_stop_at_the_first_payload() {
        let mut stream = [frame(12, 0), frame(13, 0), frame(12, 4096), frame(12, 0)].concat();
        let first_payload = 20 + 21 + 20;
        assert_eq!(head_bytes_ahead(&stream, LIMITS), first_payload);
        // Cut inside that head: all of it is still head bytes.
        assert_eq!(head_bytes_ahead(&stream[..50], LIMITS), 50);
        stream.truncate(41);
        assert_eq!(
            head_bytes_ahead(&stream, LIMITS),
            41,
            "payload-less heads only"
        );
    }

    #[test]
    fn a_prefix_cut_short_or_malformed_is_taken_whole() {
        let stream = frame(12, 0);
        assert_eq!(head_bytes_ahead(&stream[..2], LIMITS), 2);
        assert_eq!(head_bytes_ahead(&[], LIMITS), 0);
        let oversized = frame(65, 0);
        assert_eq!(head_bytes_ahead(&oversized, LIMITS), oversized.len());
    }
}
