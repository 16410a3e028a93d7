//! Creating a Multilane ublk device (or taking over the one a dead daemon left), and
//! removing one.

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::UblkFlags;

use crate::error::{HostError, Result};
use crate::ublk::daemon::{
    describe_owner, device_flags, discover, is_zero_copy, saved_state, serve, stop_device,
    stop_on_signals, AttachOptions, Attached, TARGET_NAME,
};
use crate::ublk::inspect::{self, ctrl_id};
use crate::ublk::path_report;
use crate::ublk::progress::Progress;
use crate::ublk::run::Ended;
use crate::ublk::small_writes::USER_COPY;
use crate::ublk::state::{self, Claim, IdsLock};
use crate::ublk::{names, recover};

/// Discovers the partition, creates `/dev/ublkbN` for it (with ublk user recovery, so a
/// new process can take it over if this one dies) and serves it until the device is
/// stopped (by [`detach`], or by [`stop_on_signals`] on SIGINT/SIGTERM); then removes it.
/// `ready` runs once the device is live. A device handed over to a new daemon
/// (`ublk-host upgrade`) is left in place with its state file and stable name.
///
/// If a quiesced device of the same server, host and partition exists (its daemon died:
/// a supervisor runs the same command again), this takes that device over instead of
/// creating a new one (see [`mod@crate::ublk::recover`]). A second device for a partition a
/// live daemon of this host already serves from that server, or an `options.id` in use by
/// anything else, is refused before anything is created.
pub fn attach(
    options: &AttachOptions,
    ready: impl FnOnce(&Attached) + Send + Sync + 'static,
) -> Result<Ended> {
    let (partition, buf_bytes) = discover(options)?;
    let ids = IdsLock::take()?;
    if let Some(id) = recover::takeover_candidate(options)? {
        let claim = Claim::take(id)?;
        drop(ids);
        log::info!("/dev/ublkb{id} serves this partition and lost its daemon: taking it over");
        return recover::take_over(id, claim, options, partition, ready);
    }
    if let Some(id) = options.id {
        refuse_if_in_use(id)?;
    }
    recover::refuse_if_served(options)?;
    let id = options.id.map_or(Ok(-1), ctrl_id)?;
    let flags = device_flags(options.copy);
    let ctrl = match add_device(options, id, buf_bytes, flags) {
        // User copy beside zero copy only speeds small writes up (`small_writes.rs`): a
        // driver that offers both but refuses them together still gets a device.
        Err(error) if flags & USER_COPY != 0 => {
            log::warn!(
                "the driver refused user copy beside zero copy ({error}): all writes go zero copy"
            );
            add_device(options, id, buf_bytes, flags & !USER_COPY)?
        }
        added => added?,
    };
    let dev_id = ctrl.dev_info().dev_id;
    let mut claim = Claim::take(dev_id)?;
    let zero_copy = is_zero_copy(ctrl.dev_info().flags);
    claim.write(&saved_state(dev_id, options, &partition, zero_copy))?;
    drop(ids);
    let queues = ctrl.dev_info().nr_hw_queues;
    if queues < options.queues {
        log::warn!(
            "the driver gave {queues} hardware queues, not {} (it allows at most one per CPU)",
            options.queues
        );
    }
    let handover = stop_on_signals(dev_id)?;
    let ended = serve(&ctrl, options, partition, buf_bytes, false, handover, ready)?;
    // Dropping `ctrl` (made with ADD_DEV) deletes the device this process created, unless
    // it was handed over (then `serve` disowned it).
    drop(ctrl);
    if ended == Ended::Stopped {
        names::withdraw(dev_id);
        path_report::remove(dev_id);
        claim.remove();
    }
    Ok(ended)
}

/// Fails with [`HostError::DeviceInUse`] if ublk device `id` exists: asking the driver for
/// it would fail, and libublk 0.4.8's cleanup of that failed ADD_DEV (its control handle's
/// drop sends DEL_DEV for the id it asked for, and the flag that would stop it is internal)
/// deletes the device under its owner.
///
/// Multilane processes check and create under [`IdsLock`], so they never race each other;
/// another ublk server creating the same id between this check and ADD_DEV is the window
/// left.
fn refuse_if_in_use(id: u32) -> Result<()> {
    if !inspect::exists(id) {
        return Ok(());
    }
    let state = match inspect::inspect(id) {
        Ok(info) => describe_owner(&info),
        Err(error) => format!("state unknown: {error}"),
    };
    Err(HostError::DeviceInUse { id, state })
}

/// Parses `N`, `ublkbN`, `/dev/ublkbN` (or `ublkcN`), or a stable name
/// (`/dev/multilane/vol0`, a link to `/dev/ublkbN`) into a device id.
pub fn parse_device(text: &str) -> Result<u32> {
    let linked = std::fs::read_link(text).ok();
    let text = linked.as_ref().and_then(|p| p.to_str()).unwrap_or(text);
    let name = text.rsplit('/').next().unwrap_or(text);
    let digits = name
        .strip_prefix("ublkb")
        .or_else(|| name.strip_prefix("ublkc"))
        .unwrap_or(name);
    digits.parse().map_err(|_| HostError::Config {
        what: "device",
        reason: format!("{text:?} is not N, ublkbN or /dev/ublkbN"),
    })
}

/// Removes device `dev_id`. A device nobody serves (quiesced, dead, failing I/O: its
/// daemon died) is deleted at once; otherwise it is stopped, its daemon removes it, and
/// this waits up to `wait` for that, deleting it directly if it is still there.
pub fn detach(dev_id: u32, wait: std::time::Duration) -> Result<()> {
    let info = inspect::inspect(dev_id)?;
    if !info.state.unserved() {
        stop_device(dev_id)?;
        let deadline = std::time::Instant::now() + wait;
        let mut progress = Progress::new(format!(
            "waiting for /dev/ublkb{dev_id}'s daemon to remove it"
        ));
        while inspect::exists(dev_id) && std::time::Instant::now() < deadline {
            progress.tick();
            std::thread::sleep(DETACH_POLL);
        }
    }
    if inspect::exists(dev_id) {
        log::info!("/dev/ublkb{dev_id} is {}: deleting it", info.state);
        UblkCtrl::new_simple(ctrl_id(dev_id)?)?.del_dev()?;
    }
    names::withdraw(dev_id);
    state::forget(dev_id);
    Ok(())
}

/// How often `detach` looks whether the device is gone.
const DETACH_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Creates device `id` (-1: the driver picks) with the driver flags `flags`.
fn add_device(
    options: &AttachOptions,
    id: i32,
    buf_bytes: u32,
    flags: u64,
) -> std::result::Result<UblkCtrl, libublk::UblkError> {
    UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(id)
        .nr_queues(options.queues)
        .depth(options.depth)
        .io_buf_bytes(buf_bytes)
        .ctrl_flags(flags)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
}
