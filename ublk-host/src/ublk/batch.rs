//! One hardware queue of a device with batched I/O commands (`UBLK_F_BATCH_IO`, Linux
//! 7.0): the driver hands the queue its requests a batch at a time through a multishot
//! fetch, and takes their results back a batch at a time, instead of one fetch-and-commit
//! command per tag. Copy mode only (libublk's batch transport has no zero copy): each tag
//! has its own buffer, which the driver copies the request's pages to and from.
//!
//! The queue thread runs one loop: reap the ring's completions (the driver's fetches and
//! commits go to libublk's [`UblkBatchQueue`], the lanes' socket operations wake their
//! futures), start a task on the queue's engine for every request fetched, run the tasks
//! that can run, then hand the results gathered so far back to the driver in one commit.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use libublk::io::{
    UblkBatchBuffers, UblkBatchCompletion, UblkBatchConfig, UblkBatchQueue, UblkDev, UblkQueue,
};
use libublk::uring_async::ublk_wake_task;
use libublk::UblkError;
use wire::PartitionInfo;

use crate::client::uring::{init_thread_ring, poll_completions};
use crate::client::{BufRef, EngineConfig, QueueEngine};
use crate::error::Errno;
use crate::ublk::queue::{handle, RING_OPS_PER_LANE};

/// Ring entries the batch transport uses on top of the lanes' (fetches, commits, buffer
/// provisions, with room to spare).
const BATCH_RING_OPS: u32 = 64;

/// Serves queue `qid` of a batched-I/O device until the device stops: like
/// [`crate::ublk::queue::serve_queue`], with the driver's commands in batches.
pub fn serve_queue_batch(
    qid: u16,
    dev: &UblkDev,
    config: &EngineConfig,
    partition: &PartitionInfo,
) {
    let depth = u32::from(dev.dev_info.queue_depth);
    let lanes = u32::from(config.lanes_per_queue);
    if let Err(error) = init_thread_ring(depth * 2 + lanes * RING_OPS_PER_LANE + BATCH_RING_OPS) {
        log::error!("queue {qid}: {error}");
    }
    let queue = match UblkQueue::new(qid, dev) {
        Ok(queue) => queue,
        Err(error) => {
            log::error!("queue {qid}: cannot set up the ublk queue: {error}");
            return;
        }
    };
    let lane_executor = Rc::new(smol::LocalExecutor::new());
    let config = EngineConfig {
        zero_copy: false,
        ..config.clone()
    };
    let engine = match QueueEngine::open(&config, partition, qid, lane_executor.clone()) {
        Ok(engine) => Some(Rc::new(engine)),
        Err(error) => {
            log::error!("queue {qid}: cannot open its lanes, every I/O fails with EIO: {error}");
            None
        }
    };
    let loop_state = Loop {
        queue: &queue,
        engine: engine.as_deref(),
        lanes: &lane_executor,
        room: dev.dev_info.max_io_buf_bytes as usize,
        poll: config.poll,
    };
    if let Err(error) = loop_state.run(dev) {
        log::error!("queue {qid}: batch event loop failed: {error}");
    }
    if let Some(engine) = engine {
        engine.close();
        let closing = lane_executor.spawn(async move { engine.closed().await });
        if let Err(error) = crate::client::uring::run_until(&lane_executor, closing, config.poll) {
            log::error!("queue {qid}: closing its lanes: {error}");
        }
    }
}

/// What the queue's loop works with.
struct Loop<'a, 'dev> {
    queue: &'a UblkQueue<'dev>,
    engine: Option<&'a QueueEngine>,
    /// The executor of the engine's lanes.
    lanes: &'a smol::LocalExecutor<'static>,
    /// Bytes of each tag's buffer.
    room: usize,
    poll: Duration,
}

impl<'a> Loop<'a, '_> {
    /// The queue's loop (see the module docs), until the driver stopped fetching, every
    /// result was committed and no request task runs any more. A request task is never
    /// dropped while it runs: the kernel may be receiving into its tag's buffer, which the
    /// batch transport owns. After a failure the loop keeps running the tasks (their
    /// results are dropped: the device is going down) until none is left.
    fn run(&self, dev: &UblkDev) -> Result<(), UblkError> {
        let buffers = UblkBatchBuffers::IoBufs(dev.alloc_queue_io_bufs());
        let mut batch = UblkBatchQueue::new(self.queue, buffers, UblkBatchConfig::default())?;
        let requests = smol::LocalExecutor::new();
        let done: Rc<RefCell<Vec<UblkBatchCompletion>>> = Rc::default();
        let running = Rc::new(Cell::new(0_u32));
        let mut committing: Vec<UblkBatchCompletion> = Vec::new();
        let mut failure = None;
        loop {
            while requests.try_tick() | self.lanes.try_tick() {}
            committing.append(&mut done.borrow_mut());
            if failure.is_none() && !batch.all_fetches_stopped() && !committing.is_empty() {
                match batch.try_submit_completions(&committing) {
                    Ok(true) => committing.clear(),
                    Ok(false) => {} // every commit buffer in flight: the next turn
                    Err(error) => failure = Some(error),
                }
            }
            if failure.is_none() {
                match batch.try_begin_shutdown() {
                    Ok(true) if batch.is_shutdown_complete() && running.get() == 0 => return Ok(()),
                    Ok(_) => {}
                    Err(error) => failure = Some(error),
                }
            }
            if running.get() == 0 {
                if let Some(error) = failure {
                    return Err(error);
                }
            }
            let wait = if poll_completions(self.poll) { 0 } else { 1 };
            let reaped = self.queue.flush_and_wake_io_tasks(
                |user_data, cqe, _last| {
                    let handled = batch.handle_cqe(cqe, |batch, tags| {
                        for &tag in tags {
                            let buf = batch
                                .io_buf_mut(tag)
                                .map(|buf| BufRef::Ptr(buf.as_mut_ptr()));
                            self.start(&requests, tag, buf, &done, &running);
                        }
                        Ok(())
                    });
                    match handled {
                        Ok(true) => {}
                        Ok(false) => ublk_wake_task(user_data, cqe),
                        Err(error) => {
                            failure.get_or_insert(error);
                        }
                    }
                },
                wait,
            );
            if let Err(error) = reaped {
                // The ring itself failed: nothing more completes, so the tasks can never
                // finish. Their buffers stay allocated (leaked), as the kernel may still
                // write into them.
                log::error!("reaping the queue's ring: {error}");
                std::mem::forget(requests);
                std::mem::forget(batch);
                return Err(error);
            }
        }
    }

    /// Starts the task that runs `tag`'s request in `buf` and adds its result to `done`.
    fn start(
        &self,
        requests: &smol::LocalExecutor<'a>,
        tag: u16,
        buf: Option<BufRef>,
        done: &Rc<RefCell<Vec<UblkBatchCompletion>>>,
        running: &Rc<Cell<u32>>,
    ) {
        let (done, running) = (done.clone(), running.clone());
        let (queue, engine, room) = (self.queue, self.engine, self.room);
        running.set(running.get() + 1);
        requests
            .spawn(async move {
                let result = match (engine, buf) {
                    (Some(engine), Some(buf)) => handle(queue, tag, engine, buf, room).await,
                    _ => Errno::EIO.to_ublk_result(),
                };
                done.borrow_mut()
                    .push(UblkBatchCompletion::new(tag, result));
                running.set(running.get() - 1);
            })
            .detach();
    }
}
