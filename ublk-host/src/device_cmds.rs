//! The device subcommands: attach, recover, upgrade, detach, list.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use argh::FromArgs;
use ublk_host::client::config::{DEFAULT_DEAD_AFTER, DEFAULT_POLL, DEFAULT_WAIT_BOUND};
use ublk_host::client::{EngineConfig, PathPolicy};
use ublk_host::ublk::device::parse_device;
use ublk_host::ublk::namespace::enter_private_mount_namespace;
use ublk_host::ublk::state;
use ublk_host::ublk::{self, AttachOptions, Attached, Ended};

use crate::{client_config, size_option};

/// Default queue depth.
const DEFAULT_DEPTH: u16 = 128;
/// How long `detach` waits for the daemon to remove its device.
const DETACH_WAIT: Duration = Duration::from_secs(10);

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "attach")]
/// Create /dev/ublkbN for a partition and serve it in the foreground until SIGINT/SIGTERM
/// or `ublk-host detach`. If a device of the same server, host and partition lost its
/// daemon (kill -9, crash), take that one over instead: run the same command again.
pub struct AttachArgs {
    /// server address, host:port; repeat it with the server's address on each further
    /// network for multipath (the same array, checked)
    #[argh(option)]
    server: Vec<String>,
    /// how requests are spread over several --server paths: queue-depth (fewest bytes
    /// outstanding, default) or round-robin
    #[argh(option, default = "PathPolicy::QueueDepth")]
    path_policy: PathPolicy,
    /// also use every address the server announces in discovery as a further path (after
    /// checking it leads to the same array); a path it cannot reach now is left out
    #[argh(switch)]
    all_paths: bool,
    /// this host's name on the server
    #[argh(option)]
    host: String,
    /// file holding the host secret (64 hex digits)
    #[argh(option)]
    secret_file: String,
    /// the partition's name
    #[argh(option)]
    partition: String,
    /// hardware queues (default: number of CPUs)
    #[argh(option)]
    queues: Option<u16>,
    /// tags per queue (default 128)
    #[argh(option, default = "DEFAULT_DEPTH")]
    depth: u16,
    /// TCP lanes per queue (default 1)
    #[argh(option, default = "1")]
    lanes_per_queue: u16,
    /// split requests above this size (e.g. 128K) over the queue's lanes; 0 never (default)
    #[argh(option, default = "String::from(\"0\")")]
    split: String,
    /// ask for device id N (/dev/ublkbN)
    #[argh(option)]
    id: Option<u32>,
    /// seconds I/O waits for a lost server (reconnecting, reissuing) before failing with
    /// EIO: queue-and-wait, for a filesystem on the device (default 120)
    #[argh(option, default = "DEFAULT_WAIT_BOUND.as_secs()")]
    wait_bound: u64,
    /// fail I/O after this many seconds without the server instead (for md RAID1 or
    /// multipath above the device; default off)
    #[argh(option)]
    fail_fast: Option<u64>,
    /// seconds of silence, with I/O outstanding, after which a lane is dead and
    /// reconnects (default 5)
    #[argh(option, default = "DEFAULT_DEAD_AFTER.as_secs()")]
    dead_after: u64,
    /// handshake deadline in seconds (default 5)
    #[argh(option, default = "5")]
    timeout: u64,
    /// microseconds a queue thread polls for completions at least before it sleeps
    /// (default 50; with one request in flight longer, up to 1 ms, while replies take
    /// longer; 0 never polls: less CPU while idle, more latency per request)
    #[argh(option, default = "DEFAULT_POLL.as_micros() as u64")]
    poll_us: u64,
    /// copy mode even where the ublk driver offers zero copy (for comparisons)
    #[argh(switch)]
    copy: bool,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "recover")]
/// Take over a device whose daemon died, with the options it was attached with, and serve
/// it in the foreground like `attach`: `ublk-host recover 0`.
pub struct RecoverArgs {
    /// device: N, ublkbN or /dev/ublkbN
    #[argh(positional)]
    device: String,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "upgrade")]
/// Take over a device from its live daemon, with I/O paused, not failed: run the new binary
/// (after a package upgrade) as `ublk-host upgrade 0`. The old daemon is asked to hand over
/// (SIGUSR1), exits without removing the device, and this process serves it in the
/// foreground like `attach`, with the options it was attached with.
pub struct UpgradeArgs {
    /// device: N, ublkbN, /dev/ublkbN or /dev/multilane/NAME
    #[argh(positional)]
    device: String,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "detach")]
/// Stop and remove a device: `ublk-host detach 0` or `ublk-host detach /dev/ublkb0`. One
/// whose daemon died (quiesced, dead) is removed at once. Also by stable name
/// (`/dev/multilane/vol0`) or by the daemon's pid (`--pid $MAINPID` in a systemd unit).
pub struct DetachArgs {
    /// device: N, ublkbN, /dev/ublkbN or /dev/multilane/NAME
    #[argh(positional)]
    device: Option<String>,
    /// the device served by this daemon process
    #[argh(option)]
    pid: Option<u32>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
/// List ublk devices (id, state: live, quiescing, quiesced, recovering, dead or fail-io,
/// daemon pid, queues, depth, size, server, host, partition and stable name).
pub struct ListArgs {
    /// print one JSON array of devices instead
    #[argh(switch)]
    json: bool,
}

fn cpus() -> u16 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .try_into()
        .unwrap_or(u16::MAX)
}

pub fn attach(args: &AttachArgs) -> anyhow::Result<()> {
    let options = attach_options(args, attach_argv())?;
    enter_private_mount_namespace().context("entering a private mount namespace")?;
    let ended = ublk::attach(&options, announce)
        .with_context(|| format!("attaching partition {}", args.partition))?;
    say_ended(ended);
    Ok(())
}

/// The last line of a daemon: its device was removed, or handed over to a new daemon.
fn say_ended(ended: Ended) {
    match ended {
        Ended::Stopped => println!("ublk-host: device removed"),
        Ended::HandedOver => println!("ublk-host: device handed over to the new daemon"),
    }
}

/// `attach` with the arguments (after the subcommand) `argv`, as a configuration file
/// entry made them: parsed by the same parser as the command line, and saved as they are.
pub fn attach_with_argv(argv: Vec<String>) -> anyhow::Result<()> {
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args = AttachArgs::from_args(&["ublk-host", "attach"], &refs)
        .map_err(|e| anyhow::anyhow!("{}", e.output.trim_end()))?;
    let options = attach_options(&args, argv)?;
    enter_private_mount_namespace().context("entering a private mount namespace")?;
    let ended = ublk::attach(&options, announce)
        .with_context(|| format!("attaching partition {}", args.partition))?;
    say_ended(ended);
    Ok(())
}

/// The options the `attach` arguments `argv` stand for (`ublk-host nbd` uses their
/// engine and partition).
pub fn options_from_argv(argv: Vec<String>) -> anyhow::Result<AttachOptions> {
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args = AttachArgs::from_args(&["ublk-host", "attach"], &refs)
        .map_err(|e| anyhow::anyhow!("{}", e.output.trim_end()))?;
    attach_options(&args, argv)
}

fn attach_options(args: &AttachArgs, argv: Vec<String>) -> anyhow::Result<AttachOptions> {
    let Some((server, more_paths)) = args.server.split_first() else {
        anyhow::bail!("--server is required");
    };
    let mut client = client_config(server, &args.host, &args.secret_file, args.timeout)?;
    client.more_paths = more_paths.to_vec();
    if args.all_paths {
        let announced = ublk::daemon::announced_paths(&client)
            .context("asking the server for the addresses it announces")?;
        for addr in &announced {
            log::info!("path {addr}: announced by the server");
        }
        client.more_paths.extend(announced);
    }
    if args.dead_after == 0 {
        anyhow::bail!("--dead-after must be at least 1 second");
    }
    client.dead_after = Duration::from_secs(args.dead_after);
    let mut engine = EngineConfig::new(client);
    engine.lanes_per_queue = args.lanes_per_queue;
    engine.path_policy = args.path_policy;
    engine.split = size_option(&args.split)?;
    engine.wait_bound = Duration::from_secs(args.wait_bound);
    engine.fail_fast = args.fail_fast.map(Duration::from_secs);
    engine.poll = Duration::from_micros(args.poll_us);
    Ok(AttachOptions {
        engine,
        partition: args.partition.clone(),
        queues: args.queues.unwrap_or_else(cpus).max(1),
        depth: args.depth,
        id: args.id,
        saved_args: with_absolute_secret_file(argv),
        copy: args.copy,
    })
}

/// This process's arguments after `attach`.
fn attach_argv() -> Vec<String> {
    std::env::args()
        .skip_while(|arg| arg != "attach")
        .skip(1)
        .collect()
}

/// `argv` with the secret file as an absolute path, so a recovering process started
/// elsewhere finds it.
fn with_absolute_secret_file(mut argv: Vec<String>) -> Vec<String> {
    let at = argv.iter().position(|arg| arg == "--secret-file");
    if let Some(path) = at.and_then(|i| argv.get_mut(i + 1)) {
        if let Ok(absolute) = std::fs::canonicalize(&*path) {
            *path = absolute.to_string_lossy().into_owned();
        }
    }
    argv
}

/// The options device `id` was attached with, from its state file.
fn saved_options(id: u32) -> anyhow::Result<AttachOptions> {
    let saved = state::load(id)?.with_context(|| {
        format!(
            "/dev/ublkb{id} has no state file {} (not made by ublk-host attach?)",
            state::state_path(id).display()
        )
    })?;
    let argv: Vec<&str> = saved.attach_args.iter().map(String::as_str).collect();
    let attach_args = AttachArgs::from_args(&["ublk-host", "attach"], &argv).map_err(|e| {
        anyhow::anyhow!(
            "the saved attach arguments of /dev/ublkb{id} do not parse: {}",
            e.output
        )
    })?;
    attach_options(&attach_args, saved.attach_args.clone())
}

pub fn recover(args: &RecoverArgs) -> anyhow::Result<()> {
    let id = parse_device(&args.device)?;
    let options = saved_options(id)?;
    enter_private_mount_namespace().context("entering a private mount namespace")?;
    let ended = ublk::recover(id, &options, announce)
        .with_context(|| format!("recovering /dev/ublkb{id}"))?;
    say_ended(ended);
    Ok(())
}

pub fn upgrade(args: &UpgradeArgs) -> anyhow::Result<()> {
    let id = parse_device(&args.device)?;
    let options = saved_options(id)?;
    enter_private_mount_namespace().context("entering a private mount namespace")?;
    let ended = ublk::upgrade(id, &options, |attached, upgraded| {
        println!(
            "ublk-host: took /dev/ublkb{} over from daemon {} by {}",
            attached.id, upgraded.old_pid, upgraded.way
        );
        announce(attached);
        println!(
            "ublk-host: I/O paused {} ms for the upgrade",
            upgraded.pause.as_millis()
        );
        let _ = std::io::stdout().flush();
    })
    .with_context(|| format!("upgrading the daemon of /dev/ublkb{id}"))?;
    say_ended(ended);
    Ok(())
}

fn announce(attached: &Attached) {
    let how = if attached.recovered {
        " (recovered)"
    } else {
        ""
    };
    let mode = if attached.zero_copy {
        ublk::inspect::ZERO_COPY
    } else {
        ublk::inspect::COPY
    };
    let link = attached
        .link
        .as_ref()
        .map_or(String::new(), |link| format!(" as {link}"));
    println!(
        "ublk-host: {}{link} ready{how} ({} queues x {} lanes) {mode} partition {} size {}",
        attached.path,
        attached.queues,
        attached.lanes_per_queue,
        attached.partition.name,
        attached.partition.size
    );
    let _ = std::io::stdout().flush();
}

pub fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    let id = match (&args.device, args.pid) {
        (Some(device), None) => parse_device(device)?,
        (None, Some(pid)) => ublk::inspect::device_of_daemon(pid)
            .with_context(|| format!("no ublk device is served by process {pid}"))?,
        _ => anyhow::bail!("name a device or --pid, one of them"),
    };
    ublk::detach(id, DETACH_WAIT).with_context(|| format!("detaching /dev/ublkb{id}"))?;
    println!("ublk-host: /dev/ublkb{id} detached");
    Ok(())
}

pub fn list(args: &ListArgs) -> anyhow::Result<()> {
    if args.json {
        println!("{:#}", ublk::list_json());
        return Ok(());
    }
    for line in ublk::list()? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_attach_arguments_parse_back_with_an_absolute_secret_file() {
        // Relative to the crate directory, where cargo runs the tests.
        let argv: Vec<String> = [
            "--server",
            "10.0.0.1:7700",
            "--host",
            "h1",
            "--secret-file",
            "Cargo.toml",
            "--partition",
            "vol",
            "--lanes-per-queue",
            "2",
        ]
        .map(String::from)
        .to_vec();
        let saved = with_absolute_secret_file(argv);
        let secret_file = std::path::Path::new(&saved[5]);
        assert!(secret_file.is_absolute(), "{secret_file:?}");
        assert!(secret_file.ends_with("ublk-host/Cargo.toml"));
        let refs: Vec<&str> = saved.iter().map(String::as_str).collect();
        let args = AttachArgs::from_args(&["ublk-host", "attach"], &refs).unwrap();
        assert_eq!(args.secret_file, saved[5]);
        assert_eq!(args.partition, "vol");
        assert_eq!(args.lanes_per_queue, 2);
        assert_eq!(args.id, None);
    }

    #[test]
    fn a_config_entry_with_command_line_overrides_parses_as_attach_arguments() {
        let text = r#"
            host = "h1"
            secret_file = "/etc/multilane/host.key"
            [servers.a]
            address = "10.0.0.1:7700"
            [defaults]
            lanes_per_queue = 2
            split = "128K"
            [partitions.vol0]
            queues = 4
            depth = 64
        "#;
        let config = ublk_host::hostconfig::HostConfig::parse(text, "test").unwrap();
        let base = config.attach_argv("vol0").unwrap();
        let overrides: Vec<String> = ["--lanes-per-queue", "8", "--id", "5"]
            .map(String::from)
            .to_vec();
        let argv = ublk_host::hostconfig::apply_overrides(&base, &overrides);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let args = AttachArgs::from_args(&["ublk-host", "attach"], &refs).unwrap();
        assert_eq!(args.server, vec!["10.0.0.1:7700"]);
        assert_eq!(args.partition, "vol0");
        assert_eq!((args.queues, args.depth), (Some(4), 64), "from the entry");
        assert_eq!(args.split, "128K", "from [defaults]");
        assert_eq!(args.lanes_per_queue, 8, "the flag overrides [defaults]");
        assert_eq!(args.id, Some(5), "a flag the file does not set");
    }

    #[test]
    fn all_paths_adds_the_addresses_the_server_announces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let format = array_server::FormatOptions {
            chunk: 64 << 10,
            force: false,
            create_size: None,
        };
        let array = array_server::Array::format(&[disk], &format).unwrap();
        array.create_partition("vol", 8 << 20, false).unwrap();
        let secret = array.create_host("h1").unwrap().secret;
        array.assign("h1", "vol", wire::Access::ReadWrite).unwrap();
        let secret_file = dir.path().join("h1.key");
        std::fs::write(&secret_file, secret).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = array_server::net::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            also_listen: vec!["127.0.0.2:0".parse().unwrap()],
            threads: 1,
            ..array_server::net::ServerConfig::default()
        };
        let server = array_server::net::start(array, config).unwrap();
        let addrs: Vec<String> = server
            .local_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        let argv = |extra: &[&str]| -> Vec<String> {
            let secret_file = secret_file.to_str().unwrap();
            let base = [
                "--server",
                &addrs[0],
                "--host",
                "h1",
                "--secret-file",
                secret_file,
            ];
            base.iter()
                .chain(["--partition", "vol"].iter())
                .chain(extra)
                .map(|s| s.to_string())
                .collect()
        };
        let options = options_from_argv(argv(&["--all-paths"])).unwrap();
        assert_eq!(options.engine.client.paths(), addrs, "both announced paths");
        let options = options_from_argv(argv(&[])).unwrap();
        assert_eq!(
            options.engine.client.paths(),
            addrs[..1],
            "without the flag: one"
        );
        server.stop();
    }
}
