//! What the admin layer needs from the network server: a snapshot of the live sessions
//! and the traffic totals for `/metrics`, behind a small trait so the API can be served
//! (and tested) whatever runs the sessions.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use wire::Purpose;

use crate::net::Shared;

pub use crate::net::{CounterView as Traffic, LATENCY_BOUNDS_US};

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
                "ops": s.traffic.ops(),
                "reads": s.traffic.reads,
                "writes": s.traffic.writes,
                "errors": s.traffic.errors,
                "bytes_read": s.traffic.read_bytes,
                "bytes_written": s.traffic.write_bytes,
            })
        })
        .collect();
    json!({ "sessions": list })
}

/// The running network server's view, for the admin service.
impl LiveSessions for Shared {
    fn snapshot(&self) -> Vec<SessionSnapshot> {
        let names = partition_names(self);
        let now = SystemTime::now();
        self.sessions
            .list()
            .iter()
            .map(|session| {
                let (kind, partition, queue, lane) = match session.purpose {
                    Purpose::Control => (SessionKind::Control, None, None, None),
                    Purpose::Data {
                        partition,
                        queue,
                        lane,
                        ..
                    } => (SessionKind::Data, Some(partition), Some(queue), Some(lane)),
                };
                SessionSnapshot {
                    id: session.id,
                    host: session.host.clone(),
                    kind,
                    partition,
                    partition_name: partition.map(|id| name_of(&names, id)),
                    queue,
                    lane,
                    peer: session.peer.to_string(),
                    age: now.duration_since(session.since).unwrap_or_default(),
                    traffic: session.counters.snapshot(),
                }
            })
            .collect()
    }

    fn traffic(&self) -> Vec<PartitionTraffic> {
        let names = partition_names(self);
        self.sessions
            .traffic()
            .into_iter()
            .map(|((host, id), traffic)| PartitionTraffic {
                host,
                partition: name_of(&names, id),
                traffic,
            })
            .collect()
    }

    fn refused_handshakes(&self) -> u64 {
        let stats = &self.stats;
        [
            &stats.refused_busy,
            &stats.failed_authentications,
            &stats.refused_not_assigned,
        ]
        .iter()
        .map(|counter| counter.load(Ordering::Relaxed))
        .sum()
    }
}

fn partition_names(shared: &Shared) -> Vec<(u32, String)> {
    shared
        .array
        .partitions()
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect()
}

/// A partition's name, or `#ID` for one deleted since.
fn name_of(names: &[(u32, String)], id: u32) -> String {
    names
        .iter()
        .find(|(known, _)| *known == id)
        .map_or_else(|| format!("#{id}"), |(_, name)| name.clone())
}
