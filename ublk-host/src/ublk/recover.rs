//! Taking over a device whose daemon died.
//!
//! Devices are created with `UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE`: when the
//! daemon dies, the driver quiesces the device (a few seconds later on 6.12: its monitor
//! notices the dead daemon) and requeues the requests the dead daemon held; new I/O waits.
//! A new process checks that the device serves the same server, host and partition (same
//! partition id and size), sends `START_USER_RECOVERY`, opens the device's queues with fresh
//! lanes (their newer lane epochs make the server fence the dead daemon's connections before
//! anything is reissued) and sends `END_USER_RECOVERY`; the driver then reissues the
//! requeued requests to it. The filesystem above sees a stall, not an error.
//!
//! Ownership: the process serving a device owns it. A recovering process that fails before
//! the device is live leaves it quiesced for another attempt; once it serves the device, a
//! normal stop (detach, SIGINT/SIGTERM) removes the device as the creator's would have.
//! A planned handover from a live daemon (`ublk-host upgrade`, [`mod@crate::ublk::upgrade`])
//! ends in the same takeover.

use std::time::{Duration, Instant};

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::UblkFlags;
use wire::PartitionInfo;

use crate::error::{HostError, Result};
use crate::ublk::daemon::{
    describe_owner, discover, saved_state, serve, stop_on_signals, target_data, AttachOptions,
    Attached, RECOVERY_FLAGS, TARGET_NAME,
};
use crate::ublk::inspect::{self, ctrl_id, DeviceState};
use crate::ublk::names;
use crate::ublk::path_report;
use crate::ublk::progress::Progress;
use crate::ublk::run::Ended;
use crate::ublk::state::{self, Claim, IdsLock};

/// How long a recovering process waits for the driver to quiesce a device whose daemon
/// died (6.12 checks for dead daemons every 5 s).
const QUIESCE_WAIT: Duration = Duration::from_secs(30);
/// How often it looks.
const QUIESCE_POLL: Duration = Duration::from_millis(50);

/// Takes device `id` over (`ublk-host recover ID`): it must have lost its daemon, and
/// `options` (from its state file) must name what it serves. Serves it until it is stopped,
/// then removes it. `ready` runs once the device is live again.
pub fn recover(
    id: u32,
    options: &AttachOptions,
    ready: impl FnOnce(&Attached) + Send + Sync + 'static,
) -> Result<Ended> {
    if !inspect::exists(id) {
        return Err(HostError::Config {
            what: "device",
            reason: format!("/dev/ublkb{id} does not exist"),
        });
    }
    let (partition, _) = discover(options)?;
    claim_and_take_over(id, options, partition, ready)
}

/// Claims device `id`, which must have lost its daemon, and takes it over for `partition`.
pub(crate) fn claim_and_take_over(
    id: u32,
    options: &AttachOptions,
    partition: PartitionInfo,
    ready: impl FnOnce(&Attached) + Send + Sync + 'static,
) -> Result<Ended> {
    let ids = IdsLock::take()?;
    let info = inspect::inspect(id)?;
    if !info.state.recoverable() {
        return Err(HostError::NotRecoverable {
            id,
            state: describe_owner(&info),
        });
    }
    let claim = Claim::take(id)?;
    drop(ids);
    take_over(id, claim, options, partition, ready)
}

/// The device `attach` with `options` should take over instead of creating one: an
/// unclaimed device that lost its daemon and serves the same server, host and partition
/// (only `options.id` if one is given). Must be called under [`IdsLock`].
pub(crate) fn takeover_candidate(options: &AttachOptions) -> Result<Option<u32>> {
    let ids = match options.id {
        Some(id) if inspect::exists(id) => vec![id],
        Some(_) => return Ok(None),
        None => inspect::device_ids(),
    };
    for id in ids {
        if serves_same(id, options)
            && !state::is_claimed(id)
            && inspect::inspect(id)?.state.recoverable()
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Fails with [`HostError::PartitionAttached`] if a device served by a live daemon already
/// serves the server, host and partition of `options`: the two devices' lanes would share
/// their identity on the server and fence each other. Must be called under [`IdsLock`].
pub(crate) fn refuse_if_served(options: &AttachOptions) -> Result<()> {
    for id in inspect::device_ids() {
        if serves_same(id, options) && state::is_claimed(id) {
            let pid = inspect::inspect(id).map_or(-1, |info| info.daemon_pid);
            return Err(HostError::PartitionAttached {
                partition: options.partition.clone(),
                server: options.engine.client.server.clone(),
                id,
                pid,
            });
        }
    }
    Ok(())
}

/// Whether device `id` serves the server, host and partition `options` names (the identity
/// its lanes carry on the server).
fn serves_same(id: u32, options: &AttachOptions) -> bool {
    state::target_data(id).is_some_and(|t| {
        t.server == options.engine.client.server
            && t.host == options.engine.client.host
            && t.partition == options.partition
    })
}

/// Recovers device `id` (claimed by `claim`) for `partition` and serves it.
pub(crate) fn take_over(
    id: u32,
    mut claim: Claim,
    options: &AttachOptions,
    partition: PartitionInfo,
    ready: impl FnOnce(&Attached) + Send + Sync + 'static,
) -> Result<Ended> {
    let lanes_per_queue = check_identity(id, options, &partition)?;
    let options = &with_lanes(options, lanes_per_queue);
    wait_quiesced(id)?;
    let zero_copy = inspect::inspect(id)?
        .target
        .is_some_and(|target| target.zero_copy);
    claim.write(&saved_state(id, options, &partition, zero_copy))?;
    let simple = UblkCtrl::new_simple(ctrl_id(id)?)?;
    let started = simple.start_user_recover()?;
    if started < 0 {
        return Err(HostError::Ublk(libublk::UblkError::UringIOError(started)));
    }
    let info = simple.dev_info();
    drop(simple);
    let ctrl = UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(ctrl_id(id)?)
        .nr_queues(info.nr_hw_queues)
        .depth(info.queue_depth)
        .io_buf_bytes(info.max_io_buf_bytes)
        .ctrl_flags(RECOVERY_FLAGS)
        .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        .build()?;
    let handover = stop_on_signals(id)?;
    let ended = serve(
        &ctrl,
        options,
        partition,
        info.max_io_buf_bytes,
        true,
        handover,
        ready,
    )?;
    if ended == Ended::HandedOver {
        return Ok(ended);
    }
    // This process owns the device now; a recovery control does not delete on drop.
    if let Err(error) = ctrl.del_dev() {
        log::debug!("deleting /dev/ublkb{id}: {error} (already gone?)");
    }
    names::withdraw(id);
    path_report::remove(id);
    claim.remove();
    Ok(ended)
}

/// The device must serve this very partition: same server, host, name, id and size.
/// Returns the device's lanes per queue.
fn check_identity(id: u32, options: &AttachOptions, partition: &PartitionInfo) -> Result<u16> {
    let want = target_data(options, partition, false);
    let info = inspect::inspect(id)?;
    let same = info.target.as_ref().is_some_and(|t| {
        t.server == want.server
            && t.host == want.host
            && t.partition == want.partition
            && t.partition_id == want.partition_id
    });
    if !same || info.size != partition.size {
        return Err(HostError::NotRecoverable {
            id,
            state: format!(
                "it does not serve partition {} (id {}, {} bytes) of {} as {}: {}",
                want.partition,
                want.partition_id,
                partition.size,
                want.server,
                want.host,
                describe_owner(&info)
            ),
        });
    }
    Ok(info
        .target
        .map_or(want.lanes_per_queue, |t| t.lanes_per_queue))
}

/// `options` with the device's own lanes per queue: the new daemon opens a lane for every
/// (queue, lane) the dead one had, so the server fences each of the dead daemon's
/// connections before anything is reissued.
fn with_lanes(options: &AttachOptions, lanes_per_queue: u16) -> AttachOptions {
    let mut options = options.clone();
    if options.engine.lanes_per_queue != lanes_per_queue {
        log::warn!(
            "the device was served with {lanes_per_queue} lanes per queue, not {}: keeping {lanes_per_queue}",
            options.engine.lanes_per_queue
        );
        options.engine.lanes_per_queue = lanes_per_queue;
    }
    options
}

/// Waits until the driver has quiesced device `id`.
fn wait_quiesced(id: u32) -> Result<()> {
    let deadline = Instant::now() + QUIESCE_WAIT;
    let mut progress = Progress::new(format!("waiting for the driver to quiesce /dev/ublkb{id}"));
    loop {
        progress.tick();
        let info = inspect::inspect(id)?;
        match info.state {
            // Claimed by us: the driver's QUIESCED shows as "recovering" now.
            DeviceState::Recovering | DeviceState::Quiesced => return Ok(()),
            DeviceState::Quiescing if Instant::now() < deadline => std::thread::sleep(QUIESCE_POLL),
            _ => {
                return Err(HostError::NotRecoverable {
                    id,
                    state: describe_owner(&info),
                })
            }
        }
    }
}
