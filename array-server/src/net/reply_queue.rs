//! A lane's replies on their way from the tasks that finish requests to the lane's writer:
//! a queue of one thread, without atomics or locks (every lane lives on one thread of the
//! server), where a channel built for threads cost a few hundred instructions per reply.
//!
//! Unbounded, because every message carries one of the lane's slots (`Credit`), which bound
//! it. One sender (the lane) and one receiver (the writer): the receiver sees the end once
//! the sender is gone and the queue is empty; once the receiver is gone, what is sent is
//! dropped at once (which releases its credit). The two halves are the only owners of the
//! shared state, so either one is alone exactly when the other is gone.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Shared<T> {
    items: RefCell<VecDeque<T>>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Shared<T> {
    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// The sending half (not `Clone`: one sender).
pub(crate) struct Sender<T>(Rc<Shared<T>>);

/// The receiving half.
pub(crate) struct Receiver<T>(Rc<Shared<T>>);

/// Whether the other half of a queue is gone (`half` is one half's share).
fn alone<T>(half: &Rc<Shared<T>>) -> bool {
    Rc::strong_count(half) == 1
}

/// A new, empty queue.
pub(crate) fn reply_queue<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Rc::new(Shared {
        items: RefCell::new(VecDeque::new()),
        waker: RefCell::new(None),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item` and wakes the receiver; drops it if the receiver is gone.
    pub fn send(&self, item: T) {
        if alone(&self.0) {
            return drop(item);
        }
        self.0.items.borrow_mut().push_back(item);
        self.0.wake();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // The receiver runs after this half is gone, and then finds itself alone.
        self.0.wake();
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once the sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            if let Some(item) = self.try_recv() {
                return Poll::Ready(Some(item));
            }
            if alone(&self.0) {
                return Poll::Ready(None);
            }
            let mut waker = self.0.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        self.0.items.borrow_mut().pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Dropped outside the borrow: an item's drop may run code of its own. (An item
        // sent from there, while this half still counts, would wait for the sender's
        // drop; a credit's drop only wakes tasks, it sends nothing.)
        let left = std::mem::take(&mut *self.0.items.borrow_mut());
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn items_arrive_in_order_then_the_end() {
        let (sender, mut receiver) = reply_queue();
        assert!(poll_once(pin!(receiver.recv())).is_pending());
        sender.send(1);
        sender.send(2);
        assert_eq!(poll_once(pin!(receiver.recv())), Poll::Ready(Some(1)));
        assert_eq!(receiver.try_recv(), Some(2));
        assert_eq!(receiver.try_recv(), None);
        sender.send(3);
        drop(sender);
        // What was sent before the sender left still arrives, then the end.
        assert_eq!(poll_once(pin!(receiver.recv())), Poll::Ready(Some(3)));
        assert_eq!(poll_once(pin!(receiver.recv())), Poll::Ready(None));
    }

    #[test]
    fn a_gone_receiver_drops_what_is_sent_and_what_was_queued() {
        let (sender, receiver) = reply_queue();
        let queued = Rc::new(());
        sender.send(queued.clone());
        drop(receiver);
        assert_eq!(
            Rc::strong_count(&queued),
            1,
            "queued items are dropped with the receiver"
        );
        let late = Rc::new(());
        sender.send(late.clone());
        assert_eq!(
            Rc::strong_count(&late),
            1,
            "items sent afterwards are dropped at once"
        );
    }

    #[test]
    fn a_send_wakes_the_waiting_receiver() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let (sender, mut receiver) = reply_queue::<u8>();
        let mut recv = pin!(receiver.recv());
        assert!(recv
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        sender.send(7);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            recv.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(Some(7))
        );
    }
}
