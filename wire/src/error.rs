//! The one error type of the wire crate.

use crate::messages::{RefusedCode, MAX_NAME_LEN};

/// Everything that can go wrong turning bytes into messages or running the handshake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A frame announced a header longer than the protocol allows.
    #[error("frame header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// Announced header length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A frame announced an empty header; every frame carries a message.
    #[error("frame header is empty")]
    EmptyHeader,
    /// A frame announced a payload longer than the negotiated maximum I/O size.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Announced payload length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The header bytes are not a valid message of the expected kind.
    #[error("malformed {what} header: {reason}")]
    Malformed {
        /// Which message was expected.
        what: &'static str,
        /// What postcard reported.
        reason: String,
    },
    /// The header decoded but left bytes unread.
    #[error("{what} header has {extra} trailing bytes")]
    TrailingBytes {
        /// Which message was decoded.
        what: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// The frame's payload length disagrees with what its message says it carries.
    #[error("frame carries {actual} payload bytes but its message implies {expected}")]
    PayloadMismatch {
        /// Payload length the message implies.
        expected: u32,
        /// Payload length the frame prefix announced.
        actual: u32,
    },
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed mid-frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes received of the frame.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// A reader asked for the next head while the current frame's payload was still
    /// owed (a bug in the reader: every payload byte goes through the decoder).
    #[error("next head asked for with {remaining} payload bytes of the current frame unread")]
    PayloadPending {
        /// Payload bytes of the current frame not received yet.
        remaining: usize,
    },
    /// A message could not be encoded (a bug, or a name over the limit).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The `Hello` did not start with the protocol magic.
    #[error("bad magic {0:#010x}: not a Multilane client")]
    BadMagic(u32),
    /// A host or partition name is empty, too long or has characters outside
    /// `[A-Za-z0-9._-]`; the name as [`WireError::invalid_name`] keeps it (its start).
    #[error("invalid name {0:?}: 1..={MAX_NAME_LEN} characters of [A-Za-z0-9._-]")]
    InvalidName(String),
    /// The two sides have no protocol version in common.
    #[error("no common protocol version (client speaks {min}..={max}, server speaks {ours})")]
    NoCommonVersion {
        /// Client's lowest version.
        min: u16,
        /// Client's highest version.
        max: u16,
        /// The server's version.
        ours: u16,
    },
    /// The server chose a version outside the range the client offered.
    #[error("server chose protocol version {0}, which this client did not offer")]
    UnofferedVersion(u16),
    /// The client's proof does not match the host secret (or the host is unknown).
    #[error("authentication failed: unknown host or wrong secret")]
    BadClientProof,
    /// The server's proof does not match: it does not know this host's secret.
    #[error("the server failed to prove it knows the host secret (wrong server or wrong secret)")]
    BadServerProof,
    /// The server refused the connection.
    #[error("refused by server ({code:?}): {message}")]
    Refused {
        /// Machine-readable reason.
        code: RefusedCode,
        /// Server's explanation.
        message: String,
    },
    /// A secret is not 64 hexadecimal digits (32 bytes).
    #[error("a host secret must be 64 hex digits (32 bytes)")]
    BadSecret,
}

impl WireError {
    /// [`WireError::InvalidName`] for `name`, keeping at most one character more than a
    /// name may have (and `...` when cut): the error goes into logs and into the refusal
    /// a server sends, which a 64 KiB name of control characters, each shown as `\u{1}`,
    /// would make six times larger than the frame it came in.
    pub fn invalid_name(name: &str) -> WireError {
        let mut shown: String = name.chars().take(MAX_NAME_LEN + 1).collect();
        if shown.len() < name.len() {
            shown.push_str("...");
        }
        WireError::InvalidName(shown)
    }

    /// The errno a block I/O failed by this error completes with (positive value).
    pub fn errno(&self) -> i32 {
        match self {
            WireError::Refused {
                code: RefusedCode::NotAssigned,
                ..
            }
            | WireError::BadClientProof
            | WireError::BadServerProof
            | WireError::Refused {
                code: RefusedCode::Authentication,
                ..
            } => libc_errno::EACCES,
            WireError::Truncated { .. } => libc_errno::ECONNRESET,
            WireError::Refused {
                code: RefusedCode::Busy,
                ..
            } => libc_errno::EBUSY,
            _ => libc_errno::EIO,
        }
    }
}

/// The few Linux errno values the protocol names; wire has no libc dependency.
pub mod libc_errno {
    /// I/O error.
    pub const EIO: i32 = 5;
    /// No such device or address.
    pub const ENXIO: i32 = 6;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Device or resource busy.
    pub const EBUSY: i32 = 16;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// No space left on device.
    pub const ENOSPC: i32 = 28;
    /// Read-only file system.
    pub const EROFS: i32 = 30;
    /// Operation not supported.
    pub const EOPNOTSUPP: i32 = 95;
    /// Connection reset by peer.
    pub const ECONNRESET: i32 = 104;
    /// Connection timed out.
    pub const ETIMEDOUT: i32 = 110;
}
