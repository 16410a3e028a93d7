//! Log-linear latency buckets: 16 per power of two (about 6 % resolution), from 1 ns to
//! hours, merged across slots and threads.

use std::time::Duration;

const SUB_BUCKET_BITS: u32 = 4;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
const OCTAVES: usize = 64 - SUB_BUCKET_BITS as usize;
const BUCKETS: usize = SUB_BUCKETS * (OCTAVES + 1);

/// Counts of latencies by bucket.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }

    /// Adds one latency.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The latency below which `percent` of the samples fall (upper edge of its bucket).
    pub fn percentile(&self, percent: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((percent / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(upper_edge(index).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    /// Mean latency.
    pub fn mean(&self) -> Duration {
        match self.total {
            0 => Duration::ZERO,
            n => Duration::from_nanos((self.sum_ns / u128::from(n)) as u64),
        }
    }

    /// Largest latency seen.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB_BUCKETS as u64 {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros() - SUB_BUCKET_BITS + 1;
    let sub = (ns >> (octave - 1)) as usize & (SUB_BUCKETS - 1);
    (octave as usize) * SUB_BUCKETS + sub
}

fn upper_edge(index: usize) -> u64 {
    let octave = (index / SUB_BUCKETS) as u32;
    let sub = (index % SUB_BUCKETS) as u64;
    if octave == 0 {
        return sub;
    }
    let base = (SUB_BUCKETS as u64 + sub) << (octave - 1);
    base + (1u64 << (octave - 1)) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for ns in [0u64, 1, 15, 16, 17, 31, 32, 1000, 123_456, 9_999_999_999] {
            let index = bucket_of(ns);
            assert!(upper_edge(index) >= ns, "{ns} above its bucket {index}");
            if index > 0 {
                assert!(
                    upper_edge(index - 1) < ns,
                    "{ns} also fits bucket {}",
                    index - 1
                );
            }
        }
    }

    #[test]
    fn percentiles_are_within_resolution() {
        let mut histogram = Histogram::new();
        for us in 1..=1000u64 {
            histogram.record(Duration::from_micros(us));
        }
        let p50 = histogram.percentile(50.0).as_micros() as f64;
        assert!((500.0..=500.0 * 1.07).contains(&p50), "p50 {p50}");
        assert_eq!(histogram.max(), Duration::from_micros(1000));
        assert!(histogram.percentile(100.0) <= Duration::from_micros(1000));
    }
}
