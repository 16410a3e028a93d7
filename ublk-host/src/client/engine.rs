//! The per-queue request engine: a queue's lanes (on every path), path choice, splitting,
//! and [`QueueEngine::execute`].

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use wire::{Op, PartitionInfo, FLAG_FUA};

use crate::client::config::EngineConfig;
use crate::client::durability::Durability;
use crate::client::lane::{Lane, PartRequest};
use crate::client::lane_core::LaneStats;
use crate::client::paths::{choose, PathLoad, PathPolicy};
use crate::client::slot::{BufRef, Slot, SlotDone};
use crate::client::split::{plan, single, Part, SplitRules};
use crate::client::uring;
use crate::error::{Errno, HostError, Result};

/// Operations the ring of a plain queue thread has room for at once; more wait in
/// userspace (the submission helper flushes when the ring is full).
const PLAIN_THREAD_RING_ENTRIES: u32 = 256;

/// One block operation as the kernel (or bench) asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockIo {
    /// What to do.
    pub op: Op,
    /// Byte offset in the partition; a multiple of its block size.
    pub offset: u64,
    /// Bytes; a multiple of the block size (0 for `Flush`).
    pub len: u32,
    /// Force unit access: the write is durable before it completes.
    pub fua: bool,
}

impl BlockIo {
    /// Whether the operation moves data through the caller's buffer.
    pub fn has_data(&self) -> bool {
        matches!(self.op, Op::Read | Op::Write)
    }
}

/// One queue's engine: its lanes, on its thread's io_uring and executor.
///
/// Not `Send`: it lives and dies on its queue's thread. Many tasks of that thread may run
/// [`QueueEngine::execute`] at once.
#[derive(Debug)]
pub struct QueueEngine {
    queue: u16,
    partition: PartitionInfo,
    lanes: Vec<Rc<Lane>>,
    /// The lanes' tasks, one per lane; each ends once its lane is closed.
    tasks: RefCell<Vec<smol::Task<()>>>,
    durability: std::sync::Arc<Durability>,
    live_size: std::sync::Arc<std::sync::atomic::AtomicU64>,
    rules: SplitRules,
    /// Per path, the lane its next request starts on (each path rotates on its own, so
    /// the path choice cannot starve one of a path's lanes).
    next_lane: Vec<Cell<usize>>,
    /// Paths the queue reaches the server over; `lanes` holds `rules.lanes` per path.
    paths: usize,
    policy: PathPolicy,
    last_path: Cell<usize>,
    executor: Rc<smol::LocalExecutor<'static>>,
}

impl QueueEngine {
    /// Opens the queue's `config.lanes_per_queue` lanes on each path to `partition`
    /// (blocking, each within the handshake deadline) and starts their tasks on
    /// `executor`. Lane `l` of path `p` is wire lane `p * lanes_per_queue + l`.
    ///
    /// The calling thread must have its task ring ([`uring::init_thread_ring`], or a ublk
    /// queue's), and must run `executor` with an event loop that wakes ring completions.
    pub fn open(
        config: &EngineConfig,
        partition: &PartitionInfo,
        queue: u16,
        executor: Rc<smol::LocalExecutor<'static>>,
    ) -> Result<QueueEngine> {
        if config.lanes_per_queue == 0 {
            return Err(HostError::Config {
                what: "lanes per queue",
                reason: "at least one lane is needed".into(),
            });
        }
        let shared = Rc::new(config.clone());
        let paths = config.client.paths().len();
        let lane_numbers = wire_lanes(config.lanes_per_queue, paths)?;
        let mut lanes = Vec::with_capacity(lane_numbers.len());
        let mut tasks = Vec::with_capacity(lanes.capacity());
        let mut current = partition.clone();
        for (home, number) in lane_numbers {
            let at = (queue, number, home);
            let opened = Lane::open(shared.clone(), partition, at, &executor);
            match opened {
                Ok((lane, info, task)) => {
                    lanes.push(lane);
                    tasks.push(task);
                    current = info;
                }
                Err(error) => {
                    lanes.iter().for_each(|lane: &Rc<Lane>| lane.close());
                    // They end on their own once closed; never cancel one mid-operation.
                    tasks.into_iter().for_each(smol::Task::detach);
                    return Err(error);
                }
            }
        }
        let max_io = lanes.iter().map(|lane| lane.max_io()).min().unwrap_or(0);
        let block = current.block_size.max(wire::SECTOR_SIZE);
        let rules = SplitRules {
            chunk: current.chunk_size.max(block),
            threshold: config.split,
            max_part: (max_io / block * block).max(block),
            block,
            lanes: config.lanes_per_queue.into(),
        };
        Ok(QueueEngine {
            queue,
            partition: current,
            lanes,
            tasks: RefCell::new(tasks),
            durability: config.durability.clone(),
            live_size: config.live_size.clone(),
            rules,
            next_lane: (0..paths).map(|_| Cell::new(usize::from(queue))).collect(),
            paths,
            policy: config.path_policy,
            last_path: Cell::new(usize::from(queue) % paths),
            executor,
        })
    }

    /// The partition as the server described it when the lanes opened.
    pub fn partition(&self) -> &PartitionInfo {
        &self.partition
    }

    /// The queue this engine serves.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Number of lanes.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// Largest payload the server accepts in one request (requests longer than this are
    /// cut into several).
    pub fn max_io(&self) -> u32 {
        self.rules.max_part
    }

    /// Per-lane counters, in lane order (path 0's lanes first).
    pub fn lane_stats(&self) -> Vec<LaneStats> {
        self.lanes.iter().map(|lane| lane.stats()).collect()
    }

    /// Per-lane state for multipath, in lane order.
    pub fn lane_paths(&self) -> Vec<LanePath> {
        self.lanes
            .iter()
            .map(|lane| LanePath {
                home: lane.home(),
                via: lane.via(),
                up: lane.is_up(),
                outstanding_bytes: lane.outstanding_bytes(),
            })
            .collect()
    }

    /// Number of paths.
    pub fn path_count(&self) -> usize {
        self.paths
    }

    /// The path for the next request, by the policy.
    fn pick_path(&self) -> usize {
        if self.paths == 1 {
            return 0;
        }
        let mut loads = vec![PathLoad::default(); self.paths];
        for lane in &self.lanes {
            let load = &mut loads[lane.home()];
            load.usable |= lane.is_up();
            load.bytes += lane.outstanding_bytes();
        }
        let path = choose(self.policy, &loads, self.last_path.get());
        self.last_path.set(path);
        path
    }

    /// Spawns a task on the queue's executor (the thread's only executor).
    pub fn spawn<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> smol::Task<T> {
        self.executor.spawn(future)
    }

    /// Runs one block operation to completion over the queue's lanes, splitting it if it
    /// is longer than the split threshold or the server's `max_io`. Returns the positive
    /// errno the operation failed with (the first failing part's); a ublk I/O completes
    /// with its negation.
    ///
    /// # Safety
    ///
    /// For a read or write `buf` must point to `io.len` bytes that stay valid (readable
    /// for a write, writable for a read, not otherwise accessed; a [`BufRef::Fixed`]
    /// buffer: registered in this thread's ring) until the returned future completes, and
    /// the future must be polled to completion, not dropped early: the kernel sends from
    /// and receives into that memory until then. Use
    /// [`QueueEngine::execute_owned`] where these rules are inconvenient.
    pub async unsafe fn execute(&self, io: BlockIo, buf: BufRef) -> Result<(), Errno> {
        self.run(io, buf, None).await
    }

    /// [`QueueEngine::execute`] on an owned buffer (at least `io.len` bytes for a read or
    /// write), handed back with the outcome. Dropping the future early is safe: the lanes
    /// keep the buffer alive until the server has answered.
    pub async fn execute_owned(&self, io: BlockIo, buf: Vec<u8>) -> (Result<(), Errno>, Vec<u8>) {
        if io.has_data() && buf.len() < io.len as usize {
            return (Err(Errno::EINVAL), buf);
        }
        let owner = Rc::new(RefCell::new(buf));
        let ptr = owner.borrow_mut().as_mut_ptr();
        let keep: Rc<dyn Any> = owner.clone();
        let outcome = self.run(io, BufRef::Ptr(ptr), Some(keep)).await;
        let buf = match Rc::try_unwrap(owner) {
            Ok(cell) => cell.into_inner(),
            Err(shared) => shared.borrow().clone(),
        };
        (outcome, buf)
    }

    async fn run(&self, io: BlockIo, buf: BufRef, keep: Option<Rc<dyn Any>>) -> Result<(), Errno> {
        self.validate(&io)?;
        let path = self.pick_path();
        let base = path * self.rules.lanes;
        let first = self.next_lane[path].get() % self.rules.lanes;
        self.next_lane[path].set(first + 1);
        let flags = if io.fua { FLAG_FUA } else { 0 };
        if io.op == Op::Flush {
            let request = PartRequest {
                op: Op::Flush,
                offset: 0,
                len: 0,
                flags,
                buf: BufRef::None,
            };
            let id = self.durability.flush_started();
            // SAFETY: a flush carries no data.
            let slot = unsafe { self.lanes[base + first].start(request, keep) };
            let outcome = SlotDone(slot).await;
            return self.durability.flush_done(id, outcome);
        }
        let start_part = |part: Part| {
            let part_buf = if io.has_data() {
                // SAFETY: `buf_offset < io.len` and the caller vouches for `io.len` bytes
                // at `buf`.
                unsafe { buf.add(part.buf_offset) }
            } else {
                BufRef::None
            };
            let request = PartRequest {
                op: io.op,
                offset: part.offset,
                len: part.len,
                flags,
                buf: part_buf,
            };
            // SAFETY: the part's `len` bytes at `part_buf` lie inside the caller's buffer,
            // which stays valid until every part's slot is done (awaited below, or kept
            // alive by `keep`).
            unsafe { self.lanes[base + part.lane].start(request, keep.clone()) }
        };
        let outcome = match single(self.rules, io.offset, io.len, first) {
            Some(part) => SlotDone(start_part(part)).await,
            None => {
                let slots: Vec<Rc<Slot>> = plan(self.rules, io.offset, io.len, first)
                    .into_iter()
                    .map(start_part)
                    .collect();
                let mut outcome = Ok(());
                // Every part is awaited, even after a failure: each may still use the
                // buffer.
                for slot in slots {
                    if let Err(errno) = SlotDone(slot).await {
                        outcome = outcome.and(Err(errno));
                    }
                }
                outcome
            }
        };
        if outcome.is_ok() && io.op != Op::Read && !io.fua {
            // Acknowledged but volatile until a flush (see `Durability`).
            self.durability.write_acked();
        }
        outcome
    }

    /// The partition's size: as the lanes opened, or larger after a live resize.
    fn size(&self) -> u64 {
        let live = self.live_size.load(std::sync::atomic::Ordering::Relaxed);
        self.partition.size.max(live)
    }

    fn validate(&self, io: &BlockIo) -> Result<(), Errno> {
        if io.op == Op::Flush {
            return Ok(());
        }
        let block = u64::from(self.rules.block);
        let end = io.offset.checked_add(u64::from(io.len));
        let aligned = io.offset % block == 0 && u64::from(io.len) % block == 0;
        match end {
            Some(end) if aligned && io.len > 0 && end <= self.size() => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Closes every lane: tasks stop, anything still pending fails with `EIO`.
    pub fn close(&self) {
        self.lanes.iter().for_each(|lane| lane.close());
    }

    /// Whether [`QueueEngine::close`] has taken effect and no lane task runs.
    pub fn lanes_closed(&self) -> bool {
        self.tasks.borrow().iter().all(|task| task.is_finished())
    }

    /// Resolves once [`QueueEngine::close`] has taken effect and no lane task runs.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            let mut tasks = self.tasks.borrow_mut();
            let mut running = false;
            for task in tasks.iter_mut().filter(|task| !task.is_finished()) {
                running |= Pin::new(task).poll(cx).is_pending();
            }
            if running {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// One lane's place among the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanePath {
    /// The lane's own path.
    pub home: usize,
    /// The path its connection runs on (another one while its home is out).
    pub via: usize,
    /// Whether it is connected.
    pub up: bool,
    /// Payload bytes outstanding on it.
    pub outstanding_bytes: u64,
}

/// (home path, wire lane number) of every lane of a queue, path by path.
fn wire_lanes(per_path: u16, paths: usize) -> Result<Vec<(usize, u16)>> {
    let total = usize::from(per_path) * paths;
    if total > usize::from(u16::MAX) + 1 {
        return Err(HostError::Config {
            what: "lanes per queue",
            reason: format!(
                "{per_path} lanes on each of {paths} paths exceed the wire's lane numbers"
            ),
        });
    }
    Ok((0..total)
        .map(|index| (index / usize::from(per_path), index as u16))
        .collect())
}

impl Drop for QueueEngine {
    fn drop(&mut self) {
        // A lane task may have socket operations in the kernel: never cancel it; close
        // its lane and let it end on its own.
        self.close();
        self.tasks.take().into_iter().for_each(smol::Task::detach);
    }
}

/// Runs a queue engine on the current (plain) thread: gives the thread its task ring and
/// an executor, opens the lanes, runs `body` to completion, then closes the lanes.
///
/// This is how tests and bench drive exactly the code a ublk queue thread runs. `body`
/// may spawn more tasks with [`QueueEngine::spawn`]; ring completions are dispatched
/// between executor ticks.
pub fn run_queue_thread<T, F, Fut>(
    config: &EngineConfig,
    partition: &PartitionInfo,
    queue: u16,
    body: F,
) -> Result<T>
where
    T: 'static,
    F: FnOnce(Rc<QueueEngine>) -> Fut,
    Fut: Future<Output = T> + 'static,
{
    uring::init_thread_ring(PLAIN_THREAD_RING_ENTRIES)?;
    let executor = Rc::new(smol::LocalExecutor::new());
    let engine = Rc::new(QueueEngine::open(
        config,
        partition,
        queue,
        executor.clone(),
    )?);
    let task = executor.spawn(body(engine.clone()));
    let result = uring::run_until(&executor, task, config.poll)?;
    engine.close();
    let closing = executor.spawn(async move { engine.closed().await });
    uring::run_until(&executor, closing, config.poll)?;
    Ok(result)
}
