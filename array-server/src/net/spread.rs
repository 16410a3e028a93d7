//! When pinned server threads may run on any CPU: the policy, sans-IO.
//!
//! Pinned threads (see `net/placement.rs`) keep a request's wakeups on one CPU, which is
//! what small requests want. Large requests want the opposite: their cost is copies (the
//! socket's, the disks'), which a thread pinned to a busy CPU cannot move to an idle one.
//! So once, for [`CONFIRM_WINDOWS`] windows in a row, the server's reads and writes
//! average at least [`LARGE_REQUEST`] bytes, the threads are let run on every allowed CPU,
//! and pinned again once that stops being so for as many windows. The average is over
//! requests, not bytes: a few large requests among many small ones keep the threads
//! pinned for the small ones' latency. A window without requests changes nothing.
//!
//! Measured in the lab (6.12, pinned against `--no-pin-threads`, medians of 3):
//! - one fio job (`LAB_GUEST_ENV=QD1_JOBS=1 scripts/lab qd1-placement`): 1 MiB reads at
//!   QD8 131-135 against 178-183 MiB/s (4k reads at QD32 7310-8468 against 7289-7325
//!   IOPS, at QD1 1111-1146 against 1371-1437);
//! - two jobs, the last measurement before this policy: 1 MiB 168 against 178 MiB/s
//!   (4k QD32 12377 against 11394 IOPS, QD1 2436 against 2119); with it (`scripts/lab
//!   qd1-placement`): 161 against 140 MiB/s, 12689 against 11013, 2460 against 2120.
//!
//! With one fio job the scheduler moves fio between CPUs, and the stream with it from one
//! host queue (and so one server thread) to the other, so "one busy thread" is no test
//! for a single stream: every thread is let go, whichever carries the traffic.

/// Average request size (bytes per read or write) that lets the threads go.
pub const LARGE_REQUEST: u64 = 64 * 1024;
/// Consecutive windows that must agree before the placement changes.
pub const CONFIRM_WINDOWS: u32 = 2;

/// What the server's data connections served in a window: reads and writes, and their
/// bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Reads and writes finished.
    pub requests: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Traffic {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: Traffic) {
        self.requests += other.requests;
        self.bytes += other.bytes;
    }

    /// Whether the requests average at least [`LARGE_REQUEST`] bytes.
    fn is_large(&self) -> bool {
        self.requests > 0 && self.bytes / self.requests >= LARGE_REQUEST
    }
}

/// Whether the threads run unpinned, and how many windows in a row asked for the other.
#[derive(Debug, Default)]
pub struct SpreadPolicy {
    unpinned: bool,
    streak: u32,
}

impl SpreadPolicy {
    /// Threads pinned.
    pub fn new() -> SpreadPolicy {
        SpreadPolicy::default()
    }

    /// Whether the threads run unpinned now.
    #[cfg(test)]
    pub fn unpinned(&self) -> bool {
        self.unpinned
    }

    /// Takes one window's traffic; returns whether the threads are to run unpinned when
    /// that changes, `None` when it stays.
    pub fn window(&mut self, traffic: Traffic) -> Option<bool> {
        if traffic.requests == 0 {
            return None; // nothing served: no evidence either way
        }
        if traffic.is_large() == self.unpinned {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < CONFIRM_WINDOWS {
            return None;
        }
        self.unpinned = !self.unpinned;
        self.streak = 0;
        Some(self.unpinned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn traffic(requests: u64, bytes: u64) -> Traffic {
        Traffic { requests, bytes }
    }

    /// Feeds `windows` identical windows; returns the changes reported.
    fn feed(policy: &mut SpreadPolicy, window: Traffic, windows: u32) -> Vec<bool> {
        (0..windows).filter_map(|_| policy.window(window)).collect()
    }

    #[test]
    fn large_requests_unpin_the_threads_after_two_windows() {
        let mut policy = SpreadPolicy::new();
        let large = traffic(150, 150 * MIB);
        assert_eq!(policy.window(large), None);
        assert_eq!(policy.window(large), Some(true));
        assert!(policy.unpinned());
        assert!(
            feed(&mut policy, large, 5).is_empty(),
            "no change while it lasts"
        );
    }

    #[test]
    fn small_requests_keep_the_threads_pinned_even_beside_large_ones() {
        let mut policy = SpreadPolicy::new();
        assert!(feed(&mut policy, traffic(8000, 8000 * 4096), 5).is_empty());
        // 100 requests of 1 MiB among 10000 of 4 KiB: 14 KiB on average.
        let mixed = traffic(10_100, 100 * MIB + 10_000 * 4096);
        assert!(feed(&mut policy, mixed, 5).is_empty());
        // Just under the bound.
        assert!(feed(&mut policy, traffic(10, 10 * LARGE_REQUEST - 1), 5).is_empty());
        assert!(!policy.unpinned());
    }

    #[test]
    fn the_threads_are_pinned_again_when_requests_turn_small() {
        let mut policy = SpreadPolicy::new();
        feed(&mut policy, traffic(150, 150 * MIB), 2);
        assert!(policy.unpinned());
        let small = traffic(9000, 9000 * 4096);
        assert_eq!(policy.window(small), None);
        assert_eq!(policy.window(small), Some(false));
        assert_eq!(
            feed(&mut policy, traffic(10, 10 * LARGE_REQUEST), 2),
            [true]
        );
    }

    #[test]
    fn one_odd_window_or_an_idle_one_changes_nothing() {
        let mut policy = SpreadPolicy::new();
        let large = traffic(150, 150 * MIB);
        feed(&mut policy, large, 2);
        // One window of small requests between large ones, then idle windows.
        assert_eq!(policy.window(traffic(9000, 9000 * 4096)), None);
        assert_eq!(policy.window(large), None);
        assert!(feed(&mut policy, Traffic::default(), 10).is_empty());
        assert!(policy.unpinned());
        // Flushes and heartbeats alone (no reads or writes) are no evidence either.
        assert!(!traffic(0, 0).is_large());
    }
}
