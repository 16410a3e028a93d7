//! The thread that applies [`SpreadPolicy`] to pinned server threads: every [`WINDOW`] it
//! sums the data traffic from the sessions' counters (which the data path counts anyway,
//! so this adds nothing to it) and lets the threads go or pins them again when the policy
//! says so. It runs only while threads are pinned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
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

/// The kernel ids of the server threads, filled in by each thread as it starts (0 until
/// then).
pub type ThreadIds = Arc<[AtomicI32]>;

/// The running spreader thread; stopped when dropped.
#[derive(Debug)]
pub struct Spreader {
    stop: Arc<AtomicBool>,
    unpinned: Arc<AtomicBool>,
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
        let unpinned = Arc::new(AtomicBool::new(false));
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

    /// Whether the server threads run unpinned now.
    pub fn unpinned(&self) -> bool {
        self.unpinned.load(Ordering::Relaxed)
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
    unpinned: Arc<AtomicBool>,
    /// When a change was last logged at info level.
    logged_at: Option<Instant>,
}

impl Watch {
    fn run(mut self) {
        let mut policy = SpreadPolicy::new();
        let mut seen = HashMap::new();
        while self.sleep_window() {
            let traffic = window_traffic(&self.sessions.list(), &mut seen);
            if let Some(unpinned) = policy.window(traffic) {
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

    /// Lets every thread run on any allowed CPU (`unpinned`), or pins each to its CPU;
    /// the new state is published (`Spreader::unpinned`, the server's stats) only once
    /// every thread has it.
    fn apply(&mut self, unpinned: bool) {
        for (index, tid) in self.tids.iter().enumerate() {
            let tid = tid.load(Ordering::Relaxed);
            if tid == 0 {
                continue; // not started (it pins itself when it does)
            }
            if let Err(error) = self.placement.set_thread_pinned(index, tid, !unpinned) {
                log::warn!("{error}");
            }
        }
        self.unpinned.store(unpinned, Ordering::Relaxed);
        let change = if unpinned {
            format!(
                "large requests: the server threads run on any of CPUs {:?} while they last",
                self.placement.allowed
            )
        } else {
            format!(
                "server threads pinned to CPUs {:?} again",
                self.placement.cpus
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

/// The data traffic since the last call: the growth of every data session's counters.
/// `seen` holds the counters of the last call, by session id; a session not seen before
/// counts from zero.
fn window_traffic(sessions: &[Arc<Session>], seen: &mut HashMap<u64, Traffic>) -> Traffic {
    let mut window = Traffic::default();
    let mut now_seen = HashMap::with_capacity(seen.len());
    for session in sessions.iter().filter(|s| s.partition().is_some()) {
        let counters = session.counters.snapshot();
        let total = Traffic {
            requests: counters.reads + counters.writes,
            bytes: counters.read_bytes + counters.write_bytes,
        };
        let before = seen.get(&session.id).copied().unwrap_or_default();
        window.add(Traffic {
            requests: total.requests.saturating_sub(before.requests),
            bytes: total.bytes.saturating_sub(before.bytes),
        });
        now_seen.insert(session.id, total);
    }
    *seen = now_seen;
    window
}
