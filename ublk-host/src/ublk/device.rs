//! Creating, running, listing and removing Multilane ublk devices.

use std::sync::Arc;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::UblkFlags;
use wire::PartitionInfo;

use crate::client::{Discovery, EngineConfig};
use crate::error::{HostError, Result};
use crate::ublk::params::{device_params, io_buf_bytes};
use crate::ublk::queue::serve_queue;

/// The ublk target name of Multilane devices.
pub const TARGET_NAME: &str = "multilane";

/// What `attach` creates.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Server, credentials, lanes per queue, split size, reconnect deadline.
    pub engine: EngineConfig,
    /// The partition's name.
    pub partition: String,
    /// Hardware queues (one thread and `lanes_per_queue` lanes each).
    pub queues: u16,
    /// Queue depth (tags per queue).
    pub depth: u16,
    /// Device id to ask for (`/dev/ublkbN`); the driver picks one when `None`.
    pub id: Option<u32>,
}

/// A device that is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The ublk device id N.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub path: String,
    /// Hardware queues the driver created (at most one per CPU).
    pub queues: u16,
    /// Lanes per queue.
    pub lanes_per_queue: u16,
    /// The partition served.
    pub partition: PartitionInfo,
}

/// Discovers the partition, creates `/dev/ublkbN` for it and serves it until the device is
/// stopped (by [`detach`], or by [`stop_on_signals`] on SIGINT/SIGTERM); then removes it.
/// `ready` runs once the device is live.
pub fn attach(
    options: &AttachOptions,
    ready: impl FnOnce(&Attached) + Send + Sync + 'static,
) -> Result<()> {
    let mut discovery = Discovery::open(&options.engine.client)?;
    let partition = discovery.list()?.find(&options.partition)?.clone();
    let buf_bytes = io_buf_bytes(&partition, discovery.welcome().max_io);
    drop(discovery);
    let id = options
        .id
        .map_or(Ok(-1), i32::try_from)
        .map_err(|_| HostError::Config {
            what: "device id",
            reason: "too large".into(),
        })?;
    let ctrl = UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(id)
        .nr_queues(options.queues)
        .depth(options.depth)
        .io_buf_bytes(buf_bytes)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()?;
    let dev_id = ctrl.dev_info().dev_id;
    let queues = ctrl.dev_info().nr_hw_queues;
    if queues < options.queues {
        log::warn!(
            "the driver gave {queues} hardware queues, not {} (it allows at most one per CPU)",
            options.queues
        );
    }
    stop_on_signals(dev_id)?;
    let params = device_params(&partition, buf_bytes);
    let target_json = serde_json::json!({
        "server": options.engine.client.server,
        "host": options.engine.client.host,
        "partition": partition.name,
        "partition_id": partition.id,
        "lanes_per_queue": options.engine.lanes_per_queue,
        "split": options.engine.split,
    });
    let size = partition.size;
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = size;
        dev.tgt.params = params;
        dev.set_target_json(target_json);
        Ok(())
    };
    let config = Arc::new(options.engine.clone());
    let shared_partition = Arc::new(partition.clone());
    let attached = Attached {
        id: dev_id,
        path: ctrl.get_bdev_path(),
        queues,
        lanes_per_queue: options.engine.lanes_per_queue,
        partition,
    };
    ctrl.run_target(
        tgt_init,
        move |qid, dev: &UblkDev| serve_queue(qid, dev, &config, &shared_partition),
        move |_ctrl: &UblkCtrl| ready(&attached),
    )?;
    Ok(())
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it starts later) and
/// starts a thread that stops device `dev_id` when one arrives; the queues then wind down
/// and `attach` returns.
pub fn stop_on_signals(dev_id: u32) -> Result<()> {
    let set = termination_signals();
    // SAFETY: `set` is an initialised sigset; a null old-mask pointer is allowed.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if blocked != 0 {
        let error = std::io::Error::from_raw_os_error(blocked);
        return Err(HostError::io("blocking SIGINT/SIGTERM", error));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `set` is initialised and `signal` is a live out-parameter.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            log::info!("signal {signal}: stopping /dev/ublkb{dev_id}");
            if let Err(error) = stop_device(dev_id) {
                log::error!("cannot stop /dev/ublkb{dev_id}: {error}");
            }
        })
        .map_err(|e| HostError::io("starting the signal thread", e))?;
    Ok(())
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset takes valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

fn stop_device(dev_id: u32) -> Result<()> {
    let id = i32::try_from(dev_id).map_err(|_| HostError::Config {
        what: "device id",
        reason: "too large".into(),
    })?;
    UblkCtrl::new_simple(id)?.kill_dev()?;
    Ok(())
}

/// Moves this process into its own mount namespace with private propagation, so a
/// filesystem someone mounts on our device elsewhere never pins it in ours.
pub fn enter_private_mount_namespace() -> Result<()> {
    // SAFETY: unshare takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(HostError::io("unshare(CLONE_NEWNS)", error));
    }
    let root = c"/";
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    // SAFETY: valid NUL-terminated path, null source/type/data are allowed for a
    // propagation change.
    let changed = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if changed != 0 {
        let error = std::io::Error::last_os_error();
        return Err(HostError::io("making / private", error));
    }
    Ok(())
}

/// Parses `N`, `ublkbN`, `/dev/ublkbN` (or `ublkcN`) into a device id.
pub fn parse_device(text: &str) -> Result<u32> {
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

/// Stops device `dev_id` (its daemon then removes it) and waits up to `wait` for it to go;
/// removes it directly if it is still there (its daemon is gone).
pub fn detach(dev_id: u32, wait: std::time::Duration) -> Result<()> {
    stop_device(dev_id)?;
    let char_dev = format!("/sys/class/ublk-char/ublkc{dev_id}");
    let deadline = std::time::Instant::now() + wait;
    while std::path::Path::new(&char_dev).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(DETACH_POLL);
    }
    if std::path::Path::new(&char_dev).exists() {
        let id = i32::try_from(dev_id).unwrap_or(i32::MAX);
        UblkCtrl::new_simple(id)?.del_dev()?;
    }
    Ok(())
}

/// How often `detach` looks whether the device is gone.
const DETACH_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// One line per ublk device: id, state, queues x depth, size, and for Multilane devices
/// the server and partition.
pub fn list() -> Result<Vec<String>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    UblkCtrl::for_each_dev_id(move |id| {
        let line = describe_device(id).unwrap_or_else(|e| format!("ublkb{id}\t? ({e})"));
        sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    });
    let mut lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner()));
    lines.sort();
    Ok(lines)
}

fn describe_device(id: u32) -> Result<String> {
    let ctrl = UblkCtrl::new_simple(i32::try_from(id).unwrap_or(i32::MAX))?;
    let info = ctrl.dev_info();
    let mut params = libublk::sys::ublk_params::default();
    let size = match ctrl.get_params(&mut params) {
        Ok(_) => params.basic.dev_sectors << crate::ublk::params::SECTOR_SHIFT,
        Err(_) => 0,
    };
    let target = ctrl
        .get_target_data_from_json()
        .map(|v| v.to_string())
        .unwrap_or_default();
    Ok(format!(
        "/dev/ublkb{id}\tstate={state}\tqueues={q}\tdepth={d}\tsize={size}\t{target}",
        state = state_name(info.state),
        q = info.nr_hw_queues,
        d = info.queue_depth,
    ))
}

fn state_name(state: u16) -> &'static str {
    match u32::from(state) {
        libublk::sys::UBLK_S_DEV_DEAD => "dead",
        libublk::sys::UBLK_S_DEV_LIVE => "live",
        libublk::sys::UBLK_S_DEV_QUIESCED => "quiesced",
        libublk::sys::UBLK_S_DEV_FAIL_IO => "fail-io",
        _ => "unknown",
    }
}
