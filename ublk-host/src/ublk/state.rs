//! What a replacement daemon needs to take a device over, and who serves it now.
//!
//! Each Multilane device `/dev/ublkbN` has a state file `/run/multilane/ublkbN.json` (mode
//! 0600) holding the `attach` command line that made it (the secret file as an absolute
//! path), the server, host and partition. The daemon serving the device holds an
//! open-file-description write lock (`F_OFD_SETLK`) on that file for as long as it runs: the
//! kernel drops the lock when the process dies, however it dies, so "locked" means "a live
//! process serves or is recovering this device" without trusting pids. `list` only tests the
//! lock (`F_OFD_GETLK`), which never disturbs its holder.
//!
//! The ublk target JSON (libublk's `/run/ublksrvd/NNNN.json`, `target_data`) carries the
//! device's identity (server, host, partition) too, so a supervisor's `attach` finds the
//! quiesced device of the same partition even without our state file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{HostError, Result};

/// Where the state files live.
pub const STATE_DIR: &str = "/run/multilane";
/// Mode of a state file: it names the secret file, so only root reads it.
const STATE_MODE: u32 = 0o600;
/// Mode of [`STATE_DIR`].
const STATE_DIR_MODE: u32 = 0o700;
/// The lock that serialises "is this id free / which device do I take over" decisions
/// between Multilane processes.
const IDS_LOCK: &str = ".ids.lock";

/// The ublk target data of a Multilane device (in libublk's JSON export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetData {
    /// `host:port` of the array server (path 0).
    pub server: String,
    /// Its further paths (`attach --server` repeated), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_paths: Vec<String>,
    /// This host's name on the server.
    pub host: String,
    /// The partition's name.
    pub partition: String,
    /// The partition's id on the server (guards against a re-created partition).
    pub partition_id: u32,
    /// Lanes per queue.
    pub lanes_per_queue: u16,
    /// Split threshold in bytes (0: never).
    pub split: u32,
    /// The device runs in zero-copy mode (the driver registers each request's pages in
    /// the queue's ring); copy mode otherwise. Absent in JSON written before it existed.
    #[serde(default)]
    pub zero_copy: bool,
}

/// The state file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The device id N.
    pub id: u32,
    /// The process serving (or last serving) the device.
    pub pid: u32,
    /// Identity of the device.
    pub target: TargetData,
    /// The `attach` arguments (after the subcommand) that recreate the daemon's options.
    pub attach_args: Vec<String>,
}

/// Path of device `id`'s state file.
pub fn state_path(id: u32) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("ublkb{id}.json"))
}

fn ensure_dir() -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(STATE_DIR)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(HostError::io("creating /run/multilane", e)),
    }
}

fn open_state(path: &PathBuf, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(STATE_MODE)
        .open(path)
}

/// An OFD lock request over the whole file.
fn whole_file_lock(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value (whole file from 0).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// Takes a write lock on `file`; `wait` blocks until it is free, otherwise `Ok(false)` if
/// another holder has it.
fn lock(file: &File, wait: bool) -> std::io::Result<bool> {
    let mut request = whole_file_lock(libc::F_WRLCK as libc::c_short);
    let command = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: a valid descriptor and a live, initialised `flock`.
    if unsafe { libc::fcntl(file.as_raw_fd(), command, &mut request) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(error),
    }
}

/// Whether some open file description holds a lock on `file`.
fn is_locked(file: &File) -> std::io::Result<bool> {
    let mut probe = whole_file_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: a valid descriptor and a live, initialised `flock` the kernel fills in.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

/// The claim of the process serving a device: its locked state file.
#[derive(Debug)]
pub struct Claim {
    id: u32,
    file: File,
}

impl Claim {
    /// Claims device `id` for this process, or fails with [`HostError::DeviceInUse`] if a
    /// live process holds it.
    pub fn take(id: u32) -> Result<Claim> {
        ensure_dir()?;
        let file = open_state(&state_path(id), true)
            .map_err(|e| HostError::io("opening the device state file", e))?;
        match lock(&file, false) {
            Ok(true) => Ok(Claim { id, file }),
            Ok(false) => Err(HostError::DeviceInUse {
                id,
                state: "claimed by a running ublk-host".into(),
            }),
            Err(e) => Err(HostError::io("locking the device state file", e)),
        }
    }

    /// Replaces the file's content with `saved`.
    pub fn write(&mut self, saved: &Saved) -> Result<()> {
        let text = serde_json::to_vec_pretty(saved)
            .map_err(|e| HostError::Protocol(format!("encoding the device state: {e}")))?;
        let io = |e| HostError::io("writing the device state file", e);
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        self.file.write_all(&text).map_err(io)?;
        self.file.sync_all().map_err(io)
    }

    /// The device is gone for good: removes its state file (the lock goes with it).
    pub fn remove(self) {
        if let Err(error) = std::fs::remove_file(state_path(self.id)) {
            log::warn!("cannot remove {}: {error}", state_path(self.id).display());
        }
    }
}

/// Reads device `id`'s state file, if it has one.
pub fn load(id: u32) -> Result<Option<Saved>> {
    let mut text = String::new();
    match File::open(state_path(id)) {
        Ok(mut file) => file
            .read_to_string(&mut text)
            .map_err(|e| HostError::io("reading the device state file", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HostError::io("opening the device state file", e)),
    };
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| HostError::Protocol(format!("{}: {e}", state_path(id).display())))
}

/// Whether a live process has claimed device `id` (serves or recovers it).
pub fn is_claimed(id: u32) -> bool {
    match open_state(&state_path(id), false) {
        Ok(file) => is_locked(&file).unwrap_or(false),
        Err(_) => false,
    }
}

/// Removes device `id`'s state file unless a live process holds it.
pub fn forget(id: u32) {
    let Ok(file) = open_state(&state_path(id), false) else {
        return;
    };
    if let Ok(true) = lock(&file, false) {
        let _ = std::fs::remove_file(state_path(id));
    }
}

/// Held while a process decides which device id it creates or takes over.
#[derive(Debug)]
pub struct IdsLock {
    _file: File,
}

impl IdsLock {
    /// Waits for the lock.
    pub fn take() -> Result<IdsLock> {
        ensure_dir()?;
        let path = PathBuf::from(STATE_DIR).join(IDS_LOCK);
        let file =
            open_state(&path, true).map_err(|e| HostError::io("opening the id lock file", e))?;
        lock(&file, true).map_err(|e| HostError::io("taking the id lock", e))?;
        Ok(IdsLock { _file: file })
    }
}

/// The target data of ublk device `id` from libublk's JSON export, if it is a Multilane
/// device that has one.
pub fn target_data(id: u32) -> Option<TargetData> {
    let path = format!("{}/{id:04}.json", libublk::ctrl::UblkCtrl::run_dir());
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(json.get("target_data")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_data_round_trips_through_json() {
        let target = TargetData {
            server: "10.0.0.1:7700".into(),
            more_paths: Vec::new(),
            host: "h1".into(),
            partition: "vol".into(),
            partition_id: 3,
            lanes_per_queue: 2,
            split: 128 << 10,
            zero_copy: true,
        };
        let json = serde_json::to_value(&target).unwrap();
        assert_eq!(json["server"], "10.0.0.1:7700");
        assert_eq!(json["partition_id"], 3);
        assert_eq!(serde_json::from_value::<TargetData>(json).unwrap(), target);
    }

    #[test]
    fn ofd_lock_is_seen_by_another_open_and_released_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let holder = open_state(&path, true).unwrap();
        let other = open_state(&path, false).unwrap();
        assert!(!is_locked(&other).unwrap());
        assert!(lock(&holder, false).unwrap());
        assert!(
            is_locked(&other).unwrap(),
            "the probe sees the holder's lock"
        );
        assert!(!lock(&other, false).unwrap(), "a second claim is refused");
        assert!(
            lock(&holder, false).unwrap(),
            "the probe did not disturb the holder"
        );
        drop(holder);
        assert!(
            lock(&other, false).unwrap(),
            "closing the holder frees the claim"
        );
    }
}
