//! Data sessions ("lanes"): block requests on one partition, run concurrently up to
//! `max_in_flight`, answered in any order by one writer task.
//!
//! # What one lane may cost
//!
//! Every request holds a slot (one of `max_in_flight`) from before its header is read
//! until its reply has left through the socket, and reads and writes also hold their
//! length in bytes of the lane's byte budget (`max_lane_bytes`, at least `max_io`) for
//! the same span: the reply carries both (a [`Credit`]) to the writer, which releases
//! them once the send completed. When either runs out the reader stops reading the
//! socket, so a peer that sends requests and never reads replies holds at most
//! `max_lane_bytes` of data buffers plus `max_in_flight` reply heads, and TCP pushes back.
//! The bytes also come from the host's budget (`max_host_bytes`, at least `max_io`),
//! which all its lanes share: a host that opens many such lanes holds at most that much.
//!
//! # Revocation
//!
//! Every disk operation, every write payload received into a disk mapping and every send
//! of read data straight from a mapping runs under a [`DiskPass`] of the lane's gate (see
//! [`crate::array::gate`]); a revoked lane's socket is shut down by the committer itself.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio_uring::buf::{BoundedBuf, IoBuf, Slice};
use tokio_uring::net::TcpStream;
use wire::frame::{self, Limits};
use wire::{Op, Reply, Request, Status, MAX_RUN_REQUESTS};

use super::budget::{Credit, LaneBudget};
use super::frames::FrameReader;
use super::reply_queue::{reply_queue, Receiver, Sender};
use super::reply_run::Run;
use super::sessions::{AdmittedGuard, LaneCounters, Session};
use super::Shared;
use crate::array::gate::{DiskPass, LaneGate};
use crate::array::grant::LaneGrant;
use crate::array::io::buffer::{AlignedBuf, DATA_OFFSET};
use crate::array::io::{Command, DiskSet, Done, MappedSlice, Payload, MAX_MAPPED_PIECES};
use crate::error::{Error, Result};

/// What the writer task sends.
enum Outgoing {
    /// A reply frame without payload.
    Head(Vec<u8>),
    /// A read reply: frame head and data, contiguous in `buffer[start..]`.
    Data { buffer: AlignedBuf, start: usize },
    /// A read reply: frame head, then the data straight from the disks' mappings.
    Mapped {
        head: Vec<u8>,
        data: Vec<MappedSlice>,
    },
    /// A read reply the host lets go into a run (`FLAG_RUN`; see `reply_run`).
    RunRead { tag: u32, len: u32, data: RunData },
}

/// The data of a read reply bound for a run.
enum RunData {
    /// In an aligned buffer's data area.
    Buffer(AlignedBuf),
    /// Straight from the disks' mappings.
    Mapped(Vec<MappedSlice>),
}

/// One lane's state, shared by its reader and its request tasks (one thread).
struct Lane {
    shared: Arc<Shared>,
    disks: Rc<DiskSet>,
    host: String,
    partition: u32,
    grant: RefCell<Arc<LaneGrant>>,
    gate: Arc<LaneGate>,
    session: Arc<Session>,
    replies: Sender<(Outgoing, Credit)>,
}

/// Serves one data connection until the peer leaves, a frame does not decode, or the
/// assignment is revoked.
pub async fn serve(
    shared: Arc<Shared>,
    disks: Rc<DiskSet>,
    stream: Rc<TcpStream>,
    mut reader: FrameReader,
    session: Arc<Session>,
    grant: Arc<LaneGrant>,
) -> Result<()> {
    // A newer connection for this lane claimed it while this one was being welcomed: it
    // must not serve anything (fencing, see sessions.rs).
    if !shared
        .sessions
        .still_claimed(&session.host, session.purpose)
    {
        log::info!(
            "session {}: replaced before it started; closing",
            session.id
        );
        return Ok(());
    }
    // Unregistered (dropped) before this returns, so before the socket is closed.
    let Some(registration) = shared
        .array
        .register_lane(&session.host, &grant, stream.as_raw_fd())
    else {
        log::info!(
            "host {:?} lost partition {} during its handshake; closing the lane",
            session.host,
            grant.info.id
        );
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Ok(());
    };
    // The channel holds at most one message per slot: every message carries one.
    let (replies, outgoing) = reply_queue();
    let gate = registration.gate.clone();
    let max_io = shared.config.max_io;
    let writer = tokio_uring::spawn(write_replies(
        stream.clone(),
        gate.clone(),
        outgoing,
        max_io,
    ));
    let budget = LaneBudget::new(
        shared.config.max_in_flight,
        lane_byte_budget(&shared.config),
        shared
            .sessions
            .host_bytes(&session.host, host_byte_budget(&shared.config)),
    );
    let lane = Rc::new(Lane {
        host: session.host.clone(),
        partition: grant.info.id,
        shared,
        disks,
        grant: RefCell::new(grant),
        gate,
        session,
        replies,
    });
    // Fencing: a newer connection for this lane shuts this socket down (see sessions.rs).
    let fence = tokio_uring::spawn(close_on_fence(lane.session.clone(), stream.clone()));
    let outcome = read_requests(&lane, &mut reader, &budget).await;
    fence.abort();
    if outcome.is_err() {
        // Close at once: queued replies need not reach a peer that broke the protocol,
        // and a pending send to one that stopped reading ends with this.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    drop(lane);
    let _ = writer.await;
    // A writer that failed leaves requests running; the gate stays registered until they
    // are done, so a revocation still waits for their disk work.
    budget.drained().await;
    drop(registration);
    outcome
}

/// Bytes of reads and writes one lane may hold at once (see the module docs).
fn lane_byte_budget(config: &super::ServerConfig) -> u64 {
    u64::from(config.max_lane_bytes.max(config.max_io))
}

/// Bytes of reads and writes all the lanes of one host may hold at once.
fn host_byte_budget(config: &super::ServerConfig) -> u64 {
    config.max_host_bytes.max(u64::from(config.max_io))
}

/// Shuts the socket down once a newer connection for the same lane fences this one: the
/// reader and writer then end; requests already admitted finish (the fence waits).
async fn close_on_fence(session: Arc<Session>, stream: Rc<TcpStream>) {
    session.fenced().await;
    log::info!(
        "session {}: fenced by a newer connection; closing",
        session.id
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

async fn read_requests(
    lane: &Rc<Lane>,
    reader: &mut FrameReader,
    budget: &Rc<LaneBudget>,
) -> Result<()> {
    let max_io = lane.shared.config.max_io;
    let limits = Limits::data(max_io);
    let mut later = LaterWrites::default();
    loop {
        let slot = budget.slot().await;
        let Some(prefix) = reader.next_head(limits).await? else {
            return Ok(());
        };
        let request = frame::decode_request(reader.header(&prefix), prefix)?;
        reader.consume_head(&prefix);
        if request.data_later() {
            later.hold(request, max_io)?;
            continue;
        }
        let flow = match request.op {
            Op::Run => serve_run(lane, reader, budget, slot, later.take(&request)?).await?,
            _ => serve_request(lane, reader, budget, slot, request).await?,
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
}

/// Whether the lane reads on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The lane was revoked: its reader stops.
    Stop,
}

/// The heads of writes flagged `FLAG_LATER` whose data the next `Op::Run` brings (see
/// `wire::FLAG_LATER`). A held head costs no slot and no bytes of the lane's budget (so
/// a run can never wait on budget its own writes hold): it is admitted, and takes both,
/// when its data arrives, exactly as a write whose data follows its head.
#[derive(Debug, Default)]
struct LaterWrites {
    heads: Vec<Request>,
    bytes: u64,
}

impl LaterWrites {
    /// Holds `write` until its run; a lane's peer that holds more than
    /// `MAX_RUN_REQUESTS` heads or a write larger than `max_io` breaks the protocol.
    fn hold(&mut self, write: Request, max_io: u32) -> Result<()> {
        if self.heads.len() >= MAX_RUN_REQUESTS as usize || write.len > max_io {
            return Err(malformed_run(format!(
                "a later write of {} bytes after {} held (at most {MAX_RUN_REQUESTS}, each at \
                 most {max_io} bytes)",
                write.len,
                self.heads.len()
            )));
        }
        self.bytes += u64::from(write.len);
        self.heads.push(write);
        Ok(())
    }

    /// The held heads, in order, for `run`: it must carry as many writes and exactly
    /// their bytes.
    fn take(&mut self, run: &Request) -> Result<Vec<Request>> {
        if run.tag as usize != self.heads.len() || u64::from(run.len) != self.bytes {
            return Err(malformed_run(format!(
                "a run of {} writes and {} bytes after {} later writes of {} bytes",
                run.tag,
                run.len,
                self.heads.len(),
                self.bytes
            )));
        }
        self.bytes = 0;
        Ok(std::mem::take(&mut self.heads))
    }
}

/// A request run that breaks the protocol: the lane closes, as for any malformed frame.
fn malformed_run(reason: String) -> Error {
    Error::Wire(wire::WireError::Malformed {
        what: "Request",
        reason,
    })
}

/// Serves the writes of a run, each as its data arrives, in order; the run's own slot
/// goes to the first.
async fn serve_run(
    lane: &Rc<Lane>,
    reader: &mut FrameReader,
    budget: &Rc<LaneBudget>,
    slot: Credit,
    writes: Vec<Request>,
) -> Result<Flow> {
    let mut slot = Some(slot);
    for write in writes {
        let slot = match slot.take() {
            Some(slot) => slot,
            None => budget.slot().await,
        };
        if serve_request(lane, reader, budget, slot, write).await? == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// Admits one request (its head read, its slot held), receives a write's payload, and
/// starts it; or answers it with its error.
async fn serve_request(
    lane: &Rc<Lane>,
    reader: &mut FrameReader,
    budget: &Rc<LaneBudget>,
    slot: Credit,
    request: Request,
) -> Result<Flow> {
    // Counted from here until the request is finished (fencing waits for it).
    let ticket = lane.session.admit();
    // Admitted first (range, access), so that a write's payload can be received
    // straight into the disks' mappings; a refused write's payload is drained into a
    // buffer and dropped, never written.
    let admitted = lane.admit(&request);
    let credit = match (&admitted, request.op) {
        (Ok(_), Op::Read | Op::Write) => budget.add_bytes(slot, request.len.into()).await,
        _ => slot,
    };
    match admitted {
        Ok(grant) => {
            let command = plan(lane, reader, &grant, &request).await?;
            start(lane, request, command, credit, ticket);
        }
        Err(Error::Revoked) => {
            log::info!(
                "host {:?} lost partition {}; closing lane",
                lane.host,
                lane.partition
            );
            lane.reply_error(&request, &Error::Revoked, credit);
            return Ok(Flow::Stop);
        }
        Err(error) => {
            if request.op == Op::Write {
                drop(reader.read_payload(request.len as usize).await?);
            }
            lane.reply_error(&request, &error, credit);
        }
    }
    Ok(Flow::Continue)
}

/// Turns an admitted request into its command (none for a heartbeat, which touches no
/// disk), with its stripe plan; a write's payload is received on the way: straight into the disks' mappings when every piece is on a
/// mapped disk (under a pass of the lane's gate), else into a buffer.
async fn plan(
    lane: &Lane,
    reader: &mut FrameReader,
    grant: &LaneGrant,
    request: &Request,
) -> Result<Option<Command>> {
    let disks = &lane.disks;
    let plan = || disks.plan(grant, request.offset, u64::from(request.len));
    Ok(Some(match request.op {
        // A run never gets here: the reader serves its writes (`serve_run`).
        Op::Heartbeat | Op::Run => return Ok(None),
        Op::Read => Command::Read { plan: plan() },
        Op::Write => {
            let plan = plan();
            let payload = match disks.mapped_targets(&plan) {
                Some(views) => {
                    guarded(&lane.gate, reader.read_payload_into(views)).await?;
                    Payload::InPlace
                }
                None => Payload::Buffer(reader.read_payload(request.len as usize).await?),
            };
            Command::Write {
                plan,
                payload,
                fua: request.fua(),
            }
        }
        Op::Flush => Command::Flush,
        Op::Discard => Command::Discard { plan: plan() },
        Op::WriteZeroes => Command::WriteZeroes { plan: plan() },
    }))
}

/// Runs `work` (a disk operation or mapped copy, not started yet) under a pass of `gate`:
/// `Revoked` without running it once the lane is revoked.
async fn guarded<T>(gate: &LaneGate, work: impl Future<Output = Result<T>>) -> Result<T> {
    let _pass = pass(gate)?;
    work.await
}

/// A pass of `gate` (see [`crate::array::gate`]), or `Revoked` once the lane is revoked.
fn pass(gate: &LaneGate) -> Result<DiskPass<'_>> {
    gate.enter().map_err(|_| Error::Revoked)
}

impl Lane {
    /// Checks the request against the current grant, refreshing the grant when the
    /// metadata generation moved (one atomic load per request otherwise).
    fn admit(&self, request: &Request) -> Result<Arc<LaneGrant>> {
        let current = self.shared.array.generation();
        if current != self.grant.borrow().generation {
            let fresh = self
                .shared
                .array
                .lane_grant(&self.host, self.partition)
                .ok_or(Error::Revoked)?;
            *self.grant.borrow_mut() = fresh;
        }
        let grant = self.grant.borrow().clone();
        check_request(&grant, request, self.shared.config.max_io)?;
        Ok(grant)
    }

    /// Counts a finished request and queues its reply.
    fn finish(&self, request: &Request, outcome: Result<Done>, credit: Credit) {
        let counters = &self.session.counters;
        let (count, bytes) = match request.op {
            Op::Read => (&counters.reads, Some(&counters.read_bytes)),
            Op::Write => (&counters.writes, Some(&counters.write_bytes)),
            Op::Flush => (&counters.flushes, None),
            Op::Discard => (&counters.discards, None),
            Op::WriteZeroes => (&counters.write_zeroes, None),
            // A heartbeat touches no disk (it has no command) and is not counted.
            Op::Heartbeat | Op::Run => return self.reply_ok(request.tag, credit),
        };
        let counted = outcome.is_ok().then_some(());
        LaneCounters::count(count, counted.and(bytes.map(|b| (b, request.len.into()))));
        match outcome {
            Ok(Done::Mapped(data)) if request.may_run() => {
                self.reply_run(request, RunData::Mapped(data), credit)
            }
            Ok(Done::Data(buffer)) if request.may_run() => {
                self.reply_run(request, RunData::Buffer(buffer), credit)
            }
            // Mapped views are sent under a pass too: the writer checks the gate at send time.
            Ok(Done::Mapped(data)) => self.reply_mapped(request.tag, data, request.len, credit),
            Ok(Done::Data(buffer)) => self.reply_data(request.tag, buffer, request.len, credit),
            Ok(Done::Nothing) => self.reply_ok(request.tag, credit),
            Err(error) => {
                log::warn!("host {:?} partition {}: {error}", self.host, self.partition);
                self.reply_error(request, &error, credit);
            }
        }
    }

    fn reply_error(&self, request: &Request, error: &Error, credit: Credit) {
        self.session
            .counters
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The page's disk health shows the whole error (op, path, offset, errno).
        self.shared.array.note_disk_failure(error);
        log::debug!("request {request:?} failed: {error}");
        let reply = Reply {
            tag: request.tag,
            status: Status::Errno(error.errno()),
            len: 0,
        };
        self.reply_head(reply, credit);
    }

    fn reply_ok(&self, tag: u32, credit: Credit) {
        let reply = Reply {
            tag,
            status: Status::Ok,
            len: 0,
        };
        self.reply_head(reply, credit);
    }

    fn reply_head(&self, reply: Reply, credit: Credit) {
        let mut head = Vec::with_capacity(16);
        if frame::encode_head(&reply, 0, &mut head).is_ok() {
            self.replies.send((Outgoing::Head(head), credit));
        }
    }

    fn reply_mapped(&self, tag: u32, data: Vec<MappedSlice>, len: u32, credit: Credit) {
        let reply = Reply {
            tag,
            status: Status::Ok,
            len,
        };
        let mut head = Vec::with_capacity(16);
        if frame::encode_head(&reply, len, &mut head).is_ok() {
            self.replies.send((Outgoing::Mapped { head, data }, credit));
        }
    }

    fn reply_run(&self, request: &Request, data: RunData, credit: Credit) {
        let (tag, len) = (request.tag, request.len);
        self.replies
            .send((Outgoing::RunRead { tag, len, data }, credit));
    }

    fn reply_data(&self, tag: u32, mut buffer: AlignedBuf, len: u32, credit: Credit) {
        let reply = Reply {
            tag,
            status: Status::Ok,
            len,
        };
        let Ok(head) = frame::InlineHead::encode(&reply, len) else {
            return;
        };
        let head = head.as_bytes();
        let start = DATA_OFFSET - head.len();
        buffer.as_mut_slice()[start..DATA_OFFSET].copy_from_slice(head);
        self.replies
            .send((Outgoing::Data { buffer, start }, credit));
    }
}

/// EINVAL for misaligned or out-of-range requests, EROFS for writes on read-only grants.
fn check_request(grant: &LaneGrant, request: &Request, max_io: u32) -> Result<()> {
    if matches!(request.op, Op::Flush | Op::Heartbeat) {
        return Ok(());
    }
    let block_size = grant.info.block_size;
    let (offset, len) = (request.offset, u64::from(request.len));
    if offset % u64::from(block_size) != 0 || len % u64::from(block_size) != 0 {
        return Err(Error::Misaligned {
            offset,
            len,
            block_size,
        });
    }
    let inside = offset
        .checked_add(len)
        .is_some_and(|end| end <= grant.info.size);
    if !inside || (request.op == Op::Read && request.len > max_io) {
        return Err(Error::OutOfRange {
            offset,
            len,
            size: grant.info.size,
        });
    }
    if request.op != Op::Read && grant.read_only() {
        return Err(Error::ReadOnly);
    }
    Ok(())
}

/// Starts one request's command (none for a heartbeat, answered at once): a command that
/// needs no waiting ([`DiskSet::run_now`]) finishes here, under a pass of the lane's gate,
/// before the next request is read; the rest runs in a task of its own. Either way
/// `ticket` counts the request as admitted (fencing waits for it) until its disk work is
/// done and its reply queued.
fn start(
    lane: &Rc<Lane>,
    request: Request,
    command: Option<Command>,
    credit: Credit,
    ticket: AdmittedGuard,
) {
    let Some(command) = command else {
        return lane.finish(&request, Ok(Done::Nothing), credit);
    };
    let timer = lane.session.counters.time_request();
    let now = match pass(&lane.gate) {
        Ok(_pass) => lane.disks.run_now(command),
        Err(revoked) => return lane.finish(&request, Err(revoked), credit),
    };
    match now {
        Ok(done) => lane.finish(&request, Ok(done), credit),
        Err(command) => {
            let started = timer.hand_over();
            let task = execute(lane.clone(), request, command, credit, ticket, started);
            tokio_uring::spawn(task);
        }
    }
}

/// Runs one request's command in a task of its own, under a pass of the lane's gate, and
/// queues its reply. `_ticket` as in [`start`].
async fn execute(
    lane: Rc<Lane>,
    request: Request,
    command: Command,
    credit: Credit,
    _ticket: AdmittedGuard,
    started: Instant,
) {
    let _timer = lane.session.counters.time_request_since(started);
    let outcome = guarded(&lane.gate, lane.disks.run(command)).await;
    lane.finish(&request, outcome, credit);
}

/// Most buffers one `writev` carries before the writer stops gathering more replies. A
/// reply adds at most `1 + MAX_MAPPED_PIECES`, so a batch stays under `IOV_MAX` (1024).
const MAX_REPLIES_PER_SEND: usize = 256;
const _: () = assert!(MAX_REPLIES_PER_SEND + 1 + MAX_MAPPED_PIECES <= 1024);
/// Buffers the direct first send of a batch carries (on the stack; the rest of a larger
/// batch goes through the ring).
const MAX_DIRECT_IOVECS: usize = 64;

/// The connection's one writer: gathers every reply ready (heads and read data, each from
/// its own buffer) into one `writev`, resumes short writes, releases each reply's
/// [`Credit`] once it is sent, and stops when every sender is gone or a send fails (the
/// socket is then shut down). A batch with data straight from the disks' mappings is sent
/// under a pass of the lane's gate: a revoked lane sends none.
///
/// One send per batch rather than per reply matters: a send completes on the ring only at
/// the next turn of the event loop, so sending replies one at a time would cap the lane at
/// one reply per turn however many requests are in flight.
async fn write_replies(
    stream: Rc<TcpStream>,
    gate: Arc<LaneGate>,
    mut outgoing: Receiver<(Outgoing, Credit)>,
    max_io: u32,
) {
    let mut batch: Vec<OutBuf> = Vec::with_capacity(MAX_REPLIES_PER_SEND);
    let mut credits: Vec<Credit> = Vec::with_capacity(MAX_REPLIES_PER_SEND);
    let mut run = Run::new(max_io);
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        let mut mapped = false;
        while let Some((item, credit)) = next.take() {
            credits.push(credit);
            match item {
                Outgoing::Head(head) => batch.push(OutBuf::Head(head)),
                Outgoing::Data { buffer, start } => batch.push(OutBuf::Data { buffer, start }),
                Outgoing::Mapped { head, data } => {
                    mapped = true;
                    batch.push(OutBuf::Head(head));
                    batch.extend(data.into_iter().map(OutBuf::Mapped));
                }
                Outgoing::RunRead { tag, len, data } => {
                    if !run.has_room(len) {
                        run.take_into(&mut batch, OutBuf::Head);
                    }
                    mapped |= matches!(data, RunData::Mapped(_));
                    match data {
                        RunData::Buffer(buffer) => run.push(tag, len, [buffer.into()]),
                        RunData::Mapped(data) => {
                            run.push(tag, len, data.into_iter().map(OutBuf::Mapped))
                        }
                    }
                }
            }
            if batch.len() + run.buffers() < MAX_REPLIES_PER_SEND {
                next = outgoing.try_recv();
            }
        }
        run.take_into(&mut batch, OutBuf::Head);
        let sent = if mapped {
            guarded(&gate, send_all(&stream, &mut batch)).await
        } else {
            send_all(&stream, &mut batch).await
        };
        batch.clear();
        credits.clear();
        if let Err(error) = sent {
            log::debug!("sending replies: {error}");
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// Sends every buffer of `batch` in order with as few `writev` calls as the socket allows;
/// on success `batch` is empty (the buffers dropped, which returns them to the pool).
///
/// The first attempt is a direct non-blocking `sendmsg`: with room in the socket buffer
/// (nearly always) the whole batch leaves at once, without a ring operation, its
/// completion and another turn of the writer (at queue depth 1 that turn is on every
/// request's path). Whatever the socket does not take goes through the ring.
async fn send_all(stream: &TcpStream, batch: &mut Vec<OutBuf>) -> Result<()> {
    let sent = send_now(stream.as_raw_fd(), batch)?;
    let mut skip = drop_sent(batch, 0, sent); // bytes of the first buffer already sent
    while !batch.is_empty() {
        let slices: Vec<Slice<OutBuf>> = batch
            .drain(..)
            .enumerate()
            .map(|(index, buf)| {
                let from = if index == 0 { skip } else { 0 };
                let end = buf.len();
                buf.slice(from..end)
            })
            .collect();
        let (result, slices) = stream.writev(slices).await;
        batch.extend(slices.into_iter().map(Slice::into_inner));
        let sent = match result {
            Ok(0) => {
                return Err(Error::io(
                    "sending replies",
                    std::io::ErrorKind::WriteZero.into(),
                ))
            }
            Ok(sent) => sent,
            Err(error) => return Err(Error::io("sending replies", error)),
        };
        skip = drop_sent(batch, skip, sent);
    }
    Ok(())
}

/// Sends what the socket takes of `batch` at once (`MSG_DONTWAIT`); returns the bytes
/// sent (0 when the socket buffer is full).
fn send_now(fd: std::os::fd::RawFd, batch: &[OutBuf]) -> Result<usize> {
    // Only the `count` entries used are written (a 1 KiB array zeroed for one reply showed
    // up in profiles at queue depth 1).
    let mut iovecs = [std::mem::MaybeUninit::<libc::iovec>::uninit(); MAX_DIRECT_IOVECS];
    let count = batch.len().min(MAX_DIRECT_IOVECS);
    for (iovec, buf) in iovecs.iter_mut().zip(batch) {
        iovec.write(libc::iovec {
            iov_base: IoBuf::stable_ptr(buf) as *mut libc::c_void,
            iov_len: buf.len(),
        });
    }
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iovecs.as_mut_ptr().cast();
    message.msg_iovlen = count;
    // SAFETY: the first `count` iovecs are initialised (above) and point at live buffers
    // of `batch` (each `len()` bytes from `stable_ptr()`), borrowed for this synchronous
    // call; the kernel reads only those `count`.
    let sent = unsafe { libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent >= 0 {
        return Ok(sent as usize);
    }
    match std::io::Error::last_os_error() {
        error if matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => Ok(0),
        error => Err(Error::io("sending replies", error)),
    }
}

/// Drops the buffers of `batch` that `sent` more bytes completed, given that `skip` bytes
/// of the first were sent before; returns how far the (new) first buffer got.
fn drop_sent(batch: &mut Vec<OutBuf>, skip: usize, mut sent: usize) -> usize {
    let mut done = 0;
    for buf in batch.iter() {
        let left = buf.len() - if done == 0 { skip } else { 0 };
        if sent < left {
            break;
        }
        sent -= left;
        done += 1;
    }
    batch.drain(..done);
    if done == 0 {
        skip + sent
    } else {
        sent
    }
}

/// One reply's bytes as the writer sends them.
enum OutBuf {
    Head(Vec<u8>),
    Data { buffer: AlignedBuf, start: usize },
    Mapped(MappedSlice),
}

impl From<AlignedBuf> for OutBuf {
    /// A read's data alone (no head before it).
    fn from(buffer: AlignedBuf) -> OutBuf {
        OutBuf::Data {
            buffer,
            start: DATA_OFFSET,
        }
    }
}

impl OutBuf {
    /// Bytes to send.
    fn len(&self) -> usize {
        match self {
            OutBuf::Head(head) => head.len(),
            OutBuf::Data { buffer, start } => buffer.len() - start,
            OutBuf::Mapped(slice) => IoBuf::bytes_init(slice),
        }
    }
}

// SAFETY: both variants own their heap memory, which stays put while the value is moved;
// `bytes_init` bytes from `stable_ptr` are initialised.
unsafe impl IoBuf for OutBuf {
    fn stable_ptr(&self) -> *const u8 {
        match self {
            OutBuf::Head(head) => head.as_ptr(),
            // SAFETY: `start <= len` (set by `reply_data`), inside the allocation.
            OutBuf::Data { buffer, start } => unsafe { IoBuf::stable_ptr(buffer).add(*start) },
            OutBuf::Mapped(slice) => IoBuf::stable_ptr(slice),
        }
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }

    fn bytes_total(&self) -> usize {
        self.len()
    }
}
