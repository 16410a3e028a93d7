//! Running a device: libublk's `UblkCtrl::run_target` rebuilt from its public parts, so
//! that a daemon handing its device over ends without `STOP_DEV` (`run_target` always
//! sends it once the queue threads are done).

use std::sync::mpsc;
use std::sync::Arc;

use libublk::ctrl::UblkCtrl;
use libublk::io::UblkDev;

use crate::error::{HostError, Result};
use crate::ublk::handover::Handover;

/// How serving a device ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It was stopped (detach, SIGINT/SIGTERM): the daemon removes it.
    Stopped,
    /// It was handed over to a new daemon (`ublk-host upgrade`): it stays, quiesced.
    HandedOver,
}

/// Starts one thread per hardware queue of `dev` running `queue_fn`, starts the device
/// (`START_DEV`, or `END_USER_RECOVERY` for a recovering control), runs `started`, waits for
/// the queues to end; then sends `STOP_DEV` unless `handover` says the device is being
/// handed over, in which case `ctrl` is disowned (its drop must not delete the device).
pub(crate) fn run_device<Q>(
    ctrl: &UblkCtrl,
    dev: UblkDev,
    queue_fn: Q,
    started: impl FnOnce(&UblkCtrl),
    handover: &Handover,
) -> Result<Ended>
where
    Q: Fn(u16, &UblkDev) + Send + Sync + Clone + 'static,
{
    let dev = Arc::new(dev);
    let threads = spawn_queues(ctrl, &dev, queue_fn)?;
    ctrl.start_dev(&dev)?;
    started(ctrl);
    for (qid, thread) in threads.into_iter().enumerate() {
        if thread.join().is_err() {
            log::error!("/dev/ublkb{}: queue {qid} panicked", dev.dev_info.dev_id);
        }
    }
    if handover.requested() {
        ctrl.disown();
        return Ok(Ended::HandedOver);
    }
    // The device may have been deleted by someone else meanwhile: ENOENT is normal here.
    let _ = ctrl.stop_dev();
    Ok(Ended::Stopped)
}

/// One thread per hardware queue; each reports its thread id, which gets the queue's CPU
/// affinity and is told to the driver (`configure_queue`) before `queue_fn` runs on it.
///
/// A queue thread waits for that before it starts: its lanes dial from the queue's own CPUs
/// then, which lets a server that steers connections by incoming CPU (array-server's
/// default, see its `net/placement.rs`) serve each lane on that CPU when it runs on this
/// machine; a reconnect helper thread a queue starts inherits the affinity too.
fn spawn_queues<Q>(
    ctrl: &UblkCtrl,
    dev: &Arc<UblkDev>,
    queue_fn: Q,
) -> Result<Vec<std::thread::JoinHandle<()>>>
where
    Q: Fn(u16, &UblkDev) + Send + Sync + Clone + 'static,
{
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    let mut go = Vec::new();
    for qid in 0..dev.dev_info.nr_hw_queues {
        let (dev, tx, queue_fn) = (dev.clone(), tx.clone(), queue_fn.clone());
        let (placed, wait_placed) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("queue-{qid}"))
            .spawn(move || {
                let tid = UblkCtrl::init_queue_thread();
                if tx.send((qid, tid)).is_ok() && wait_placed.recv().is_ok() {
                    queue_fn(qid, &dev);
                }
            })
            .map_err(|e| HostError::io("starting a queue thread", e))?;
        threads.push(thread);
        go.push(placed);
    }
    drop(tx);
    for (qid, tid) in rx.iter().take(threads.len()) {
        ctrl.set_thread_affinity(qid, tid);
        if let Err(error) = ctrl.configure_queue(dev, qid, tid) {
            log::warn!(
                "/dev/ublkb{}: configuring queue {qid}: {error}",
                dev.dev_info.dev_id
            );
        }
        // A thread that is gone already ends on its own; nothing to tell it.
        let _ = go[usize::from(qid)].send(());
    }
    Ok(threads)
}
