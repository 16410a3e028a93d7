//! The read-only view of the running server that other layers (the admin service) read:
//! live sessions, lifetime traffic per host and partition, refused handshakes. `net`
//! defines it and implements it for its shared state; readers depend on `net`, never
//! the other way round.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use wire::Purpose;

use super::Shared;

pub use super::sessions::CounterView as Traffic;

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
    /// The server's address the connection came in on (per-path traffic).
    pub local: String,
    /// The CPU of the server thread serving it (see `Session::cpu`).
    pub cpu: Option<u32>,
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

/// Data traffic that came in on one server address (one multipath path), over the
/// server's lifetime (closed lanes included), for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTraffic {
    /// The server's local address, `ip:port`.
    pub local: String,
    /// The counts, summed over every host and partition.
    pub traffic: Traffic,
}

/// A read-only view of the running server's sessions and counters.
pub trait LiveSessions: Send + Sync {
    /// Every live session.
    fn snapshot(&self) -> Vec<SessionSnapshot>;
    /// Lifetime traffic per host and partition.
    fn traffic(&self) -> Vec<PartitionTraffic>;
    /// Lifetime traffic per server address (path).
    fn path_traffic(&self) -> Vec<PathTraffic>;
    /// Handshakes refused since start (unknown host, bad proof, not assigned...).
    fn refused_handshakes(&self) -> u64;
}

/// The running server's view.
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
                    local: session.local.to_string(),
                    cpu: session.cpu,
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

    fn path_traffic(&self) -> Vec<PathTraffic> {
        self.sessions
            .path_traffic()
            .into_iter()
            .map(|(local, traffic)| PathTraffic {
                local: local.to_string(),
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
