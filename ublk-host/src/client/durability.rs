//! The boot epoch rule: a server that came back with a new boot epoch may have lost the
//! writes it acknowledged but had not flushed, so the device's next FLUSH fails with
//! `EIO` when any such write existed.
//!
//! One [`Durability`] is shared by every queue of a device (a FLUSH on queue A covers the
//! writes of queue B): a few atomics, no lock. Writes note their acknowledgement with one
//! load in the common case; flushes are numbered, and the number a write needs is "a flush
//! that started after me". A restart with nothing unflushed is invisible.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Device-wide volatile-write tracking; see the module doc.
#[derive(Debug, Default)]
pub struct Durability {
    /// Boot epoch of the server last seen in a Welcome; 0 before the first.
    boot_epoch: AtomicU64,
    /// Flushes started so far; a flush's id is the count after it started.
    flushes_started: AtomicU64,
    /// The id of a flush that covers every acknowledged volatile write.
    needed: AtomicU64,
    /// The highest id of a flush that completed.
    completed: AtomicU64,
    /// Set when the server restarted with volatile writes outstanding.
    lost: AtomicBool,
}

impl Durability {
    /// Whether some acknowledged volatile write is not yet covered by a completed flush.
    pub fn has_unflushed(&self) -> bool {
        self.needed.load(Ordering::Acquire) > self.completed.load(Ordering::Acquire)
    }

    /// A write (without FUA), discard or write-zeroes was acknowledged.
    pub fn write_acked(&self) {
        let want = self.flushes_started.load(Ordering::Acquire) + 1;
        if self.needed.load(Ordering::Relaxed) < want {
            self.needed.fetch_max(want, Ordering::AcqRel);
        }
    }

    /// A flush is about to be sent; returns its id for [`Durability::flush_done`].
    pub fn flush_started(&self) -> u64 {
        self.flushes_started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The flush `id` completed with `outcome`; returns what it completes with: `EIO`
    /// if the server restarted while volatile writes were outstanding.
    pub fn flush_done(
        &self,
        id: u64,
        outcome: Result<(), crate::Errno>,
    ) -> Result<(), crate::Errno> {
        outcome?;
        self.completed.fetch_max(id, Ordering::AcqRel);
        if self.lost.swap(false, Ordering::AcqRel) {
            log::error!(
                "failing a FLUSH with EIO: the server restarted (new boot epoch) while writes \
                 it had acknowledged were not yet flushed; they may be lost"
            );
            return Err(crate::Errno::EIO);
        }
        Ok(())
    }

    /// A connection's Welcome announced `epoch`; returns whether this revealed a restart
    /// that may have lost acknowledged writes.
    pub fn observe_boot_epoch(&self, epoch: u64) -> bool {
        let previous = self.boot_epoch.swap(epoch, Ordering::AcqRel);
        if previous == 0 || previous == epoch {
            return false;
        }
        if !self.has_unflushed() {
            log::info!("the server restarted (new boot epoch); nothing was left unflushed");
            return false;
        }
        log::warn!(
            "the server restarted (new boot epoch) with acknowledged writes not yet flushed: \
             the next FLUSH fails with EIO"
        );
        self.lost.store(true, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Errno;

    #[test]
    fn restart_with_unflushed_writes_fails_the_next_flush_once() {
        let state = Durability::default();
        assert!(!state.observe_boot_epoch(7));
        state.write_acked();
        assert!(state.observe_boot_epoch(8));
        let flush = state.flush_started();
        assert_eq!(state.flush_done(flush, Ok(())), Err(Errno::EIO));
        let flush = state.flush_started();
        assert_eq!(state.flush_done(flush, Ok(())), Ok(()));
    }

    #[test]
    fn restart_after_a_flush_is_invisible() {
        let state = Durability::default();
        state.observe_boot_epoch(7);
        state.write_acked();
        let flush = state.flush_started();
        assert_eq!(state.flush_done(flush, Ok(())), Ok(()));
        assert!(!state.observe_boot_epoch(8));
        let flush = state.flush_started();
        assert_eq!(state.flush_done(flush, Ok(())), Ok(()));
    }

    #[test]
    fn a_write_acked_during_a_flush_is_not_covered_by_it() {
        let state = Durability::default();
        state.observe_boot_epoch(7);
        let flush = state.flush_started();
        state.write_acked();
        assert_eq!(state.flush_done(flush, Ok(())), Ok(()));
        assert!(state.has_unflushed());
        assert!(state.observe_boot_epoch(9));
    }

    #[test]
    fn same_epoch_again_is_no_restart() {
        let state = Durability::default();
        state.observe_boot_epoch(7);
        state.write_acked();
        assert!(!state.observe_boot_epoch(7));
    }

    #[test]
    fn a_failed_flush_covers_nothing() {
        let state = Durability::default();
        state.observe_boot_epoch(7);
        state.write_acked();
        let flush = state.flush_started();
        assert_eq!(state.flush_done(flush, Err(Errno::EIO)), Err(Errno::EIO));
        assert!(state.has_unflushed());
    }
}
