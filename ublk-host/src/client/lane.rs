//! A lane: one persistent, authenticated TCP connection owned by one queue, with a sender
//! task and a receiver task on the queue's io_uring, and a reconnect task when it drops.
//!
//! Requests are slots: [`Lane::start`] gives a slot a tag, records it as in flight and
//! queues it; the sender drains the queue in batches (one `sendmsg` of several frames,
//! header and payload iovecs straight from the callers' buffers, short sends resumed);
//! the receiver reads replies, matches tags in any order and receives a read's data
//! straight into its slot's buffer. If the connection fails, every request still in flight
//! is reissued on the re-established connection (block operations are idempotent) until
//! the reconnect deadline, after which they fail with `EIO`.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use wire::{Op, PartitionInfo, Purpose, Request};

use crate::client::config::EngineConfig;
use crate::client::connect::{connect, Connection};
use crate::client::reconnect::{spawn_helper, Mailbox};
use crate::client::slot::Slot;
use crate::client::transfer::{receive_replies, send_batch};
use crate::client::uring::EventFd;
use crate::error::{Errno, HostError, Result};

/// Most frames one `sendmsg` carries.
const MAX_BATCH: usize = 64;

/// Where a lane is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connected; sender and receiver of the current generation run.
    Up,
    /// Dropped at `since`; reconnecting. Once `expired`, new requests fail at once.
    Down { since: Instant, expired: bool },
    /// Closed for good.
    Closed,
}

/// Counters of one lane, for tests and statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Requests issued on the lane (reissues not counted).
    pub requests: u64,
    /// Times the lane was re-established.
    pub reconnects: u64,
}

/// One wire request before the lane gives it a tag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartRequest {
    /// The operation.
    pub op: Op,
    /// Byte offset in the partition.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// The payload of a write, the destination of a read; null otherwise.
    pub buf: *mut u8,
}

/// One lane of a queue.
#[derive(Debug)]
pub(crate) struct Lane {
    config: Rc<EngineConfig>,
    purpose: Purpose,
    executor: Rc<smol::LocalExecutor<'static>>,
    socket: RefCell<Option<TcpStream>>,
    generation: Cell<u64>,
    state: Cell<State>,
    max_io: u32,
    queue: RefCell<VecDeque<Rc<Slot>>>,
    sender_waker: RefCell<Option<Waker>>,
    inflight: RefCell<HashMap<u32, Rc<Slot>>>,
    next_tag: Cell<u32>,
    next_seq: Cell<u64>,
    live_tasks: Cell<u32>,
    idle_waiters: RefCell<Vec<Waker>>,
    mailbox: RefCell<Option<Arc<Mailbox>>>,
    stats: Cell<LaneStats>,
}

impl Lane {
    /// Connects lane `lane` of `queue` for `partition` (blocking, within the handshake
    /// deadline) and starts its tasks on `executor`.
    pub fn open(
        config: Rc<EngineConfig>,
        partition: &PartitionInfo,
        queue: u16,
        lane: u16,
        executor: Rc<smol::LocalExecutor<'static>>,
    ) -> Result<(Rc<Lane>, PartitionInfo)> {
        let purpose = Purpose::Data {
            partition: partition.id,
            queue,
            lane,
            epoch: crate::client::connect::next_lane_epoch(),
        };
        let connection = connect(&config.client, purpose)?;
        let info = connection.welcome.partition.clone().ok_or_else(|| {
            HostError::Protocol("a data connection's Welcome carries no partition".into())
        })?;
        if info.id != partition.id {
            return Err(HostError::Protocol(format!(
                "asked for partition {}, the server opened {}",
                partition.id, info.id
            )));
        }
        let lane = Rc::new(Lane {
            config,
            purpose,
            executor,
            socket: RefCell::new(None),
            generation: Cell::new(0),
            state: Cell::new(State::Closed),
            max_io: connection.welcome.max_io,
            queue: RefCell::new(VecDeque::new()),
            sender_waker: RefCell::new(None),
            inflight: RefCell::new(HashMap::new()),
            next_tag: Cell::new(0),
            next_seq: Cell::new(0),
            live_tasks: Cell::new(0),
            idle_waiters: RefCell::new(Vec::new()),
            mailbox: RefCell::new(None),
            stats: Cell::new(LaneStats::default()),
        });
        lane.install(connection);
        Ok((lane, info))
    }

    /// Largest payload the server accepts on this lane.
    pub fn max_io(&self) -> u32 {
        self.max_io
    }

    /// The lane's counters.
    pub fn stats(&self) -> LaneStats {
        self.stats.get()
    }

    /// Issues one request; the returned slot finishes when its reply (or failure) is in.
    pub fn start(&self, request: PartRequest, keep: Option<Rc<dyn Any>>) -> Rc<Slot> {
        let tag = self.allocate_tag();
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let wire_request = Request {
            tag,
            op: request.op,
            offset: request.offset,
            len: request.len,
            flags: request.flags,
        };
        let slot = Rc::new(Slot::new(wire_request, request.buf, seq, keep));
        let mut stats = self.stats.get();
        stats.requests += 1;
        self.stats.set(stats);
        match self.state.get() {
            State::Up => {
                self.inflight.borrow_mut().insert(tag, slot.clone());
                self.queue.borrow_mut().push_back(slot.clone());
                self.wake_sender();
            }
            State::Down { expired: false, .. } => {
                self.inflight.borrow_mut().insert(tag, slot.clone());
            }
            State::Down { expired: true, .. } | State::Closed => slot.finish(Err(Errno::EIO)),
        }
        slot
    }

    fn allocate_tag(&self) -> u32 {
        let inflight = self.inflight.borrow();
        loop {
            let tag = self.next_tag.get();
            self.next_tag.set(tag.wrapping_add(1));
            if !inflight.contains_key(&tag) {
                return tag;
            }
        }
    }

    /// Closes the lane: its tasks stop, requests still pending fail with `EIO`.
    pub fn close(&self) {
        if self.state.get() == State::Closed {
            return;
        }
        self.state.set(State::Closed);
        if let Some(mailbox) = self.mailbox.borrow().as_ref() {
            mailbox.stop.store(true, Ordering::Relaxed);
            mailbox.event.signal();
        }
        self.shutdown_socket();
        self.fail_pending(Errno::EIO);
        self.wake_sender();
        self.wake_idle();
    }

    /// Resolves once the lane is closed and none of its tasks runs any more.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            if self.is_closed() {
                Poll::Ready(())
            } else {
                self.idle_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Whether the lane is closed and none of its tasks runs any more.
    pub fn is_closed(&self) -> bool {
        self.state.get() == State::Closed && self.live_tasks.get() == 0
    }

    fn fd(&self) -> RawFd {
        self.socket.borrow().as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    fn stale(&self, generation: u64) -> bool {
        self.generation.get() != generation || self.state.get() != State::Up
    }

    fn shutdown_socket(&self) {
        if let Some(socket) = self.socket.borrow().as_ref() {
            // Makes the pending receive and send of the old connection complete.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    fn wake_sender(&self) {
        if let Some(waker) = self.sender_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wake_idle(&self) {
        for waker in self.idle_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn fail_pending(&self, errno: Errno) {
        self.queue.borrow_mut().clear();
        let slots: Vec<Rc<Slot>> = self.inflight.borrow_mut().drain().map(|(_, s)| s).collect();
        for slot in slots {
            slot.finish(Err(errno));
        }
    }

    /// Takes the next batch of queued slots, marking their buffers busy.
    fn take_batch(&self, batch: &mut Vec<Rc<Slot>>) {
        let mut queue = self.queue.borrow_mut();
        while batch.len() < MAX_BATCH {
            let Some(slot) = queue.pop_front() else {
                break;
            };
            if slot.is_finished() {
                continue;
            }
            slot.set_busy(true);
            batch.push(slot);
        }
    }

    /// Takes the in-flight slot a reply names.
    pub fn take_inflight(&self, tag: u32) -> Option<Rc<Slot>> {
        self.inflight.borrow_mut().remove(&tag)
    }

    /// Puts back a slot whose reply was cut off, so it is reissued after the reconnect.
    pub fn restore_inflight(&self, slot: Rc<Slot>) {
        self.inflight.borrow_mut().insert(slot.request.tag, slot);
    }

    /// Puts a fresh connection in service: new generation, reissue, new tasks.
    fn install(self: &Rc<Self>, connection: Connection) {
        *self.socket.borrow_mut() = Some(connection.stream);
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        self.state.set(State::Up);
        let mut slots: Vec<Rc<Slot>> = self.inflight.borrow().values().cloned().collect();
        slots.sort_by_key(|slot| slot.seq);
        *self.queue.borrow_mut() = slots.into();
        self.live_tasks.set(self.live_tasks.get() + 2);
        self.executor
            .spawn(sender(self.clone(), generation))
            .detach();
        self.executor
            .spawn(receiver(self.clone(), generation))
            .detach();
    }

    /// Reports that the connection of `generation` failed; starts reconnecting once.
    fn fail(self: &Rc<Self>, generation: u64, error: &HostError) {
        if self.stale(generation) {
            return;
        }
        log::warn!("{:?}: lane lost: {error}", self.purpose);
        self.state.set(State::Down {
            since: Instant::now(),
            expired: false,
        });
        self.shutdown_socket();
        self.wake_sender();
        self.executor.spawn(reconnect(self.clone())).detach();
    }

    fn task_exited(&self) {
        self.live_tasks.set(self.live_tasks.get() - 1);
        self.wake_idle();
    }

    async fn tasks_gone(&self) {
        std::future::poll_fn(|cx| {
            if self.live_tasks.get() == 1 {
                Poll::Ready(())
            } else {
                self.idle_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Fails everything pending once the outage outlasts the deadline.
    fn expire_if_late(&self) {
        if let State::Down {
            since,
            expired: false,
        } = self.state.get()
        {
            if since.elapsed() >= self.config.reconnect_deadline {
                log::error!(
                    "{:?}: down for {:.1} s, failing its requests with EIO",
                    self.purpose,
                    since.elapsed().as_secs_f64()
                );
                self.state.set(State::Down {
                    since,
                    expired: true,
                });
                self.fail_pending(Errno::EIO);
            }
        }
    }

    fn deadline_left(&self) -> Option<std::time::Duration> {
        match self.state.get() {
            State::Down {
                since,
                expired: false,
            } => Some(
                self.config
                    .reconnect_deadline
                    .saturating_sub(since.elapsed()),
            ),
            _ => None,
        }
    }
}

async fn sender(lane: Rc<Lane>, generation: u64) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        std::future::poll_fn(|cx| {
            if lane.stale(generation) || !lane.queue.borrow().is_empty() {
                Poll::Ready(())
            } else {
                *lane.sender_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if lane.stale(generation) {
            break;
        }
        lane.take_batch(&mut batch);
        let sent = send_batch(lane.fd(), &batch).await;
        for slot in batch.drain(..) {
            slot.set_busy(false);
        }
        if let Err(error) = sent {
            lane.fail(generation, &error);
            break;
        }
    }
    lane.task_exited();
}

async fn receiver(lane: Rc<Lane>, generation: u64) {
    let fd = lane.fd();
    let limits = wire::Limits::data(lane.max_io);
    let error = receive_replies(&lane, fd, limits).await;
    lane.fail(generation, &error);
    lane.task_exited();
}

/// Waits for the old connection's tasks to stop, then reconnects (off-thread) until it
/// succeeds or the lane closes, failing pending requests once the deadline passes.
async fn reconnect(lane: Rc<Lane>) {
    lane.live_tasks.set(lane.live_tasks.get() + 1);
    lane.tasks_gone().await;
    *lane.socket.borrow_mut() = None;
    let mailbox = match EventFd::new() {
        Ok(event) => Arc::new(Mailbox::new(event)),
        Err(e) => {
            log::error!("{:?}: cannot reconnect: {e}", lane.purpose);
            lane.close();
            lane.task_exited();
            return;
        }
    };
    *lane.mailbox.borrow_mut() = Some(mailbox.clone());
    spawn_helper(lane.config.client.clone(), lane.purpose, mailbox.clone());
    loop {
        mailbox.event.wait(lane.deadline_left()).await;
        if lane.state.get() == State::Closed {
            break;
        }
        if let Some(connection) = mailbox.take() {
            let mut stats = lane.stats.get();
            stats.reconnects += 1;
            lane.stats.set(stats);
            lane.install(connection);
            break;
        }
        lane.expire_if_late();
    }
    *lane.mailbox.borrow_mut() = None;
    lane.task_exited();
}

/// What a lane's transfer helpers need from it.
impl Lane {
    /// Whether the operation with this op expects read data in a successful reply.
    pub fn expects_data(request: &Request) -> bool {
        request.op == Op::Read
    }
}
