//! What the admin layer needs from the network server: a snapshot of the live sessions
//! and the traffic totals for `/metrics`, behind a small trait so the API can be served
//! (and tested) whatever runs the sessions.

use std::time::Duration;

use serde_json::{json, Value};

/// Upper bounds of the latency histogram's buckets, in microseconds (the last bucket,
/// `+Inf`, is implied).
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// Counts of finished block requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests answered (any op, any outcome).
    pub ops: u64,
    /// Requests answered with an errno.
    pub errors: u64,
    /// Bytes returned by reads.
    pub bytes_read: u64,
    /// Bytes accepted by writes.
    pub bytes_written: u64,
    /// Requests per latency bucket (not cumulative), one more than
    /// [`LATENCY_BOUNDS_US`] (the last is `+Inf`).
    pub latency_buckets: Vec<u64>,
    /// Sum of all latencies, in microseconds.
    pub latency_sum_us: u64,
}

impl Traffic {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Traffic) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.latency_sum_us += other.latency_sum_us;
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine += theirs;
        }
    }
}

/// Control (discovery) or data (one lane of one queue on one partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A control connection.
    Control,
    /// A data lane.
    Data,
}

/// One live, authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// Unique for the server's lifetime.
    pub id: u64,
    /// The authenticated host.
    pub host: String,
    /// Control or data.
    pub kind: SessionKind,
    /// For a lane: the partition id.
    pub partition: Option<u32>,
    /// For a lane: the partition's name.
    pub partition_name: Option<String>,
    /// For a lane: the host's queue.
    pub queue: Option<u16>,
    /// For a lane: its index in the queue.
    pub lane: Option<u16>,
    /// The peer's address.
    pub peer: String,
    /// How long the session has been up.
    pub age: Duration,
    /// Its requests so far.
    pub traffic: Traffic,
}

/// Traffic of one host on one partition, over the server's lifetime (closed lanes
/// included), for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTraffic {
    /// Host name.
    pub host: String,
    /// Partition name (as it was when the traffic happened).
    pub partition: String,
    /// The counts.
    pub traffic: Traffic,
}

/// The network server's side of the admin API.
pub trait LiveSessions: Send + Sync {
    /// Every live session.
    fn snapshot(&self) -> Vec<SessionSnapshot>;
    /// Lifetime traffic per host and partition.
    fn traffic(&self) -> Vec<PartitionTraffic>;
    /// I/O errors per member disk, in stripe order.
    fn disk_errors(&self) -> Vec<u64>;
    /// Handshakes refused since start (unknown host, bad proof, not assigned...).
    fn refused_handshakes(&self) -> u64;
}

/// A server with no network side (tests of the API alone, offline use).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSessions;

impl LiveSessions for NoSessions {
    fn snapshot(&self) -> Vec<SessionSnapshot> {
        Vec::new()
    }
    fn traffic(&self) -> Vec<PartitionTraffic> {
        Vec::new()
    }
    fn disk_errors(&self) -> Vec<u64> {
        Vec::new()
    }
    fn refused_handshakes(&self) -> u64 {
        0
    }
}

fn kind_name(kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::Control => "control",
        SessionKind::Data => "data",
    }
}

/// `GET /api/sessions`.
pub fn sessions_json(sessions: &dyn LiveSessions) -> Value {
    let mut all = sessions.snapshot();
    all.sort_by(|a, b| {
        (&a.host, a.partition, a.queue, a.lane, a.id).cmp(&(
            &b.host,
            b.partition,
            b.queue,
            b.lane,
            b.id,
        ))
    });
    let list: Vec<Value> = all
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "host": s.host,
                "kind": kind_name(s.kind),
                "partition": s.partition_name,
                "partition_id": s.partition,
                "queue": s.queue,
                "lane": s.lane,
                "peer": s.peer,
                "age_seconds": s.age.as_secs_f64(),
                "ops": s.traffic.ops,
                "errors": s.traffic.errors,
                "bytes_read": s.traffic.bytes_read,
                "bytes_written": s.traffic.bytes_written,
            })
        })
        .collect();
    json!({ "sessions": list })
}
