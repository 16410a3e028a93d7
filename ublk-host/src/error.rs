//! The one error type of the host driver, and the errno each failure completes a block
//! I/O with.

use std::io;

use wire::{libc_errno, WireError};

/// A positive Linux errno a block operation failed with (`EIO`, `EROFS`...).
///
/// A ublk I/O completes with its negation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Input/output error: the catch-all for a failed block operation.
    pub const EIO: Errno = Errno(libc_errno::EIO);
    /// Invalid argument: a misaligned or out-of-range request.
    pub const EINVAL: Errno = Errno(libc_errno::EINVAL);
    /// Operation not supported by the partition.
    pub const EOPNOTSUPP: Errno = Errno(libc_errno::EOPNOTSUPP);

    /// The value a ublk I/O completes with: `-errno`.
    pub fn to_ublk_result(self) -> i32 {
        -self.0
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = io::Error::from_raw_os_error(self.0);
        write!(f, "errno {} ({text})", self.0)
    }
}

/// Everything that can go wrong in the host driver.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The server address does not resolve to any socket address.
    #[error("cannot resolve server address {addr:?}: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// The TCP connection to the server could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried last.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// A socket operation failed on an established connection.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The socket error.
        source: io::Error,
    },
    /// The handshake did not finish before its deadline.
    #[error("handshake with {addr} timed out after {secs:.1} s")]
    HandshakeTimeout {
        /// The server.
        addr: String,
        /// The deadline, in seconds.
        secs: f64,
    },
    /// The protocol layer rejected something: a refusal, a bad server proof, a malformed
    /// frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The server sent something that is valid protocol but wrong here (an unknown tag, a
    /// reply of the wrong length, a data connection without partition information).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The partition asked for is not among those the host may use.
    #[error("partition {0:?} is not assigned to this host")]
    UnknownPartition(String),
    /// The ublk device id asked for is already in use; nothing was created or touched.
    #[error("/dev/ublkb{id} is in use ({state}): choose another --id, or detach it first")]
    DeviceInUse {
        /// The device id.
        id: u32,
        /// Its state and owner.
        state: String,
    },
    /// This host already serves the partition from the same server as another device, whose
    /// daemon is alive: a second device's lanes would carry the same identity (host,
    /// partition, queue, lane) and the server would fence the two devices' connections
    /// against each other. Nothing was created.
    #[error(
        "partition {partition:?} of {server} is already attached on this host as \
         /dev/ublkb{id} (daemon pid {pid}): use that device, or detach it first (a second \
         device of one partition from one host would have its lanes fenced by the first's)"
    )]
    PartitionAttached {
        /// The partition's name.
        partition: String,
        /// The server (path 0).
        server: String,
        /// The device that serves it.
        id: u32,
        /// Its daemon.
        pid: i32,
    },
    /// The device cannot be taken over: it has a live daemon, is dead, or serves something
    /// else.
    #[error("/dev/ublkb{id} cannot be recovered: {state}")]
    NotRecoverable {
        /// The device id.
        id: u32,
        /// Why.
        state: String,
    },
    /// A secret file could not be read or does not hold a secret.
    #[error("secret file {path}: {reason}")]
    Secret {
        /// The file.
        path: String,
        /// Why it is unusable.
        reason: String,
    },
    /// A command-line value is invalid.
    #[error("invalid {what}: {reason}")]
    Config {
        /// Which setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A lane could not be re-established before the reconnect deadline.
    #[error("lane could not reconnect within {secs:.1} s")]
    ReconnectDeadline {
        /// The deadline, in seconds.
        secs: f64,
    },
    /// The queue's io_uring failed.
    #[error("io_uring: {0}")]
    Ring(String),
    /// An NBD client broke the protocol (bad magic, oversized data, not fixed newstyle);
    /// its connection is closed.
    #[error("NBD protocol: {0}")]
    Nbd(String),
    /// libublk reported an error while creating, running or removing a device.
    #[error("ublk: {0}")]
    Ublk(#[from] libublk::UblkError),
}

impl HostError {
    /// The positive errno a block I/O failed by this error completes with.
    pub fn errno(&self) -> Errno {
        Errno(match self {
            HostError::Wire(e) => e.errno(),
            HostError::Io { source, .. } | HostError::Connect { source, .. } => {
                source.raw_os_error().unwrap_or(libc_errno::EIO)
            }
            HostError::HandshakeTimeout { .. } | HostError::ReconnectDeadline { .. } => {
                libc_errno::EIO
            }
            HostError::Closed => libc_errno::ECONNRESET,
            HostError::UnknownPartition(_) => libc_errno::ENXIO,
            HostError::DeviceInUse { .. }
            | HostError::NotRecoverable { .. }
            | HostError::PartitionAttached { .. } => libc_errno::EBUSY,
            HostError::Config { .. } => libc_errno::EINVAL,
            HostError::Ublk(libublk::UblkError::OtherError(e))
            | HostError::Ublk(libublk::UblkError::UringIOError(e)) => e.abs(),
            HostError::Resolve { .. }
            | HostError::Protocol(_)
            | HostError::Secret { .. }
            | HostError::Ring(_)
            | HostError::Nbd(_)
            | HostError::Ublk(_) => libc_errno::EIO,
        })
    }

    /// Wraps a socket error with what was being done.
    pub fn io(context: &'static str, source: io::Error) -> HostError {
        HostError::Io { context, source }
    }
}

/// The crate's result type.
pub type Result<T, E = HostError> = std::result::Result<T, E>;
