//! The one error type of the array server.

use std::fmt;
use std::io;
use std::path::PathBuf;

use wire::libc_errno;

/// What the server was doing to a member disk when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// Opening or inspecting the disk.
    Open,
    /// Reading data.
    Read,
    /// Writing data.
    Write,
    /// `fdatasync`.
    Sync,
    /// Releasing space (punch hole, `BLKDISCARD`).
    Discard,
    /// Zeroing a range.
    WriteZeroes,
    /// Reading a metadata slot.
    ReadMetadata,
    /// Writing a metadata slot.
    WriteMetadata,
}

impl fmt::Display for DiskOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskOp::Open => "open",
            DiskOp::Read => "read",
            DiskOp::Write => "write",
            DiskOp::Sync => "sync",
            DiskOp::Discard => "discard",
            DiskOp::WriteZeroes => "write zeroes",
            DiskOp::ReadMetadata => "read metadata",
            DiskOp::WriteMetadata => "write metadata",
        })
    }
}

/// Everything that can go wrong in the array server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A member disk failed an operation.
    #[error("{op} on {path} at offset {offset} failed: {source}")]
    Disk {
        /// The member disk.
        path: PathBuf,
        /// Byte offset on that disk.
        offset: u64,
        /// What was being done.
        op: DiskOp,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Another process (a running `array-server serve`, or an offline command) holds the
    /// disk's lock.
    #[error(
        "{path} is in use by another array-server process (a running `serve` holds its disks; \
         stop it first, or manage the array through the running server)"
    )]
    Locked {
        /// The locked disk.
        path: PathBuf,
    },
    /// No member disk was given.
    #[error(
        "no disks given: name them (--disk PATH, once per member disk), or the array \
         (--array ID, found by scanning), or a configuration file (--config FILE)"
    )]
    NoDisks,
    /// A disk is too small to hold the metadata area and one chunk.
    #[error("{path} holds {size} bytes; a member disk needs at least {min}")]
    DiskTooSmall {
        /// The disk.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The least acceptable size.
        min: u64,
    },
    /// `format` found an existing array on a disk and `--force` was not given.
    #[error("{path} already belongs to array {array_id}; pass --force to overwrite it")]
    AlreadyFormatted {
        /// The disk.
        path: PathBuf,
        /// The array found on it.
        array_id: uuid::Uuid,
    },
    /// A disk carries no valid metadata slot.
    #[error("{path} is not a member of a Multilane array (no valid metadata); format it first")]
    NotFormatted {
        /// The disk.
        path: PathBuf,
    },
    /// The disks given do not make up exactly one complete array.
    #[error("the disks do not form one array: {0}")]
    DiskSetMismatch(String),
    /// Scanning for an array's members did not find every disk index.
    #[error(
        "array {array_id}: member disk {missing} of {count} (indices 0..{count}) not found \
         among {searched} scanned path(s); attach it, or name it with --disk / --scan"
    )]
    MembersMissing {
        /// The array looked for.
        array_id: uuid::Uuid,
        /// The missing disk indices, comma separated.
        missing: String,
        /// Member disks the array has.
        count: u32,
        /// How many candidate paths were probed.
        searched: usize,
    },
    /// Scanning found no member disk of the array at all.
    #[error(
        "no member disk of array {array_id} found among {searched} scanned path(s); check \
         the id (`array-server info --disk PATH` shows a disk's array) and that the disks \
         are attached, or add --scan PATH_OR_GLOB"
    )]
    ArrayNotFound {
        /// The array looked for.
        array_id: uuid::Uuid,
        /// How many candidate paths were probed.
        searched: usize,
    },
    /// A disk named explicitly is not a member of the array asked for.
    #[error("{path} is not a member of array {array_id}: {found}")]
    ForeignDisk {
        /// The disk.
        path: PathBuf,
        /// The array asked for.
        array_id: uuid::Uuid,
        /// What is on it instead.
        found: String,
    },
    /// Two different disks claim the same index of the array (a cloned or stale disk).
    #[error(
        "array {array_id}: both {first} and {second} claim to be member disk {index}; \
         name the right one with --disk"
    )]
    AmbiguousMember {
        /// The array.
        array_id: uuid::Uuid,
        /// The disk index both claim.
        index: u32,
        /// One disk.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A `--scan` pattern is not a valid glob, or `--scan` came without `--array`.
    #[error("scan {pattern:?}: {message}")]
    Scan {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration file cannot be read, parsed, or holds a bad value.
    #[error("configuration {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column where the parser knows them).
        message: String,
    },
    /// The chunk size is not a power of two between the allowed bounds.
    #[error("chunk size {0} must be a power of two from 4 KiB to 64 MiB")]
    BadChunkSize(u64),
    /// A host or partition name breaks the naming rule.
    #[error(
        "invalid name {0:?}: 1 to 64 characters of [A-Za-z0-9._-], not starting with '-', \
         and not '.' or '..'"
    )]
    InvalidName(String),
    /// A partition of that name exists already.
    #[error("partition {0:?} already exists")]
    PartitionExists(String),
    /// No partition of that name.
    #[error("no partition named {0:?}")]
    PartitionNotFound(String),
    /// A host of that name exists already.
    #[error("host {0:?} already exists")]
    HostExists(String),
    /// No host of that name.
    #[error("no host named {0:?}")]
    HostNotFound(String),
    /// The host already has this partition.
    #[error("host {host:?} is already assigned partition {partition:?}")]
    AlreadyAssigned {
        /// The host.
        host: String,
        /// The partition.
        partition: String,
    },
    /// The host does not have this partition.
    #[error("host {host:?} is not assigned partition {partition:?}")]
    NotAssigned {
        /// The host.
        host: String,
        /// The partition.
        partition: String,
    },
    /// A private partition can be assigned to one host only.
    #[error("partition {partition:?} is private and already assigned to host {holder:?}")]
    PrivatePartitionTaken {
        /// The partition.
        partition: String,
        /// The host holding it.
        holder: String,
    },
    /// A partition or host still has assignments; unassign first.
    #[error("{what} {name:?} is still assigned ({others}); unassign it first")]
    StillAssigned {
        /// "partition" or "host".
        what: &'static str,
        /// Its name.
        name: String,
        /// The other side of each assignment, comma separated.
        others: String,
    },
    /// Not enough free space in the array.
    #[error("not enough free space: {needed} bytes needed, {free} free")]
    NoSpace {
        /// Bytes the operation needs.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// Partitions can only grow.
    #[error(
        "partition {partition:?} is {current} bytes; it can only grow (asked for {requested})"
    )]
    CannotShrink {
        /// The partition.
        partition: String,
        /// Its size now.
        current: u64,
        /// The size asked for.
        requested: u64,
    },
    /// A partition size of zero.
    #[error("a partition needs a size above zero")]
    ZeroSize,
    /// The metadata no longer fits a slot.
    #[error("metadata of {len} bytes does not fit a {max}-byte slot")]
    MetadataTooLarge {
        /// Encoded size.
        len: usize,
        /// Slot capacity.
        max: usize,
    },
    /// A block request's offset or length is not a multiple of the block size.
    #[error("offset {offset} / length {len} not a multiple of the {block_size}-byte block")]
    Misaligned {
        /// Request offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// The partition's block size.
        block_size: u32,
    },
    /// A block request reaches past the end of the partition (or above `max_io`).
    #[error("range {offset}+{len} is outside the partition's {size} bytes")]
    OutOfRange {
        /// Request offset.
        offset: u64,
        /// Request length.
        len: u64,
        /// Partition size.
        size: u64,
    },
    /// A write-class request on a read-only assignment.
    #[error("the partition is assigned read-only to this host")]
    ReadOnly,
    /// The assignment was withdrawn since the connection was made.
    #[error("the partition's assignment to this host was revoked")]
    Revoked,
    /// Network or local I/O outside the member disks (sockets, threads, files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A protocol error from the wire crate.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
}

impl Error {
    /// The positive errno a block request failed by this error completes with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Misaligned { .. } | Error::OutOfRange { .. } => libc_errno::EINVAL,
            Error::ReadOnly => libc_errno::EROFS,
            Error::Revoked | Error::NotAssigned { .. } => libc_errno::EACCES,
            Error::NoSpace { .. } => libc_errno::ENOSPC,
            Error::Locked { .. } => libc_errno::EBUSY,
            Error::Wire(wire) => wire.errno(),
            _ => libc_errno::EIO,
        }
    }

    /// Builds an [`Error::Io`] with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
