//! One in-flight wire request and the future its issuer waits on.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use wire::frame::InlineHead;
use wire::Request;

use crate::error::{Errno, Result};

/// Where a request's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufRef {
    /// No data (flush, discard, write zeroes, heartbeat).
    None,
    /// Ordinary memory of this process, mapped at this address.
    Ptr(*mut u8),
    /// A buffer in the queue's io_uring fixed-buffer table, used only through fixed-buffer
    /// operations (zero copy: a ublk request's own pages, registered by the driver).
    Fixed {
        /// Index in the ring's buffer table (a ublk tag, with automatic registration).
        index: u16,
        /// Address of the data in that buffer's address space: an offset from 0 for a
        /// buffer the ublk driver registered, a user address for one the process
        /// registered from its own memory.
        addr: u64,
    },
}

impl BufRef {
    /// The same buffer, `bytes` further on.
    ///
    /// # Safety
    ///
    /// For [`BufRef::Ptr`], the result must stay inside the same allocation
    /// (`pointer::add`'s rule).
    pub unsafe fn add(self, bytes: usize) -> BufRef {
        match self {
            BufRef::None => BufRef::None,
            // SAFETY: the caller keeps the result inside the allocation.
            BufRef::Ptr(ptr) => BufRef::Ptr(unsafe { ptr.add(bytes) }),
            BufRef::Fixed { index, addr } => BufRef::Fixed {
                index,
                addr: addr + bytes as u64,
            },
        }
    }

    /// Whether this is a registered (fixed) buffer.
    pub fn is_fixed(&self) -> bool {
        matches!(self, BufRef::Fixed { .. })
    }
}

/// A request on one lane: what to send, the caller's buffer, and how it ended.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The wire request; its tag is unique among the lane's in-flight requests.
    pub request: Request,
    /// Frame prefix and header, ready to send (in the slot: no allocation of its own).
    pub head: InlineHead,
    /// Payload source of a write, destination of a read (`request.len` bytes).
    pub buf: BufRef,
    /// Keeps an owned buffer alive while the lane may still use it, even if the issuer
    /// stopped waiting.
    _keep: Option<Rc<dyn Any>>,
    /// A kernel operation (a send of the payload, a receive into `buf`) is using `buf`.
    busy: Cell<bool>,
    result: Cell<Option<Result<(), Errno>>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    /// A slot for `request`, whose payload (if any) lives at `buf`.
    ///
    /// # Safety
    ///
    /// For a request with data (`Read`, `Write`), `buf` must point to `request.len` bytes
    /// (a fixed buffer: registered in the calling thread's ring) that stay valid (readable
    /// for a write, writable for a read, not otherwise accessed, still registered) until
    /// the slot has an outcome and is not busy ([`SlotDone`] resolved):
    /// the lane's socket operations send from and receive into them until then. For any
    /// other request `buf` is not used.
    pub unsafe fn new(request: Request, buf: BufRef, keep: Option<Rc<dyn Any>>) -> Slot {
        let head = InlineHead::encode(&request, request.payload_len())
            .expect("a Request is a few fixed-size fields and always fits an inline head");
        Slot {
            request,
            head,
            buf,
            _keep: keep,
            busy: Cell::new(false),
            result: Cell::new(None),
            waker: RefCell::new(None),
        }
    }

    /// Marks whether a kernel operation uses the buffer; clearing it may finish the slot.
    pub fn set_busy(&self, busy: bool) {
        self.busy.set(busy);
        if !busy {
            self.wake_if_done();
        }
    }

    /// Records the outcome (the first one wins) and wakes the issuer.
    pub fn finish(&self, outcome: Result<(), Errno>) {
        if self.result.get().is_none() {
            self.result.set(Some(outcome));
        }
        self.wake_if_done();
    }

    fn wake_if_done(&self) {
        if self.result.get().is_some() && !self.busy.get() {
            if let Some(waker) = self.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// Resolves when the slot has an outcome and no kernel operation uses its buffer any more.
#[derive(Debug)]
pub(crate) struct SlotDone(pub Rc<Slot>);

impl Future for SlotDone {
    type Output = Result<(), Errno>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = &self.0;
        match slot.result.get() {
            Some(outcome) if !slot.busy.get() => Poll::Ready(outcome),
            _ => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
