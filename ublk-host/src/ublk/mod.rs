//! The kernel side: a libublk device whose queue threads run the request engine.
//!
//! - [`params`]: device parameters from the partition (sizes, cache, read-only, discard).
//! - [`queue`]: one hardware queue: a task per tag, the queue's own lanes, one io_uring.
//! - [`daemon`]: what every daemon does: options, the partition, serving the device until it
//!   stops or is handed over, signals.
//! - [`run`]: the queue threads and the device's start and end (`STOP_DEV` unless handed
//!   over).
//! - [`device`]: attach (create with user recovery, or take over; serve; remove), detach.
//! - [`names`]: stable names, `/dev/multilane/<partition>` → `/dev/ublkbN`.
//! - [`namespace`]: the daemon's private mount namespace, without ublk filesystems.
//! - [`progress`]: the progress line of a long wait, on a terminal only.
//! - [`mod@recover`]: taking over a device whose daemon died (`recover`, or `attach` again).
//! - [`handover`], [`mod@upgrade`]: a planned handover from a live daemon to a new one
//!   (`upgrade`): the old daemon's side (quiesce or exit) and the new process's.
//! - [`inspect`]: each device's state (live, quiescing, quiesced, recovering, dead, fail-io)
//!   and what it serves; `list`.
//! - [`state`]: the state files under `/run/multilane` (what a recovering process needs,
//!   and the lock that says a live process serves the device), the target JSON.

pub mod daemon;
pub mod device;
pub mod handover;
pub mod inspect;
pub mod names;
pub mod namespace;
pub mod params;
pub mod path_report;
pub mod progress;
pub mod queue;
pub mod recover;
pub mod resize;
pub mod run;
pub mod small_writes;
pub mod state;
pub mod upgrade;

pub use daemon::{AttachOptions, Attached};
pub use device::{attach, detach};
pub use inspect::{list, list_json, DeviceState};
pub use recover::recover;
pub use run::Ended;
pub use upgrade::{upgrade, Upgraded};
