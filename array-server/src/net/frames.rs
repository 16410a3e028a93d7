//! Frames over a tokio-uring socket: a staging buffer for heads, write payloads received
//! into their aligned buffer, and whole-frame sends.

use std::rc::Rc;

use serde::Serialize;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;
use wire::frame::{self, FrameDecoder, FrameHeader, FramePrefix, Limits, Progress};
use wire::{WireError, MAX_HEADER_LEN, PREFIX_LEN};

use super::recv_all::{recv_all, LowWater};
use crate::array::io::buffer::{AlignedBuf, DATA_OFFSET};
use crate::array::io::MappedTarget;
use crate::error::{Error, Result};

/// Bytes of the staging buffer: the largest head plus room to batch small frames.
const STAGING_LEN: usize = PREFIX_LEN + MAX_HEADER_LEN as usize + (64 << 10);
/// A write payload smaller than this that is not all staged yet is topped up through
/// the staging buffer: one receive that also takes whatever follows (the next frames, or
/// in a request run the next writes' data) instead of a receive of its own bytes only.
/// In a run of 4k writes the data after the first staging read used to cost a receive
/// per write, which made the server's share per write in the 7.3 lab 1.4x copy mode's.
const STAGE_BELOW: usize = 16 * 1024;

/// Reads frames from one connection with wire's [`FrameDecoder`].
///
/// Heads are read into a staging buffer. A write's payload goes into its own aligned
/// buffer, or straight into its place in the disks' mappings: the part the staging read
/// already took is copied (at most one staging read's worth), the rest is received from
/// the socket straight into its destination.
pub struct FrameReader {
    stream: Rc<TcpStream>,
    staging: Vec<u8>,
    start: usize,
    /// Where the stream is: between frames, or inside a payload (and how much is owed).
    decoder: FrameDecoder,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buffered().len())
            .finish_non_exhaustive()
    }
}

impl FrameReader {
    /// A reader on `stream`.
    pub fn new(stream: Rc<TcpStream>) -> FrameReader {
        FrameReader {
            stream,
            staging: Vec::with_capacity(STAGING_LEN),
            start: 0,
            decoder: FrameDecoder::new(Limits::HANDSHAKE),
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
        let staging = std::mem::take(&mut self.staging);
        let filled = staging.len();
        let (result, slice) = self.stream.read(staging.slice(filled..)).await;
        self.staging = slice.into_inner();
        result.map_err(|e| Error::io("receiving from the peer", e))
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

    /// Receives the next `len` bytes of the current frame's payload (all of it, or one
    /// write's part of a run's) into a fresh aligned buffer's data area.
    pub async fn read_payload(&mut self, len: usize) -> Result<AlignedBuf> {
        self.expect_payload(len)?;
        self.stage_small(len).await?;
        let mut buffer = AlignedBuf::for_data(len);
        let copied = self.decoder.consume_payload(self.buffered().len().min(len));
        buffer.data_mut()[..copied].copy_from_slice(&self.buffered()[..copied]);
        self.start += copied;
        let mut owed = len - copied;
        let mut low_water = LowWater::new(&self.stream);
        while owed > 0 {
            let until = low_water.raise(owed);
            // The slice's initialised part is what has been received: `recv_all` goes on
            // from there.
            buffer.set_len(DATA_OFFSET + len - owed);
            let (result, mut slices) = recv_all(
                &self.stream,
                vec![buffer.slice(DATA_OFFSET..DATA_OFFSET + len)],
                until,
            )
            .await;
            buffer = slices.pop().expect("one slice in, one out").into_inner();
            owed -= self.received(result)?;
        }
        buffer.set_len(DATA_OFFSET + len);
        Ok(buffer)
    }

    /// Receives the next bytes of the current frame's payload (all of it, or one write's
    /// part of a run's) straight into `targets` (in order). On an error or a cut-off
    /// stream the targets are left partly written.
    pub async fn read_payload_into(&mut self, targets: Vec<MappedTarget>) -> Result<()> {
        let len = targets.iter().map(MappedTarget::remaining).sum();
        self.expect_payload(len)?;
        self.stage_small(len).await?;
        let staged = self.decoder.consume_payload(self.buffered().len().min(len));
        let staged_end = self.start + staged;
        let mut pending = Vec::with_capacity(targets.len());
        for mut target in targets {
            let took = target.fill_from(&self.staging[self.start..staged_end]);
            self.start += took;
            if target.remaining() > 0 {
                pending.push(target);
            }
        }
        let mut owed = len - staged;
        let mut low_water = LowWater::new(&self.stream);
        while !pending.is_empty() {
            let until = low_water.raise(owed);
            // Advances each target's filled part (see `MappedTarget`).
            let (result, mut targets) = recv_all(&self.stream, pending, until).await;
            owed -= self.received(result)?;
            targets.retain(|target| target.remaining() > 0);
            pending = targets;
        }
        Ok(())
    }

    /// Tops the staging buffer up until it holds the next `len` bytes of payload, if
    /// `len` is below [`STAGE_BELOW`] (see there); a stream that ends first is an error.
    async fn stage_small(&mut self, len: usize) -> Result<()> {
        while len < STAGE_BELOW && self.buffered().len() < len {
            if self.fill().await? == 0 {
                self.decoder.payload_received(0)?;
            }
        }
        Ok(())
    }

    /// Accounts a payload receive's outcome; a stream that ended mid-payload is an error
    /// (the decoder's: the frame is cut off).
    fn received(&mut self, result: std::io::Result<usize>) -> Result<usize> {
        let read = result.map_err(|e| Error::io("receiving a write payload", e))?;
        self.decoder.payload_received(read)?;
        Ok(read)
    }

    /// Checks that the caller is about to receive no more than the payload the decoder
    /// owes (a run's payload is received a write at a time).
    fn expect_payload(&self, len: usize) -> Result<()> {
        let owed = self.decoder.payload_remaining();
        if len > owed {
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
