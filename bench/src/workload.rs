//! What each in-flight slot does next: the operation and the offset.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Result};
use ublk_host::client::{BlockIo, BufRef, QueueEngine};
use wire::{Op, PartitionInfo};

use crate::histogram::Histogram;
use crate::pattern;
use crate::report::{OpStats, QueueResult};

/// The access pattern, fio's `--rw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random reads and writes, this percentage of them reads.
    RandRw(u8),
}

impl Mode {
    /// Parses fio's names.
    pub fn parse(name: &str, read_percent: u8) -> Result<Mode> {
        Ok(match name {
            "read" => Mode::Read,
            "write" => Mode::Write,
            "randread" => Mode::RandRead,
            "randwrite" => Mode::RandWrite,
            "randrw" | "mixed" if read_percent <= 100 => Mode::RandRw(read_percent),
            _ => {
                bail!("--rw must be read, write, randread, randwrite or randrw (rwmixread 0..=100)")
            }
        })
    }

    /// fio's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::RandRead => "randread",
            Mode::RandWrite => "randwrite",
            Mode::RandRw(_) => "randrw",
        }
    }

    fn is_sequential(self) -> bool {
        matches!(self, Mode::Read | Mode::Write)
    }
}

/// The whole workload, shared by every queue thread.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Access pattern.
    pub mode: Mode,
    /// Bytes per operation.
    pub block_size: u32,
    /// Operations in flight per queue.
    pub iodepth: u32,
    /// Queue threads.
    pub queues: u16,
    /// Lanes per queue.
    pub lanes: u16,
    /// Split threshold in bytes (0: never).
    pub split: u32,
    /// Seconds to run.
    pub runtime_secs: f64,
    /// Operation limit per slot.
    pub ops_per_slot: Option<u64>,
    /// Bytes of the partition used, from offset 0.
    pub region: u64,
    /// Verifiable data and read-back.
    pub verify: bool,
    /// Slot buffers are fixed buffers of the queue's ring (zero-copy lanes).
    pub fixed_buffers: bool,
}

impl Plan {
    /// Checks the plan against the partition and trims the region to it.
    pub fn fit_to(mut self, partition: &PartitionInfo) -> Result<Plan> {
        if self.block_size % partition.block_size != 0 {
            bail!(
                "--bs {} is not a multiple of the partition's block size {}",
                self.block_size,
                partition.block_size
            );
        }
        let region = self.region.min(partition.size);
        self.region = region - region % u64::from(self.block_size);
        let slices = u64::from(self.queues) * u64::from(self.iodepth);
        if self.region / u64::from(self.block_size) < slices {
            bail!(
                "the region ({} bytes) holds fewer blocks of {} than queues x iodepth ({slices})",
                self.region,
                self.block_size
            );
        }
        Ok(self)
    }

    fn blocks(&self) -> u64 {
        self.region / u64::from(self.block_size)
    }
}

/// Where a slot's offsets come from.
#[derive(Debug)]
enum Cursor {
    /// Anywhere in `[first, first + count)` blocks.
    Random { first: u64, count: u64 },
    /// The next block of a cursor shared by the queue's slots (wraps at the region's end).
    Shared(Rc<Cell<u64>>),
    /// The next block of the slot's own slice `[first, first + count)` (wraps).
    Own { first: u64, count: u64, next: u64 },
}

/// Where a slot's data lives between operations.
#[derive(Debug)]
enum SlotBuffer {
    /// Its own memory, lent to the engine for each operation.
    Owned(Vec<u8>),
    /// Its `block_size` bytes of the queue's arena, registered as fixed buffer 0 of the
    /// queue's ring (`--fixed-buffers`).
    Fixed(*mut u8),
}

/// One in-flight position of a queue: issues an operation, waits for it, issues the next.
#[derive(Debug)]
pub struct Slot {
    plan: Plan,
    rng: u64,
    buffer: SlotBuffer,
    cursor: Cursor,
    written: HashMap<u64, u64>,
    result: QueueResult,
}

thread_local! {
    static QUEUE_CURSOR: Rc<Cell<u64>> = Rc::new(Cell::new(0));
}

impl Slot {
    /// Slot `index` of queue `queue`; with `fixed`, its data lives there instead of in
    /// memory of its own.
    ///
    /// # Safety
    ///
    /// `fixed` (if given) must point at `plan.block_size` bytes of a buffer registered as
    /// fixed buffer 0 of this thread's ring, used by nothing else, that stay allocated
    /// and registered while the slot is used.
    pub unsafe fn new(plan: &Plan, queue: u16, index: u32, fixed: Option<*mut u8>) -> Slot {
        let slices = u64::from(plan.queues) * u64::from(plan.iodepth);
        let slice_index = u64::from(queue) * u64::from(plan.iodepth) + u64::from(index);
        let slice_len = plan.blocks() / slices;
        let cursor = if plan.verify {
            Cursor::Own {
                first: slice_index * slice_len,
                count: slice_len,
                next: 0,
            }
        } else if plan.mode.is_sequential() {
            let shared = QUEUE_CURSOR.with(Rc::clone);
            shared.set(u64::from(queue) * (plan.blocks() / u64::from(plan.queues)));
            Cursor::Shared(shared)
        } else {
            Cursor::Random {
                first: 0,
                count: plan.blocks(),
            }
        };
        Slot {
            plan: plan.clone(),
            rng: seed(queue, index),
            buffer: match fixed {
                Some(region) => SlotBuffer::Fixed(region),
                None => SlotBuffer::Owned(vec![0; plan.block_size as usize]),
            },
            cursor,
            written: HashMap::new(),
            result: QueueResult::default(),
        }
    }

    /// Issues operations back to back until `deadline` or the op limit.
    pub async fn run_until(&mut self, engine: &QueueEngine, deadline: Instant) {
        let mut done = 0u64;
        while Instant::now() < deadline && self.plan.ops_per_slot.is_none_or(|limit| done < limit) {
            let block = self.next_block();
            let op = self.next_op();
            self.issue(engine, op, block).await;
            done += 1;
        }
    }

    /// Reads back every block this slot wrote and checks it.
    pub async fn read_back(&mut self, engine: &QueueEngine) {
        let mut blocks: Vec<u64> = self.written.keys().copied().collect();
        blocks.sort_unstable();
        for block in blocks {
            self.issue(engine, Op::Read, block).await;
        }
    }

    /// The slot's counters.
    pub fn into_result(self) -> QueueResult {
        self.result
    }

    async fn issue(&mut self, engine: &QueueEngine, op: Op, block: u64) {
        let offset = block * u64::from(self.plan.block_size);
        let seed = self.random();
        if op == Op::Write && self.plan.verify {
            pattern::fill(self.data(), offset, seed);
        }
        let io = BlockIo {
            op,
            offset,
            len: self.plan.block_size,
            fua: false,
        };
        let started = Instant::now();
        let outcome = match &mut self.buffer {
            SlotBuffer::Owned(buffer) => {
                let (outcome, back) = engine.execute_owned(io, std::mem::take(buffer)).await;
                *buffer = back;
                outcome
            }
            SlotBuffer::Fixed(region) => {
                let buf = BufRef::Fixed {
                    index: 0,
                    addr: *region as u64,
                };
                // SAFETY: the region is registered and this slot's alone (`Slot::new`'s
                // contract), and the future is awaited to completion here.
                unsafe { engine.execute(io, buf) }.await
            }
        };
        let latency = started.elapsed();
        if let Err(errno) = outcome {
            log::warn!("{op:?} at {offset} failed: {errno}");
            self.result.errors += 1;
            return;
        }
        let stats = match op {
            Op::Write => &mut self.result.writes,
            _ => &mut self.result.reads,
        };
        stats.record(u64::from(self.plan.block_size), latency);
        if self.plan.verify {
            self.check(op, block, offset, seed);
        }
    }

    fn check(&mut self, op: Op, block: u64, offset: u64, seed: u64) {
        match op {
            Op::Write => {
                self.written.insert(block, seed);
            }
            _ => {
                if let Some(&expected) = self.written.get(&block) {
                    if !pattern::matches(self.data(), offset, expected) {
                        log::error!("block at offset {offset} read back wrong");
                        self.result.mismatches += 1;
                    }
                }
            }
        }
    }

    /// The slot's data, between operations.
    fn data(&mut self) -> &mut [u8] {
        match &mut self.buffer {
            SlotBuffer::Owned(buffer) => buffer,
            // SAFETY: `block_size` bytes that are this slot's alone (`Slot::new`'s
            // contract), and no operation is using them between operations.
            SlotBuffer::Fixed(region) => unsafe {
                std::slice::from_raw_parts_mut(*region, self.plan.block_size as usize)
            },
        }
    }

    fn next_block(&mut self) -> u64 {
        let random = self.random();
        match &mut self.cursor {
            Cursor::Random { first, count } => *first + random % *count,
            Cursor::Shared(cursor) => {
                let block = cursor.get() % self.plan.blocks();
                cursor.set(block + 1);
                block
            }
            Cursor::Own { first, count, next } => {
                let block = if self.plan.mode.is_sequential() {
                    *next
                } else {
                    random % *count
                };
                *next = (block + 1) % *count;
                *first + block
            }
        }
    }

    fn next_op(&mut self) -> Op {
        match self.plan.mode {
            Mode::Read | Mode::RandRead => Op::Read,
            Mode::Write | Mode::RandWrite => Op::Write,
            Mode::RandRw(read_percent) => {
                if self.random() % 100 < u64::from(read_percent) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        }
    }

    /// xorshift64*: plenty for offsets and seeds, and no shared state.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn seed(queue: u16, index: u32) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = 0x9e37_79b9_7f4a_7c15u64.to_le_bytes();
    }
    (u64::from_le_bytes(bytes) ^ (u64::from(queue) << 32 | u64::from(index))) | 1
}

impl OpStats {
    /// Counts one completed operation of `bytes` that took `latency`.
    pub fn record(&mut self, bytes: u64, latency: std::time::Duration) {
        self.ops += 1;
        self.bytes += bytes;
        self.latency.record(latency);
    }
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            ops: 0,
            bytes: 0,
            latency: Histogram::new(),
        }
    }
}
