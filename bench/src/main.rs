//! `bench`: a load generator over the Multilane host engine, the same code the ublk
//! device runs, without a kernel device.
//!
//! # Layout
//!
//! - `args`: the command line (fio-like workloads).
//! - `workload`: what each in-flight slot does next (op, offset), per queue thread.
//! - `pattern`: verifiable data: every written block carries its offset and a seed.
//! - `histogram`: log-linear latency buckets, merged across threads.
//! - `report`: the fio-style text report and the JSON one.
//!
//! One thread per queue, each running `ublk_host::client::run_queue_thread`: its own
//! io_uring, its own lanes, `iodepth` tasks issuing operations back to back until the
//! runtime is over or the op count is reached.

mod args;
mod histogram;
mod pattern;
mod report;
mod workload;

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ublk_host::client::{run_queue_thread, uring, Discovery, QueueEngine};

use crate::args::Args;
use crate::report::{QueueResult, Summary};
use crate::workload::{Plan, Slot};

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Args = argh::from_env();
    let plan = args.plan()?;
    let client = args.client_config()?;
    let partition = Discovery::open(&client)
        .context("connecting to the server for discovery")?
        .list()
        .context("listing partitions")?
        .find(&args.partition)?
        .clone();
    let plan = plan.fit_to(&partition)?;
    let engine_config = args.engine_config(client, &plan);

    let started = Instant::now();
    let threads: Vec<_> = (0..args.queues)
        .map(|queue| {
            let config = engine_config.clone();
            let partition = partition.clone();
            let plan = plan.clone();
            std::thread::Builder::new()
                .name(format!("bench-q{queue}"))
                .spawn(move || {
                    run_queue_thread(&config, &partition, queue, move |engine| {
                        run_queue(engine, plan, queue)
                    })
                })
                .context("spawning a queue thread")
        })
        .collect::<Result<_>>()?;
    let mut results = Vec::new();
    for thread in threads {
        let outcome = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a queue thread panicked"))?;
        results.push(outcome.context("running a queue engine")??);
    }
    let summary = Summary::new(&plan, &partition, results, started.elapsed());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary.to_json())?);
    } else {
        print!("{}", summary.to_text());
    }
    if summary.errors > 0 || summary.mismatches > 0 {
        bail!(
            "{} operations failed, {} blocks read back wrong",
            summary.errors,
            summary.mismatches
        );
    }
    Ok(())
}

/// One queue thread's work: `iodepth` tasks until the deadline, then (with verification)
/// a read-back of every block this queue wrote.
async fn run_queue(engine: Rc<QueueEngine>, plan: Plan, queue: u16) -> Result<QueueResult> {
    let block_size = plan.block_size as usize;
    let mut arena = plan
        .fixed_buffers
        .then(|| vec![0u8; block_size * plan.iodepth as usize]);
    if let Some(arena) = &mut arena {
        // SAFETY: `arena` lives until after the buffers are unregistered below, and the
        // process touches a slot's part only between that slot's operations.
        unsafe { uring::register_buffer(arena.as_mut_ptr(), arena.len()) }?;
    }
    let base = arena.as_mut().map(|arena| arena.as_mut_ptr());
    let deadline = Instant::now() + Duration::from_secs_f64(plan.runtime_secs);
    let tasks: Vec<_> = (0..plan.iodepth)
        .map(|index| {
            // SAFETY: slot `index` gets its own `block_size` bytes of the registered arena,
            // which outlives every slot (the tasks are awaited before it is unregistered).
            let mut slot = unsafe {
                let region = base.map(|base| base.add(index as usize * block_size));
                Slot::new(&plan, queue, index, region)
            };
            let engine = engine.clone();
            engine.clone().spawn(async move {
                slot.run_until(&engine, deadline).await;
                if plan.verify {
                    slot.read_back(&engine).await;
                }
                slot.into_result()
            })
        })
        .collect();
    let mut result = QueueResult::default();
    for task in tasks {
        result.merge(task.await);
    }
    if arena.is_some() {
        uring::unregister_buffers()?;
    }
    drop(arena);
    let stats = engine.lane_stats();
    result.lanes = stats.iter().map(|stats| stats.requests).collect();
    for lane in &stats {
        report::add_events(&mut result.events, lane);
    }
    Ok(result)
}
