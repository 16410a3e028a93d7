//! The one incremental frame decoder every reader runs, on both sides.
//!
//! [`FrameDecoder`] is sans-IO and owns no buffer: the caller keeps its own (a staging
//! buffer, a ring-registered receive buffer, a stack array) and shows the decoder the bytes
//! it has buffered. The decoder answers with what it needs next:
//!
//! - [`Progress::NeedMore`]`(n)`: at least `n` more bytes must be buffered before the head
//!   (prefix + header) is complete. Never more than the head the limits allow, so a caller
//!   that sizes its buffer from these answers allocates at most
//!   `PREFIX_LEN + limits.max_header` bytes for heads, whatever the peer sends.
//! - [`Progress::Ready`]: a complete head. The caller drops [`FramePrefix::head_len`] bytes
//!   from its buffer; [`FrameDecoder::payload_remaining`] bytes of payload follow.
//!
//! The payload is never copied by the decoder: the caller moves the part it already
//! buffered to the payload's final place ([`FrameDecoder::consume_payload`] says how many
//! of its bytes are the payload's), receives the rest straight into it (an aligned buffer,
//! the disks' mappings, a ublk buffer) and reports each receive to
//! [`FrameDecoder::payload_received`]. At end of stream, [`FrameDecoder::eof`] tells a clean
//! close (on a frame boundary, nothing buffered) from a cut-off frame.
//!
//! Lengths are checked against [`Limits`] as soon as the prefix is buffered, before the
//! caller makes room for the header or the payload. After any error the stream is not a
//! frame sequence any more: the connection is dropped.

use serde::de::DeserializeOwned;

use super::{decode_header, decode_reply, decode_request, FramePrefix, Limits, PREFIX_LEN};
use crate::error::WireError;
use crate::messages::{
    ControlEvent, ControlRequest, Hello, HelloReply, Proof, ProofReply, Reply, Request,
};

/// What a decoder needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<T> {
    /// At least this many more bytes must be buffered (always at least 1).
    NeedMore(usize),
    /// The head is complete.
    Ready(T),
}

/// A decoded head: the frame's prefix and its header's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<M> {
    /// The frame's lengths: drop `prefix.head_len()` buffered bytes; `prefix.payload_len`
    /// bytes of payload follow.
    pub prefix: FramePrefix,
    /// The header's message.
    pub message: M,
}

/// A message that travels as a frame header, with the check of its payload length.
pub trait FrameHeader: DeserializeOwned {
    /// The message's name in errors.
    const WHAT: &'static str;

    /// Decodes `header` (every byte must belong to the message) and checks it against the
    /// frame's payload length. Messages without a payload accept none.
    fn decode_head(header: &[u8], prefix: FramePrefix) -> Result<Self, WireError> {
        let message = decode_header(header, Self::WHAT)?;
        if prefix.payload_len != 0 {
            return Err(WireError::PayloadMismatch {
                expected: 0,
                actual: prefix.payload_len,
            });
        }
        Ok(message)
    }
}

impl FrameHeader for Request {
    const WHAT: &'static str = "Request";

    fn decode_head(header: &[u8], prefix: FramePrefix) -> Result<Self, WireError> {
        decode_request(header, prefix)
    }
}

impl FrameHeader for Reply {
    const WHAT: &'static str = "Reply";

    fn decode_head(header: &[u8], prefix: FramePrefix) -> Result<Self, WireError> {
        decode_reply(header, prefix)
    }
}

/// Implements [`FrameHeader`] for payload-less messages.
macro_rules! payload_less {
    ($($message:ident),*) => {$(
        impl FrameHeader for $message {
            const WHAT: &'static str = stringify!($message);
        }
    )*};
}

payload_less!(
    Hello,
    HelloReply,
    Proof,
    ProofReply,
    ControlRequest,
    ControlEvent
);

/// Where in the stream the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// On a frame boundary: the next bytes are a prefix.
    Head,
    /// Inside a frame's payload.
    Payload {
        /// Bytes of the whole frame.
        frame_len: usize,
        /// Payload bytes not received yet (at least 1).
        remaining: usize,
    },
}

/// The incremental frame decoder of one connection (see the module docs).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    limits: Limits,
    state: State,
}

impl FrameDecoder {
    /// A decoder on a frame boundary, checking frames against `limits`.
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            limits,
            state: State::Head,
        }
    }

    /// The limits frames are checked against.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the limits (after the handshake a data connection allows payloads); they
    /// apply from the next head.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Looks for the next head at the start of `buffered`, without decoding the header:
    /// when ready, the header is `buffered[PREFIX_LEN..prefix.head_len()]` and the decoder
    /// expects the frame's payload next.
    pub fn next_prefix(&mut self, buffered: &[u8]) -> Result<Progress<FramePrefix>, WireError> {
        if let State::Payload { remaining, .. } = self.state {
            return Err(WireError::PayloadPending { remaining });
        }
        let Some(prefix_bytes) = buffered.first_chunk::<PREFIX_LEN>() else {
            return Ok(Progress::NeedMore(PREFIX_LEN - buffered.len()));
        };
        let prefix = FramePrefix::decode(prefix_bytes, self.limits)?;
        if buffered.len() < prefix.head_len() {
            return Ok(Progress::NeedMore(prefix.head_len() - buffered.len()));
        }
        if prefix.payload_len > 0 {
            self.state = State::Payload {
                frame_len: prefix.frame_len(),
                remaining: prefix.payload_len as usize,
            };
        }
        Ok(Progress::Ready(prefix))
    }

    /// Looks for the next head at the start of `buffered` and decodes its header as `M`;
    /// when ready, the decoder expects the frame's payload next.
    pub fn next_head<M: FrameHeader>(
        &mut self,
        buffered: &[u8],
    ) -> Result<Progress<Head<M>>, WireError> {
        Ok(match self.next_prefix(buffered)? {
            Progress::NeedMore(n) => Progress::NeedMore(n),
            Progress::Ready(prefix) => {
                let header = &buffered[PREFIX_LEN..prefix.head_len()];
                Progress::Ready(Head {
                    prefix,
                    message: M::decode_head(header, prefix)?,
                })
            }
        })
    }

    /// Payload bytes of the current frame not received yet (0 on a frame boundary).
    pub fn payload_remaining(&self) -> usize {
        match self.state {
            State::Head => 0,
            State::Payload { remaining, .. } => remaining,
        }
    }

    /// Counts up to `available` bytes as the current payload's; returns how many belong to
    /// it. The caller moves exactly that many (from its buffer, or received straight into
    /// the payload's place) and keeps the rest for the next head.
    pub fn consume_payload(&mut self, available: usize) -> usize {
        let State::Payload {
            frame_len,
            remaining,
        } = self.state
        else {
            return 0;
        };
        let took = available.min(remaining);
        self.state = if took == remaining {
            State::Head
        } else {
            State::Payload {
                frame_len,
                remaining: remaining - took,
            }
        };
        took
    }

    /// `received` payload bytes arrived straight into the payload's place (a receive's
    /// result: 0 means the peer closed the stream, which mid-payload is
    /// [`WireError::Truncated`]).
    pub fn payload_received(&mut self, received: usize) -> Result<(), WireError> {
        if received == 0 {
            return self.eof(&[]);
        }
        self.consume_payload(received);
        Ok(())
    }

    /// The peer closed the stream with `buffered` bytes not yet decoded: `Ok` on a frame
    /// boundary with nothing buffered, [`WireError::Truncated`] in the middle of a frame
    /// (or the prefix's own error if the buffered prefix is invalid).
    pub fn eof(&self, buffered: &[u8]) -> Result<(), WireError> {
        match self.state {
            State::Payload {
                frame_len,
                remaining,
            } => Err(WireError::Truncated {
                have: frame_len - remaining + buffered.len().min(remaining),
                need: frame_len,
            }),
            State::Head if buffered.is_empty() => Ok(()),
            State::Head => {
                let need = match buffered.first_chunk::<PREFIX_LEN>() {
                    Some(prefix) => FramePrefix::decode(prefix, self.limits)?.frame_len(),
                    None => PREFIX_LEN,
                };
                Err(WireError::Truncated {
                    have: buffered.len(),
                    need,
                })
            }
        }
    }
}
