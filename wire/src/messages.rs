//! Every message of protocol v1, as plain data.
//!
//! These types say *what* is exchanged; [`crate::frame`] says how they become bytes.
//! All of them are serialised with postcard into a frame header; bulk data (a write's
//! data, a read's result) travels as the frame's raw payload, never inside a header.

use serde::{Deserialize, Serialize};

/// First four bytes of every `Hello`: ASCII "MLN1".
pub const MAGIC: u32 = u32::from_le_bytes(*b"MLN1");
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// Length of the nonces both sides contribute to a handshake.
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Longest host or partition name accepted anywhere in the protocol.
pub const MAX_NAME_LEN: usize = 64;
/// One sector, the unit of block addresses in the kernel.
pub const SECTOR_SIZE: u32 = 512;

/// A random value contributed by one side of the handshake.
pub type Nonce = [u8; NONCE_LEN];
/// An HMAC-SHA256 tag.
pub type Mac = [u8; MAC_LEN];

/// Why a connection is opened; bound into the handshake transcript so a proof made for
/// one purpose cannot be replayed for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// Discovery: partition lists and live updates.
    Control,
    /// Block I/O on one partition, from one host queue's lane.
    Data {
        /// The partition's id as discovery reported it.
        partition: u32,
        /// The host's ublk hardware queue that owns this lane.
        queue: u16,
        /// The lane's index among its queue's lanes.
        lane: u16,
        /// The lane's epoch: grows with every connection the host opens for this
        /// (partition, queue, lane), across reconnects and daemon restarts. A data Hello
        /// whose epoch is newer than the live connection's *fences* it: the server closes
        /// the old socket and waits for every request it admitted from it to finish before
        /// it answers `Welcome`, so a write sent on the old connection can never land after
        /// the host reissued it. A Hello not newer than the live one is refused `Stale`.
        epoch: u64,
    },
}

/// Client → server, first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: u32,
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// The host's name, as created on the server.
    pub host: String,
    /// The client's fresh random nonce.
    pub client_nonce: Nonce,
    /// What the connection is for.
    pub purpose: Purpose,
}

/// Server → client, answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Prove you know the host secret.
    Challenge(Challenge),
    /// The connection cannot proceed (no common version, server busy...).
    Refused(Refused),
}

/// The server's half of the handshake nonces and the version it chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The version both sides will speak, within the client's range.
    pub version: u16,
    /// The server's fresh random nonce.
    pub server_nonce: Nonce,
}

/// Client → server: the client's proof of the host secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// `HMAC-SHA256(secret, "multilane v1 client" || transcript)`.
    pub mac: Mac,
}

/// Server → client, answer to `Proof`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProofReply {
    /// The client is authenticated; the server proves itself in turn.
    Welcome(Welcome),
    /// Authentication or authorisation failed.
    Refused(Refused),
}

/// The server's proof and the session's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// `HMAC-SHA256(secret, "multilane v1 server" || transcript)`.
    pub mac: Mac,
    /// Largest payload of one request or reply on this connection, in bytes.
    pub max_io: u32,
    /// Most requests the server runs at once on this connection; more wait in TCP.
    pub max_in_flight: u32,
    /// The array's UUID, so a host can tell servers (and paths to one server) apart.
    pub array_id: [u8; 16],
    /// For a data connection: the partition as it stands now.
    pub partition: Option<PartitionInfo>,
    /// The server process's boot epoch, drawn afresh at every start. Writes acknowledged
    /// without FUA and not yet covered by a FLUSH may be lost when it changes (the server
    /// lost power or was killed); a host that sees a new epoch while it holds such writes
    /// fails its next FLUSH with `EIO`.
    pub boot_epoch: u64,
    /// The addresses (`host:port`) hosts may dial this server at, one per network: its
    /// non-wildcard listen addresses, or the list its operator configured (`announce`).
    /// A host may open further paths to them (`ublk-host attach --all-paths`) after
    /// checking each answers with the same `array_id`. Empty when it announces none.
    pub addresses: Vec<String>,
}

/// Why the server refused a handshake; the same answer for unknown host and bad proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusedCode {
    /// No common protocol version.
    Version,
    /// Unknown host or wrong proof (deliberately indistinguishable).
    Authentication,
    /// Authenticated, but the partition is not assigned to this host.
    NotAssigned,
    /// The server is at its connection limit.
    Busy,
    /// The hello was malformed (bad magic, over-long name).
    BadHello,
    /// A data Hello whose lane epoch is not newer than the live connection's for the same
    /// (host, partition, queue, lane): an old connection attempt that arrived late.
    Stale,
}

/// A refusal with a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Machine-readable reason.
    pub code: RefusedCode,
    /// Human-readable explanation.
    pub message: String,
}

/// What a host may do with a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Reads and writes.
    ReadWrite,
    /// Reads only; writes, discards and write-zeroes fail with `EROFS`.
    ReadOnly,
}

/// A partition as one host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Stable id, used in `Purpose::Data`.
    pub id: u32,
    /// The operator's name for it.
    pub name: String,
    /// Size in bytes, a multiple of `block_size`.
    pub size: u64,
    /// Logical block size in bytes; offsets and lengths are multiples of it.
    pub block_size: u32,
    /// The array's stripe chunk in bytes; hosts split large requests at its boundaries.
    pub chunk_size: u32,
    /// Number of member disks the partition is striped over.
    pub stripe_disks: u32,
    /// This host's rights on it.
    pub access: Access,
    /// Whether other hosts are assigned this partition too.
    pub shared: bool,
    /// Optional operations the server performs on it.
    pub features: Features,
}

/// Optional operations, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Features(pub u32);

impl Features {
    /// `Op::Flush` and the `fua` flag are honoured (a volatile write cache).
    pub const FLUSH_FUA: Features = Features(1);
    /// `Op::Discard` is passed to the member disks.
    pub const DISCARD: Features = Features(1 << 1);
    /// `Op::WriteZeroes` is passed to the member disks.
    pub const WRITE_ZEROES: Features = Features(1 << 2);
    /// A flush on any lane covers writes acknowledged on every lane (NBD's CAN_MULTI_CONN).
    pub const MULTI_LANE_FLUSH: Features = Features(1 << 3);
    /// Reads flagged [`FLAG_RUN`] may be answered in runs ([`Status::Later`],
    /// [`Status::Run`]).
    pub const REPLY_RUNS: Features = Features(1 << 4);
    /// Writes flagged [`FLAG_LATER`] and [`Op::Run`] requests are understood.
    pub const REQUEST_RUNS: Features = Features(1 << 5);
    /// Everything this version of the server does.
    pub const ALL: Features = Features(0b11_1111);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Client → server on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Ask for the partitions this host may use; answered with `Partitions`.
    ListPartitions,
    /// Keepalive; answered with `Pong` carrying the same value.
    Ping(u64),
}

/// Server → client on a control connection; `Partitions` also arrives unasked whenever
/// this host's assignments change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlEvent {
    /// The complete list of this host's partitions.
    Partitions {
        /// Metadata generation the list was taken from; grows with every change.
        generation: u64,
        /// Every partition assigned to this host.
        partitions: Vec<PartitionInfo>,
    },
    /// Answer to `Ping`.
    Pong(u64),
}

/// A block operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Read `len` bytes; the reply carries them as payload.
    Read,
    /// Write the request's payload (`len` bytes).
    Write,
    /// Make every write acknowledged before this on any lane durable.
    Flush,
    /// The range's contents become unspecified; space may be released.
    Discard,
    /// The range reads back as zeroes.
    WriteZeroes,
    /// Liveness probe: answered `Ok` at once without touching the disks (`offset` and
    /// `len` are 0). A host sends it on a lane that has requests outstanding and has heard
    /// nothing for a while; no answer within the dead-lane bound means the lane is dead.
    Heartbeat,
    /// Not a request of its own: the payloads of the writes flagged [`FLAG_LATER`] since
    /// the last run, in their order. `tag` is how many writes it carries (1 to
    /// [`MAX_RUN_REQUESTS`]), `len` their bytes in all, `offset` and `flags` are 0. It gets
    /// no reply; each write does. Sent only where the partition offers
    /// [`Features::REQUEST_RUNS`].
    Run,
}

/// Request flag: the write is durable before it is acknowledged.
pub const FLAG_FUA: u8 = 1;
/// Request flag on a read: its reply may be part of a run ([`Status::Later`]). Set only
/// where the partition offers [`Features::REPLY_RUNS`]; a server that does not know the
/// flag ignores it and answers as usual.
pub const FLAG_RUN: u8 = 1 << 1;
/// Request flag on a write: its payload is not in its own frame but comes in the next
/// [`Op::Run`] (a *request run*: the heads of several writes, then one frame with all their
/// data, so a host that sends each payload from its own fixed buffer sends the heads with
/// one call instead of one per write). A server that does not know the flag refuses the
/// frame (its payload length does not match), it never misreads the stream.
pub const FLAG_LATER: u8 = 1 << 2;
/// Most writes one [`Op::Run`] may carry: a server holds at most this many heads waiting
/// for their data.
pub const MAX_RUN_REQUESTS: u32 = 128;

/// Client → server on a data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client-chosen id echoed in the reply; unique among this lane's in-flight requests.
    pub tag: u32,
    /// What to do.
    pub op: Op,
    /// Byte offset in the partition; a multiple of its block size.
    pub offset: u64,
    /// Byte count; a multiple of the block size (0 for `Flush`).
    pub len: u32,
    /// `FLAG_*` bits.
    pub flags: u8,
}

impl Request {
    /// Bytes of payload that follow this request's header: the data of a write.
    pub fn payload_len(&self) -> u32 {
        match self.op {
            Op::Write if !self.data_later() => self.len,
            Op::Run => self.len,
            _ => 0,
        }
    }

    /// Whether this is a write whose payload comes in the next [`Op::Run`].
    pub fn data_later(&self) -> bool {
        self.op == Op::Write && self.flags & FLAG_LATER != 0
    }

    /// Whether the FUA flag is set.
    pub fn fua(&self) -> bool {
        self.flags & FLAG_FUA != 0
    }

    /// Whether this is a read whose reply may be part of a run.
    pub fn may_run(&self) -> bool {
        self.op == Op::Read && self.flags & FLAG_RUN != 0
    }
}

/// How a request ended.
///
/// `Later` and `Run` make a *run*: the heads of several read replies, then one frame with
/// all their data, so a host that receives each payload into its own (fixed) buffer takes
/// the heads with one receive and the payloads with one chain of receives, instead of a
/// receive per head. Only reads flagged [`FLAG_RUN`] are answered this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Done.
    Ok,
    /// Failed with this positive Linux errno (`EIO`, `EROFS`, `EINVAL`, `EACCES`...).
    Errno(i32),
    /// A read done; its `len` bytes of data come in the next `Run` frame, not in this one
    /// (whose payload is empty).
    Later,
    /// Not the reply to a request: the data of the `Later` replies since the last run, in
    /// their order. `tag` is how many replies it carries, `len` their bytes in all.
    Run,
}

/// Server → client on a data connection; replies come in any order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's tag.
    pub tag: u32,
    /// Outcome.
    pub status: Status,
    /// Bytes of payload that follow: the data of a successful read, else 0 (for `Later`,
    /// the bytes its run will carry; for `Run`, all of them).
    pub len: u32,
}

impl Reply {
    /// Bytes of payload that follow this reply's header.
    pub fn payload_len(&self) -> u32 {
        match self.status {
            Status::Ok | Status::Run => self.len,
            Status::Errno(_) | Status::Later => 0,
        }
    }
}
