//! How long a queue thread polls its ring for a reply before it sleeps, adapted to how
//! long replies take (sans-IO: the caller measures the waits).
//!
//! Polling pays when the completion comes before the poll ends: the thread is running
//! when it comes and no wakeup is paid (see `uring.rs`). A fixed budget fits one speed of
//! network. On this project's VM a round trip takes tens of microseconds and 50 us of
//! polling covers it; over a slower network, or in the lab's emulated guest (300-500 us),
//! a 50 us poll nearly always ends before the reply comes.
//!
//! So the budget follows the waits (a wait being the time from the start of a poll to the
//! completion that ended it, polled or slept): [`STRETCH`] times the longest recent one,
//! never below the configured floor (`--poll-us`) nor above [`POLL_CAP`]. The longest, not
//! the average: a request's cycle has short waits (a send's completion) as well as the
//! long one for the reply, and a budget fitted to their average ends just before the
//! reply. The longest is taken over the current and the previous window of [`WINDOW`], so
//! one slow reply stretches the poll for two windows at most. A wait longer than the cap
//! (a reply too slow for polling to pay) halves both.
//!
//! A ublk queue (`ublk/queue.rs`) uses the budget only while exactly one request is in
//! flight, and learns only from those waits. A wait with none in flight is for the
//! application's next request, which a budget must not chase: a device doing a thousand
//! requests a second would have its thread poll without end. (Chasing it is what made a
//! single stream of 4k reads 4-19 % faster in the lab, where fio's own turn between
//! requests outlasts 50 us; on real machines it fits in the floor. README, "A poll that
//! fits the machine".) Threads without a ublk queue (`bench`, the NBD export) do not
//! know what is in flight and keep the fixed poll.

use std::time::{Duration, Instant};

/// Longest poll whatever the waits: beyond this a sleep's wakeup is a small part of the
/// wait.
pub const POLL_CAP: Duration = Duration::from_millis(1);

/// The budget in longest recent waits: a reply that takes up to that much longer than the
/// slowest recent one still finds the thread polling.
const STRETCH: u32 = 4;

/// The window the longest wait is taken over (this one and the one before): tens of
/// round trips even in the lab's emulated guest.
pub const WINDOW: Duration = Duration::from_millis(10);

/// A queue thread's poll budget.
#[derive(Debug, Clone)]
pub struct PollBudget {
    floor: Duration,
    cap: Duration,
    /// The longest wait within the cap in the current window.
    longest: Duration,
    /// The same in the window before.
    longest_before: Duration,
    /// When the current window started.
    window_start: Option<Instant>,
}

impl PollBudget {
    /// A budget that never goes below `floor`; a zero floor never polls.
    pub fn new(floor: Duration) -> PollBudget {
        PollBudget {
            floor,
            cap: POLL_CAP.max(floor),
            longest: Duration::ZERO,
            longest_before: Duration::ZERO,
            window_start: None,
        }
    }

    /// How long the next wait polls before it sleeps.
    pub fn current(&self) -> Duration {
        if self.floor.is_zero() {
            return Duration::ZERO;
        }
        (self.longest.max(self.longest_before) * STRETCH).clamp(self.floor, self.cap)
    }

    /// Accounts for a wait that began at `started` and ended at `now` with a completion.
    pub fn record(&mut self, started: Instant, now: Instant) {
        if self.floor.is_zero() {
            return;
        }
        let waited = now.saturating_duration_since(started);
        if waited > self.cap {
            self.longest /= 2;
            self.longest_before /= 2;
            return;
        }
        let window_over = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if window_over {
            self.longest_before = self.longest;
            self.longest = Duration::ZERO;
            self.window_start = Some(now);
        }
        self.longest = self.longest.max(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// A poll budget with a fake clock that each wait advances by its length.
    struct Clocked {
        budget: PollBudget,
        now: Instant,
    }

    impl Clocked {
        fn new(floor: Duration) -> Clocked {
            Clocked {
                budget: PollBudget::new(floor),
                now: Instant::now(),
            }
        }

        fn wait(&mut self, waited: Duration) -> Duration {
            let started = self.now;
            self.now += waited;
            self.budget.record(started, self.now);
            self.budget.current()
        }

        /// The budget after `count` waits of `waited` each.
        fn waits(&mut self, count: usize, waited: Duration) -> Duration {
            for _ in 0..count {
                self.wait(waited);
            }
            self.budget.current()
        }
    }

    #[test]
    fn fast_round_trips_keep_the_floor() {
        let mut clocked = Clocked::new(50 * US);
        assert_eq!(clocked.budget.current(), 50 * US);
        assert_eq!(clocked.waits(1000, 10 * US), 50 * US);
    }

    #[test]
    fn slow_round_trips_stretch_the_poll() {
        let mut clocked = Clocked::new(50 * US);
        assert_eq!(clocked.waits(1000, 200 * US), 200 * US * STRETCH);
    }

    #[test]
    fn short_waits_between_long_ones_do_not_shorten_the_poll_below_the_long_ones() {
        let mut clocked = Clocked::new(50 * US);
        // One request's cycle: its send completes, its reply comes, the next arrives.
        let cycle = [5 * US, 200 * US, 30 * US, 100 * US];
        clocked.waits(1, 200 * US);
        for _ in 0..1000 {
            for waited in cycle {
                let budget = clocked.wait(waited);
                assert_eq!(budget, 200 * US * STRETCH);
            }
        }
    }

    #[test]
    fn one_slow_reply_stretches_the_poll_only_for_a_while() {
        let mut clocked = Clocked::new(50 * US);
        clocked.waits(100, 10 * US);
        assert_eq!(clocked.wait(900 * US), POLL_CAP);
        assert_eq!(clocked.waits(10, 10 * US), POLL_CAP, "held");
        let two_windows = 2 * WINDOW.as_micros() as usize / 10 + 1;
        assert_eq!(clocked.waits(two_windows, 10 * US), 50 * US);
    }

    #[test]
    fn the_poll_never_exceeds_the_cap() {
        let mut clocked = Clocked::new(50 * US);
        assert_eq!(clocked.waits(100, 900 * US), POLL_CAP);
    }

    #[test]
    fn waits_beyond_the_cap_bring_the_poll_back_to_the_floor() {
        let mut clocked = Clocked::new(50 * US);
        clocked.waits(100, 200 * US);
        assert_eq!(clocked.waits(5, Duration::from_millis(20)), 50 * US);
    }

    #[test]
    fn a_zero_floor_never_polls() {
        let mut clocked = Clocked::new(Duration::ZERO);
        assert_eq!(clocked.waits(100, 400 * US), Duration::ZERO);
    }

    #[test]
    fn a_floor_above_the_cap_is_the_budget() {
        let mut clocked = Clocked::new(Duration::from_millis(3));
        assert_eq!(clocked.budget.current(), Duration::from_millis(3));
        assert_eq!(clocked.waits(100, 10 * US), Duration::from_millis(3));
    }
}
