//! Framing: turning messages into bytes and back.
//!
//! A frame is an 8-byte prefix, a postcard header and a raw payload:
//!
//! ```text
//! u32 LE header_len | u32 LE payload_len | header (postcard, header_len bytes) | payload
//! ```
//!
//! DESIGN.md put the payload length only inside the header; the prefix carries it too, so
//! "is the whole frame here?" ([`check`]) is two integer reads, a reader can size its next
//! receive without decoding postcard, and a data payload can be received straight into its
//! final buffer. The message still states its length ([`crate::Request::len`],
//! [`crate::Reply::len`]); [`decode_request`] and [`decode_reply`] check that both agree.
//!
//! Lengths are checked against [`Limits`] before anything is allocated.
//!
//! Every reader (server and host, async and blocking, and the fuzz target) walks a stream
//! with the one incremental [`FrameDecoder`]; the functions here are its building blocks.

use serde::{de::DeserializeOwned, Serialize};

mod decoder;

pub use decoder::{FrameDecoder, FrameHeader, Head, Progress};

use crate::error::WireError;
use crate::messages::{Op, Reply, Request, Status, MAX_RUN_REQUESTS};

/// Bytes in the fixed frame prefix.
pub const PREFIX_LEN: usize = 8;
/// Largest header the protocol allows.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// The default (and largest) payload per frame a server offers: 4 MiB.
pub const DEFAULT_MAX_IO: u32 = 4 << 20;

/// Size limits a reader enforces on incoming frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header accepted.
    pub max_header: u32,
    /// Largest payload accepted.
    pub max_payload: u32,
}

impl Limits {
    /// Limits during the handshake and on control connections: no payloads at all.
    pub const HANDSHAKE: Limits = Limits {
        max_header: MAX_HEADER_LEN,
        max_payload: 0,
    };

    /// Limits on a data connection with the negotiated `max_io`.
    pub fn data(max_io: u32) -> Limits {
        Limits {
            max_header: MAX_HEADER_LEN,
            max_payload: max_io,
        }
    }
}

/// The fixed part at the start of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    /// Bytes of postcard header after the prefix.
    pub header_len: u32,
    /// Bytes of raw payload after the header.
    pub payload_len: u32,
}

impl FramePrefix {
    /// Reads a prefix and checks its lengths against `limits`.
    pub fn decode(bytes: &[u8; PREFIX_LEN], limits: Limits) -> Result<FramePrefix, WireError> {
        let header_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let payload_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if header_len == 0 {
            return Err(WireError::EmptyHeader);
        }
        if header_len > limits.max_header {
            return Err(WireError::HeaderTooLarge {
                len: header_len,
                max: limits.max_header,
            });
        }
        if payload_len > limits.max_payload {
            return Err(WireError::PayloadTooLarge {
                len: payload_len,
                max: limits.max_payload,
            });
        }
        Ok(FramePrefix {
            header_len,
            payload_len,
        })
    }

    /// The prefix as bytes.
    pub fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        out[..4].copy_from_slice(&self.header_len.to_le_bytes());
        out[4..].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Prefix plus header bytes.
    pub fn head_len(&self) -> usize {
        PREFIX_LEN + self.header_len as usize
    }

    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        self.head_len() + self.payload_len as usize
    }
}

/// Appends prefix and header for `message` to `out`; the caller sends `payload_len` bytes
/// of payload after them (from its own buffer, so data is never copied into the frame).
pub fn encode_head<M: Serialize>(
    message: &M,
    payload_len: u32,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; PREFIX_LEN]);
    let mut out_vec = std::mem::take(out);
    out_vec =
        postcard::to_extend(message, out_vec).map_err(|e| WireError::Encode(e.to_string()))?;
    *out = out_vec;
    let header_len = out.len() - start - PREFIX_LEN;
    if header_len > MAX_HEADER_LEN as usize {
        out.truncate(start);
        return Err(WireError::Encode(format!(
            "header of {header_len} bytes exceeds {MAX_HEADER_LEN}"
        )));
    }
    let prefix = FramePrefix {
        header_len: header_len as u32,
        payload_len,
    };
    out[start..start + PREFIX_LEN].copy_from_slice(&prefix.encode());
    Ok(())
}

/// Room for the head of a data-path request or reply (prefix plus a postcard header of a
/// few fixed-size fields, at most ~25 bytes for a `Request`).
pub const INLINE_HEAD_LEN: usize = PREFIX_LEN + 32;

/// A frame head encoded into a fixed array rather than a `Vec`: what the data path sends
/// ahead of every request, without a heap allocation per request.
#[derive(Debug, Clone, Copy)]
pub struct InlineHead {
    bytes: [u8; INLINE_HEAD_LEN],
    len: u8,
}

impl InlineHead {
    /// Prefix and header for `message`, whose `payload_len` bytes of payload follow; an
    /// error when the header does not fit [`INLINE_HEAD_LEN`].
    pub fn encode<M: Serialize>(message: &M, payload_len: u32) -> Result<InlineHead, WireError> {
        let mut bytes = [0u8; INLINE_HEAD_LEN];
        let header_len = postcard::to_slice(message, &mut bytes[PREFIX_LEN..])
            .map_err(|e| WireError::Encode(e.to_string()))?
            .len();
        let prefix = FramePrefix {
            header_len: header_len as u32,
            payload_len,
        };
        bytes[..PREFIX_LEN].copy_from_slice(&prefix.encode());
        Ok(InlineHead {
            bytes,
            len: (PREFIX_LEN + header_len) as u8,
        })
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A whole frame for a payload-less message (handshake and control messages).
pub fn encode_message<M: Serialize>(message: &M) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    encode_head(message, 0, &mut out)?;
    Ok(out)
}

/// Decodes one header; every byte must belong to the message.
pub fn decode_header<M: DeserializeOwned>(
    header: &[u8],
    what: &'static str,
) -> Result<M, WireError> {
    let (message, rest) =
        postcard::take_from_bytes::<M>(header).map_err(|e| WireError::Malformed {
            what,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(message)
}

/// The cheap "is the whole frame here?" check on buffered bytes.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some(prefix))`: `buf` holds at least
/// `prefix.frame_len()` bytes. An error means the stream is not a valid frame sequence.
pub fn check(buf: &[u8], limits: Limits) -> Result<Option<FramePrefix>, WireError> {
    let Some(prefix_bytes) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let prefix = FramePrefix::decode(prefix_bytes, limits)?;
    Ok((buf.len() >= prefix.frame_len()).then_some(prefix))
}

/// A frame parsed out of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a, M> {
    /// The header's message.
    pub message: M,
    /// The raw payload, borrowed from the buffer.
    pub payload: &'a [u8],
    /// Bytes of the buffer the frame took.
    pub consumed: usize,
}

/// Parses the first frame of `buf` if it is complete.
pub fn parse<'a, M: DeserializeOwned>(
    buf: &'a [u8],
    limits: Limits,
    what: &'static str,
) -> Result<Option<Parsed<'a, M>>, WireError> {
    let Some(prefix) = check(buf, limits)? else {
        return Ok(None);
    };
    let message = decode_header(&buf[PREFIX_LEN..prefix.head_len()], what)?;
    Ok(Some(Parsed {
        message,
        payload: &buf[prefix.head_len()..prefix.frame_len()],
        consumed: prefix.frame_len(),
    }))
}

/// Reports EOF: an error if it came in the middle of a frame, `Ok` on a frame boundary
/// (what [`FrameDecoder::eof`] answers on a frame boundary).
pub fn check_eof(buffered: &[u8], limits: Limits) -> Result<(), WireError> {
    FrameDecoder::new(limits).eof(buffered)
}

/// Decodes a data request header and checks it against the frame's payload length.
pub fn decode_request(header: &[u8], prefix: FramePrefix) -> Result<Request, WireError> {
    let request: Request = decode_header(header, "Request")?;
    if request.payload_len() != prefix.payload_len {
        return Err(WireError::PayloadMismatch {
            expected: request.payload_len(),
            actual: prefix.payload_len,
        });
    }
    if request.op == Op::Run {
        check_run_request(&request)?;
    }
    Ok(request)
}

/// An [`Op::Run`] carries 1 to [`MAX_RUN_REQUESTS`] writes' data and nothing else.
fn check_run_request(run: &Request) -> Result<(), WireError> {
    let malformed = |reason: String| WireError::Malformed {
        what: "Request",
        reason,
    };
    if !(1..=MAX_RUN_REQUESTS).contains(&run.tag) {
        return Err(malformed(format!(
            "a run of {} writes (1 to {MAX_RUN_REQUESTS})",
            run.tag
        )));
    }
    if run.offset != 0 || run.flags != 0 {
        return Err(malformed("a run with an offset or flags".into()));
    }
    Ok(())
}

/// Decodes a data reply header and checks it against the frame's payload length.
pub fn decode_reply(header: &[u8], prefix: FramePrefix) -> Result<Reply, WireError> {
    let reply: Reply = decode_header(header, "Reply")?;
    if reply.payload_len() != prefix.payload_len {
        return Err(WireError::PayloadMismatch {
            expected: reply.payload_len(),
            actual: prefix.payload_len,
        });
    }
    if let Status::Errno(errno) = reply.status {
        if reply.len != 0 {
            return Err(WireError::PayloadMismatch {
                expected: 0,
                actual: reply.len,
            });
        }
        // A ublk I/O completes with `-errno`: zero or a negative one would complete a
        // failed request as done (and a read with whatever its buffer held).
        if !(1..=MAX_ERRNO).contains(&errno) {
            return Err(WireError::Malformed {
                what: "Reply",
                reason: format!("errno {errno} is not one (1 to {MAX_ERRNO})"),
            });
        }
    }
    Ok(reply)
}

/// The largest errno a reply may carry (Linux's `MAX_ERRNO`).
pub const MAX_ERRNO: i32 = 4095;
