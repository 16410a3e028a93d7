//! What the admin layer reads of the network server: the read-only view `net` exports
//! ([`LiveSessions`]), a stand-in for a server with no network side ([`NoSessions`]),
//! and the `/api/sessions` JSON.

use serde_json::{json, Value};

pub use crate::net::{
    LiveSessions, PartitionTraffic, PathTraffic, SessionKind, SessionSnapshot, Traffic,
    LATENCY_BOUNDS_US,
};

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
    fn path_traffic(&self) -> Vec<PathTraffic> {
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
                "local": s.local,
                "cpu": s.cpu,
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
