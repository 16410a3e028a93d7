//! The registry of live connections, with per-lane counters anyone may read,
//! and the fencing of data lanes.
//!
//! # Fencing
//!
//! A data lane is named by (host, partition, queue, lane); each connection for it carries
//! a lane epoch that only grows. A hello for a lane first claims it with its epoch
//! ([`Sessions::claim_lane`]): an epoch not newer than the newest one claimed is stale.
//! It then fences the live sessions of the lane ([`Session::fence`]: their data task
//! shuts the socket down) and waits until each has left the registry with no admitted
//! request unfinished ([`Session::drained`]); only then is it welcomed, so nothing the old
//! connection sent can land after the host reissues on the new one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Notify;
use wire::Purpose;

use super::budget::HostBytes;

/// Upper bounds of the request latency buckets, in microseconds; one more bucket (`+Inf`)
/// follows the last.
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];
/// Number of latency buckets, `+Inf` included.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Per-connection counters; the connection increments them, anyone may read them.
#[derive(Debug, Default)]
pub struct LaneCounters {
    /// READ requests completed (successfully or not).
    pub reads: AtomicU64,
    /// Bytes returned by successful reads.
    pub read_bytes: AtomicU64,
    /// WRITE requests completed.
    pub writes: AtomicU64,
    /// Bytes stored by successful writes.
    pub write_bytes: AtomicU64,
    /// FLUSH requests completed.
    pub flushes: AtomicU64,
    /// DISCARD requests completed.
    pub discards: AtomicU64,
    /// WRITE_ZEROES requests completed.
    pub write_zeroes: AtomicU64,
    /// Requests answered with an errno.
    pub errors: AtomicU64,
    /// Requests run per latency bucket ([`LATENCY_BOUNDS_US`]), not cumulative.
    pub latency: [AtomicU64; LATENCY_BUCKETS],
    /// Sum of the latencies counted in `latency`, in microseconds.
    pub latency_sum_us: AtomicU64,
}

/// A snapshot of [`LaneCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterView {
    /// READ requests.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// WRITE requests.
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// FLUSH requests.
    pub flushes: u64,
    /// DISCARD requests.
    pub discards: u64,
    /// WRITE_ZEROES requests.
    pub write_zeroes: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests per latency bucket ([`LATENCY_BOUNDS_US`], then `+Inf`), not cumulative.
    pub latency: [u64; LATENCY_BUCKETS],
    /// Sum of the latencies, in microseconds.
    pub latency_sum_us: u64,
}

impl CounterView {
    /// Every request of any kind.
    pub fn ops(&self) -> u64 {
        self.reads + self.writes + self.flushes + self.discards + self.write_zeroes
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &CounterView) {
        self.reads += other.reads;
        self.read_bytes += other.read_bytes;
        self.writes += other.writes;
        self.write_bytes += other.write_bytes;
        self.flushes += other.flushes;
        self.discards += other.discards;
        self.write_zeroes += other.write_zeroes;
        self.errors += other.errors;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine += theirs;
        }
        self.latency_sum_us += other.latency_sum_us;
    }
}

impl LaneCounters {
    /// The counters now.
    pub fn snapshot(&self) -> CounterView {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CounterView {
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            writes: get(&self.writes),
            write_bytes: get(&self.write_bytes),
            flushes: get(&self.flushes),
            discards: get(&self.discards),
            write_zeroes: get(&self.write_zeroes),
            errors: get(&self.errors),
            latency: std::array::from_fn(|i| get(&self.latency[i])),
            latency_sum_us: get(&self.latency_sum_us),
        }
    }

    /// Counts one request's latency.
    pub fn record_latency(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Starts timing a request; its latency is counted when the guard drops.
    pub(crate) fn time_request(&self) -> RequestTimer<'_> {
        self.time_request_since(Instant::now())
    }

    /// Goes on timing a request that started at `started` (see [`RequestTimer::hand_over`]).
    pub(crate) fn time_request_since(&self, started: Instant) -> RequestTimer<'_> {
        RequestTimer {
            counters: self,
            started,
        }
    }

    /// Adds one to `counter` (and `bytes` to `byte_counter` when given).
    pub(crate) fn count(counter: &AtomicU64, byte_counter: Option<(&AtomicU64, u64)>) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some((bytes, amount)) = byte_counter {
            bytes.fetch_add(amount, Ordering::Relaxed);
        }
    }
}

/// Counts a request's latency when dropped (after its reply was queued).
#[derive(Debug)]
pub(crate) struct RequestTimer<'a> {
    counters: &'a LaneCounters,
    started: Instant,
}

impl RequestTimer<'_> {
    /// Stops without counting and returns the start, for whoever finishes the request
    /// (a task of its own, which cannot borrow the counters from here).
    pub(crate) fn hand_over(self) -> Instant {
        let started = self.started;
        // Dropping would count the request now: it is counted once, by the new owner.
        std::mem::forget(self);
        started
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        self.counters.record_latency(self.started.elapsed());
    }
}

/// One live, authenticated connection.
#[derive(Debug)]
pub struct Session {
    /// Registry id, unique for the server's life.
    pub id: u64,
    /// The authenticated host.
    pub host: String,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The server's own address the connection came in on (which network: a host's
    /// multipath path).
    pub local: SocketAddr,
    /// Control, or data with partition, queue and lane.
    pub purpose: Purpose,
    /// The CPU the server thread serving it ran on when it registered (the thread's own
    /// CPU when threads are pinned; see `net/placement.rs`); `None` if unknown.
    pub cpu: Option<u32>,
    /// When the handshake completed.
    pub since: SystemTime,
    /// What the connection carried.
    pub counters: LaneCounters,
    /// Requests admitted (read off the socket) and not finished yet; see
    /// [`Session::admit`].
    pub admitted: AtomicU64,
    /// Asks the data task to shut its socket down (a newer connection replaces it).
    fence: Notify,
    /// Signalled when the session leaves the registry or `admitted` drops to 0.
    changed: Notify,
    /// Whether the session left the registry.
    left: AtomicBool,
}

/// The CPU the calling thread runs on.
fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments; a negative result is an error.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

/// Counts one admitted request until it is finished (dropped).
#[derive(Debug)]
pub(crate) struct AdmittedGuard(Arc<Session>);

impl Drop for AdmittedGuard {
    fn drop(&mut self) {
        if self.0.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// A serialisable snapshot of a [`Session`].
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Registry id.
    pub id: u64,
    /// Host name.
    pub host: String,
    /// Peer address.
    pub peer: String,
    /// The server's address the connection came in on.
    pub local: String,
    /// Control or data (partition, queue, lane).
    pub purpose: Purpose,
    /// The CPU of the server thread serving it (see [`Session::cpu`]).
    pub cpu: Option<u32>,
    /// Seconds since the Unix epoch when it connected.
    pub connected_since: u64,
    /// Counters.
    pub counters: CounterView,
}

impl Session {
    /// The partition id of a data session.
    pub fn partition(&self) -> Option<u32> {
        match self.purpose {
            Purpose::Data { partition, .. } => Some(partition),
            Purpose::Control => None,
        }
    }

    /// Counts a request read off the socket as admitted until the guard drops (when the
    /// request is finished: answered, refused, or abandoned).
    pub(crate) fn admit(self: &Arc<Self>) -> AdmittedGuard {
        self.admitted.fetch_add(1, Ordering::AcqRel);
        AdmittedGuard(self.clone())
    }

    /// Asks the session's data task to shut its socket down.
    pub(crate) fn fence(&self) {
        self.fence.notify_one();
    }

    /// Resolves once [`Session::fence`] was called.
    pub(crate) async fn fenced(&self) {
        self.fence.notified().await;
    }

    /// Whether the session left the registry and every request it admitted finished.
    pub fn is_drained(&self) -> bool {
        self.left.load(Ordering::Acquire) && self.admitted.load(Ordering::Acquire) == 0
    }

    /// Resolves once [`Session::is_drained`] holds.
    pub(crate) async fn drained(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_drained() {
                return;
            }
            changed.await;
        }
    }

    /// The data lane this session serves: (partition, queue, lane) and its epoch.
    fn lane_key(&self) -> Option<(LaneKey, u64)> {
        lane_key(&self.host, self.purpose)
    }

    /// A snapshot for display.
    pub fn view(&self) -> SessionView {
        SessionView {
            id: self.id,
            host: self.host.clone(),
            peer: self.peer.to_string(),
            local: self.local.to_string(),
            cpu: self.cpu,
            purpose: self.purpose,
            connected_since: self
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            counters: self.counters.snapshot(),
        }
    }
}

/// A data lane: host, partition, queue, lane.
type LaneKey = (String, u32, u16, u16);

fn lane_key(host: &str, purpose: Purpose) -> Option<(LaneKey, u64)> {
    match purpose {
        Purpose::Data {
            partition,
            queue,
            lane,
            epoch,
        } => Some(((host.to_owned(), partition, queue, lane), epoch)),
        Purpose::Control => None,
    }
}

/// Every live session of a server.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Session>>>,
    /// The newest epoch that claimed each data lane.
    claims: Mutex<BTreeMap<LaneKey, u64>>,
    /// Counters of closed data sessions, per host and partition id.
    retired: Mutex<BTreeMap<(String, u32), CounterView>>,
    /// Counters of closed data sessions, per server address they came in on (the path).
    retired_paths: Mutex<BTreeMap<SocketAddr, CounterView>>,
    /// The byte budget each host's lanes share, while one of them lives.
    host_bytes: Mutex<BTreeMap<String, Weak<HostBytes>>>,
}

impl Sessions {
    /// The byte budget `host`'s data lanes share: the one its live lanes hold, or a new
    /// one of `bytes`.
    pub(crate) fn host_bytes(&self, host: &str, bytes: u64) -> Arc<HostBytes> {
        let mut budgets = self
            .host_bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = budgets.get(host).and_then(Weak::upgrade) {
            return budget;
        }
        budgets.retain(|_, budget| budget.strong_count() > 0);
        let budget = HostBytes::new(bytes);
        budgets.insert(host.to_owned(), Arc::downgrade(&budget));
        budget
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Session>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<Arc<Session>> {
        self.live().values().cloned().collect()
    }

    /// Data traffic per host and partition id since the server started: closed lanes
    /// and live ones.
    pub fn traffic(&self) -> BTreeMap<(String, u32), CounterView> {
        // Same lock order as `SessionGuard::drop`: live, then retired.
        let live = self.live();
        let mut totals = self
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for session in live.values() {
            if let Some(partition) = session.partition() {
                let key = (session.host.clone(), partition);
                totals
                    .entry(key)
                    .or_default()
                    .add(&session.counters.snapshot());
            }
        }
        totals
    }

    /// Data traffic per server address the lanes came in on (each multipath path) since
    /// the server started: closed lanes and live ones.
    pub fn path_traffic(&self) -> BTreeMap<SocketAddr, CounterView> {
        // Same lock order as `SessionGuard::drop`: live, then retired paths.
        let live = self.live();
        let mut totals = self
            .retired_paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for session in live.values().filter(|s| s.partition().is_some()) {
            totals
                .entry(session.local)
                .or_default()
                .add(&session.counters.snapshot());
        }
        totals
    }

    /// Snapshots of every live session, for readers outside the data path.
    pub fn views(&self) -> Vec<SessionView> {
        self.live().values().map(|session| session.view()).collect()
    }

    /// The live data lanes of `host` on partition `partition`.
    pub fn data_lanes(&self, host: &str, partition: u32) -> Vec<Arc<Session>> {
        self.live()
            .values()
            .filter(|s| s.host == host && s.partition() == Some(partition))
            .cloned()
            .collect()
    }

    /// How many live sessions `host` has, of any purpose.
    pub fn host_session_count(&self, host: &str) -> usize {
        self.live().values().filter(|s| s.host == host).count()
    }

    /// The live control sessions of `host`.
    pub fn control_sessions(&self, host: &str) -> Vec<Arc<Session>> {
        self.live()
            .values()
            .filter(|s| s.host == host && s.purpose == Purpose::Control)
            .cloned()
            .collect()
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, BTreeMap<LaneKey, u64>> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims the data lane `purpose` names for its epoch; `Err(newest)` when the epoch
    /// is not newer than the newest claim (a stale connection).
    pub(crate) fn claim_lane(&self, host: &str, purpose: Purpose) -> Result<(), u64> {
        let Some((key, epoch)) = lane_key(host, purpose) else {
            return Ok(());
        };
        let mut claims = self.claims();
        let newest = claims.entry(key).or_insert(0);
        if epoch <= *newest {
            return Err(*newest);
        }
        *newest = epoch;
        Ok(())
    }

    /// Whether `purpose`'s epoch is still the newest claim of its lane.
    pub(crate) fn still_claimed(&self, host: &str, purpose: Purpose) -> bool {
        lane_key(host, purpose).is_none_or(|(key, epoch)| self.claims().get(&key) == Some(&epoch))
    }

    /// The live sessions of the data lane `purpose` names with an older epoch: the ones a
    /// connection for `purpose` replaces.
    pub(crate) fn replaced_by(&self, host: &str, purpose: Purpose) -> Vec<Arc<Session>> {
        let Some((key, epoch)) = lane_key(host, purpose) else {
            return Vec::new();
        };
        self.live()
            .values()
            .filter(|s| s.lane_key().is_some_and(|(k, e)| k == key && e < epoch))
            .cloned()
            .collect()
    }

    /// Adds a session; it leaves the registry when the guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        host: &str,
        (peer, local): (SocketAddr, SocketAddr),
        purpose: Purpose,
    ) -> SessionGuard {
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            host: host.to_owned(),
            peer,
            local,
            purpose,
            cpu: current_cpu(),
            since: SystemTime::now(),
            counters: LaneCounters::default(),
            admitted: AtomicU64::new(0),
            fence: Notify::new(),
            changed: Notify::new(),
            left: AtomicBool::new(false),
        });
        self.live().insert(session.id, session.clone());
        SessionGuard {
            registry: self.clone(),
            session,
        }
    }
}

/// Keeps a session registered while the connection lives.
#[derive(Debug)]
pub(crate) struct SessionGuard {
    registry: Arc<Sessions>,
    /// The registered session.
    pub session: Arc<Session>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let session = &self.session;
        // Fold the counters in while still holding the live map, so that `traffic`
        // never sees a session twice or not at all.
        let mut live = self.registry.live();
        if let Some(partition) = session.partition() {
            let mut retired = self
                .registry
                .retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let key = (session.host.clone(), partition);
            retired
                .entry(key)
                .or_default()
                .add(&session.counters.snapshot());
            drop(retired);
            self.registry
                .retired_paths
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(session.local)
                .or_default()
                .add(&session.counters.snapshot());
        }
        live.remove(&session.id);
        drop(live);
        session.left.store(true, Ordering::Release);
        session.changed.notify_waiters();
    }
}
