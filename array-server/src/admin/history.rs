//! History for the admin page: throughput, IOPS and latency percentiles per partition and
//! per host over the last [`WINDOW`], and each member disk's errors, kept in the server.
//!
//! A sampler thread ([`Sampler`]) reads the server's lifetime traffic counters
//! ([`LiveSessions::traffic`], per host and partition, closed lanes included) every
//! [`SAMPLE_INTERVAL`], turns the difference from the previous reading into one
//! [`Point`] per partition and per host, and appends it to that series' [`Ring`]. The
//! latency percentiles come from the difference of the latency histograms
//! ([`percentile`]), so they describe the requests of that interval only.
//!
//! # Bounded memory
//!
//! A ring holds at most [`RING_POINTS`] points; at most [`MAX_SERIES`] partition series and
//! [`MAX_SERIES`] host series exist (when a new one needs room, the one idle the longest
//! goes), and a series idle for a whole window is dropped. So the points take at most
//! `2 * MAX_SERIES * RING_POINTS * size_of::<Point>()` bytes ([`memory_bound`]: 2,304,000),
//! plus one small ring per member disk and one counter snapshot per (host, partition)
//! pair seen in the last reading.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use super::live::{LiveSessions, PartitionTraffic, Traffic, LATENCY_BOUNDS_US};
use crate::array::disk::DiskView;
use crate::array::Array;
use crate::error::{Error, Result};

/// Time between two points.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How far back the history reaches.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Points per ring: one window.
pub const RING_POINTS: usize = (WINDOW.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize;
/// Most series of one kind (partitions, hosts).
pub const MAX_SERIES: usize = 32;
/// The median.
const P50: f64 = 0.50;
/// The 99th percentile.
const P99: f64 = 0.99;
/// Floating-point slack when turning a quantile into a rank.
const RANK_TOLERANCE: f64 = 1e-9;
/// Milliseconds in a second.
const MS_PER_SECOND: u64 = 1000;

/// The most bytes the partition and host series' points take.
pub const fn memory_bound() -> usize {
    2 * MAX_SERIES * RING_POINTS * std::mem::size_of::<Point>()
}

/// A fixed-capacity ring: pushing onto a full one drops the oldest element.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// An empty ring of `capacity` (at least 1) elements.
    pub fn new(capacity: usize) -> Ring<T> {
        let capacity = capacity.max(1);
        Ring {
            items: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends `item`, dropping the oldest if the ring is full.
    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// One interval of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Point {
    /// End of the interval, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Bytes read per second.
    pub read_bps: u64,
    /// Bytes written per second.
    pub write_bps: u64,
    /// Requests per second.
    pub iops: u32,
    /// Median latency in µs (0 when no request ran).
    pub p50_us: u32,
    /// 99th-percentile latency in µs (0 when no request ran).
    pub p99_us: u32,
}

/// The `q`-quantile (0 < q ≤ 1) of a latency histogram: `buckets[i]` counts requests of
/// at most `bounds[i]` µs (and above `bounds[i - 1]`), the last bucket those above every
/// bound. Interpolates linearly inside the bucket the quantile falls in; a quantile in
/// the last, unbounded bucket is reported as the highest bound. `None` for no requests.
pub fn percentile(buckets: &[u64], bounds: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile; the tolerance keeps a product like 0.99 * 100 that lands a
    // hair above an integer on that integer.
    let rank = ((q * total as f64 - RANK_TOLERANCE).ceil() as u64).clamp(1, total);
    let mut before = 0;
    for (index, &count) in buckets.iter().enumerate() {
        if count > 0 && before + count >= rank {
            let Some(&upper) = bounds.get(index) else {
                return bounds.last().copied();
            };
            let lower = index.checked_sub(1).map_or(0, |i| bounds[i]);
            let within = (rank - before) as f64 / count as f64;
            return Some(lower + ((upper - lower) as f64 * within).round() as u64);
        }
        before += count;
    }
    bounds.last().copied()
}

/// One series: its points and when it last saw a request.
#[derive(Debug, Clone)]
struct Series {
    points: Ring<Point>,
    last_active_ms: u64,
}

/// One member disk's error counts, one per interval.
#[derive(Debug, Clone)]
struct DiskSeries {
    errors: Ring<u64>,
    last_count: u64,
}

/// Requests of one interval, summed over lanes.
#[derive(Debug, Clone, Default)]
struct Delta {
    traffic: Traffic,
}

impl Delta {
    fn add_difference(&mut self, now: &Traffic, before: &Traffic) {
        let t = &mut self.traffic;
        t.reads += now.reads.saturating_sub(before.reads);
        t.read_bytes += now.read_bytes.saturating_sub(before.read_bytes);
        t.writes += now.writes.saturating_sub(before.writes);
        t.write_bytes += now.write_bytes.saturating_sub(before.write_bytes);
        t.flushes += now.flushes.saturating_sub(before.flushes);
        t.discards += now.discards.saturating_sub(before.discards);
        t.write_zeroes += now.write_zeroes.saturating_sub(before.write_zeroes);
        t.errors += now.errors.saturating_sub(before.errors);
        for (mine, (n, b)) in t
            .latency
            .iter_mut()
            .zip(now.latency.iter().zip(before.latency))
        {
            *mine += n.saturating_sub(b);
        }
    }

    fn point(&self, at_ms: u64, elapsed: Duration) -> Point {
        let ms = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let per_second = |count: u64| count.saturating_mul(MS_PER_SECOND) / ms;
        let t = &self.traffic;
        let micros = |q| {
            percentile(&t.latency, &LATENCY_BOUNDS_US, q)
                .map_or(0, |us| u32::try_from(us).unwrap_or(u32::MAX))
        };
        Point {
            at_ms,
            read_bps: per_second(t.read_bytes),
            write_bps: per_second(t.write_bytes),
            iops: u32::try_from(per_second(t.ops())).unwrap_or(u32::MAX),
            p50_us: micros(P50),
            p99_us: micros(P99),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The previous reading, per (host, partition).
    last: HashMap<(String, String), Traffic>,
    partitions: BTreeMap<String, Series>,
    hosts: BTreeMap<String, Series>,
    disks: Vec<DiskSeries>,
}

/// The server's history; `Send + Sync`, shared with the routes as `Arc<History>`.
#[derive(Debug, Default)]
pub struct History {
    state: Mutex<State>,
}

impl History {
    /// A history whose first interval starts at `traffic` (the counters now).
    pub fn new(traffic: &[PartitionTraffic], disks: &[DiskView]) -> History {
        let history = History::default();
        {
            let mut state = history.lock();
            state.last = readings(traffic);
            state.disks = disks
                .iter()
                .map(|d| DiskSeries {
                    errors: Ring::new(RING_POINTS),
                    last_count: d.io_errors,
                })
                .collect();
        }
        history
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one interval of `elapsed` ending at `at_ms`: `traffic` and `disks` are the
    /// counters now.
    pub fn sample(
        &self,
        traffic: &[PartitionTraffic],
        disks: &[DiskView],
        at_ms: u64,
        elapsed: Duration,
    ) {
        let mut state = self.lock();
        let now = readings(traffic);
        let mut by_partition: BTreeMap<String, Delta> = BTreeMap::new();
        let mut by_host: BTreeMap<String, Delta> = BTreeMap::new();
        let zero = Traffic::default();
        for ((host, partition), counters) in &now {
            let before = state.last.get(&(host.clone(), partition.clone()));
            let before = before.unwrap_or(&zero);
            by_partition
                .entry(partition.clone())
                .or_default()
                .add_difference(counters, before);
            by_host
                .entry(host.clone())
                .or_default()
                .add_difference(counters, before);
        }
        state.last = now;
        append(&mut state.partitions, &by_partition, at_ms, elapsed);
        append(&mut state.hosts, &by_host, at_ms, elapsed);
        for (series, disk) in state.disks.iter_mut().zip(disks) {
            series
                .errors
                .push(disk.io_errors.saturating_sub(series.last_count));
            series.last_count = disk.io_errors;
        }
    }

    /// `GET /api/history`.
    pub fn to_json(&self, disks: &[DiskView]) -> Value {
        let state = self.lock();
        let series = |all: &BTreeMap<String, Series>| -> Vec<Value> {
            all.iter()
                .map(|(name, s)| {
                    let column =
                        |f: fn(&Point) -> u64| -> Vec<u64> { s.points.iter().map(f).collect() };
                    json!({
                        "name": name,
                        "t": column(|p| p.at_ms),
                        "read_bps": column(|p| p.read_bps),
                        "write_bps": column(|p| p.write_bps),
                        "iops": column(|p| u64::from(p.iops)),
                        "p50_us": column(|p| u64::from(p.p50_us)),
                        "p99_us": column(|p| u64::from(p.p99_us)),
                    })
                })
                .collect()
        };
        let disks: Vec<Value> = disks
            .iter()
            .enumerate()
            .map(|(index, disk)| {
                let recent: u64 = state.disks.get(index).map_or(0, |s| s.errors.iter().sum());
                json!({
                    "index": index,
                    "path": disk.path,
                    "io_errors": disk.io_errors,
                    "errors_in_window": recent,
                    "last_error": disk.last_error,
                    "healthy": disk.io_errors == 0,
                })
            })
            .collect();
        json!({
            "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
            "window_ms": WINDOW.as_millis() as u64,
            "now_ms": unix_ms(),
            "partitions": series(&state.partitions),
            "hosts": series(&state.hosts),
            "disks": disks,
        })
    }

    /// The series names held now: (partitions, hosts).
    pub fn series_names(&self) -> (Vec<String>, Vec<String>) {
        let state = self.lock();
        (
            state.partitions.keys().cloned().collect(),
            state.hosts.keys().cloned().collect(),
        )
    }

    /// The points of one partition's series, oldest first.
    pub fn partition_points(&self, name: &str) -> Vec<Point> {
        let state = self.lock();
        state
            .partitions
            .get(name)
            .map_or_else(Vec::new, |s| s.points.iter().copied().collect())
    }
}

/// Lifetime counters by (host, partition name), without deleted partitions (`#ID`):
/// their lanes are gone, and their name changed, which would count their whole past again.
fn readings(traffic: &[PartitionTraffic]) -> HashMap<(String, String), Traffic> {
    traffic
        .iter()
        .filter(|t| !t.partition.starts_with('#'))
        .map(|t| ((t.host.clone(), t.partition.clone()), t.traffic))
        .collect()
}

/// Appends this interval to every series (zero where nothing ran), creating series for
/// new names and dropping the idle ones the bounds say must go.
fn append(
    all: &mut BTreeMap<String, Series>,
    deltas: &BTreeMap<String, Delta>,
    at_ms: u64,
    elapsed: Duration,
) {
    let window_ms = WINDOW.as_millis() as u64;
    all.retain(|_, s| at_ms.saturating_sub(s.last_active_ms) < window_ms);
    for (name, delta) in deltas {
        if !all.contains_key(name) && delta.traffic.ops() > 0 {
            if all.len() >= MAX_SERIES {
                let idlest = all
                    .iter()
                    .min_by_key(|(_, s)| s.last_active_ms)
                    .map(|(name, _)| name.clone());
                if let Some(idlest) = idlest {
                    all.remove(&idlest);
                }
            }
            all.insert(
                name.clone(),
                Series {
                    points: Ring::new(RING_POINTS),
                    last_active_ms: at_ms,
                },
            );
        }
    }
    let idle = Delta::default();
    for (name, series) in all.iter_mut() {
        let delta = deltas.get(name).unwrap_or(&idle);
        if delta.traffic.ops() > 0 {
            series.last_active_ms = at_ms;
        }
        series.points.push(delta.point(at_ms, elapsed));
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The thread that samples every [`SAMPLE_INTERVAL`]; dropping it stops it.
#[derive(Debug)]
pub struct Sampler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `sessions` and `array`'s disks into `history`.
    pub fn start(
        history: Arc<History>,
        sessions: Arc<dyn LiveSessions>,
        array: Arc<Array>,
    ) -> Result<Sampler> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("admin-history".into())
            .spawn(move || {
                let mut previous = Instant::now();
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(SAMPLE_INTERVAL) {
                    let now = Instant::now();
                    let disks: Vec<DiskView> = array.disks().iter().map(|d| d.view()).collect();
                    history.sample(&sessions.traffic(), &disks, unix_ms(), now - previous);
                    previous = now;
                }
            })
            .map_err(|e| Error::io("starting the admin history thread", e))?;
        Ok(Sampler {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the admin history thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [u64; 4] = [100, 200, 400, 800];

    #[test]
    fn a_ring_keeps_the_newest_capacity_items() {
        let mut ring = Ring::new(3);
        assert!(ring.is_empty());
        for i in 0..10 {
            ring.push(i);
            assert!(ring.len() <= ring.capacity());
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(Ring::<u8>::new(0).capacity(), 1);
    }

    #[test]
    fn percentiles_interpolate_inside_the_right_bucket() {
        // 100 requests all in (200, 400]: the median is half way, p99 near the top.
        let all_in_one = [0, 0, 100, 0, 0];
        assert_eq!(percentile(&all_in_one, &BOUNDS, P50), Some(300));
        assert_eq!(percentile(&all_in_one, &BOUNDS, P99), Some(398));
        // 98 fast (≤100 µs), 2 slow in (400, 800]: p50 is fast, p99 is slow.
        let bimodal = [98, 0, 0, 2, 0];
        assert_eq!(percentile(&bimodal, &BOUNDS, P50), Some(51));
        assert_eq!(percentile(&bimodal, &BOUNDS, P99), Some(600));
        assert_eq!(percentile(&bimodal, &BOUNDS, 1.0), Some(800));
        // Above every bound: reported as the highest bound.
        assert_eq!(percentile(&[0, 0, 0, 0, 5], &BOUNDS, P50), Some(800));
        assert_eq!(percentile(&[0; 5], &BOUNDS, P50), None);
    }

    fn traffic(host: &str, partition: &str, reads: u64, bucket: usize) -> PartitionTraffic {
        let mut counters = Traffic {
            reads,
            read_bytes: reads * 4096,
            ..Traffic::default()
        };
        counters.latency[bucket] = reads;
        PartitionTraffic {
            host: host.into(),
            partition: partition.into(),
            traffic: counters,
        }
    }

    #[test]
    fn points_are_per_interval_rates_per_partition_and_host() {
        let history = History::new(&[traffic("h1", "vm1", 100, 0)], &[]);
        let second = Duration::from_secs(1);
        history.sample(
            &[
                traffic("h1", "vm1", 1100, 0),
                traffic("h2", "vm1", 500, 4),
                traffic("h2", "#9", 7000, 0),
            ],
            &[],
            1000,
            second,
        );
        let points = history.partition_points("vm1");
        assert_eq!(points.len(), 1);
        let point = points[0];
        assert_eq!(point.iops, 1500, "1000 new reads from h1, 500 from h2");
        assert_eq!(point.read_bps, 1500 * 4096);
        assert_eq!(point.p50_us, 38, "the median is among the 1000 fast reads");
        assert_eq!(point.p99_us, 985, "p99 among the 500 slower ones");
        let (partitions, hosts) = history.series_names();
        assert_eq!(
            partitions,
            ["vm1"],
            "deleted partitions (#ID) are not charted"
        );
        assert_eq!(hosts, ["h1", "h2"]);
        // Nothing new: a zero point, the series stays.
        history.sample(
            &[traffic("h1", "vm1", 1100, 0), traffic("h2", "vm1", 500, 4)],
            &[],
            2000,
            second,
        );
        assert_eq!(history.partition_points("vm1")[1].iops, 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let history = History::new(&[], &[]);
        let second = Duration::from_secs(1);
        let mut reads = 0;
        for tick in 0..(RING_POINTS as u64 + 50) {
            reads += 10;
            let all: Vec<_> = (0..MAX_SERIES + 8)
                .map(|i| traffic(&format!("h{i}"), &format!("p{i}"), reads + i as u64, 0))
                .collect();
            history.sample(&all, &[], tick * 1000, second);
        }
        let (partitions, hosts) = history.series_names();
        assert!(partitions.len() <= MAX_SERIES, "{}", partitions.len());
        assert!(hosts.len() <= MAX_SERIES);
        for name in partitions {
            assert!(history.partition_points(&name).len() <= RING_POINTS);
        }
        // A series idle for a whole window goes.
        let late = (RING_POINTS as u64 + 50) * 1000 + WINDOW.as_millis() as u64;
        history.sample(&[], &[], late, second);
        assert!(history.series_names().0.is_empty());
        assert_eq!(
            memory_bound(),
            2_304_000,
            "the bound docs/admin-api.md states"
        );
    }
}
