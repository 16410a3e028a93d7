//! A planned handover of a live device to a new daemon (`ublk-host upgrade`): the old
//! daemon's side.
//!
//! `ublk-host upgrade N` sends [`HANDOVER_SIGNAL`] (SIGUSR1) to the daemon serving
//! `/dev/ublkbN`. A signal is authenticated by the kernel: only root (`CAP_KILL`) or the
//! daemon's own user may send it. The daemon's signal thread then hands the device over in
//! one of two ways ([`HandoverWay`]), chosen from the device's flags:
//!
//! - [`HandoverWay::Quiesce`] (the driver offers `UBLK_F_QUIESCE`: 7.3 in the lab):
//!   `QUIESCE_DEV` makes the driver requeue new requests and abort every idle tag's fetch
//!   command; the queues finish the requests they hold, close their lanes with nothing
//!   outstanding and exit; the daemon exits without `STOP_DEV` and without deleting the
//!   device, which the driver then holds quiesced for the new daemon.
//! - [`HandoverWay::Exit`] (no `UBLK_F_QUIESCE`, e.g. 6.12): the daemon exits at once
//!   without `STOP_DEV`. That is the user-recovery path of a daemon that died: the driver
//!   quiesces the device and requeues (`UBLK_F_USER_RECOVERY_REISSUE`) what the daemon held;
//!   the new daemon's lanes fence the old ones on the server before anything is reissued.
//!
//! Either way the state file, the stable name and the device stay; the new process takes
//! the device over as `recover` does. A daemon from before this feature dies of SIGUSR1
//! (its default action), which is the second way too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libublk::ctrl::UblkCtrl;

use crate::ublk::inspect::ctrl_id;

/// The signal that asks a daemon to hand its device over.
pub const HANDOVER_SIGNAL: libc::c_int = libc::SIGUSR1;
/// How long `QUIESCE_DEV` may wait for every queue to have an idle tag.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the queues may take to unwind after `QUIESCE_DEV` before the daemon exits
/// anyway (leaving what is left to the driver, as on the other way).
const UNWIND_WAIT: Duration = Duration::from_secs(15);
/// How long a new daemon waits for the old one to go: both bounds above, and a margin.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// How a daemon hands its device over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverWay {
    /// `QUIESCE_DEV`, the queues unwind, the daemon exits.
    Quiesce,
    /// The daemon exits; the driver's user recovery requeues what it held.
    Exit,
}

impl HandoverWay {
    /// The way for a device with driver flags `flags`.
    pub fn for_flags(flags: u64) -> HandoverWay {
        if flags & u64::from(libublk::sys::UBLK_F_QUIESCE) != 0 {
            HandoverWay::Quiesce
        } else {
            HandoverWay::Exit
        }
    }
}

impl std::fmt::Display for HandoverWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HandoverWay::Quiesce => "quiesce (UBLK_F_QUIESCE: the old daemon drained its queues)",
            HandoverWay::Exit => {
                "recovery (no UBLK_F_QUIESCE: the old daemon exited, the driver requeued its I/O)"
            }
        })
    }
}

/// Whether a handover was asked for: shared by the signal thread (which sets it once the
/// driver has quiesced the device) and the queues (which then unwind without waiting for
/// an abort of every tag) and the daemon (which then neither stops nor deletes the device).
#[derive(Debug, Default)]
pub struct Handover {
    requested: AtomicBool,
}

impl Handover {
    /// The device is quiesced: the queues may unwind.
    fn begin(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// Whether this daemon is handing its device over.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// When a queue may end in a handover: once the handover is requested and none of its tags
/// holds a request, on two checks in a row, so that the event loop has submitted the last
/// commits (it submits between two checks) before the queue's ring goes.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    idle_before: std::cell::Cell<bool>,
}

impl Drain {
    /// One check: `requested` from [`Handover::requested`], `busy` tags holding a request.
    pub(crate) fn drained(&self, requested: bool, busy: u32) -> bool {
        let idle = requested && busy == 0;
        idle & self.idle_before.replace(idle)
    }
}

/// Hands device `dev_id` over (on the signal thread). On the [`HandoverWay::Exit`] way, or
/// when quiescing fails, the process exits here.
pub(crate) fn hand_over(dev_id: u32, handover: &Handover) {
    let ctrl = match ctrl_id(dev_id).and_then(|id| Ok(UblkCtrl::new_simple(id)?)) {
        Ok(ctrl) => ctrl,
        Err(error) => {
            log::error!("/dev/ublkb{dev_id}: cannot open its control: {error}");
            exit_leaving_device(dev_id);
        }
    };
    let way = HandoverWay::for_flags(ctrl.dev_info().flags);
    log::info!("handover of /dev/ublkb{dev_id} requested: {way}");
    if way == HandoverWay::Exit {
        exit_leaving_device(dev_id);
    }
    let timeout_ms = QUIESCE_TIMEOUT.as_millis() as u64;
    if let Err(error) = ctrl.quiesce_dev(timeout_ms) {
        log::warn!("/dev/ublkb{dev_id}: QUIESCE_DEV failed ({error}): leaving it to the driver");
        exit_leaving_device(dev_id);
    }
    drop(ctrl);
    handover.begin();
    log::info!(
        "/dev/ublkb{dev_id} quiesced: the queues finish what they hold and close their lanes"
    );
    // The daemon normally exits well before this; if a queue never unwinds (a tag the
    // driver did not abort), whatever it holds is left to the driver.
    std::thread::sleep(UNWIND_WAIT);
    log::warn!("/dev/ublkb{dev_id}: the queues did not unwind within {UNWIND_WAIT:?}");
    exit_leaving_device(dev_id);
}

/// Exits the process without stopping or deleting device `dev_id`: the driver keeps it
/// (quiesced, I/O waiting) for the new daemon.
fn exit_leaving_device(dev_id: u32) -> ! {
    println!("ublk-host: /dev/ublkb{dev_id} handed over (left to the driver for the new daemon)");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_way_follows_the_device_flags() {
        let quiesce = u64::from(libublk::sys::UBLK_F_QUIESCE);
        let recovery = crate::ublk::daemon::RECOVERY_FLAGS;
        assert_eq!(
            HandoverWay::for_flags(recovery | quiesce),
            HandoverWay::Quiesce
        );
        assert_eq!(HandoverWay::for_flags(recovery), HandoverWay::Exit);
        assert!(HandoverWay::Quiesce.to_string().starts_with("quiesce"));
        assert!(HandoverWay::Exit.to_string().starts_with("recovery"));
    }

    #[test]
    fn a_queue_drains_after_two_idle_checks_in_a_row() {
        let drain = Drain::default();
        assert!(!drain.drained(false, 0), "no handover asked");
        assert!(!drain.drained(false, 0));
        assert!(
            !drain.drained(true, 0),
            "first idle check: commits not submitted yet"
        );
        assert!(drain.drained(true, 0), "second idle check");
        let drain = Drain::default();
        assert!(!drain.drained(true, 0));
        assert!(!drain.drained(true, 2), "a tag took a request meanwhile");
        assert!(!drain.drained(true, 0), "idle again: one more check first");
        assert!(drain.drained(true, 0));
    }

    #[test]
    fn a_handover_is_not_requested_until_it_begins() {
        let handover = Handover::default();
        assert!(!handover.requested());
        handover.begin();
        assert!(handover.requested());
    }
}
