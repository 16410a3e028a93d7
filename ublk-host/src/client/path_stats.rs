//! Per-path state and traffic of one device, shared lock-free by every queue's engine
//! (like [`crate::client::Durability`], through [`crate::client::EngineConfig`]): how many
//! lanes are connected over each path, and the requests and payload bytes issued over it.
//!
//! Each lane publishes which path its connection runs on at every clock tick (so within
//! `lane::TICK` of a change) and counts each request it issues on the path it runs on
//! then; a reissue after a reconnect is not counted again. The daemon writes snapshots to
//! the device's path report for `ublk-host list` (`ublk/path_report.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One path's counters.
#[derive(Debug, Default)]
struct Counters {
    lanes_up: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// Every path's counters, in path order (path 0 is the first `--server`).
#[derive(Debug, Default)]
pub struct PathStats {
    paths: Vec<Counters>,
}

/// One path's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathSnapshot {
    /// At least one lane is connected over the path.
    pub up: bool,
    /// Lanes connected over the path (of any queue, whatever their home path).
    pub lanes_up: u64,
    /// Requests issued over the path.
    pub requests: u64,
    /// Payload bytes of those requests (reads and writes, discards' lengths too).
    pub bytes: u64,
}

impl PathStats {
    /// Zeroed counters for `paths` paths.
    pub fn new(paths: usize) -> PathStats {
        PathStats {
            paths: (0..paths).map(|_| Counters::default()).collect(),
        }
    }

    /// A request of `bytes` was issued over `path` (a path this structure was not made
    /// for is not counted).
    pub fn issued(&self, path: usize, bytes: u64) {
        if let Some(counters) = self.paths.get(path) {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// A lane's connection moved from path `from` to path `to` (`None`: not connected).
    /// Each lane reports only moves of its own, so a path's count never goes below zero.
    pub fn lane_moved(&self, from: Option<usize>, to: Option<usize>) {
        if from == to {
            return;
        }
        if let Some(counters) = from.and_then(|path| self.paths.get(path)) {
            counters.lanes_up.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(counters) = to.and_then(|path| self.paths.get(path)) {
            counters.lanes_up.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every path's counters now.
    pub fn snapshot(&self) -> Vec<PathSnapshot> {
        self.paths
            .iter()
            .map(|counters| {
                let lanes_up = counters.lanes_up.load(Ordering::Relaxed);
                PathSnapshot {
                    up: lanes_up > 0,
                    lanes_up,
                    requests: counters.requests.load(Ordering::Relaxed),
                    bytes: counters.bytes.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_lanes_and_requests_per_path() {
        let stats = PathStats::new(2);
        stats.lane_moved(None, Some(0));
        stats.lane_moved(None, Some(1));
        stats.issued(0, 4096);
        stats.issued(0, 512);
        stats.issued(1, 0);
        stats.issued(7, 1 << 20);
        let snap = stats.snapshot();
        assert_eq!((snap[0].requests, snap[0].bytes), (2, 4608));
        assert_eq!((snap[1].requests, snap[1].bytes), (1, 0));
        assert!(snap.iter().all(|path| path.up && path.lanes_up == 1));
        // Path 1's lane is cut, reconnects over path 0, then goes home again.
        stats.lane_moved(Some(1), None);
        stats.lane_moved(None, Some(0));
        let snap = stats.snapshot();
        assert_eq!((snap[0].lanes_up, snap[1].up), (2, false));
        stats.lane_moved(Some(0), Some(1));
        stats.lane_moved(Some(0), None);
        stats.lane_moved(Some(1), None);
        assert!(stats
            .snapshot()
            .iter()
            .all(|path| !path.up && path.lanes_up == 0));
    }
}
