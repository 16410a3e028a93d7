//! A planned handover of a live device to a new daemon (`ublk-host upgrade N`, run with the
//! new binary): the new process's side.
//!
//! The new process checks that a live Multilane daemon serves the device, finds the
//! partition (before the pause starts), asks the daemon to hand over
//! ([`HANDOVER_SIGNAL`], see [`mod@crate::ublk::handover`] for what the old daemon does),
//! waits for it to exit and takes the device over as `recover` does: same `/dev/ublkbN`,
//! stable name and state file, the attach options from the state file. The pause is the
//! time from the request to the new daemon's queues serving.

use std::time::{Duration, Instant};

use libublk::ctrl::UblkCtrl;

use crate::error::{HostError, Result};
use crate::ublk::daemon::{describe_owner, discover, AttachOptions, Attached};
use crate::ublk::handover::{HandoverWay, HANDOVER_SIGNAL, HANDOVER_WAIT};
use crate::ublk::inspect::{self, ctrl_id, process_alive, DeviceState};
use crate::ublk::progress::Progress;
use crate::ublk::recover::claim_and_take_over;
use crate::ublk::run::Ended;
use crate::ublk::state;

/// How often the new process looks whether the old daemon is gone.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// How a handover went, for the new daemon's `ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgraded {
    /// The way the old daemon handed the device over.
    pub way: HandoverWay,
    /// The old daemon's pid.
    pub old_pid: i32,
    /// From the handover request to this daemon's queues serving.
    pub pause: Duration,
}

/// Takes device `id` over from the live daemon serving it (`options` from its state file)
/// and serves it until it is stopped or handed over again. `ready` runs once the device is
/// live under this process.
pub fn upgrade(
    id: u32,
    options: &AttachOptions,
    ready: impl FnOnce(&Attached, &Upgraded) + Send + Sync + 'static,
) -> Result<Ended> {
    let old_pid = live_daemon(id)?;
    let flags = UblkCtrl::new_simple(ctrl_id(id)?)?.dev_info().flags;
    let way = HandoverWay::for_flags(flags);
    let (partition, _) = discover(options)?;
    let asked = Instant::now();
    request_handover(old_pid)?;
    log::info!("asked daemon {old_pid} to hand /dev/ublkb{id} over: {way}");
    wait_gone(id, old_pid)?;
    log::info!(
        "daemon {old_pid} is gone after {} ms: taking /dev/ublkb{id} over",
        asked.elapsed().as_millis()
    );
    claim_and_take_over(id, options, partition, move |attached| {
        let upgraded = Upgraded {
            way,
            old_pid,
            pause: asked.elapsed(),
        };
        log::info!(
            "/dev/ublkb{id}: I/O paused {} ms for the upgrade ({way})",
            upgraded.pause.as_millis()
        );
        ready(attached, &upgraded)
    })
}

/// The pid of the live Multilane daemon serving device `id`.
fn live_daemon(id: u32) -> Result<i32> {
    if !inspect::exists(id) {
        return Err(not_upgradable(id, "it does not exist".into()));
    }
    let info = inspect::inspect(id)?;
    if info.state != DeviceState::Live {
        let hint = if info.state.recoverable() {
            format!(": its daemon died, use `ublk-host recover {id}`")
        } else {
            String::new()
        };
        return Err(not_upgradable(
            id,
            format!("{}{hint}", describe_owner(&info)),
        ));
    }
    if info.target.is_none() || !state::is_claimed(id) {
        return Err(not_upgradable(
            id,
            format!("not served by ublk-host: {}", describe_owner(&info)),
        ));
    }
    Ok(info.daemon_pid)
}

fn not_upgradable(id: u32, reason: String) -> HostError {
    HostError::Config {
        what: "device",
        reason: format!("/dev/ublkb{id} cannot be upgraded: {reason}"),
    }
}

/// Sends the handover signal to `pid`; the kernel allows it only to root or the daemon's
/// own user.
fn request_handover(pid: i32) -> Result<()> {
    // SAFETY: kill has no memory arguments; `pid` is a positive pid (a live daemon's).
    if unsafe { libc::kill(pid, HANDOVER_SIGNAL) } == 0 {
        return Ok(());
    }
    Err(HostError::io(
        "asking the daemon to hand over (SIGUSR1)",
        std::io::Error::last_os_error(),
    ))
}

/// Waits until process `pid` (device `id`'s old daemon) has exited and released its claim:
/// its main thread may be a zombie while its queue threads still exit (the kernel cancels
/// their io_uring commands), and only the last thread's exit closes the state file.
fn wait_gone(id: u32, pid: i32) -> Result<()> {
    let deadline = Instant::now() + HANDOVER_WAIT;
    let mut progress = Progress::new(format!(
        "waiting for daemon {pid} to hand /dev/ublkb{id} over"
    ));
    while process_alive(pid) || state::is_claimed(id) {
        if Instant::now() >= deadline {
            return Err(not_upgradable(
                id,
                format!("daemon {pid} did not hand it over within {HANDOVER_WAIT:?} (see its log)"),
            ));
        }
        progress.tick();
        std::thread::sleep(EXIT_POLL);
    }
    Ok(())
}
