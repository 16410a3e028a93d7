//! One in-flight wire request and the future its issuer waits on.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use wire::Request;

use crate::error::{Errno, Result};

/// Bytes reserved for a request header (postcard of a `Request` is at most ~25 bytes).
const HEADER_ROOM: usize = 32;

/// A request on one lane: what to send, the caller's buffer, and how it ended.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The wire request; its tag is unique among the lane's in-flight requests.
    pub request: Request,
    /// Frame prefix and header, ready to send.
    pub head: Vec<u8>,
    /// Payload source of a write, destination of a read (`request.len` bytes), else null.
    pub buf: *mut u8,
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
    /// that stay valid (readable for a write, writable for a read, not otherwise
    /// accessed) until the slot has an outcome and is not busy ([`SlotDone`] resolved):
    /// the lane's socket operations send from and receive into them until then. For any
    /// other request `buf` is not used.
    pub unsafe fn new(request: Request, buf: *mut u8, keep: Option<Rc<dyn Any>>) -> Slot {
        let mut head = Vec::with_capacity(wire::PREFIX_LEN + HEADER_ROOM);
        wire::frame::encode_head(&request, request.payload_len(), &mut head)
            .expect("a Request is a few fixed-size fields and always encodes");
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
