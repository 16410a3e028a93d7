//! The thread that applies [`SpreadPolicy`] to pinned server threads: every [`WINDOW`] it
//! sums each thread's data traffic from the sessions' counters (which the data path
//! counts anyway, so this adds nothing to it) and pins or lets go the thread the policy
//! names. It runs only while threads are pinned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::placement::Placement;
use super::sessions::{Session, Sessions};
use super::spread::{SpreadPolicy, Traffic};
use crate::error::{Error, Result};

/// How often the traffic is looked at.
pub const WINDOW: Duration = Duration::from_millis(100);
/// After a change logged at info level, further changes within this time are logged at
/// debug level only (a workload that alternates between large and small requests would
/// otherwise fill the log).
const QUIET_AFTER_LOGGING: Duration = Duration::from_secs(60);
/// [`Spreader::unpinned`]'s stored value for "no thread".
const NONE: usize = usize::MAX;

/// The kernel ids of the server threads, filled in by each thread as it starts (0 until
/// then).
pub type ThreadIds = Arc<[AtomicI32]>;

/// The running spreader thread; stopped when dropped.
#[derive(Debug)]
pub struct Spreader {
    stop: Arc<AtomicBool>,
    unpinned: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Spreader {
    /// Starts watching the traffic of `sessions`, served by the threads of `placement`.
    pub fn start(
        placement: Arc<Placement>,
        sessions: Arc<Sessions>,
        tids: ThreadIds,
    ) -> Result<Spreader> {
        let stop = Arc::new(AtomicBool::new(false));
        let unpinned = Arc::new(AtomicUsize::new(NONE));
        let watch = Watch {
            placement,
            sessions,
            tids,
            stop: stop.clone(),
            unpinned: unpinned.clone(),
            logged_at: None,
        };
        let handle = std::thread::Builder::new()
            .name("array-spread".to_owned())
            .spawn(move || watch.run())
            .map_err(|e| Error::io("starting the placement thread", e))?;
        Ok(Spreader {
            stop,
            unpinned,
            handle: Some(handle),
        })
    }

    /// The server thread that runs unpinned now, if any.
    pub fn unpinned(&self) -> Option<usize> {
        Some(self.unpinned.load(Ordering::Relaxed)).filter(|&index| index != NONE)
    }
}

impl Drop for Spreader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// What the spreader thread owns.
struct Watch {
    placement: Arc<Placement>,
    sessions: Arc<Sessions>,
    tids: ThreadIds,
    stop: Arc<AtomicBool>,
    unpinned: Arc<AtomicUsize>,
    /// When a change was last logged at info level.
    logged_at: Option<Instant>,
}

impl Watch {
    fn run(mut self) {
        let mut policy = SpreadPolicy::new();
        let mut seen = HashMap::new();
        while self.sleep_window() {
            let traffic = window_traffic(&self.sessions.list(), self.tids.len(), &mut seen);
            if let Some(unpinned) = policy.window(&traffic) {
                self.apply(unpinned);
            }
        }
    }

    /// Sleeps one window; false once stopped.
    fn sleep_window(&self) -> bool {
        let deadline = Instant::now() + WINDOW;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Pins the thread that ran unpinned, then lets `unpinned` go.
    fn apply(&mut self, unpinned: Option<usize>) {
        let before = self
            .unpinned
            .swap(unpinned.unwrap_or(NONE), Ordering::Relaxed);
        if before != NONE {
            self.set_pinned(before, true);
        }
        if let Some(index) = unpinned {
            self.set_pinned(index, false);
        }
    }

    fn set_pinned(&mut self, index: usize, pinned: bool) {
        let tid = self.tids[index].load(Ordering::Relaxed);
        if tid == 0 {
            return; // not started (it pins itself when it does)
        }
        if let Err(error) = self.placement.set_thread_pinned(index, tid, pinned) {
            log::warn!("{error}");
            return;
        }
        let change = if pinned {
            format!(
                "server thread {index} pinned to CPU {} again",
                self.placement.cpus[index]
            )
        } else {
            format!(
                "server thread {index} carries a lone stream of large requests: it runs on \
                 any of CPUs {:?} while that lasts",
                self.placement.allowed
            )
        };
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < QUIET_AFTER_LOGGING)
        {
            log::debug!("{change}");
        } else {
            log::info!("{change} (further changes within {QUIET_AFTER_LOGGING:?} at debug level)");
            self.logged_at = Some(now);
        }
    }
}

/// Each thread's data traffic since the last call: the growth of every data session's
/// counters, summed by the thread serving it. `seen` holds the counters of the last call,
/// by session id; a session not seen before counts from zero.
fn window_traffic(
    sessions: &[Arc<Session>],
    threads: usize,
    seen: &mut HashMap<u64, Traffic>,
) -> Vec<Traffic> {
    let mut per_thread = vec![Traffic::default(); threads];
    let mut now_seen = HashMap::with_capacity(seen.len());
    for session in sessions.iter().filter(|s| s.partition().is_some()) {
        let counters = session.counters.snapshot();
        let total = Traffic {
            requests: counters.reads + counters.writes,
            bytes: counters.read_bytes + counters.write_bytes,
        };
        let before = seen.get(&session.id).copied().unwrap_or_default();
        if let Some(thread) = per_thread.get_mut(session.thread) {
            thread.add(Traffic {
                requests: total.requests.saturating_sub(before.requests),
                bytes: total.bytes.saturating_sub(before.bytes),
            });
        }
        now_seen.insert(session.id, total);
    }
    *seen = now_seen;
    per_thread
}
