//! Frames over a tokio-uring socket: a staging buffer for heads, write payloads received
//! into their aligned buffer, and whole-frame sends.
//!
//! # Receiving: readiness, not ring reads
//!
//! Receives are plain non-blocking `recvmsg` calls made when tokio's reactor (epoll) says
//! the socket is readable, not receive operations on the ring. A ring receive completes
//! through task work, which interrupts the thread's `epoll_wait` on the ring (EINTR, then
//! a second `epoll_wait`), and is submitted by one more `io_uring_enter`: at queue depth 1
//! that was six system calls per request where a readiness loop needs four
//! (`epoll_wait`, `recvmsg`, the reply's `sendmsg`, the runtime's `io_uring_enter` at park).
//! A receive that returns less than asked drained the socket, so readiness is cleared
//! without a `recvmsg` that would only say `EAGAIN` (tokio's own `TcpStream` does the same).
//! Nothing is left in flight when a receiving future is dropped, so an abandoned receive
//! (a handshake timeout) holds no buffer and no descriptor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_uring::net::TcpStream;
use wire::frame::{self, FrameDecoder, FrameHeader, FramePrefix, Limits, Progress};
use wire::{WireError, MAX_HEADER_LEN, PREFIX_LEN};

use crate::array::io::buffer::{AlignedBuf, DATA_OFFSET};
use crate::array::io::MappedTarget;
use crate::error::{Error, Result};

/// Bytes of the staging buffer: the largest head plus room to batch small frames.
const STAGING_LEN: usize = PREFIX_LEN + MAX_HEADER_LEN as usize + (64 << 10);

/// Reads frames from one connection with wire's [`FrameDecoder`].
///
/// Heads are read into a staging buffer. A write's payload goes into its own aligned
/// buffer, or straight into its place in the disks' mappings: the part the staging read
/// already took is copied (at most one staging read's worth), the rest is received from
/// the socket straight into its destination.
pub struct FrameReader {
    /// The socket's registration with tokio's reactor. Declared first so that it is
    /// dropped (deregistered) before `stream` may close the descriptor.
    readiness: AsyncFd<SocketFd>,
    /// Keeps the descriptor open while this reader lives.
    _stream: Rc<TcpStream>,
    staging: Vec<u8>,
    start: usize,
    /// Where the stream is: between frames, or inside a payload (and how much is owed).
    decoder: FrameDecoder,
}

/// A socket descriptor borrowed from a [`TcpStream`] the reader keeps alive.
struct SocketFd(RawFd);

impl AsRawFd for SocketFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buffered().len())
            .finish_non_exhaustive()
    }
}

impl FrameReader {
    /// A reader on `stream`, registered with the thread's reactor.
    pub fn new(stream: Rc<TcpStream>) -> Result<FrameReader> {
        let socket = SocketFd(stream.as_raw_fd());
        // SAFETY: the descriptor is `stream`'s, which the reader keeps (`_stream`) and which
        // is only closed when its last `Rc` goes; `readiness` is declared before `_stream`,
        // so it is deregistered first. `SocketFd` always returns that same descriptor.
        let readiness = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| Error::io("registering a connection with the reactor", e.into()))?;
        Ok(FrameReader {
            readiness,
            _stream: stream,
            staging: Vec::with_capacity(STAGING_LEN),
            start: 0,
            decoder: FrameDecoder::new(Limits::HANDSHAKE),
        })
    }

    /// Receives into `parts` (in order) what the socket holds, at least one byte, waiting
    /// until it is readable; `Ok(0)` at end of stream. Nothing stays in flight between
    /// calls (see the module docs).
    async fn receive(&self, parts: &mut [libc::iovec]) -> io::Result<usize> {
        let wanted: usize = parts.iter().map(|part| part.iov_len).sum();
        loop {
            let mut ready = self.readiness.readable().await?;
            match receive_now(self.readiness.get_ref().0, parts) {
                Ok(received) => {
                    if received > 0 && received < wanted {
                        // Short: the socket is drained; the next edge wakes us.
                        ready.clear_ready();
                    }
                    return Ok(received);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.staging[self.start..]
    }

    /// Reads more bytes into the staging buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> Result<usize> {
        if self.start == self.staging.len() {
            self.staging.clear();
            self.start = 0;
        } else if self.staging.len() == self.staging.capacity() {
            self.staging.drain(..self.start);
            self.start = 0;
        }
        let spare = self.staging.spare_capacity_mut();
        let mut part = [libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        }];
        let received = self
            .receive(&mut part)
            .await
            .map_err(|e| Error::io("receiving from the peer", e))?;
        let filled = self.staging.len() + received;
        // SAFETY: the receive initialised `received` bytes of the spare capacity.
        unsafe { self.staging.set_len(filled) };
        Ok(received)
    }

    /// Waits for the next frame's prefix and header; `Ok(None)` on a clean end of stream.
    /// The header is then available from [`FrameReader::header`].
    pub async fn next_head(&mut self, limits: Limits) -> Result<Option<FramePrefix>> {
        self.decoder.set_limits(limits);
        loop {
            if let Progress::Ready(prefix) =
                self.decoder.next_prefix(&self.staging[self.start..])?
            {
                return Ok(Some(prefix));
            }
            if self.fill().await? == 0 {
                self.decoder.eof(self.buffered())?;
                return Ok(None);
            }
        }
    }

    /// The header of the frame [`FrameReader::next_head`] returned.
    pub fn header(&self, prefix: &FramePrefix) -> &[u8] {
        &self.buffered()[PREFIX_LEN..prefix.head_len()]
    }

    /// Drops the prefix and header of the current frame from the staging buffer.
    pub fn consume_head(&mut self, prefix: &FramePrefix) {
        self.start += prefix.head_len();
    }

    /// Receives the current frame's `len`-byte payload into a fresh aligned buffer's
    /// data area.
    pub async fn read_payload(&mut self, len: usize) -> Result<AlignedBuf> {
        self.expect_payload(len)?;
        let mut buffer = AlignedBuf::for_data(len);
        let copied = self.decoder.consume_payload(self.buffered().len());
        buffer.data_mut()[..copied].copy_from_slice(&self.buffered()[..copied]);
        self.start += copied;
        while self.decoder.payload_remaining() > 0 {
            let received = len - self.decoder.payload_remaining();
            let rest = &mut buffer.data_mut()[received..len];
            let mut part = [libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            }];
            let read = self
                .receive(&mut part)
                .await
                .map_err(|e| Error::io("receiving a write payload", e))?;
            self.decoder.payload_received(read)?;
        }
        buffer.set_len(DATA_OFFSET + len);
        Ok(buffer)
    }

    /// Receives the current frame's payload straight into `targets` (in order; their
    /// lengths add up to the payload's). On an error or a cut-off stream the targets are
    /// left partly written.
    pub async fn read_payload_into(&mut self, targets: Vec<MappedTarget>) -> Result<()> {
        self.expect_payload(targets.iter().map(MappedTarget::remaining).sum())?;
        let staged_end = self.start + self.decoder.consume_payload(self.buffered().len());
        let mut pending = Vec::with_capacity(targets.len());
        for mut target in targets {
            let took = target.fill_from(&self.staging[self.start..staged_end]);
            self.start += took;
            if target.remaining() > 0 {
                pending.push(target);
            }
        }
        let mut parts = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            parts.clear();
            parts.extend(pending.iter_mut().map(MappedTarget::unfilled));
            let read = self
                .receive(&mut parts)
                .await
                .map_err(|e| Error::io("receiving a write payload", e))?;
            self.decoder.payload_received(read)?;
            let mut left = read;
            for target in &mut pending {
                left -= target.advance(left);
            }
            pending.retain(|target| target.remaining() > 0);
        }
        Ok(())
    }

    /// Checks that the caller is about to receive exactly the payload the decoder owes.
    fn expect_payload(&self, len: usize) -> Result<()> {
        let owed = self.decoder.payload_remaining();
        if len != owed {
            return Err(WireError::PayloadMismatch {
                expected: u32::try_from(owed).unwrap_or(u32::MAX),
                actual: u32::try_from(len).unwrap_or(u32::MAX),
            }
            .into());
        }
        Ok(())
    }

    /// Reads one payload-less message; `Ok(None)` on a clean end of stream. (Errors name
    /// the message by [`FrameHeader::WHAT`]; `_what` stays for the callers' sake.)
    pub async fn next_message<M: FrameHeader>(
        &mut self,
        limits: Limits,
        _what: &'static str,
    ) -> Result<Option<M>> {
        self.decoder.set_limits(limits);
        loop {
            if let Progress::Ready(head) =
                self.decoder.next_head::<M>(&self.staging[self.start..])?
            {
                self.consume_head(&head.prefix);
                return Ok(Some(head.message));
            }
            if self.fill().await? == 0 {
                self.decoder.eof(self.buffered())?;
                return Ok(None);
            }
        }
    }
}

/// Sends all of `bytes`.
pub async fn send_bytes(stream: &TcpStream, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let (result, bytes) = stream.write_all(bytes).await;
    result.map_err(|e| Error::io("sending to the peer", e))?;
    Ok(bytes)
}

/// Sends one payload-less message as a frame.
pub async fn send_message<M: Serialize>(stream: &TcpStream, message: &M) -> Result<()> {
    send_bytes(stream, frame::encode_message(message)?)
        .await
        .map(drop)
}

/// Most parts one receive fills (a mapped write payload has at most
/// [`crate::array::io::MAX_MAPPED_PIECES`]; `IOV_MAX` is 1024).
const MAX_RECEIVE_PARTS: usize = 1024;

/// One non-blocking `recvmsg` into `parts`.
fn receive_now(fd: RawFd, parts: &mut [libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = parts.as_mut_ptr();
    message.msg_iovlen = parts.len().min(MAX_RECEIVE_PARTS);
    // SAFETY: every part points at writable memory the caller holds borrowed (a staging
    // buffer's spare capacity, a payload buffer, or a mapped target's unfilled part) for
    // this synchronous call; the kernel writes at most `iov_len` bytes into each.
    let received = unsafe { libc::recvmsg(fd, &mut message, libc::MSG_DONTWAIT) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(received as usize)
}
