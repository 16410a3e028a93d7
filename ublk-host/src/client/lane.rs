//! A lane: one persistent, authenticated TCP connection owned by one queue, driven on the
//! queue's io_uring. The decisions are [`LaneCore`]'s (sans-IO); this module carries them
//! out.
//!
//! Each lane is one task ([`Lane::open`] returns it; the engine owns it): a life loop
//! (install a connection, run its sender and receiver until the connection fails, wait
//! for the reconnect helper, again) zipped with a clock that ticks the core every
//! [`TICK`] (heartbeats, dead-lane detection, the failure policy). The sender drains the
//! core's queue in batches (one `sendmsg` of several frames, header and payload iovecs
//! straight from the callers' buffers, short sends resumed); the receiver reads replies,
//! matches tags in any order and receives a read's data straight into its slot's buffer.
//! A connection's file descriptor is closed only after both its sender and receiver
//! ended, so no operation ever runs on a reused descriptor.
//!
//! With several paths, a lane belongs to one (its home) but (re)connects over any: its
//! home first, then the others, and while it runs over another path's network it keeps
//! trying its home in the background and moves back once that answers (see `paths.rs`
//! for why moving is safe for writes).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use wire::{Features, Op, PartitionInfo, Purpose, Request, Status, FLAG_RUN};

use crate::client::config::{EngineConfig, HEARTBEAT_AFTER};
use crate::client::connect::{bytes_received, next_lane_epoch, Connection};
use crate::client::lane_core::{Action, Kind, LaneCore, LaneStats, Link, Timers};
use crate::client::paths::reconnect_order;
use crate::client::ratelog::RateLimited;
use crate::client::receive::{check_reply, RecvBuf};
use crate::client::reconnect::{connect_first, spawn_helper, Delivery, Mailbox};
use crate::client::slot::{BufRef, Slot};
use crate::client::transfer::send_batch;
use crate::client::uring::{sleep, EventFd};
use crate::error::{Errno, HostError, Result};

/// Most frames one `sendmsg` carries.
const MAX_BATCH: usize = 64;
/// Largest read a lane lets go into a run. A larger read's head costs little beside its
/// data, and it comes alone, received with the socket's low-water mark raised to it (one
/// wakeup when all of it is there; see `receive`), which a run's chain of receives cannot
/// do.
const RUN_READ_MAX: u32 = 64 * 1024;
/// How often the lane's clock ticks its core (the resolution of heartbeats, dead-lane
/// detection and the failure policy).
pub const TICK: Duration = Duration::from_millis(250);

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
    /// The payload of a write, the destination of a read; [`BufRef::None`] otherwise.
    pub buf: BufRef,
}

/// One lane of a queue.
#[derive(Debug)]
pub(crate) struct Lane {
    config: Rc<EngineConfig>,
    purpose: Purpose,
    max_io: u32,
    core: RefCell<LaneCore<Rc<Slot>>>,
    socket: RefCell<Option<TcpStream>>,
    sender_waker: RefCell<Option<Waker>>,
    mailbox: RefCell<Option<Arc<Mailbox>>>,
    /// The lane's own path.
    home: usize,
    /// The path the current (or last) connection runs on.
    via: Cell<usize>,
    /// The path the device's path counters last heard the lane is connected over.
    published: Cell<Option<usize>>,
    /// The background attempts to get back home while running over another path.
    homing: RefCell<Option<Arc<Mailbox>>>,
    /// A connection home that arrived and replaces the current one once it is down.
    pending: RefCell<Option<(Connection, usize)>>,
    /// Requests failed at once (lane down past its bound, refused, closed).
    failures: RateLimited,
    /// The connection's received byte count at the last tick ([`bytes_received`]).
    received: Cell<u64>,
    /// Reads go out flagged `FLAG_RUN` (a zero-copy lane, and the server offers runs):
    /// their replies may come in runs, and the receiver does not look ahead.
    runs: bool,
}

impl Lane {
    /// Connects lane `lane` (the wire lane number) of `queue` for `partition`, whose home
    /// is path `home` (blocking, within the handshake deadline per path tried: home
    /// first) and starts its task on `executor`; the caller owns the task.
    pub fn open(
        config: Rc<EngineConfig>,
        partition: &PartitionInfo,
        (queue, lane, home): (u16, u16, usize),
        executor: &smol::LocalExecutor<'static>,
    ) -> Result<(Rc<Lane>, PartitionInfo, smol::Task<()>)> {
        let purpose = Purpose::Data {
            partition: partition.id,
            queue,
            lane,
            epoch: next_lane_epoch(),
        };
        let (connection, via) = connect_first(&config.client, &path_order(&config, home), purpose)?;
        let info = connection.welcome.partition.clone().ok_or_else(|| {
            HostError::Protocol("a data connection's Welcome carries no partition".into())
        })?;
        if info.id != partition.id {
            return Err(HostError::Protocol(format!(
                "asked for partition {}, the server opened {}",
                partition.id, info.id
            )));
        }
        let runs = config.zero_copy && info.features.contains(Features::REPLY_RUNS);
        let timers = Timers {
            heartbeat_after: HEARTBEAT_AFTER.min(config.client.dead_after),
            dead_after: config.client.dead_after,
            fail_after: config.fail_after(),
        };
        let lane = Rc::new(Lane {
            config,
            purpose,
            max_io: connection.welcome.max_io,
            core: RefCell::new(LaneCore::new(timers, Instant::now())),
            socket: RefCell::new(None),
            sender_waker: RefCell::new(None),
            mailbox: RefCell::new(None),
            home,
            via: Cell::new(via),
            published: Cell::new(None),
            homing: RefCell::new(None),
            pending: RefCell::new(None),
            failures: RateLimited::default(),
            received: Cell::new(0),
            runs,
        });
        let task = executor.spawn(run(lane.clone(), connection));
        Ok((lane, info, task))
    }

    /// Largest payload the server accepts on this lane.
    pub fn max_io(&self) -> u32 {
        self.max_io
    }

    /// The lane's counters.
    pub fn stats(&self) -> LaneStats {
        self.core.borrow().stats()
    }

    /// The lane's own path.
    pub fn home(&self) -> usize {
        self.home
    }

    /// The path the lane's connection runs on (its home, or another while it is cut).
    pub fn via(&self) -> usize {
        self.via.get()
    }

    /// Whether the lane is connected.
    pub fn is_up(&self) -> bool {
        self.core.borrow().link() == Link::Up
    }

    /// Payload bytes of the requests outstanding on the lane.
    pub fn outstanding_bytes(&self) -> u64 {
        self.core.borrow().outstanding_bytes()
    }

    /// Issues one request; the returned slot finishes when its reply (or failure) is in.
    ///
    /// # Safety
    ///
    /// `request.buf` must satisfy [`Slot::new`]'s contract for the request.
    pub unsafe fn start(&self, request: PartRequest, keep: Option<Rc<dyn Any>>) -> Rc<Slot> {
        let admitted = self.core.borrow_mut().begin(Kind::Request);
        if admitted.is_ok() {
            let path_stats = &self.config.path_stats;
            path_stats.issued(self.via(), request.len.into());
        }
        let run = match request.op {
            Op::Read if self.runs && request.len <= RUN_READ_MAX => FLAG_RUN,
            _ => 0,
        };
        let wire_request = Request {
            tag: *admitted.as_ref().unwrap_or(&0),
            op: request.op,
            offset: request.offset,
            len: request.len,
            flags: request.flags | run,
        };
        // SAFETY: the caller vouches for `request.buf`.
        let slot = Rc::new(unsafe { Slot::new(wire_request, request.buf, keep) });
        match admitted {
            Ok(tag) => {
                let now = Instant::now();
                if self.core.borrow_mut().track(
                    tag,
                    slot.clone(),
                    Kind::Request,
                    request.len.into(),
                    now,
                ) {
                    self.wake_sender();
                }
            }
            Err(errno) => {
                self.failures.log(log::Level::Warn, || {
                    let why = match self.core.borrow().link() {
                        Link::Refused { .. } => "the server refused the lane",
                        Link::Closed => "the lane is closed",
                        Link::Up | Link::Down { .. } => "the server is lost past the policy bound",
                    };
                    format!("{:?}: failing I/O with {errno}: {why}", self.purpose)
                });
                slot.finish(Err(errno));
            }
        }
        slot
    }

    /// Closes the lane: its task ends, requests still pending fail with `EIO`.
    pub fn close(&self) {
        if self.core.borrow().link() == Link::Closed {
            return;
        }
        let pending = self.core.borrow_mut().close();
        if let Some(mailbox) = self.mailbox.borrow().as_ref() {
            mailbox.stop();
        }
        self.stop_homing();
        self.pending.take();
        self.shutdown_socket();
        finish_all(pending, Err(Errno::EIO));
        self.wake_sender();
    }

    fn is_closed(&self) -> bool {
        self.core.borrow().link() == Link::Closed
    }

    /// Bytes that arrived since the last tick are news from the server, even while one
    /// large reply is still coming (the receiver only reports whole replies): a slow
    /// stream is not a dead one.
    fn hear_progress(&self, now: Instant) {
        let total = self.socket.borrow().as_ref().and_then(bytes_received);
        if let Some(total) = total {
            if self.received.replace(total) != total {
                self.core.borrow_mut().heard(now);
            }
        }
    }

    fn shutdown_socket(&self) {
        if let Some(socket) = self.socket.borrow().as_ref() {
            // Makes the pending receive and send of the connection complete.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    fn wake_sender(&self) {
        if let Some(waker) = self.sender_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Puts a fresh connection, running on path `via`, in service; returns its
    /// generation.
    fn install(&self, connection: Connection, via: usize) -> u64 {
        self.via.set(via);
        if via == self.home {
            self.stop_homing();
        } else {
            log::warn!(
                "{:?}: running over path {via} while path {} is out",
                self.purpose,
                self.home
            );
            self.start_homing();
        }
        self.config
            .durability
            .observe_boot_epoch(connection.welcome.boot_epoch);
        *self.socket.borrow_mut() = Some(connection.stream);
        let (generation, probes) = self.core.borrow_mut().connected(Instant::now());
        finish_all(probes, Ok(()));
        self.wake_sender();
        generation
    }

    /// Reports that the connection of `generation` failed.
    fn lost(&self, generation: u64, error: &HostError) {
        let news = self
            .core
            .borrow_mut()
            .connection_lost(generation, Instant::now());
        if news {
            log::warn!("{:?}: lane lost: {error}", self.purpose);
            self.shutdown_socket();
            self.wake_sender();
        }
    }

    /// Puts back a request whose reply was cut off (or fails it, if the lane holds no
    /// requests any more).
    fn restore(&self, tag: u32, slot: Rc<Slot>) {
        let bytes = slot.request.len.into();
        let restored = self.core.borrow_mut().restore(tag, slot, bytes);
        if let Err((slot, errno)) = restored {
            slot.finish(Err(errno));
        }
    }

    /// Starts trying the lane's home path in the background (if not already).
    fn start_homing(&self) {
        if self.homing.borrow().is_some() {
            return;
        }
        let Ok(event) = EventFd::new() else {
            return; // stays on the borrowed path; a later reconnect tries home first
        };
        let mailbox = Arc::new(Mailbox::new(event));
        let home = vec![(self.home, self.config.client.paths()[self.home].clone())];
        if spawn_helper(
            self.config.client.clone(),
            home,
            self.purpose,
            mailbox.clone(),
        )
        .is_ok()
        {
            *self.homing.borrow_mut() = Some(mailbox);
        }
    }

    fn stop_homing(&self) {
        if let Some(mailbox) = self.homing.take() {
            mailbox.stop();
        }
    }

    /// Takes a connection home the homing helper made: the current connection (already
    /// fenced by the server) is dropped and the new one installed in its place.
    fn check_homing(&self) {
        if self.take_homing() {
            self.shutdown_socket();
        }
    }

    /// Moves a connection the homing helper delivered to `pending`; whether there was one.
    fn take_homing(&self) -> bool {
        let delivered = self.homing.borrow().as_ref().and_then(|m| m.take());
        let Some(Delivery::Connected(connection, via)) = delivered else {
            return false;
        };
        log::info!("{:?}: path {via} is back; moving home", self.purpose);
        self.stop_homing();
        *self.pending.borrow_mut() = Some((connection, via));
        true
    }

    /// Tells the device's path counters which path the lane's connection runs on now, if
    /// that changed since the last tick.
    fn publish_path(&self) {
        let now = self.is_up().then(|| self.via());
        let before = self.published.replace(now);
        self.config.path_stats.lane_moved(before, now);
    }

    /// Carries out one tick of the core.
    fn tick(&self) {
        self.publish_path();
        self.check_homing();
        let now = Instant::now();
        self.hear_progress(now);
        let action = self.core.borrow_mut().tick(now);
        match action {
            Action::Idle => {}
            Action::Heartbeat(tag) => {
                let probe = Request {
                    tag,
                    op: Op::Heartbeat,
                    offset: 0,
                    len: 0,
                    flags: 0,
                };
                // SAFETY: a heartbeat carries no data; the buffer is never used.
                let slot = Rc::new(unsafe { Slot::new(probe, BufRef::None, None) });
                if self.core.borrow_mut().track(tag, slot, Kind::Probe, 0, now) {
                    self.wake_sender();
                }
            }
            Action::Dead => {
                log::warn!(
                    "{:?}: nothing from the server for {:.1} s with requests outstanding; \
                     dropping the lane to reconnect and reissue",
                    self.purpose,
                    self.config.client.dead_after.as_secs_f64()
                );
                self.shutdown_socket();
                self.wake_sender();
            }
            Action::Fail(slots) => {
                log::error!(
                    "{:?}: server lost for {:.1} s (the device's failure policy): failing {} \
                     request(s), and new ones until it is back, with EIO",
                    self.purpose,
                    self.config.fail_after().as_secs_f64(),
                    slots.len()
                );
                finish_all(slots, Err(Errno::EIO));
            }
        }
    }

    /// Waits for the reconnect helper; `None` once the lane is closed.
    async fn reconnect(&self) -> Option<(Connection, usize)> {
        if self.is_closed() {
            return None;
        }
        // The homing connection may have fenced the current one before a tick saw it.
        self.take_homing();
        if let Some(home) = self.pending.take() {
            return Some(home);
        }
        // The reconnect below tries home first; one helper at a time.
        self.stop_homing();
        let mailbox = match EventFd::new() {
            Ok(event) => Arc::new(Mailbox::new(event)),
            Err(error) => return self.give_up(&error),
        };
        let order = path_order(&self.config, self.home);
        let spawned = spawn_helper(
            self.config.client.clone(),
            order,
            self.purpose,
            mailbox.clone(),
        );
        if let Err(error) = spawned {
            return self.give_up(&error);
        }
        *self.mailbox.borrow_mut() = Some(mailbox.clone());
        let connection = loop {
            // SAFETY: awaited to completion right here.
            unsafe { mailbox.event.wait(None) }.await;
            if self.is_closed() {
                break None;
            }
            match mailbox.take() {
                Some(Delivery::Connected(connection, via)) => break Some((connection, via)),
                Some(Delivery::Refused(errno)) => {
                    let pending = self.core.borrow_mut().refused(errno);
                    finish_all(pending, Err(errno));
                }
                None => {}
            }
        };
        mailbox.stop();
        *self.mailbox.borrow_mut() = None;
        connection
    }

    fn give_up(&self, error: &HostError) -> Option<(Connection, usize)> {
        log::error!(
            "{:?}: cannot reconnect, closing the lane: {error}",
            self.purpose
        );
        self.close();
        None
    }
}

/// Where a lane whose home is `home` (re)connects: see [`reconnect_order`].
fn path_order(config: &EngineConfig, home: usize) -> Vec<(usize, String)> {
    reconnect_order(config.client.paths(), home)
}

fn finish_all(slots: Vec<Rc<Slot>>, outcome: std::result::Result<(), Errno>) {
    for slot in slots {
        slot.finish(outcome);
    }
}

/// The lane's task: its life and its clock, until it is closed.
async fn run(lane: Rc<Lane>, first: Connection) {
    smol::future::zip(life(&lane, first), clock(&lane)).await;
    lane.config
        .path_stats
        .lane_moved(lane.published.take(), None);
}

/// Serves connections one after the other until the lane is closed.
async fn life(lane: &Lane, first: Connection) {
    let mut connection = (first, lane.via());
    loop {
        let fd = connection.0.stream.as_raw_fd();
        let run_bytes = request_runs(&connection.0);
        let generation = lane.install(connection.0, connection.1);
        let sending = sender(lane, generation, fd, run_bytes);
        smol::future::zip(sending, receiver(lane, generation, fd)).await;
        // Both users of the descriptor are done: now it may close.
        *lane.socket.borrow_mut() = None;
        match lane.reconnect().await {
            Some(next) => connection = next,
            None => return,
        }
    }
}

/// Ticks the core every [`TICK`] until the lane is closed.
async fn clock(lane: &Lane) {
    while !lane.is_closed() {
        // SAFETY: awaited to completion right here.
        unsafe { sleep(TICK) }.await;
        lane.tick();
    }
}

/// Whether this connection's server takes request runs (see `request_run`), and their
/// largest payload (its `max_io`). Decided per connection: a lane may reconnect to a
/// server that does not.
fn request_runs(connection: &Connection) -> Option<u32> {
    let welcome = &connection.welcome;
    let features = welcome.partition.as_ref()?.features;
    features
        .contains(Features::REQUEST_RUNS)
        .then_some(welcome.max_io)
}

async fn sender(lane: &Lane, generation: u64, fd: RawFd, run_bytes: Option<u32>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        std::future::poll_fn(|cx| {
            let core = lane.core.borrow();
            if !core.is_current(generation) || core.has_queued() {
                Poll::Ready(())
            } else {
                *lane.sender_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !lane.core.borrow().is_current(generation) {
            return;
        }
        lane.core.borrow_mut().next_batch(&mut batch, MAX_BATCH);
        batch.iter().for_each(|slot| slot.set_busy(true));
        let sent = send_batch(fd, &batch, run_bytes).await;
        batch.drain(..).for_each(|slot| slot.set_busy(false));
        match sent {
            Ok((0, _)) => {}
            Ok((runs, writes)) => lane.core.borrow_mut().sent_runs(runs, writes),
            Err(error) => {
                lane.lost(generation, &error);
                return;
            }
        }
    }
}

async fn receiver(lane: &Lane, generation: u64, fd: RawFd) {
    let error = receive_replies(lane, fd).await;
    lane.lost(generation, &error);
}

/// A reply's slot taken ahead of its head: a zero-copy lane saw the reply's whole frame in
/// the socket ([`RecvBuf::peek_frames`]) and received it in a chain with others
/// ([`RecvBuf::receive_chain`]); the head waits in the lane's buffer.
struct TakenAhead {
    tag: u32,
    slot: Rc<Slot>,
    /// Payload bytes already in the slot's buffer.
    received: usize,
}

/// Runs the receive side until the connection fails; returns why it stopped.
async fn receive_replies(lane: &Lane, fd: RawFd) -> HostError {
    let limits = wire::Limits::data(lane.max_io);
    let mut buf = RecvBuf::new(limits);
    let mut ahead = VecDeque::new();
    let mut later = Vec::new();
    let error = receive_loop(lane, fd, &mut buf, &mut ahead, &mut later).await;
    // Requests whose replies were seen but not finished are reissued like any other.
    for taken in ahead {
        lane.restore(taken.tag, taken.slot);
    }
    for slot in later {
        lane.restore(slot.request.tag, slot);
    }
    error
}

async fn receive_loop(
    lane: &Lane,
    fd: RawFd,
    buf: &mut RecvBuf,
    ahead: &mut VecDeque<TakenAhead>,
    later: &mut Vec<Rc<Slot>>,
) -> HostError {
    loop {
        // With runs the server gathers a batch's read replies itself: looking ahead would
        // only copy their data once more (see `receive/run.rs`).
        if lane.config.zero_copy && !lane.runs && ahead.is_empty() {
            if let Err(error) = receive_ahead(lane, fd, buf, ahead).await {
                return error;
            }
        }
        let reply = match buf.next_reply(fd, lane.config.zero_copy).await {
            Ok(reply) => reply,
            Err(error) => return error,
        };
        if reply.status == Status::Run {
            if let Err(error) = receive_run(lane, fd, buf, &reply, later).await {
                return error;
            }
            continue;
        }
        let (slot, received) = match ahead.pop_front() {
            Some(taken) if taken.tag == reply.tag => (taken.slot, taken.received),
            Some(taken) => {
                let seen = taken.tag;
                ahead.push_front(taken);
                return HostError::Protocol(format!(
                    "reply for tag {} where the stream showed tag {seen}",
                    reply.tag
                ));
            }
            None => match lane.core.borrow_mut().reply(reply.tag, Instant::now()) {
                Some(slot) => (slot, 0),
                None => return HostError::Protocol(format!("reply for unknown tag {}", reply.tag)),
            },
        };
        if let Err(error) = check_reply(&slot, &reply) {
            lane.restore(reply.tag, slot);
            return error;
        }
        if reply.status == Status::Later {
            // Out of the in-flight set now, its data still to come: the lane stays
            // watched for a dead server until the run is in.
            lane.core.borrow_mut().set_receiving(true);
            later.push(slot); // a lane with runs does not look ahead: nothing received yet
            continue;
        }
        if reply.len > 0 {
            let len = reply.len as usize;
            lane.core.borrow_mut().set_receiving(true);
            let outcome = buf.receive_payload(fd, &slot, len, received).await;
            lane.core.borrow_mut().set_receiving(!later.is_empty());
            if let Err(error) = outcome {
                lane.restore(reply.tag, slot);
                return error;
            }
            lane.core.borrow_mut().heard(Instant::now());
        }
        slot.finish(match reply.status {
            Status::Errno(e) => Err(Errno(e)),
            _ => Ok(()),
        });
    }
}

/// Receives the data of a run (`reply`, a `Run` frame's head) into the buffers of the
/// `later` replies before it, and finishes them. A run that does not match them in count
/// (here) or bytes (`RecvBuf::receive_run`) is a protocol error; on any error the
/// unfinished ones stay in `later`, to be reissued.
async fn receive_run(
    lane: &Lane,
    fd: RawFd,
    buf: &mut RecvBuf,
    reply: &wire::Reply,
    later: &mut Vec<Rc<Slot>>,
) -> Result<()> {
    if reply.tag as usize != later.len() {
        return Err(HostError::Protocol(format!(
            "a run of {} replies after {} Later replies",
            reply.tag,
            later.len()
        )));
    }
    let finished = Cell::new(0);
    let outcome = buf
        .receive_run(fd, later, |i| {
            later[i].finish(Ok(()));
            finished.set(i + 1);
        })
        .await;
    let replies = later.len();
    // Finished slots are done with; the rest stay in `later`, reissued on an error.
    later.drain(..finished.get());
    outcome?;
    let mut core = lane.core.borrow_mut();
    core.set_receiving(false);
    core.heard(Instant::now());
    core.ran(replies);
    Ok(())
}

/// On a zero-copy lane, between replies: waits for the next bytes, and receives every
/// whole frame in view in one chain of ring operations, their data straight into their
/// slots' fixed buffers; the slots are taken now and wait in `ahead` until their heads
/// are decoded. Receives nothing (the usual path then takes the next reply) when the
/// first frame is not whole yet, carries a large payload, or does not fit the chain.
async fn receive_ahead(
    lane: &Lane,
    fd: RawFd,
    buf: &mut RecvBuf,
    ahead: &mut VecDeque<TakenAhead>,
) -> Result<()> {
    let mut chain = Vec::new();
    for seen in buf.peek_frames(fd).await? {
        let tag = seen.reply.tag;
        let Some(next) = lane.core.borrow_mut().reply(tag, Instant::now()) else {
            break; // its head reports the unknown tag when it is decoded
        };
        ahead.push_back(TakenAhead {
            tag,
            slot: next.clone(),
            received: 0,
        });
        // Only what the chain can put in place: a payload to a fixed buffer, of the
        // length its request expects; anything else waits for the usual path (which
        // reports what is wrong with it).
        let fits =
            check_reply(&next, &seen.reply).is_ok() && (seen.reply.len == 0 || next.buf.is_fixed());
        if !fits {
            break;
        }
        chain.push((seen, next));
    }
    if chain.is_empty() {
        return Ok(());
    }
    let received = buf.receive_chain(fd, &chain).await?;
    for (taken, received) in ahead.iter_mut().zip(received) {
        taken.received = received;
    }
    Ok(())
}
