//! `ublk-host`: discover partitions, attach one as `/dev/ublkbN`, recover, upgrade (hand a
//! live device to a new binary), list and detach devices.

use std::time::Duration;

use anyhow::Context;
use argh::FromArgs;
use ublk_host::client::config::{parse_size, read_secret_file};
use ublk_host::client::discovery::{describe, Watch, DEFAULT_KEEPALIVE};
use ublk_host::client::{ClientConfig, Discovery, PartitionList};

mod config_cmds;
mod device_cmds;
mod nbd_cmd;

/// Multilane host driver: network block devices over persistent TCP lanes. From a
/// configuration file: `ublk-host attach --config FILE (NAME | --all) [attach flags]`.
#[derive(FromArgs, Debug)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Discover(DiscoverArgs),
    Attach(device_cmds::AttachArgs),
    Recover(device_cmds::RecoverArgs),
    Upgrade(device_cmds::UpgradeArgs),
    Detach(device_cmds::DetachArgs),
    List(device_cmds::ListArgs),
    Nbd(nbd_cmd::NbdArgs),
}

#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "discover")]
/// Print the partitions this host may use (name, id, size, access, shared).
struct DiscoverArgs {
    /// server address, host:port
    #[argh(option)]
    server: String,
    /// this host's name on the server
    #[argh(option)]
    host: String,
    /// file holding the host secret (64 hex digits)
    #[argh(option)]
    secret_file: String,
    /// keep watching and print every change as the server pushes it
    #[argh(switch)]
    watch: bool,
    /// handshake deadline in seconds (default 5)
    #[argh(option, default = "5")]
    timeout: u64,
}

/// Builds a client configuration from the common options.
pub(crate) fn client_config(
    server: &str,
    host: &str,
    secret_file: &str,
    timeout_secs: u64,
) -> anyhow::Result<ClientConfig> {
    let secret = read_secret_file(secret_file)?;
    let mut config = ClientConfig::new(server, host, secret);
    config.handshake_timeout = Duration::from_secs(timeout_secs);
    Ok(config)
}

/// Parses a size option such as `128K`.
pub(crate) fn size_option(text: &str) -> anyhow::Result<u32> {
    let size = parse_size(text)?;
    u32::try_from(size).with_context(|| format!("size {text} is too large"))
}

fn discover(args: &DiscoverArgs) -> anyhow::Result<()> {
    let config = client_config(&args.server, &args.host, &args.secret_file, args.timeout)?;
    let context = || format!("discovery on {}", args.server);
    if !args.watch {
        let mut discovery = Discovery::open(&config).with_context(context)?;
        print_paths(&discovery.welcome().addresses);
        print_list(&discovery.list()?);
        return Ok(());
    }
    // Follows the list across server restarts: reconnects with backoff, prints each change.
    let mut watch = Watch::open(&config, DEFAULT_KEEPALIVE).with_context(context)?;
    loop {
        print_list(&watch.next_list().with_context(context)?);
    }
}

/// The server's announced addresses (`attach --all-paths` dials them all).
fn print_paths(addresses: &[String]) {
    if addresses.is_empty() {
        println!("paths: none announced");
    } else {
        println!("paths: {}", addresses.join(" "));
    }
}

fn print_list(list: &PartitionList) {
    println!(
        "generation {}: {} partition(s)",
        list.generation,
        list.partitions.len()
    );
    for partition in &list.partitions {
        println!("{}", describe(partition));
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,libublk=warn"),
    )
    .init();
    let args: Vec<String> = std::env::args().collect();
    if config_cmds::requested(&args) {
        exit_on_error(config_cmds::attach(&args[2..]));
        return;
    }
    let cli: Cli = argh::from_env();
    let outcome = match &cli.command {
        Command::Discover(args) => discover(args),
        Command::Attach(args) => device_cmds::attach(args),
        Command::Recover(args) => device_cmds::recover(args),
        Command::Upgrade(args) => device_cmds::upgrade(args),
        Command::Detach(args) => device_cmds::detach(args),
        Command::List(args) => device_cmds::list(args),
        Command::Nbd(args) => nbd_cmd::serve(args),
    };
    exit_on_error(outcome);
}

fn exit_on_error(outcome: anyhow::Result<()>) {
    if let Err(error) = outcome {
        eprintln!("ublk-host: {error:#}");
        std::process::exit(1);
    }
}
