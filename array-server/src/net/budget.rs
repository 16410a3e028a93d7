//! A data lane's budget: request slots and bytes, taken by the lane's reader before it
//! reads more from the socket and given back by each reply once it has been sent.
//!
//! Everything happens on the lane's thread, and only the reader ever waits, so the budget
//! is two counters and one waker in `Cell`s: no lock and no atomic on the data path.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// One lane's slots and bytes.
pub struct LaneBudget {
    total_slots: u32,
    slots: Cell<u32>,
    bytes: Cell<u64>,
    waiter: Cell<Option<Waker>>,
}

/// A share of a [`LaneBudget`], given back when dropped.
#[derive(Debug)]
pub struct Credit {
    budget: Rc<LaneBudget>,
    slots: u32,
    bytes: u64,
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
    /// A budget of `slots` requests and `bytes` bytes.
    pub fn new(slots: u32, bytes: u64) -> Rc<LaneBudget> {
        Rc::new(LaneBudget {
            total_slots: slots,
            slots: Cell::new(slots),
            bytes: Cell::new(bytes),
            waiter: Cell::new(None),
        })
    }

    /// Waits for one request slot.
    pub async fn slot(self: &Rc<Self>) -> Credit {
        self.reserve(1, 0).await;
        Credit {
            budget: self.clone(),
            slots: 1,
            bytes: 0,
        }
    }

    /// Waits for `bytes` more bytes on top of `credit` (at most the whole budget, or this
    /// waits forever: the caller caps requests at `max_io`, and the budget is at least
    /// that).
    pub async fn add_bytes(self: &Rc<Self>, mut credit: Credit, bytes: u64) -> Credit {
        self.reserve(0, bytes).await;
        credit.bytes += bytes;
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
        let budget = LaneBudget::new(2, 100);
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
}
