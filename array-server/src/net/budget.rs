//! A data lane's budget: request slots and bytes, taken by the lane's reader before it
//! reads more from the socket and given back by each reply once it has been sent.
//!
//! Everything of a lane happens on the lane's thread, and only the reader ever waits, so
//! the lane's budget is two counters and one waker in `Cell`s. The bytes are also taken
//! from the host's [`HostBytes`], shared by all its lanes on every thread (one host must
//! not hold the server's memory by opening many lanes that never read their replies):
//! one atomic add and one subtract per request, and a lock only while a reader waits.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

/// One lane's slots and bytes.
pub struct LaneBudget {
    total_slots: u32,
    slots: Cell<u32>,
    bytes: Cell<u64>,
    waiter: Cell<Option<Waker>>,
    host: Arc<HostBytes>,
}

/// Bytes of read data and write payloads all the lanes of one host hold at once.
pub struct HostBytes {
    available: AtomicU64,
    /// Whether a reader is waiting in `wakers` (checked by every give-back, locked by none).
    waiting: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl std::fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBytes")
            .field("available", &self.available.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl HostBytes {
    /// `bytes` for the host's lanes to share.
    pub fn new(bytes: u64) -> Arc<HostBytes> {
        Arc::new(HostBytes {
            available: AtomicU64::new(bytes),
            waiting: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        })
    }

    /// Bytes free now.
    #[cfg(test)]
    fn available(&self) -> u64 {
        self.available.load(Ordering::SeqCst)
    }

    fn try_take(&self, bytes: u64) -> bool {
        self.available
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |free| {
                free.checked_sub(bytes)
            })
            .is_ok()
    }

    /// Waits until `bytes` are free and takes them.
    async fn take(&self, bytes: u64) {
        poll_fn(|context| {
            if self.try_take(bytes) {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            self.waiting.store(true, Ordering::SeqCst);
            // Again after the flag: a give-back between the first try and the flag did not
            // see it and woke nobody.
            if self.try_take(bytes) {
                return Poll::Ready(());
            }
            wakers.push(context.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn give_back(&self, bytes: u64) {
        self.available.fetch_add(bytes, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            let wakers = {
                let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
                self.waiting.store(false, Ordering::SeqCst);
                std::mem::take(&mut *wakers)
            };
            // Each tries again, and waits again if the bytes went to another.
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// A share of a [`LaneBudget`] (and of its host's bytes), given back when dropped.
#[derive(Debug)]
pub struct Credit {
    budget: Rc<LaneBudget>,
    slots: u32,
    bytes: u64,
    host_bytes: u64,
}

impl std::fmt::Debug for LaneBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneBudget")
            .field("slots", &self.slots.get())
            .field("bytes", &self.bytes.get())
            .finish_non_exhaustive()
    }
}

impl LaneBudget {
    /// A budget of `slots` requests and `bytes` bytes, the bytes also taken from `host`.
    pub fn new(slots: u32, bytes: u64, host: Arc<HostBytes>) -> Rc<LaneBudget> {
        Rc::new(LaneBudget {
            total_slots: slots,
            slots: Cell::new(slots),
            bytes: Cell::new(bytes),
            waiter: Cell::new(None),
            host,
        })
    }

    /// Waits for one request slot.
    pub async fn slot(self: &Rc<Self>) -> Credit {
        self.reserve(1, 0).await;
        Credit {
            budget: self.clone(),
            slots: 1,
            bytes: 0,
            host_bytes: 0,
        }
    }

    /// Waits for `bytes` more bytes on top of `credit`, of the lane's and then of the
    /// host's (at most either whole budget, or this waits forever: the caller caps
    /// requests at `max_io`, and both budgets are at least that).
    pub async fn add_bytes(self: &Rc<Self>, mut credit: Credit, bytes: u64) -> Credit {
        self.reserve(0, bytes).await;
        credit.bytes += bytes;
        // Held by `credit` from here: given back to both if this wait is dropped.
        self.host.take(bytes).await;
        credit.host_bytes += bytes;
        credit
    }

    /// Waits until every credit has come back: no request of the lane is running or
    /// waiting to be answered. Only once the reader has stopped (it is the one waiter).
    pub async fn drained(&self) {
        self.reserve(self.total_slots, 0).await;
        self.slots.set(self.total_slots);
    }

    async fn reserve(&self, slots: u32, bytes: u64) {
        poll_fn(|context| {
            if self.slots.get() >= slots && self.bytes.get() >= bytes {
                self.slots.set(self.slots.get() - slots);
                self.bytes.set(self.bytes.get() - bytes);
                Poll::Ready(())
            } else {
                self.waiter.set(Some(context.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        let budget = &self.budget;
        budget.slots.set(budget.slots.get() + self.slots);
        budget.bytes.set(budget.bytes.get() + self.bytes);
        if self.host_bytes > 0 {
            budget.host.give_back(self.host_bytes);
        }
        if let Some(waiter) = budget.waiter.take() {
            waiter.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    #[test]
    fn waits_until_credits_come_back() {
        let budget = LaneBudget::new(2, 100, HostBytes::new(1000));
        let mut context = Context::from_waker(Waker::noop());
        let first = pin!(budget.slot());
        let Poll::Ready(first) = first.poll(&mut context) else {
            panic!("a free slot")
        };
        let mut bytes = pin!(budget.add_bytes(first, 100));
        let Poll::Ready(first) = bytes.as_mut().poll(&mut context) else {
            panic!("free bytes")
        };
        let second = pin!(budget.slot());
        let Poll::Ready(second) = second.poll(&mut context) else {
            panic!("a second slot")
        };
        let mut more = pin!(budget.add_bytes(second, 1));
        assert!(more.as_mut().poll(&mut context).is_pending());
        let mut drained = pin!(budget.drained());
        assert!(drained.as_mut().poll(&mut context).is_pending());
        drop(first);
        let Poll::Ready(second) = more.as_mut().poll(&mut context) else {
            panic!("bytes came back")
        };
        assert!(drained.as_mut().poll(&mut context).is_pending());
        drop(second);
        assert!(drained.as_mut().poll(&mut context).is_ready());
    }

    #[test]
    fn the_lanes_of_a_host_share_its_bytes() {
        let host = HostBytes::new(100);
        let (one, other) = (
            LaneBudget::new(4, 100, host.clone()),
            LaneBudget::new(4, 100, host.clone()),
        );
        let mut context = Context::from_waker(Waker::noop());
        let slot = pin!(one.slot());
        let Poll::Ready(slot) = slot.poll(&mut context) else {
            panic!("a free slot")
        };
        let held = pin!(one.add_bytes(slot, 80));
        let Poll::Ready(held) = held.poll(&mut context) else {
            panic!("free bytes")
        };
        assert_eq!(host.available(), 20);
        let slot = pin!(other.slot());
        let Poll::Ready(slot) = slot.poll(&mut context) else {
            panic!("a free slot")
        };
        // The other lane has bytes of its own but the host has not.
        let mut waiting = pin!(other.add_bytes(slot, 40));
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        drop(held);
        let Poll::Ready(second) = waiting.as_mut().poll(&mut context) else {
            panic!("the host's bytes came back")
        };
        assert_eq!(host.available(), 60);
        drop(second);
        assert_eq!(host.available(), 100);
    }
}
