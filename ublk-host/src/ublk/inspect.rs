//! Looking at ublk devices: the state each is in (as the kernel and our claims tell it), its
//! shape and what it serves.

use std::fmt;

use libublk::ctrl::UblkCtrl;
use libublk::sys;

use crate::error::{HostError, Result};
use crate::ublk::names;
use crate::ublk::path_report::{self, PathReport};
use crate::ublk::state::{self, TargetData};

/// Where a device stands, from the kernel's state, its daemon's liveness and our claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Served by a running daemon.
    Live,
    /// The kernel still says live, but its daemon is gone: the driver is about to quiesce
    /// it (it notices within a few seconds) and it can then be recovered.
    Quiescing,
    /// Its daemon died; I/O waits in the kernel for a new daemon (`ublk-host recover N`).
    Quiesced,
    /// Quiesced, and a new daemon is taking it over.
    Recovering,
    /// Stopped: no disk any more, only removal is left.
    Dead,
    /// Its daemon died and the driver fails all I/O until it is recovered or removed.
    FailIo,
    /// A state this program does not know.
    Unknown(u16),
}

impl DeviceState {
    /// Classifies a device: the kernel's `state`, whether the daemon it records is alive,
    /// whether a Multilane process has claimed it.
    pub fn classify(kernel_state: u16, daemon_alive: bool, claimed: bool) -> DeviceState {
        match u32::from(kernel_state) {
            sys::UBLK_S_DEV_LIVE if daemon_alive => DeviceState::Live,
            sys::UBLK_S_DEV_LIVE => DeviceState::Quiescing,
            sys::UBLK_S_DEV_QUIESCED if claimed => DeviceState::Recovering,
            sys::UBLK_S_DEV_QUIESCED => DeviceState::Quiesced,
            sys::UBLK_S_DEV_DEAD => DeviceState::Dead,
            sys::UBLK_S_DEV_FAIL_IO => DeviceState::FailIo,
            _ => DeviceState::Unknown(kernel_state),
        }
    }

    /// Whether a new daemon may take the device over (at once, or once quiesced).
    pub fn recoverable(self) -> bool {
        matches!(self, DeviceState::Quiesced | DeviceState::Quiescing)
    }

    /// Whether no process serves the device (its daemon died, or it is stopped): removing
    /// it disturbs nobody's daemon, and nobody else would.
    pub fn unserved(self) -> bool {
        matches!(
            self,
            DeviceState::Quiescing
                | DeviceState::Quiesced
                | DeviceState::Dead
                | DeviceState::FailIo
        )
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceState::Live => f.write_str("live"),
            DeviceState::Quiescing => f.write_str("quiescing"),
            DeviceState::Quiesced => f.write_str("quiesced"),
            DeviceState::Recovering => f.write_str("recovering"),
            DeviceState::Dead => f.write_str("dead"),
            DeviceState::FailIo => f.write_str("fail-io"),
            DeviceState::Unknown(n) => write!(f, "unknown({n})"),
        }
    }
}

/// How `list` names zero-copy mode (requests' pages registered in the queue's ring).
pub const ZERO_COPY: &str = "zero-copy";
/// How `list` names copy mode (data copied through each tag's daemon buffer).
pub const COPY: &str = "copy";

impl serde::Serialize for DeviceState {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One ublk device as `list` shows it (`list --json`: these fields, by these names).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// The device id N.
    pub id: u32,
    /// Its state.
    pub state: DeviceState,
    /// The pid the kernel records as its daemon.
    pub daemon_pid: i32,
    /// Hardware queues.
    pub queues: u16,
    /// Tags per queue.
    pub depth: u16,
    /// Size in bytes (0 if unknown).
    pub size: u64,
    /// What a Multilane device serves (`None` for other ublk devices).
    pub target: Option<TargetData>,
    /// Its stable name (`/dev/multilane/<partition>`), if it has one.
    pub link: Option<String>,
    /// Each path's address, state and traffic, from the serving daemon's report (empty
    /// while no daemon claims the device).
    pub paths: Vec<PathReport>,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/dev/ublkb{id}\tstate={state}\tpid={pid}\tqueues={q}\tdepth={d}\tsize={size}",
            id = self.id,
            state = self.state,
            pid = self.daemon_pid,
            q = self.queues,
            d = self.depth,
            size = self.size,
        )?;
        if let Some(target) = &self.target {
            write!(
                f,
                "\tserver={}\thost={}\tpartition={}\tmode={}",
                std::iter::once(&target.server)
                    .chain(&target.more_paths)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                target.host,
                target.partition,
                if target.zero_copy { ZERO_COPY } else { COPY }
            )?;
        }
        if let Some(link) = &self.link {
            write!(f, "\tlink={link}")?;
        }
        for (index, path) in self.paths.iter().enumerate() {
            let stats = &path.stats;
            write!(
                f,
                "\tpath{index}={},{},lanes={},requests={},bytes={}",
                path.address,
                if stats.up { "up" } else { "down" },
                stats.lanes_up,
                stats.requests,
                stats.bytes
            )?;
        }
        Ok(())
    }
}

/// Converts a device id for libublk's control calls.
pub(crate) fn ctrl_id(id: u32) -> Result<i32> {
    i32::try_from(id).map_err(|_| HostError::Config {
        what: "device id",
        reason: "too large".into(),
    })
}

/// Whether ublk device `id` exists (its character device is registered).
pub fn exists(id: u32) -> bool {
    std::path::Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// Whether process `pid` runs (a zombie does not).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// The device's state and shape, asked from the driver.
pub fn inspect(id: u32) -> Result<DeviceInfo> {
    let ctrl = UblkCtrl::new_simple(ctrl_id(id)?)?;
    let info = ctrl.dev_info();
    let mut params = sys::ublk_params::default();
    let size = match ctrl.get_params(&mut params) {
        Ok(_) => params.basic.dev_sectors << crate::ublk::params::SECTOR_SHIFT,
        Err(_) => 0,
    };
    let claimed = state::is_claimed(id);
    let state = DeviceState::classify(info.state, process_alive(info.ublksrv_pid), claimed);
    let paths = match claimed {
        true => path_report::load(id).unwrap_or_default(),
        false => Vec::new(),
    };
    Ok(DeviceInfo {
        id,
        state,
        daemon_pid: info.ublksrv_pid,
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        size,
        target: state::target_data(id),
        link: names::names_of(id)
            .first()
            .map(|path| path.display().to_string()),
        paths,
    })
}

/// The device whose daemon is process `pid` (as the kernel or the state file says).
pub fn device_of_daemon(pid: u32) -> Option<u32> {
    device_ids().into_iter().find(|&id| {
        let kernel = inspect(id).is_ok_and(|info| u32::try_from(info.daemon_pid) == Ok(pid));
        kernel
            || state::load(id)
                .ok()
                .flatten()
                .is_some_and(|saved| saved.pid == pid)
    })
}

/// Every ublk device id, in order.
pub fn device_ids() -> Vec<u32> {
    let ids = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let sink = ids.clone();
    UblkCtrl::for_each_dev_id(move |id| sink.borrow_mut().push(id));
    let mut ids = ids.take();
    ids.sort_unstable();
    ids
}

/// One line per ublk device: id, state, daemon pid, queues x depth, size, and for
/// Multilane devices the server, host, partition and stable name.
pub fn list() -> Result<Vec<String>> {
    Ok(device_ids()
        .into_iter()
        .map(|id| match inspect(id) {
            Ok(info) => info.to_string(),
            Err(e) => format!("/dev/ublkb{id}\tstate=? ({e})"),
        })
        .collect())
}

/// Every ublk device's [`DeviceInfo`] as one JSON array (`list --json`); a device that
/// cannot be inspected appears as `{"id": N, "error": "..."}`.
pub fn list_json() -> serde_json::Value {
    let devices = device_ids()
        .into_iter()
        .map(|id| match inspect(id) {
            Ok(info) => serde_json::to_value(info)
                .unwrap_or_else(|e| serde_json::json!({ "id": id, "error": e.to_string() })),
            Err(e) => serde_json::json!({ "id": id, "error": e.to_string() }),
        })
        .collect();
    serde_json::Value::Array(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(kernel: u32, alive: bool, claimed: bool) -> DeviceState {
        DeviceState::classify(kernel as u16, alive, claimed)
    }

    #[test]
    fn states_classify() {
        assert_eq!(state(sys::UBLK_S_DEV_LIVE, true, true), DeviceState::Live);
        assert_eq!(
            state(sys::UBLK_S_DEV_LIVE, false, false),
            DeviceState::Quiescing
        );
        assert_eq!(
            state(sys::UBLK_S_DEV_QUIESCED, false, false),
            DeviceState::Quiesced
        );
        assert_eq!(
            state(sys::UBLK_S_DEV_QUIESCED, false, true),
            DeviceState::Recovering
        );
        assert_eq!(state(sys::UBLK_S_DEV_DEAD, false, false), DeviceState::Dead);
        assert_eq!(
            state(sys::UBLK_S_DEV_FAIL_IO, false, false),
            DeviceState::FailIo
        );
        assert_eq!(state(99, true, false), DeviceState::Unknown(99));
        assert_eq!(DeviceState::FailIo.to_string(), "fail-io");
    }

    #[test]
    fn only_an_abandoned_device_is_recoverable_or_unserved() {
        assert!(DeviceState::Quiesced.recoverable() && DeviceState::Quiescing.recoverable());
        assert!(!DeviceState::Live.recoverable() && !DeviceState::Recovering.recoverable());
        assert!(!DeviceState::Dead.recoverable());
        assert!(DeviceState::Dead.unserved() && DeviceState::Quiesced.unserved());
        assert!(!DeviceState::Live.unserved() && !DeviceState::Recovering.unserved());
        assert!(DeviceState::Quiescing.unserved());
    }

    #[test]
    fn liveness_of_this_process_and_of_nobody() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(0));
        assert!(!process_alive(-1));
    }
}
