//! What every Multilane daemon does, whether it created its device or took it over: the
//! options, finding the partition, serving the device until it stops or is handed over,
//! signals.

use std::sync::Arc;

use libublk::ctrl::UblkCtrl;
use libublk::io::UblkDev;
use wire::PartitionInfo;

use crate::client::{ClientConfig, Discovery, EngineConfig};
use crate::error::{HostError, Result};
use crate::ublk::handover::{hand_over, Handover, HANDOVER_SIGNAL};
use crate::ublk::inspect::{self, ctrl_id};
use crate::ublk::names;
use crate::ublk::params::{device_params, io_buf_bytes};
use crate::ublk::path_report;
use crate::ublk::queue::serve_queue;
use crate::ublk::resize;
use crate::ublk::run::{run_device, Ended};
use crate::ublk::small_writes::USER_COPY;
use crate::ublk::state::{Saved, TargetData};

/// The ublk target name of Multilane devices.
pub const TARGET_NAME: &str = "multilane";
/// Devices are made with user recovery, in-flight I/O reissued to the next daemon: when
/// the daemon dies the driver quiesces the device (I/O waits) instead of failing it.
pub(crate) const RECOVERY_FLAGS: u64 =
    (libublk::sys::UBLK_F_USER_RECOVERY | libublk::sys::UBLK_F_USER_RECOVERY_REISSUE) as u64;

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
    /// The `attach` arguments that recreate these options; kept in the device's state
    /// file for a process that takes the device over.
    pub saved_args: Vec<String>,
    /// Copy mode even where the driver offers zero copy (for comparisons).
    pub copy: bool,
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
    /// Whether this process took an existing device over rather than creating it.
    pub recovered: bool,
    /// Whether the device runs in zero-copy mode.
    pub zero_copy: bool,
    /// Its stable name (`/dev/multilane/<partition>`), made once the device is live.
    pub link: Option<String>,
}

/// The partition `options` names, and the I/O buffer size per tag for it.
///
/// With several paths, every path that answers must lead to the same array (its
/// `Welcome.array_id`) and accept the host; one that cannot be reached now is let be (its
/// lanes run over the others until it can), but at least one must answer.
pub fn discover(options: &AttachOptions) -> Result<(PartitionInfo, u32)> {
    let client = &options.engine.client;
    let mut found: Option<(Discovery, String)> = None;
    let mut last_error = None;
    for addr in client.paths() {
        let discovery = match Discovery::open(&client.via(&addr)) {
            Ok(discovery) => discovery,
            Err(error @ HostError::Wire(_)) => return Err(error),
            Err(error) => {
                log::warn!("path {addr} does not answer now: {error}");
                last_error = Some(error);
                continue;
            }
        };
        if let Some((first, first_addr)) = &found {
            same_array(
                (first_addr, first.welcome().array_id),
                (&addr, discovery.welcome().array_id),
            )?;
        } else {
            found = Some((discovery, addr));
        }
    }
    let Some((mut discovery, _)) = found else {
        return Err(last_error.unwrap_or(HostError::Closed));
    };
    let partition = discovery.list()?.find(&options.partition)?.clone();
    let buf_bytes = io_buf_bytes(&partition, discovery.welcome().max_io);
    Ok((partition, buf_bytes))
}

/// The addresses the server announces (`Welcome.addresses`) that `client` does not dial
/// yet, for `attach --all-paths`: each must answer with the array of the first given path
/// that answers (an address of another array is refused); one that does not answer now is
/// left out with a warning (the server may announce a network this host is not on).
pub fn announced_paths(client: &ClientConfig) -> Result<Vec<String>> {
    let known = client.paths();
    let mut first = None;
    let mut last_error = None;
    for addr in &known {
        match Discovery::open(&client.via(addr)) {
            Ok(discovery) => {
                first = Some((addr.clone(), discovery.welcome().clone()));
                break;
            }
            Err(error @ HostError::Wire(_)) => return Err(error),
            Err(error) => last_error = Some(error),
        }
    }
    let Some((first_addr, welcome)) = first else {
        return Err(last_error.unwrap_or(HostError::Closed));
    };
    let mut added: Vec<String> = Vec::new();
    for addr in welcome.addresses {
        if known.iter().chain(&added).any(|k| same_endpoint(k, &addr)) {
            continue;
        }
        match Discovery::open(&client.via(&addr)) {
            Ok(discovery) => {
                same_array(
                    (&first_addr, welcome.array_id),
                    (&addr, discovery.welcome().array_id),
                )?;
                added.push(addr);
            }
            Err(error @ HostError::Wire(_)) => return Err(error),
            Err(error) => {
                log::warn!("announced path {addr} does not answer now, not used: {error}")
            }
        }
    }
    Ok(added)
}

/// Whether two `host:port` texts name the same socket address (resolved; as text when
/// either does not resolve).
fn same_endpoint(a: &str, b: &str) -> bool {
    use std::net::ToSocketAddrs;
    let resolve = |text: &str| text.to_socket_addrs().ok().and_then(|mut all| all.next());
    match (resolve(a), resolve(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// Refuses two paths (address, array id) that lead to different arrays.
fn same_array(first: (&str, [u8; 16]), other: (&str, [u8; 16])) -> Result<()> {
    if first.1 == other.1 {
        return Ok(());
    }
    Err(HostError::Config {
        what: "--server",
        reason: format!(
            "{} and {} are different arrays; every --server of a device must be a path to \
             the same array server",
            first.0, other.0
        ),
    })
}

/// A short description of a device for error messages: state, daemon, what it serves.
pub(crate) fn describe_owner(info: &inspect::DeviceInfo) -> String {
    let serving = info.target.as_ref().map_or(String::new(), |t| {
        format!(", partition {} of {} as {}", t.partition, t.server, t.host)
    });
    format!("{}, daemon pid {}{serving}", info.state, info.daemon_pid)
}

/// The flags a new device is created with: user recovery; zero copy with automatic buffer
/// registration when the driver offers it (asked with `GET_FEATURES`, never inferred from
/// the kernel version) and `copy` does not forbid it, with user copy beside it when offered
/// (small writes are then copied, see `ublk/small_writes.rs`); `UBLK_F_QUIESCE` when the
/// driver offers it (a planned handover then drains the queues, see
/// [`mod@crate::ublk::handover`]).
pub(crate) fn device_flags(copy: bool) -> u64 {
    let auto_buf_reg = u64::from(libublk::sys::UBLK_F_AUTO_BUF_REG);
    let quiesce = u64::from(libublk::sys::UBLK_F_QUIESCE);
    let offered = UblkCtrl::get_features().unwrap_or(0);
    let zero_copy = !copy && offered & auto_buf_reg != 0;
    log::info!(
        "ublk driver features {offered:#x}: {} mode, handover by {}",
        match (zero_copy, offered & USER_COPY != 0) {
            (false, _) => "copy",
            (true, false) => "zero-copy",
            (true, true) => "zero-copy (small writes copied)",
        },
        if offered & quiesce != 0 {
            "quiesce"
        } else {
            "recovery"
        }
    );
    let zero_copy_flags = if zero_copy {
        auto_buf_reg | (offered & USER_COPY)
    } else {
        0
    };
    RECOVERY_FLAGS | (offered & quiesce) | zero_copy_flags
}

/// Whether a device with driver flags `flags` runs in zero-copy mode.
pub(crate) fn is_zero_copy(flags: u64) -> bool {
    flags & u64::from(libublk::sys::UBLK_F_AUTO_BUF_REG) != 0
}

/// The device identity kept in the ublk target JSON.
pub(crate) fn target_data(
    options: &AttachOptions,
    partition: &PartitionInfo,
    zero_copy: bool,
) -> TargetData {
    TargetData {
        server: options.engine.client.server.clone(),
        more_paths: options.engine.client.more_paths.clone(),
        host: options.engine.client.host.clone(),
        partition: partition.name.clone(),
        partition_id: partition.id,
        lanes_per_queue: options.engine.lanes_per_queue,
        split: options.engine.split,
        zero_copy,
    }
}

/// What the state file of a device this process serves holds.
pub(crate) fn saved_state(
    id: u32,
    options: &AttachOptions,
    partition: &PartitionInfo,
    zero_copy: bool,
) -> Saved {
    Saved {
        id,
        pid: std::process::id(),
        target: target_data(options, partition, zero_copy),
        attach_args: options.saved_args.clone(),
    }
}

/// Serves the device `ctrl` controls (adds it, or ends its recovery) until it stops or is
/// handed over (`handover`, from [`stop_on_signals`]).
pub(crate) fn serve(
    ctrl: &UblkCtrl,
    options: &AttachOptions,
    partition: PartitionInfo,
    buf_bytes: u32,
    recovered: bool,
    handover: Arc<Handover>,
    ready: impl FnOnce(&Attached) + Send + Sync + 'static,
) -> Result<Ended> {
    let params = device_params(&partition, buf_bytes);
    let zero_copy = is_zero_copy(ctrl.dev_info().flags);
    let target_json = serde_json::to_value(target_data(options, &partition, zero_copy))
        .map_err(|e| HostError::Protocol(format!("encoding the target data: {e}")))?;
    let size = partition.size;
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = size;
        dev.tgt.params = params;
        dev.set_target_json(target_json);
        Ok(())
    };
    let config = Arc::new(options.engine.clone());
    let shared_partition = Arc::new(partition.clone());
    let identity = target_data(options, &partition, zero_copy);
    let mut attached = Attached {
        id: ctrl.dev_info().dev_id,
        path: ctrl.get_bdev_path(),
        queues: ctrl.dev_info().nr_hw_queues,
        lanes_per_queue: options.engine.lanes_per_queue,
        partition,
        recovered,
        zero_copy,
        link: None,
    };
    let watched = (config.clone(), shared_partition.clone());
    let dev = UblkDev::new(ctrl.get_name(), tgt_init, ctrl)?;
    let queues_handover = handover.clone();
    run_device(
        ctrl,
        dev,
        move |qid, dev: &UblkDev| {
            serve_queue(qid, dev, &config, &shared_partition, &queues_handover)
        },
        move |ctrl: &UblkCtrl| {
            if let Err(error) = resize::spawn_watch(attached.id, &watched.0, &watched.1) {
                log::warn!("/dev/ublkb{}: no live resize: {error}", attached.id);
            }
            if let Err(error) = path_report::spawn_publisher(attached.id, &watched.0) {
                log::warn!("/dev/ublkb{}: {error}", attached.id);
            }
            let link = names::publish(ctrl.dev_info().dev_id, &identity);
            attached.link = link.map(|path| path.display().to_string());
            ready(&attached)
        },
        &handover,
    )
}

/// Blocks SIGINT, SIGTERM and [`HANDOVER_SIGNAL`] in this thread (and so in every thread
/// it starts later) and starts a thread that waits for them: SIGINT or SIGTERM stops device
/// `dev_id` (the queues then wind down and `attach` returns), the handover signal hands it
/// over to a new daemon ([`mod@crate::ublk::handover`]). The returned flag tells `serve`
/// and the queues about a handover.
pub fn stop_on_signals(dev_id: u32) -> Result<Arc<Handover>> {
    let set = daemon_signals();
    // SAFETY: `set` is an initialised sigset; a null old-mask pointer is allowed.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if blocked != 0 {
        let error = std::io::Error::from_raw_os_error(blocked);
        return Err(HostError::io("blocking SIGINT/SIGTERM/SIGUSR1", error));
    }
    let handover = Arc::new(Handover::default());
    let shared = handover.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `set` is initialised and `signal` is a live out-parameter.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            if signal == HANDOVER_SIGNAL {
                hand_over(dev_id, &shared);
                return;
            }
            log::info!("signal {signal}: stopping /dev/ublkb{dev_id}");
            if let Err(error) = stop_device(dev_id) {
                log::error!("cannot stop /dev/ublkb{dev_id}: {error}");
            }
        })
        .map_err(|e| HostError::io("starting the signal thread", e))?;
    Ok(handover)
}

fn daemon_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset takes valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, HANDOVER_SIGNAL);
        set
    }
}

/// Sends STOP_DEV: the device's daemon then winds its queues down and removes it.
pub(crate) fn stop_device(dev_id: u32) -> Result<()> {
    UblkCtrl::new_simple(ctrl_id(dev_id)?)?.kill_dev()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same_array;

    #[test]
    fn paths_to_different_arrays_are_refused() {
        assert!(same_array(("a:1", [7; 16]), ("b:1", [7; 16])).is_ok());
        let error = same_array(("a:1", [7; 16]), ("b:1", [8; 16]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("different arrays"), "{error}");
    }
}
