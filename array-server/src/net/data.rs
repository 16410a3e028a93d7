//! Data sessions ("lanes"): block requests on one partition, run concurrently up to
//! `max_in_flight`, answered in any order by one writer task.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_uring::buf::{BoundedBuf, IoBuf, Slice};
use tokio_uring::net::TcpStream;
use wire::frame::{self, Limits};
use wire::{Op, Reply, Request, Status};

use super::buffer::{AlignedBuf, DATA_OFFSET};
use super::disk_io::{DiskSet, MappedSlice, MAX_MAPPED_PIECES};
use super::frames::FrameReader;
use super::sessions::{AdmittedGuard, LaneCounters, Session};
use super::Shared;
use crate::array::grant::LaneGrant;
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
    /// Send nothing more and close the connection.
    Close,
}

/// One lane's state, shared by its reader and its request tasks (one thread).
struct Lane {
    shared: Arc<Shared>,
    disks: Rc<DiskSet>,
    host: String,
    partition: u32,
    grant: RefCell<Arc<LaneGrant>>,
    session: Arc<Session>,
    replies: mpsc::UnboundedSender<Outgoing>,
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
    let (replies, outgoing) = mpsc::unbounded_channel();
    let writer = tokio_uring::spawn(write_replies(stream.clone(), outgoing));
    let permits = Arc::new(Semaphore::new(shared.config.max_in_flight as usize));
    let lane = Rc::new(Lane {
        host: session.host.clone(),
        partition: grant.info.id,
        shared,
        disks,
        grant: RefCell::new(grant),
        session,
        replies,
    });
    let watcher = tokio_uring::spawn(close_on_revoke(
        lane.shared.clone(),
        lane.host.clone(),
        lane.partition,
        lane.replies.clone(),
    ));
    // Fencing: a newer connection for this lane shuts this socket down (see sessions.rs).
    let fence = tokio_uring::spawn(close_on_fence(lane.session.clone(), stream.clone()));
    let outcome = read_requests(&lane, &mut reader, &permits).await;
    watcher.abort();
    fence.abort();
    if outcome.is_err() {
        let _ = lane.replies.send(Outgoing::Close);
    }
    drop(lane);
    let _ = writer.await;
    outcome
}

/// Closes the lane as soon as its assignment is withdrawn, even while it is idle, so the
/// host's I/O on it stops and the lane leaves the sessions registry at once.
async fn close_on_revoke(
    shared: Arc<Shared>,
    host: String,
    partition: u32,
    replies: mpsc::UnboundedSender<Outgoing>,
) {
    let mut changes = shared.array.subscribe();
    while changes.changed().await.is_ok() {
        if shared.array.lane_grant(&host, partition).is_none() {
            log::info!("host {host:?} lost partition {partition}; closing its idle lane");
            let _ = replies.send(Outgoing::Close);
            return;
        }
    }
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
    permits: &Arc<Semaphore>,
) -> Result<()> {
    let limits = Limits::data(lane.shared.config.max_io);
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(prefix) = reader.next_head(limits).await? else {
            return Ok(());
        };
        let request = frame::decode_request(reader.header(&prefix), prefix)?;
        reader.consume_head(&prefix);
        // Counted from here until the request is finished (fencing waits for it).
        let ticket = lane.session.admit();
        // Admitted first (range, access), so that a write's payload can be received
        // straight into the disks' mappings; a refused write's payload is drained into a
        // buffer and dropped, never written.
        let admitted = lane.admit(&request);
        let payload = match (&admitted, request.op) {
            (Ok(grant), Op::Write) => Some(receive_write(lane, reader, grant, &request).await?),
            (Err(Error::Revoked), _) => None, // the lane closes below
            (Err(_), Op::Write) => {
                drop(reader.read_payload(request.len as usize).await?);
                None
            }
            _ => None,
        };
        match admitted {
            Ok(grant) => {
                let work = execute(lane.clone(), grant, request, payload, permit, ticket);
                tokio_uring::spawn(work);
            }
            Err(Error::Revoked) => {
                log::info!(
                    "host {:?} lost partition {}; closing lane",
                    lane.host,
                    lane.partition
                );
                lane.reply_error(&request, &Error::Revoked);
                let _ = lane.replies.send(Outgoing::Close);
                return Ok(());
            }
            Err(error) => lane.reply_error(&request, &error),
        }
    }
}

/// Receives an admitted write's payload: straight into the disks' mappings when every
/// piece is on a mapped disk (the data is then in place), else into a buffer.
async fn receive_write(
    lane: &Lane,
    reader: &mut FrameReader,
    grant: &LaneGrant,
    request: &Request,
) -> Result<Payload> {
    let len = request.len as usize;
    match lane
        .disks
        .mapped_write(grant, request.offset, u64::from(request.len))
    {
        Some(views) => {
            reader.read_payload_into(views).await?;
            Ok(Payload::InPlace)
        }
        None => Ok(Payload::Buffer(reader.read_payload(len).await?)),
    }
}

/// A write's payload as its request task gets it.
enum Payload {
    /// Received into a buffer, to be written to the disks.
    Buffer(AlignedBuf),
    /// Already received into the disks' mappings.
    InPlace,
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

    fn reply_error(&self, request: &Request, error: &Error) {
        self.session
            .counters
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Error::Disk { path, .. } = error {
            self.shared.array.note_disk_error(path);
        }
        log::debug!("request {request:?} failed: {error}");
        self.reply_head(Reply {
            tag: request.tag,
            status: Status::Errno(error.errno()),
            len: 0,
        });
    }

    fn reply_head(&self, reply: Reply) {
        let mut head = Vec::with_capacity(16);
        if frame::encode_head(&reply, 0, &mut head).is_ok() {
            let _ = self.replies.send(Outgoing::Head(head));
        }
    }

    fn reply_mapped(&self, tag: u32, data: Vec<MappedSlice>, len: u32) {
        let reply = Reply {
            tag,
            status: Status::Ok,
            len,
        };
        let mut head = Vec::with_capacity(16);
        if frame::encode_head(&reply, len, &mut head).is_ok() {
            let _ = self.replies.send(Outgoing::Mapped { head, data });
        }
    }

    fn reply_data(&self, tag: u32, mut buffer: AlignedBuf, len: u32) {
        let reply = Reply {
            tag,
            status: Status::Ok,
            len,
        };
        let mut head = Vec::with_capacity(16);
        if frame::encode_head(&reply, len, &mut head).is_err() {
            return;
        }
        let start = DATA_OFFSET - head.len();
        buffer.as_mut_slice()[start..DATA_OFFSET].copy_from_slice(&head);
        let _ = self.replies.send(Outgoing::Data { buffer, start });
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

async fn execute(
    lane: Rc<Lane>,
    grant: Arc<LaneGrant>,
    request: Request,
    payload: Option<Payload>,
    _permit: OwnedSemaphorePermit,
    _ticket: AdmittedGuard,
) {
    let disks = &lane.disks;
    let counters = &lane.session.counters;
    let _timer = counters.time_request();
    let (offset, len) = (request.offset, u64::from(request.len));
    let outcome = match (request.op, payload) {
        (Op::Read, _) => {
            if let Some(data) = disks.mapped_read(&grant, offset, len) {
                LaneCounters::count(&counters.reads, Some((&counters.read_bytes, len)));
                lane.reply_mapped(request.tag, data, request.len);
                return;
            }
            let buffer = AlignedBuf::for_data(len as usize);
            match disks.read(&grant, offset, len, buffer).await {
                Ok(buffer) => {
                    LaneCounters::count(&counters.reads, Some((&counters.read_bytes, len)));
                    lane.reply_data(request.tag, buffer, request.len);
                    return;
                }
                Err(error) => {
                    LaneCounters::count(&counters.reads, None);
                    Err(error)
                }
            }
        }
        (Op::Write, Some(payload)) => {
            let result = match payload {
                Payload::Buffer(buffer) => {
                    disks
                        .write(&grant, offset, len, buffer, request.fua())
                        .await
                }
                Payload::InPlace => {
                    disks
                        .finish_mapped_write(&grant, offset, len, request.fua())
                        .await
                }
            };
            let bytes = result.is_ok().then_some((&counters.write_bytes, len));
            LaneCounters::count(&counters.writes, bytes);
            result
        }
        (Op::Write, None) => Err(Error::Wire(wire::WireError::PayloadMismatch {
            expected: request.len,
            actual: 0,
        })),
        (Op::Flush, _) => {
            LaneCounters::count(&counters.flushes, None);
            disks.flush().await
        }
        (Op::Discard, _) => {
            LaneCounters::count(&counters.discards, None);
            disks.discard(&grant, offset, len).await
        }
        (Op::Heartbeat, _) => Ok(()),
        (Op::WriteZeroes, _) => {
            LaneCounters::count(&counters.write_zeroes, None);
            disks.write_zeroes(&grant, offset, len).await
        }
    };
    match outcome {
        Ok(()) => lane.reply_head(Reply {
            tag: request.tag,
            status: Status::Ok,
            len: 0,
        }),
        Err(error) => {
            log::warn!("host {:?} partition {}: {error}", lane.host, lane.partition);
            lane.reply_error(&request, &error);
        }
    }
}

/// Most buffers one `writev` carries before the writer stops gathering more replies. A
/// reply adds at most `1 + MAX_MAPPED_PIECES`, so a batch stays under `IOV_MAX` (1024).
const MAX_REPLIES_PER_SEND: usize = 256;
const _: () = assert!(MAX_REPLIES_PER_SEND + 1 + MAX_MAPPED_PIECES <= 1024);

/// The connection's one writer: gathers every reply ready (heads and read data, each from
/// its own buffer) into one `writev`, resumes short writes, stops at `Close` or when every
/// sender is gone.
///
/// One send per batch rather than per reply matters: a send completes on the ring only at
/// the next turn of the event loop, so sending replies one at a time would cap the lane at
/// one reply per turn however many requests are in flight.
async fn write_replies(stream: Rc<TcpStream>, mut outgoing: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch: Vec<OutBuf> = Vec::with_capacity(MAX_REPLIES_PER_SEND);
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        let mut close = false;
        while let Some(item) = next.take() {
            match item {
                Outgoing::Head(head) => batch.push(OutBuf::Head(head)),
                Outgoing::Data { buffer, start } => batch.push(OutBuf::Data { buffer, start }),
                Outgoing::Mapped { head, data } => {
                    batch.push(OutBuf::Head(head));
                    batch.extend(data.into_iter().map(OutBuf::Mapped));
                }
                Outgoing::Close => {
                    close = true;
                    break;
                }
            }
            if batch.len() < MAX_REPLIES_PER_SEND {
                next = outgoing.try_recv().ok();
            }
        }
        let sent = send_all(&stream, &mut batch).await;
        if close || !sent {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// Sends every buffer of `batch` in order with as few `writev` calls as the socket allows;
/// empties `batch` (dropping the buffers, which returns them to the pool).
async fn send_all(stream: &TcpStream, batch: &mut Vec<OutBuf>) -> bool {
    let mut skip = 0; // bytes of the first buffer already sent
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
        let mut sent = match result {
            Ok(0) => return false,
            Ok(sent) => sent,
            Err(error) => {
                log::debug!("sending replies: {error}");
                return false;
            }
        };
        // Drop what went out completely; remember how far the first remaining buffer got.
        let mut done = 0;
        for buf in batch.iter() {
            let left = buf.len() - if done == 0 { skip } else { 0 };
            if sent < left {
                break;
            }
            sent -= left;
            done += 1;
        }
        skip = if done == 0 { skip + sent } else { sent };
        batch.drain(..done);
    }
    true
}

/// One reply's bytes as the writer sends them.
enum OutBuf {
    Head(Vec<u8>),
    Data { buffer: AlignedBuf, start: usize },
    Mapped(MappedSlice),
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
