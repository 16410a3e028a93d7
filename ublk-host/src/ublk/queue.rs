//! One ublk hardware queue: its thread runs one task per tag and the queue's engine, all
//! on the queue's io_uring.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::{ublk_reap_io_events_with_update_queue, ublk_wake_task};
use libublk::{sys, BufDesc, UblkError};
use wire::{Op, PartitionInfo};

use crate::client::poll_budget::PollBudget;
use crate::client::uring::{init_thread_ring, poll_completions};
use crate::client::{BlockIo, BufRef, EngineConfig, QueueEngine};
use crate::error::Errno;
use crate::ublk::handover::{Drain, Handover};
use crate::ublk::params::SECTOR_SHIFT;
use crate::ublk::small_writes::SmallWrites;

/// Ring operations each lane may have in flight (send, receive, reconnect wait + timer).
const RING_OPS_PER_LANE: u32 = 4;
/// Seconds of idleness after which libublk lets the queue go idle.
const IDLE_SECS: u64 = 20;
/// The low byte of a ublk descriptor's `op_flags` is the operation.
const OP_MASK: u32 = 0xff;

/// Serves queue `qid` of `dev` until the device stops or is handed over: opens the queue's
/// own lanes and answers every tag's I/O through them.
///
/// The queue ends once every tag's task has ended (the driver aborted its fetch command:
/// the device stops), or, in a handover (`handover`: the driver has quiesced the device and
/// dispatches nothing more), once no tag holds a request; a tag whose commit was submitted
/// waits for a fetch the driver will not complete, and is let go. Then the lanes close.
pub fn serve_queue(
    qid: u16,
    dev: &UblkDev,
    config: &EngineConfig,
    partition: &PartitionInfo,
    handover: &Handover,
) {
    let depth = u32::from(dev.dev_info.queue_depth);
    let lanes = u32::from(config.lanes_per_queue);
    if let Err(error) = init_thread_ring(depth * 2 + lanes * RING_OPS_PER_LANE) {
        log::error!("queue {qid}: {error}");
    }
    let queue = match UblkQueue::new(qid, dev) {
        Ok(queue) => Rc::new(queue),
        Err(error) => {
            log::error!("queue {qid}: cannot set up the ublk queue: {error}");
            return;
        }
    };
    let lane_executor = Rc::new(smol::LocalExecutor::new());
    let config = EngineConfig {
        zero_copy: queue.support_auto_buf_zc(),
        ..config.clone()
    };
    let engine = match QueueEngine::open(&config, partition, qid, lane_executor.clone()) {
        Ok(engine) => Some(Rc::new(engine)),
        Err(error) => {
            log::error!("queue {qid}: cannot open its lanes, every I/O fails with EIO: {error}");
            None
        }
    };
    let tag_executor = smol::LocalExecutor::new();
    let busy = Rc::new(Cell::new(0_u32));
    let tasks: Vec<_> = queue
        .tags()
        .map(|tag| {
            let (queue, engine, busy) = (queue.clone(), engine.clone(), busy.clone());
            tag_executor.spawn(async move {
                match serve_tag(&queue, tag, engine.as_deref(), &busy).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(error) => log::error!("queue {qid} tag {tag}: {error}"),
                }
            })
        })
        .collect();
    let closing = Cell::new(false);
    let drain = Drain::default();
    let run_ops = || run_tags_first(&tag_executor, &lane_executor);
    let is_done = || {
        let handed_over = drain.drained(handover.requested(), busy.get());
        if !handed_over && !tasks.iter().all(|task| task.is_finished()) {
            return false;
        }
        let Some(engine) = &engine else {
            return true;
        };
        if !closing.replace(true) {
            engine.close();
        }
        engine.lanes_closed()
    };
    let served = serve_ring(&queue, config.poll, &busy, run_ops, is_done);
    if let Err(error) = smol::block_on(served) {
        log::error!("queue {qid}: event loop failed: {error}");
    }
}

/// Runs every ready task: all tag tasks first, then one lane task, until none is ready.
///
/// The order is what batches requests. The fetches reaped in one go wake their tag tasks
/// together; each hands its request to a lane, and the first wakes the lane's sender. Run
/// before any lane task, they all reach the sender's next batch, and the batch leaves in
/// one `sendmsg` (one TCP segment for a burst of small requests). Ticking the two
/// executors in turn would let the sender run after every single request.
fn run_tags_first(tags: &smol::LocalExecutor<'_>, lanes: &smol::LocalExecutor<'_>) {
    loop {
        while tags.try_tick() {}
        if !lanes.try_tick() {
            return;
        }
    }
}

/// The queue's event loop: libublk's `wait_and_handle_io_events` with a poll of the ring
/// (see [`poll_completions`]) before each sleep in `io_uring_enter`. A sleep ends after
/// [`IDLE_SECS`] without completions, which lets libublk mark the queue idle.
///
/// The poll lasts `poll`, or longer while replies take longer ([`PollBudget`]) when
/// exactly one request is in flight (`busy`, see [`serve_tag`]), and only those waits
/// teach the budget. With none in flight the wait is for the application's next request,
/// which may be far off: polling through it would spin a CPU for a device doing a few
/// thousand requests a second. With more in flight the next completion is rarely far,
/// and a long poll only takes turns from the server and fio on the CPU.
async fn serve_ring(
    queue: &UblkQueue<'_>,
    poll: Duration,
    busy: &Cell<u32>,
    run_ops: impl Fn(),
    is_done: impl Fn() -> bool,
) -> Result<(), UblkError> {
    let budget = RefCell::new(PollBudget::new(poll));
    let wait = || async {
        // Only a wait for a reply uses the budget and teaches it (see above).
        let for_a_reply = (busy.get() == 1).then(Instant::now);
        let polls_for = match for_a_reply {
            Some(_) => budget.borrow().current(),
            None => poll,
        };
        let waited = if !queue.is_stopping() && poll_completions(polls_for) {
            Ok(false) // completions to reap; no timeout
        } else {
            let idle = io_uring::types::Timespec::new().sec(IDLE_SECS);
            libublk::uring_poll_io_fn::<io_uring::squeue::Entry>(queue, Some(idle), 1)
        };
        if let Some(started) = for_a_reply {
            budget.borrow_mut().record(started, Instant::now());
        }
        waited
    };
    let reap = |timed_out| {
        ublk_reap_io_events_with_update_queue(queue, timed_out, None, |cqe| {
            ublk_wake_task(cqe.user_data(), cqe)
        })
    };
    libublk::run_uring_tasks(wait, reap, run_ops, is_done).await
}

/// Fetches and completes one tag's I/O until the queue goes down: in copy mode through the
/// tag's own buffer, in zero-copy mode through the request's pages, which the driver
/// registers in the queue's ring at index `tag` for as long as the request is ours
/// (automatic buffer registration).
///
/// `busy` counts the queue's tags that hold a request (fetched, not yet committed).
async fn serve_tag(
    queue: &UblkQueue<'_>,
    tag: u16,
    engine: Option<&QueueEngine>,
    busy: &Cell<u32>,
) -> Result<(), UblkError> {
    if queue.support_auto_buf_zc() {
        let reg = sys::ublk_auto_buf_reg {
            index: tag,
            ..Default::default()
        };
        let fixed = BufRef::Fixed {
            index: tag,
            addr: 0,
        };
        let room = queue.dev.dev_info.max_io_buf_bytes as usize;
        let small_writes = SmallWrites::for_tag(queue, tag);
        queue
            .submit_io_prep_cmd(tag, BufDesc::AutoReg(reg), 0, None)
            .await?;
        loop {
            busy.set(busy.get() + 1);
            let result = match engine {
                Some(engine) => {
                    handle(queue, tag, engine, fixed, room, small_writes.as_ref()).await
                }
                None => Errno::EIO.to_ublk_result(),
            };
            busy.set(busy.get() - 1);
            queue
                .submit_io_commit_cmd(tag, BufDesc::AutoReg(reg), result)
                .await?;
        }
    }
    let buf = IoBuf::<u8>::new(queue.dev.dev_info.max_io_buf_bytes as usize);
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        busy.set(busy.get() + 1);
        let result = match engine {
            Some(engine) => {
                let own = BufRef::Ptr(buf.as_mut_ptr());
                handle(queue, tag, engine, own, buf.len(), None).await
            }
            None => Errno::EIO.to_ublk_result(),
        };
        busy.set(busy.get() - 1);
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}

/// Runs the tag's current I/O with its data at `buf` (`room` bytes), or, for a small
/// write of a zero-copy device that lets it (`small_writes`), copied into the tag's own
/// buffer; returns what it completes with (bytes, or `-errno`).
async fn handle(
    queue: &UblkQueue<'_>,
    tag: u16,
    engine: &QueueEngine,
    buf: BufRef,
    room: usize,
    small_writes: Option<&SmallWrites>,
) -> i32 {
    let iod = queue.get_iod(tag);
    let Some(io) = block_io(iod.op_flags, iod.start_sector, iod.nr_sectors) else {
        return Errno::EOPNOTSUPP.to_ublk_result();
    };
    if io.has_data() && io.len as usize > room {
        return Errno::EINVAL.to_ublk_result();
    }
    let buf = match small_writes {
        Some(small) if small.takes(&io) => small.copy_in(io.len).unwrap_or(buf),
        _ => buf,
    };
    // SAFETY: the buffer (the tag's own, a small write's copy, or the request's pages the
    // driver registered at index `tag` until the commit) holds at least `io.len` bytes
    // (checked above, and by `SmallWrites::copy_in`), is used by nobody else until the
    // commit below, and the future is awaited to completion right here.
    match unsafe { engine.execute(io, buf) }.await {
        Ok(()) if io.op == Op::Flush => 0,
        Ok(()) => io.len as i32,
        Err(errno) => errno.to_ublk_result(),
    }
}

/// Translates a ublk descriptor into a block operation (`None`: unsupported).
fn block_io(op_flags: u32, start_sector: u64, nr_sectors: u32) -> Option<BlockIo> {
    let op = match op_flags & OP_MASK {
        sys::UBLK_IO_OP_READ => Op::Read,
        sys::UBLK_IO_OP_WRITE => Op::Write,
        sys::UBLK_IO_OP_FLUSH => Op::Flush,
        sys::UBLK_IO_OP_DISCARD => Op::Discard,
        sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
        _ => return None,
    };
    Some(BlockIo {
        op,
        offset: start_sector << SECTOR_SHIFT,
        len: nr_sectors << SECTOR_SHIFT,
        fua: op_flags & sys::UBLK_IO_F_FUA != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_translate() {
        let write_fua = sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA;
        let io = block_io(write_fua, 8, 16).unwrap();
        assert_eq!(
            (io.op, io.offset, io.len, io.fua),
            (Op::Write, 4096, 8192, true)
        );
        assert_eq!(block_io(sys::UBLK_IO_OP_FLUSH, 0, 0).unwrap().op, Op::Flush);
        assert!(block_io(sys::UBLK_IO_OP_ZONE_OPEN, 0, 8).is_none());
    }

    /// Every ready tag task runs before the next lane task, including tag tasks that a
    /// lane task woke: a lane's sender then finds every request of a burst queued.
    #[test]
    fn tag_tasks_run_before_each_lane_task() {
        let order = std::cell::RefCell::new(Vec::new());
        let (tags, lanes) = (smol::LocalExecutor::new(), smol::LocalExecutor::new());
        let (wake_tag, woken) = smol::channel::unbounded::<()>();
        let mut spawned = Vec::new();
        for lane in ["sender", "receiver"] {
            let (order, wake_tag) = (&order, wake_tag.clone());
            spawned.push(lanes.spawn(async move {
                order.borrow_mut().push(lane);
                if lane == "receiver" {
                    wake_tag.try_send(()).unwrap(); // a reply finishes a tag's request
                }
            }));
        }
        for tag in ["tag 0", "tag 1", "tag 2"] {
            let order = &order;
            spawned.push(tags.spawn(async move { order.borrow_mut().push(tag) }));
        }
        let order_ref = &order;
        let woken_tag = tags.spawn(async move {
            woken.recv().await.unwrap();
            order_ref.borrow_mut().push("woken tag");
        });
        run_tags_first(&tags, &lanes);
        assert!(spawned.iter().all(smol::Task::is_finished) && woken_tag.is_finished());
        assert_eq!(
            *order.borrow(),
            ["tag 0", "tag 1", "tag 2", "sender", "receiver", "woken tag"]
        );
    }
}
