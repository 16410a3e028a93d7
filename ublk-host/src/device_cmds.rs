//! The device subcommands: attach, detach, list.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use argh::FromArgs;
use ublk_host::client::config::{DEFAULT_DEAD_AFTER, DEFAULT_WAIT_BOUND};
use ublk_host::client::EngineConfig;
use ublk_host::ublk::device::{enter_private_mount_namespace, parse_device};
use ublk_host::ublk::{self, AttachOptions, Attached};

use crate::{client_config, size_option};

/// Default queue depth.
const DEFAULT_DEPTH: u16 = 128;
/// How long `detach` waits for the daemon to remove its device.
const DETACH_WAIT: Duration = Duration::from_secs(10);

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "attach")]
/// Create /dev/ublkbN for a partition and serve it in the foreground until SIGINT/SIGTERM
/// or `ublk-host detach`.
pub struct AttachArgs {
    /// server address, host:port
    #[argh(option)]
    server: String,
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
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "detach")]
/// Stop and remove a device: `ublk-host detach 0` or `ublk-host detach /dev/ublkb0`.
pub struct DetachArgs {
    /// device: N, ublkbN or /dev/ublkbN
    #[argh(positional)]
    device: String,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
/// List ublk devices (id, state, queues, depth, size, server and partition).
pub struct ListArgs {}

fn cpus() -> u16 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .try_into()
        .unwrap_or(u16::MAX)
}

pub fn attach(args: &AttachArgs) -> anyhow::Result<()> {
    let mut client = client_config(&args.server, &args.host, &args.secret_file, args.timeout)?;
    if args.dead_after == 0 {
        anyhow::bail!("--dead-after must be at least 1 second");
    }
    client.dead_after = Duration::from_secs(args.dead_after);
    let mut engine = EngineConfig::new(client);
    engine.lanes_per_queue = args.lanes_per_queue;
    engine.split = size_option(&args.split)?;
    engine.wait_bound = Duration::from_secs(args.wait_bound);
    engine.fail_fast = args.fail_fast.map(Duration::from_secs);
    let options = AttachOptions {
        engine,
        partition: args.partition.clone(),
        queues: args.queues.unwrap_or_else(cpus).max(1),
        depth: args.depth,
        id: args.id,
    };
    enter_private_mount_namespace().context("entering a private mount namespace")?;
    ublk::attach(&options, announce)
        .with_context(|| format!("attaching partition {}", args.partition))?;
    println!("ublk-host: device removed");
    Ok(())
}

fn announce(attached: &Attached) {
    println!(
        "ublk-host: {} ready ({} queues x {} lanes) partition {} size {}",
        attached.path,
        attached.queues,
        attached.lanes_per_queue,
        attached.partition.name,
        attached.partition.size
    );
    let _ = std::io::stdout().flush();
}

pub fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    let id = parse_device(&args.device)?;
    ublk::detach(id, DETACH_WAIT).with_context(|| format!("detaching /dev/ublkb{id}"))?;
    println!("ublk-host: /dev/ublkb{id} detached");
    Ok(())
}

pub fn list(_args: &ListArgs) -> anyhow::Result<()> {
    for line in ublk::list()? {
        println!("{line}");
    }
    Ok(())
}
