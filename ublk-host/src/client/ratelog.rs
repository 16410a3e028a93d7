//! Rate-limited logging of repeated errors: the first occurrence is logged, then at most
//! one line per period saying how many were suppressed in between. The counts themselves
//! live in the statistics ([`crate::client::LaneStats`]), not in the log.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Default period between two lines of the same kind.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// One kind of repeated message; not thread-safe (one per lane or thread).
#[derive(Debug)]
pub struct RateLimited {
    period: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimited {
    /// A limiter allowing one line per `period`.
    pub fn new(period: Duration) -> RateLimited {
        RateLimited {
            period,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Counts one occurrence at `now`; `Some(n)` when it should be logged, `n` being how
    /// many occurrences were suppressed since the last line.
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .get()
            .is_none_or(|last| now.saturating_duration_since(last) >= self.period);
        if due {
            self.last.set(Some(now));
            Some(self.suppressed.replace(0))
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            None
        }
    }

    /// Logs `message()` at `level` if due, with the count of suppressed repeats.
    pub fn log(&self, level: log::Level, message: impl FnOnce() -> String) {
        if let Some(suppressed) = self.hit(Instant::now()) {
            if suppressed == 0 {
                log::log!(level, "{}", message());
            } else {
                log::log!(level, "{} ({suppressed} similar suppressed)", message());
            }
        }
    }
}

impl Default for RateLimited {
    fn default() -> RateLimited {
        RateLimited::new(DEFAULT_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_one_summary_per_period() {
        let limiter = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.hit(t0), Some(0));
        let logged = (1..=1_000_000u32)
            .filter(|i| {
                let at = t0 + Duration::from_micros(u64::from(*i) * 33);
                limiter.hit(at).is_some()
            })
            .count();
        // 33 s of a million errors: lines at 10, 20 and 30 s only.
        assert_eq!(logged, 3);
        let summary = limiter.hit(t0 + Duration::from_secs(45));
        assert!(
            summary.is_some_and(|n| n > 0),
            "the last 3 s were suppressed: {summary:?}"
        );
        assert_eq!(limiter.hit(t0 + Duration::from_secs(60)), Some(0));
    }

    #[test]
    fn summary_counts_what_was_suppressed() {
        let limiter = RateLimited::new(Duration::from_secs(1));
        let t0 = Instant::now();
        limiter.hit(t0);
        for _ in 0..5 {
            assert_eq!(limiter.hit(t0), None);
        }
        assert_eq!(limiter.hit(t0 + Duration::from_secs(1)), Some(5));
    }
}
