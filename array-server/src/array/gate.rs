//! Revocation gates: how a metadata change that takes rights away from a data lane is
//! made airtight.
//!
//! Every data lane registers a [`LaneGate`]. The lane wraps every disk operation and every
//! copy out of or into a disk mapping (mapped read replies at send time, write payloads
//! received into a mapping) in a [`DiskPass`]: it counts itself busy, then checks that the
//! gate is not revoked. A commit that withdraws a lane's assignment, or narrows it to
//! read-only, marks the gate revoked, shuts the lane's socket down (`shutdown(2)`, not a
//! queued message, so a lane whose peer stopped reading closes too, and any pending send
//! or receive on it completes at once), and then waits until no pass of the lane is
//! left before the commit returns. Busy-then-check on the lane and revoke-then-wait on
//! the committer are both sequentially consistent, so either the lane sees the revocation
//! or the committer sees the lane busy and waits for it (the store-buffering pattern).
//!
//! Hence from the moment an operator's call returns, a revoked lane never touches the
//! disks again, and space freed by a forced delete can be handed out at once: no lane
//! that could still reach it exists. Draining at revocation was chosen over quarantining
//! freed extents because it also covers changes that free nothing (unassign, then assign
//! the partition to another host) and keeps the allocator stateless.
//!
//! Registering a lane takes a lock, the data path does not: a pass is two atomic
//! operations on the lane's own gate, which only the committer ever reads.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use wire::Access;

use super::metadata::ArrayMetadata;

/// First pause while waiting for a revoked lane's disk work to drain; doubled up to
/// [`DRAIN_MAX_PAUSE`].
const DRAIN_FIRST_PAUSE: Duration = Duration::from_micros(50);
/// Longest pause between two looks at a draining lane.
const DRAIN_MAX_PAUSE: Duration = Duration::from_millis(2);
/// How often a drain that takes unusually long (a hung disk) is logged.
const DRAIN_WARN_EVERY: Duration = Duration::from_secs(5);

/// One data lane's fence against revocation.
#[derive(Debug)]
pub struct LaneGate {
    host: String,
    partition: u32,
    access: Access,
    /// The lane's socket, shut down on revocation. Valid while the gate is registered:
    /// the lane unregisters before it closes the socket.
    socket: RawFd,
    revoked: AtomicBool,
    /// Disk operations and mapped copies in progress.
    busy: AtomicUsize,
}

/// Why a [`DiskPass`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked;

/// Permission for one disk operation or mapped copy; the lane counts as busy until it
/// drops.
#[derive(Debug)]
pub struct DiskPass<'a>(&'a LaneGate);

impl Drop for DiskPass<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LaneGate {
    /// Enters a disk operation: refused once the lane is revoked.
    pub fn enter(&self) -> Result<DiskPass<'_>, Revoked> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let pass = DiskPass(self);
        if self.revoked.load(Ordering::SeqCst) {
            return Err(Revoked);
        }
        Ok(pass)
    }

    /// Whether the lane was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Whether `metadata` leaves this lane at least the rights it started with.
    pub(super) fn still_allowed(&self, metadata: &ArrayMetadata) -> bool {
        metadata
            .assignments
            .iter()
            .find(|a| a.host == self.host && a.partition == self.partition)
            .is_some_and(|a| a.access == Access::ReadWrite || self.access == Access::ReadOnly)
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        // SAFETY: plain system call; the descriptor is open while the gate is registered
        // (see `socket`), and the registry lock is held by the caller.
        unsafe { libc::shutdown(self.socket, libc::SHUT_RDWR) };
    }

    fn drain(&self) {
        let started = Instant::now();
        let mut warned = started;
        let mut pause = DRAIN_FIRST_PAUSE;
        while self.busy.load(Ordering::SeqCst) != 0 {
            if warned.elapsed() >= DRAIN_WARN_EVERY {
                warned = Instant::now();
                log::warn!(
                    "host {:?} partition {}: revoked lane still busy after {:?} (disk hung?)",
                    self.host,
                    self.partition,
                    started.elapsed()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(DRAIN_MAX_PAUSE);
        }
    }
}

/// Every registered lane gate of an array.
#[derive(Debug, Default)]
pub struct LaneGates {
    gates: Mutex<Vec<Arc<LaneGate>>>,
}

impl LaneGates {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<LaneGate>>> {
        self.gates.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the gate of a lane of `host` on `partition` with `access`, whose socket
    /// is `socket`; it is unregistered when the guard drops, which must happen before the
    /// socket is closed. The caller then checks its grant is still current (a commit that
    /// ran before the registration did not see this gate).
    pub fn register(
        self: &Arc<Self>,
        host: &str,
        partition: u32,
        access: Access,
        socket: RawFd,
    ) -> GateGuard {
        let gate = Arc::new(LaneGate {
            host: host.to_owned(),
            partition,
            access,
            socket,
            revoked: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
        });
        self.lock().push(gate.clone());
        GateGuard {
            gates: self.clone(),
            gate,
        }
    }

    /// Revokes every lane `metadata` (just committed) takes rights away from: marks
    /// them, shuts their sockets down, and returns them for [`LaneGates::drain`].
    pub fn revoke_for(&self, metadata: &ArrayMetadata) -> Vec<Arc<LaneGate>> {
        let gates = self.lock();
        let revoked: Vec<Arc<LaneGate>> = gates
            .iter()
            .filter(|gate| !gate.is_revoked() && !gate.still_allowed(metadata))
            .cloned()
            .collect();
        for gate in &revoked {
            log::info!(
                "host {:?} lost its right to partition {}; closing its lane",
                gate.host,
                gate.partition
            );
            gate.revoke();
        }
        revoked
    }

    /// Waits until no revoked lane of `revoked` has disk work in progress.
    pub fn drain(revoked: &[Arc<LaneGate>]) {
        for gate in revoked {
            gate.drain();
        }
    }
}

/// Keeps a lane's gate registered.
#[derive(Debug)]
pub struct GateGuard {
    gates: Arc<LaneGates>,
    /// The registered gate.
    pub gate: Arc<LaneGate>,
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.gates
            .lock()
            .retain(|gate| !Arc::ptr_eq(gate, &self.gate));
    }
}
