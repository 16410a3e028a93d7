//! Results: per-queue counters, their sum, and the fio-style text and JSON reports.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use ublk_host::client::LaneStats;
use wire::PartitionInfo;

use crate::histogram::Histogram;
use crate::workload::Plan;

/// Counters of one direction.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Completed operations.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Their latencies.
    pub latency: Histogram,
}

impl OpStats {
    fn merge(&mut self, other: &OpStats) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.latency.merge(&other.latency);
    }
}

/// What one queue (or one slot) did.
#[derive(Debug, Clone, Default)]
pub struct QueueResult {
    /// Reads.
    pub reads: OpStats,
    /// Writes.
    pub writes: OpStats,
    /// Operations that failed.
    pub errors: u64,
    /// Blocks that read back different from what was written.
    pub mismatches: u64,
    /// Requests carried by each of the queue's lanes.
    pub lanes: Vec<u64>,
    /// What the queue's lanes went through (reconnects, heartbeats, failures...), summed.
    pub events: LaneStats,
}

/// Adds `other`'s lane counters into `total` (requests aside: those are per lane).
pub fn add_events(total: &mut LaneStats, other: &LaneStats) {
    total.reconnects += other.reconnects;
    total.heartbeats += other.heartbeats;
    total.dead_detections += other.dead_detections;
    total.failed += other.failed;
    total.refusals += other.refusals;
}

impl QueueResult {
    /// Adds a slot's counters.
    pub fn merge(&mut self, other: QueueResult) {
        self.reads.merge(&other.reads);
        self.writes.merge(&other.writes);
        self.errors += other.errors;
        self.mismatches += other.mismatches;
    }
}

/// The whole run.
#[derive(Debug)]
pub struct Summary {
    plan: Plan,
    partition: String,
    elapsed: Duration,
    total: QueueResult,
    lanes: Vec<Vec<u64>>,
    events: LaneStats,
    /// Operations that failed.
    pub errors: u64,
    /// Blocks that read back wrong.
    pub mismatches: u64,
}

impl Summary {
    /// Sums the queues' results.
    pub fn new(
        plan: &Plan,
        partition: &PartitionInfo,
        queues: Vec<QueueResult>,
        elapsed: Duration,
    ) -> Summary {
        let mut total = QueueResult::default();
        let lanes = queues.iter().map(|queue| queue.lanes.clone()).collect();
        let mut events = LaneStats::default();
        for queue in &queues {
            add_events(&mut events, &queue.events);
        }
        for queue in queues {
            total.merge(queue);
        }
        Summary {
            plan: plan.clone(),
            partition: partition.name.clone(),
            elapsed,
            errors: total.errors,
            mismatches: total.mismatches,
            total,
            lanes,
            events,
        }
    }

    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The fio-like text report.
    pub fn to_text(&self) -> String {
        let plan = &self.plan;
        let mut out = String::new();
        let split = match plan.split {
            0 => "off".to_owned(),
            bytes => human_bytes(f64::from(bytes)),
        };
        let _ = writeln!(
            out,
            "{}: partition={} bs={} iodepth={} queues={} lanes/queue={} split={} runtime={:.1}s{}",
            plan.mode.name(),
            self.partition,
            human_bytes(f64::from(plan.block_size)),
            plan.iodepth,
            plan.queues,
            plan.lanes,
            split,
            self.elapsed.as_secs_f64(),
            if plan.verify { " verify" } else { "" },
        );
        for (name, stats) in [("read", &self.total.reads), ("write", &self.total.writes)] {
            if stats.ops == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "  {name}: IOPS={:.0}, BW={}/s, ios={}",
                self.per_second(stats.ops),
                human_bytes(self.per_second(stats.bytes)),
                stats.ops
            );
            let lat = &stats.latency;
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let _ = writeln!(
                out,
                "    lat (usec): avg={:.1}, p50={:.1}, p90={:.1}, p99={:.1}, p99.9={:.1}, max={:.1}",
                us(lat.mean()),
                us(lat.percentile(50.0)),
                us(lat.percentile(90.0)),
                us(lat.percentile(99.0)),
                us(lat.percentile(99.9)),
                us(lat.max()),
            );
        }
        for (queue, lanes) in self.lanes.iter().enumerate() {
            let counts: Vec<String> = lanes.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "  queue {queue}: requests per lane [{}]",
                counts.join(", ")
            );
        }
        let events = &self.events;
        let _ = writeln!(
            out,
            "  lanes: reconnects={} heartbeats={} dead-detections={} refusals={} failed-by-lane={}",
            events.reconnects,
            events.heartbeats,
            events.dead_detections,
            events.refusals,
            events.failed
        );
        let _ = writeln!(
            out,
            "  errors={} verify-mismatches={}",
            self.errors, self.mismatches
        );
        out
    }

    /// The JSON report: totals at the top (`iops`, `bw_bytes`), then per direction.
    pub fn to_json(&self) -> Value {
        let direction = |stats: &OpStats| {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let lat = &stats.latency;
            json!({
                "ops": stats.ops,
                "bytes": stats.bytes,
                "iops": self.per_second(stats.ops),
                "bw_bytes": self.per_second(stats.bytes),
                "lat_us": {
                    "mean": us(lat.mean()),
                    "p50": us(lat.percentile(50.0)),
                    "p90": us(lat.percentile(90.0)),
                    "p99": us(lat.percentile(99.0)),
                    "p99.9": us(lat.percentile(99.9)),
                    "max": us(lat.max()),
                },
            })
        };
        let total = &self.total;
        json!({
            "workload": self.plan.mode.name(),
            "partition": self.partition,
            "block_size": self.plan.block_size,
            "iodepth": self.plan.iodepth,
            "queues": self.plan.queues,
            "lanes_per_queue": self.plan.lanes,
            "split": self.plan.split,
            "verify": self.plan.verify,
            "runtime_s": self.elapsed.as_secs_f64(),
            "iops": self.per_second(total.reads.ops + total.writes.ops),
            "bw_bytes": self.per_second(total.reads.bytes + total.writes.bytes),
            "read": direction(&total.reads),
            "write": direction(&total.writes),
            "lane_requests": self.lanes,
            "lane_events": {
                "reconnects": self.events.reconnects,
                "heartbeats": self.events.heartbeats,
                "dead_detections": self.events.dead_detections,
                "refusals": self.events.refusals,
                "failed": self.events.failed,
            },
            "errors": self.errors,
            "verify_mismatches": self.mismatches,
        })
    }
}

/// `1536` → `1.5KiB`.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}
