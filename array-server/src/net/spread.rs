//! When a pinned server thread may run on any CPU: the policy, sans-IO.
//!
//! Pinned threads (see `net/placement.rs`) keep a request's wakeups on one CPU, which is
//! what small requests want. A lone stream of large requests wants the opposite: its cost
//! is copies (the socket's, the disks'), and on a CPU of its own the thread carrying it
//! leaves the other CPUs idle while fio, the host's queue thread and the server queue up
//! on one. So once, for [`CONFIRM_WINDOWS`] windows in a row, one thread carries nearly
//! all of the server's bytes ([`LONE_SHARE_PERCENT`]) in requests of at least
//! [`LARGE_REQUEST`] bytes on average, that thread is let run on every allowed CPU, and
//! pinned again once that stops being so for as many windows. Measured in the lab with one
//! fio job (`LAB_GUEST_ENV=QD1_JOBS=1 scripts/lab qd1-placement`, 6.12): 1 MiB reads at
//! QD8 ran 183 against 135 MiB/s unpinned, while 4k reads at QD32 ran 8468 against 7289
//! IOPS pinned, and two streams favour pinning at every size (README, "CPU placement").
//!
//! At most one thread is unpinned at a time: with two busy threads each already has its
//! own CPU's work. A window without requests changes nothing.

/// Percentage of a window's bytes one thread must carry to count as a lone stream.
pub const LONE_SHARE_PERCENT: u64 = 90;
/// Average request size (bytes per read or write) that makes a stream large.
pub const LARGE_REQUEST: u64 = 64 * 1024;
/// Consecutive windows that must agree before the placement changes.
pub const CONFIRM_WINDOWS: u32 = 2;

/// What one thread served in a window: reads and writes, and their bytes.
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
}

/// Which thread, if any, runs unpinned, and what the last windows asked for.
#[derive(Debug, Default)]
pub struct SpreadPolicy {
    unpinned: Option<usize>,
    candidate: Option<usize>,
    streak: u32,
}

impl SpreadPolicy {
    /// No thread unpinned.
    pub fn new() -> SpreadPolicy {
        SpreadPolicy::default()
    }

    /// The thread that runs unpinned now, if any.
    #[cfg(test)]
    pub fn unpinned(&self) -> Option<usize> {
        self.unpinned
    }

    /// Takes one window's traffic, indexed by thread; returns the new unpinned thread
    /// (`Some(None)`: none) when the placement changes, `None` when it stays.
    pub fn window(&mut self, traffic: &[Traffic]) -> Option<Option<usize>> {
        if traffic.iter().all(|thread| thread.requests == 0) {
            return None; // nothing served: no evidence either way
        }
        let wanted = lone_large_stream(traffic);
        if wanted == self.unpinned {
            self.candidate = None;
            self.streak = 0;
            return None;
        }
        if wanted == self.candidate {
            self.streak += 1;
        } else {
            self.candidate = wanted;
            self.streak = 1;
        }
        if self.streak < CONFIRM_WINDOWS {
            return None;
        }
        self.unpinned = wanted;
        self.candidate = None;
        self.streak = 0;
        Some(wanted)
    }
}

/// The thread carrying a lone stream of large requests in this window, if one does.
fn lone_large_stream(traffic: &[Traffic]) -> Option<usize> {
    let total: u64 = traffic.iter().map(|thread| thread.bytes).sum();
    let (index, busiest) = traffic
        .iter()
        .enumerate()
        .max_by_key(|(_, thread)| thread.bytes)?;
    let lone = busiest.bytes * 100 >= total * LONE_SHARE_PERCENT;
    let large = busiest.requests > 0 && busiest.bytes / busiest.requests >= LARGE_REQUEST;
    (total > 0 && lone && large).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn traffic(per_thread: &[(u64, u64)]) -> Vec<Traffic> {
        per_thread
            .iter()
            .map(|&(requests, bytes)| Traffic { requests, bytes })
            .collect()
    }

    /// Feeds `windows` identical windows; returns the changes reported.
    fn feed(
        policy: &mut SpreadPolicy,
        per_thread: &[(u64, u64)],
        windows: u32,
    ) -> Vec<Option<usize>> {
        let traffic = traffic(per_thread);
        (0..windows)
            .filter_map(|_| policy.window(&traffic))
            .collect()
    }

    #[test]
    fn a_lone_large_stream_unpins_its_thread_after_two_windows() {
        let mut policy = SpreadPolicy::new();
        let lone = [(0, 0), (150, 150 * MIB)];
        assert_eq!(policy.window(&traffic(&lone)), None);
        assert_eq!(policy.window(&traffic(&lone)), Some(Some(1)));
        assert_eq!(policy.unpinned(), Some(1));
        assert!(
            feed(&mut policy, &lone, 5).is_empty(),
            "no change while it lasts"
        );
    }

    #[test]
    fn small_requests_or_a_second_busy_thread_keep_threads_pinned() {
        let mut policy = SpreadPolicy::new();
        assert!(feed(&mut policy, &[(8000, 8000 * 4096), (0, 0)], 5).is_empty());
        let two_streams = [(100, 100 * MIB), (90, 90 * MIB)];
        assert!(feed(&mut policy, &two_streams, 5).is_empty());
        // Just under the lone share: 89 % of the bytes.
        assert!(feed(&mut policy, &[(89, 89 * MIB), (11, 11 * MIB)], 5).is_empty());
        assert_eq!(policy.unpinned(), None);
    }

    #[test]
    fn the_thread_is_pinned_again_when_the_stream_changes() {
        let mut policy = SpreadPolicy::new();
        feed(&mut policy, &[(150, 150 * MIB), (0, 0)], 2);
        assert_eq!(policy.unpinned(), Some(0));
        // The same thread now serves 4 KiB requests: pinned again after two windows.
        let small = [(9000, 9000 * 4096), (0, 0)];
        assert_eq!(policy.window(&traffic(&small)), None);
        assert_eq!(policy.window(&traffic(&small)), Some(None));
        // A second stream appears: still pinned.
        assert!(feed(&mut policy, &[(100, 100 * MIB), (100, 100 * MIB)], 3).is_empty());
    }

    #[test]
    fn the_stream_moving_to_another_thread_moves_the_unpinned_thread() {
        let mut policy = SpreadPolicy::new();
        feed(&mut policy, &[(150, 150 * MIB), (0, 0)], 2);
        assert_eq!(feed(&mut policy, &[(0, 0), (150, 150 * MIB)], 2), [Some(1)]);
    }

    #[test]
    fn one_odd_window_or_an_idle_one_changes_nothing() {
        let mut policy = SpreadPolicy::new();
        let lone = [(150, 150 * MIB), (0, 0)];
        feed(&mut policy, &lone, 2);
        // One window of small requests between large ones, then idle windows.
        assert_eq!(
            policy.window(&traffic(&[(9000, 9000 * 4096), (0, 0)])),
            None
        );
        assert_eq!(policy.window(&traffic(&lone)), None);
        assert!(feed(&mut policy, &[(0, 0), (0, 0)], 10).is_empty());
        assert_eq!(policy.unpinned(), Some(0));
    }

    #[test]
    fn no_threads_or_no_bytes_is_no_stream() {
        assert_eq!(lone_large_stream(&[]), None);
        assert_eq!(lone_large_stream(&traffic(&[(10, 0), (0, 0)])), None);
    }
}
