//! `array-server`: format member disks, serve the array, and administer it offline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use argh::FromArgs;
use array_server::admin;
use array_server::array::scan::{self, DiskSpec};
use array_server::array::FormatPhase;
use array_server::config::{self, ConfigFile, ServeOverrides};
use array_server::net;
use array_server::units::{format_size, parse_size};
use array_server::{Array, FormatOptions};
use uuid::Uuid;
use wire::Access;

mod progress;

/// Multilane array server: stripes member disks into one array, carves it into
/// partitions and serves them to authenticated hosts.
#[derive(FromArgs)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Format(FormatCommand),
    Serve(ServeCommand),
    Info(InfoCommand),
    Partition(PartitionCommand),
    Host(HostCommand),
    Assign(AssignCommand),
    Unassign(UnassignCommand),
    Ctl(admin::ctl::CtlCommand),
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text)
}

/// Which member disks a command names: `--disk`, `--array`, `--scan`, `--no-device-scan`,
/// or else a configuration file's `[array]` section (`--config`, or the service's).
trait DiskArgs {
    /// The disks to open.
    fn spec(&self) -> Result<DiskSpec>;
}

/// Declares an offline subcommand (one that opens the array itself): the struct as
/// written, followed by the options that choose its member disks, and its [`DiskArgs`].
/// argh has no flattening of shared options, so they are added here once. Field types are
/// matched as plain tokens (`bool`, `Option<PathBuf>`), not `ty` fragments: argh tells a
/// switch by its type's tokens, which a `ty` fragment hides.
macro_rules! offline_command {
    (
        $(#[$meta:meta])*
        struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $type:ident $(<$inner:ident>)?,)*
        }
    ) => {
        #[derive(FromArgs)]
        $(#[$meta])*
        struct $name {
            $($(#[$field_meta])* $field: $type $(<$inner>)?,)*
            /// member disk (repeat for each disk; any order); with --array, each must belong to it
            #[argh(option)]
            disk: Vec<PathBuf>,
            /// the array's id: its member disks are found by scanning block devices and --scan
            #[argh(option)]
            array: Option<Uuid>,
            /// also probe these paths or globs for members of --array (repeatable)
            #[argh(option)]
            scan: Vec<String>,
            /// with --array, probe only --disk and --scan, not the machine's block devices
            #[argh(switch)]
            no_device_scan: bool,
            /// take the array from this configuration file's [array] section when neither
            /// --disk nor --array is given (default /etc/multilane/array.toml, if it exists)
            #[argh(option)]
            config: Option<PathBuf>,
        }

        impl DiskArgs for $name {
            fn spec(&self) -> Result<DiskSpec> {
                let given = DiskSpec {
                    disks: self.disk.clone(),
                    array_id: self.array,
                    scan: self.scan.clone(),
                    scan_block_devices: !self.no_device_scan,
                };
                spec_or_config(given, self.config.as_deref())
            }
        }
    };
}

/// Create a new, empty array on the disks (in stripe order).
#[derive(FromArgs)]
#[argh(subcommand, name = "format")]
struct FormatCommand {
    /// member disk: block device or file (repeat for each disk)
    #[argh(option)]
    disk: Vec<PathBuf>,
    /// stripe chunk size, a power of two from 4K to 64M (e.g. 64K)
    #[argh(option, from_str_fn(size_arg), default = "64 << 10")]
    chunk: u64,
    /// create missing disk files with this size (e.g. 256M)
    #[argh(option, from_str_fn(size_arg))]
    size: Option<u64>,
    /// overwrite disks that already belong to an array
    #[argh(switch)]
    force: bool,
    /// write a fresh admin token here, mode 0600 (default: FIRST_DISK.admin-token for
    /// files, /etc/multilane/ARRAY_ID.admin-token for block devices)
    #[argh(option)]
    admin_token_file: Option<PathBuf>,
}

/// Serve the array over TCP until SIGINT or SIGTERM.
#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
struct ServeCommand {
    /// configuration file (TOML, see packaging/array.toml.example); flags override it
    #[argh(option)]
    config: Option<PathBuf>,
    /// member disk (repeat for each disk; any order); with --array, each must belong to it
    #[argh(option)]
    disk: Vec<PathBuf>,
    /// the array's id: its member disks are found by scanning block devices and --scan
    #[argh(option)]
    array: Option<Uuid>,
    /// also probe these paths or globs for members of --array (repeatable)
    #[argh(option)]
    scan: Vec<String>,
    /// with --array, probe only --disk and --scan, not the machine's block devices
    #[argh(switch)]
    no_device_scan: bool,
    /// address to listen on (default 0.0.0.0:7700); repeat it to listen on one address
    /// per network for hosts' multipath
    #[argh(option)]
    listen: Vec<SocketAddr>,
    /// address (host:port) to announce to hosts in discovery (repeatable; default: every
    /// --listen address but wildcard ones like 0.0.0.0)
    #[argh(option)]
    announce: Vec<String>,
    /// runtime threads (default: number of CPUs)
    #[argh(option)]
    threads: Option<usize>,
    /// leave the threads unpinned and let the kernel hash new connections over them
    /// (default: with 2..N threads on N CPUs, thread i runs on CPU i and takes the
    /// connections whose packets arrive on that CPU; while the requests average 64 KiB
    /// or more the threads run on any CPU)
    #[argh(switch)]
    no_pin_threads: bool,
    /// most live connections (default 4096)
    #[argh(option)]
    max_connections: Option<usize>,
    /// requests one data connection runs at once (default 256)
    #[argh(option)]
    max_in_flight: Option<u32>,
    /// handshake deadline in milliseconds (default 5000)
    #[argh(option)]
    handshake_timeout_ms: Option<u64>,
    /// serve the admin page, JSON API and /metrics on this address (default
    /// 127.0.0.1:7780, loopback only)
    #[argh(option)]
    admin: Option<SocketAddr>,
    /// do not serve the admin page, API and /metrics at all
    #[argh(switch)]
    no_admin: bool,
    /// admin token file (default: the one `format` wrote; created if missing)
    #[argh(option)]
    admin_token_file: Option<PathBuf>,
}

offline_command! {
    /// Show the array: disks, capacity, free space.
    #[argh(subcommand, name = "info")]
    struct InfoCommand {
        /// print JSON
        #[argh(switch)]
        json: bool,
    }
}

/// Manage partitions (offline: no server may hold the disks).
#[derive(FromArgs)]
#[argh(subcommand, name = "partition")]
struct PartitionCommand {
    #[argh(subcommand)]
    action: PartitionAction,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum PartitionAction {
    Create(PartitionCreate),
    Grow(PartitionGrow),
    Delete(PartitionDelete),
    List(PartitionList),
}

offline_command! {
    /// Create a partition (size rounded up to a full stripe).
    #[argh(subcommand, name = "create")]
    struct PartitionCreate {
        /// partition name
        #[argh(positional)]
        name: String,
        /// size, e.g. 512, 4K, 64M, 1.5G
        #[argh(positional, from_str_fn(size_arg))]
        size: u64,
        /// several hosts may be assigned it (default: private, one host)
        #[argh(switch)]
        shared: bool,
    }
}

offline_command! {
    /// Grow a partition to a new size.
    #[argh(subcommand, name = "grow")]
    struct PartitionGrow {
        /// partition name
        #[argh(positional)]
        name: String,
        /// new size
        #[argh(positional, from_str_fn(size_arg))]
        size: u64,
    }
}

offline_command! {
    /// Delete a partition no host is assigned.
    #[argh(subcommand, name = "delete")]
    struct PartitionDelete {
        /// partition name
        #[argh(positional)]
        name: String,
    }
}

offline_command! {
    /// List partitions.
    #[argh(subcommand, name = "list")]
    struct PartitionList {
        /// print JSON
        #[argh(switch)]
        json: bool,
    }
}

/// Manage hosts (offline: no server may hold the disks).
#[derive(FromArgs)]
#[argh(subcommand, name = "host")]
struct HostCommand {
    #[argh(subcommand)]
    action: HostAction,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum HostAction {
    Create(HostCreate),
    Delete(HostDelete),
    Rotate(HostRotate),
    List(HostList),
}

offline_command! {
    /// Create a host; its secret goes to --secret-file (mode 0600, not printed), else is
    /// printed once.
    #[argh(subcommand, name = "create")]
    struct HostCreate {
        /// host name
        #[argh(positional)]
        name: String,
        /// write the secret to this file (mode 0600) instead of printing it
        #[argh(option)]
        secret_file: Option<PathBuf>,
    }
}

offline_command! {
    /// Delete a host that has no assignment.
    #[argh(subcommand, name = "delete")]
    struct HostDelete {
        /// host name
        #[argh(positional)]
        name: String,
    }
}

offline_command! {
    /// Give a host a new secret: into --secret-file (mode 0600, not printed), else printed
    /// once.
    #[argh(subcommand, name = "rotate")]
    struct HostRotate {
        /// host name
        #[argh(positional)]
        name: String,
        /// write the secret to this file (mode 0600) instead of printing it
        #[argh(option)]
        secret_file: Option<PathBuf>,
    }
}

offline_command! {
    /// List hosts and their partitions.
    #[argh(subcommand, name = "list")]
    struct HostList {
        /// print JSON
        #[argh(switch)]
        json: bool,
    }
}

offline_command! {
    /// Assign a partition to a host.
    #[argh(subcommand, name = "assign")]
    struct AssignCommand {
        /// host name
        #[argh(positional)]
        host: String,
        /// partition name
        #[argh(positional)]
        partition: String,
        /// the host may only read
        #[argh(switch)]
        read_only: bool,
    }
}

offline_command! {
    /// Withdraw a host's assignment.
    #[argh(subcommand, name = "unassign")]
    struct UnassignCommand {
        /// host name
        #[argh(positional)]
        host: String,
        /// partition name
        #[argh(positional)]
        partition: String,
    }
}

/// `given` if it names disks or an array; else the `[array]` section of `config` (or of
/// [`config::DEFAULT_PATH`] when that file exists), with the command line's scan options.
fn spec_or_config(given: DiskSpec, config: Option<&Path>) -> Result<DiskSpec> {
    if !given.disks.is_empty() || given.array_id.is_some() {
        return Ok(given);
    }
    let default = Path::new(config::DEFAULT_PATH);
    let path = match config {
        Some(path) => path,
        None if default.exists() => default,
        None => return Ok(given),
    };
    let overrides = ServeOverrides {
        scan: given.scan.clone(),
        no_device_scan: !given.scan_block_devices,
        ..ServeOverrides::default()
    };
    Ok(ConfigFile::load(path)?.settings(&overrides)?.disks)
}

/// Log lines of this program only, unless `RUST_LOG` asks for more: the libraries' own
/// chatter (hyper, tokio...) is not the operator's business.
const DEFAULT_LOG_FILTER: &str = "warn,array_server=info";

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER))
        .init();
    let cli: Cli = argh::from_env();
    match cli.command {
        Command::Format(command) => format(command),
        Command::Serve(command) => serve(command),
        Command::Info(command) => info(&*open(&command)?, command.json),
        Command::Partition(command) => partition(command.action),
        Command::Host(command) => host(command.action),
        Command::Assign(command) => {
            let access = if command.read_only {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            let view = open(&command)?.assign(&command.host, &command.partition, access)?;
            println!(
                "assigned {} to {} ({:?})",
                view.partition, view.host, view.access
            );
            Ok(())
        }
        Command::Ctl(command) => Ok(admin::ctl::run(command)?),
        Command::Unassign(command) => {
            open(&command)?.unassign(&command.host, &command.partition)?;
            println!("unassigned {} from {}", command.partition, command.host);
            Ok(())
        }
    }
}

fn open(command: &impl DiskArgs) -> Result<Arc<Array>> {
    open_spec(&command.spec()?)
}

/// Finds the member disks of `spec` (scanning for them when it names an array id) and
/// opens the array on them.
fn open_spec(spec: &DiskSpec) -> Result<Arc<Array>> {
    let disks = scan::resolve(spec).context("finding the member disks")?;
    let array = Array::open(&disks)
        .with_context(|| format!("opening the array on {}", show_paths(&disks)))?;
    if let Some(wanted) = spec.array_id {
        anyhow::ensure!(
            array.id() == wanted,
            "the disks found hold array {}, not {wanted}",
            array.id()
        );
    }
    Ok(array)
}

fn show_paths(paths: &[PathBuf]) -> String {
    let names: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn format(command: FormatCommand) -> Result<()> {
    let options = FormatOptions {
        chunk: command.chunk,
        force: command.force,
        create_size: command.size,
    };
    let mut progress = progress::Progress::on_terminal();
    let array = Array::format_with_progress(&command.disk, &options, &mut |step| {
        let verb = match step.phase {
            FormatPhase::Checking => "checking",
            FormatPhase::Writing => "writing metadata on",
        };
        progress.show(&format!(
            "format: {verb} disks ({}/{} done)",
            step.done, step.total
        ));
    })
    .with_context(|| format!("formatting {}", show_paths(&command.disk)))?;
    progress.finish();
    println!("formatted array {}", array.id());
    let token = admin::cli::write_format_token(&array, command.admin_token_file.as_deref())?;
    println!("admin token written to {}", token.display());
    info(&array, false)
}

fn serve(command: ServeCommand) -> Result<()> {
    let file = match &command.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let settings = file.settings(&overrides(&command))?;
    let array = open_spec(&settings.disks)?;
    let signals = block_termination_signals()?;
    let server = net::start(array, settings.server).context("starting the server")?;
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    println!("array-server listening on {}", addrs.join(" "));
    let admin = match settings.admin {
        Some(addr) => {
            let token_file = settings.admin_token_file.as_deref();
            let (admin, path) = admin::cli::start_for_serve(
                addr,
                token_file,
                server.array().clone(),
                server.live_sessions(),
            )
            .with_context(|| {
                format!("starting the admin service on {addr} (--admin ADDR, or --no-admin)")
            })?;
            println!(
                "admin page on http://{}/ (token in {})",
                admin.local_addr(),
                path.display()
            );
            Some(admin)
        }
        None => None,
    };
    let signal = wait_for_signal(&signals)?;
    log::info!("signal {signal}: stopping");
    drop(admin);
    server.stop();
    Ok(())
}

/// The command line's part of `serve`'s settings: what it gives wins over the file.
fn overrides(command: &ServeCommand) -> ServeOverrides {
    ServeOverrides {
        listen: command.listen.first().copied(),
        also_listen: command.listen.iter().skip(1).copied().collect(),
        announce: command.announce.clone(),
        threads: command.threads,
        no_pin_threads: command.no_pin_threads,
        max_connections: command.max_connections,
        max_in_flight: command.max_in_flight,
        handshake_timeout_ms: command.handshake_timeout_ms,
        admin: command.admin,
        no_admin: command.no_admin,
        admin_token_file: command.admin_token_file.clone(),
        disks: command.disk.clone(),
        array_id: command.array,
        scan: command.scan.clone(),
        no_device_scan: command.no_device_scan,
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and in every thread it starts later), so
/// they can be awaited with `sigwait`.
fn block_termination_signals() -> Result<libc::sigset_t> {
    // SAFETY: a zeroed sigset_t is a valid argument for sigemptyset, which initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the signal numbers are valid.
    let status = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if status != 0 {
        return Err(std::io::Error::from_raw_os_error(status)).context("blocking signals");
    }
    Ok(set)
}

fn wait_for_signal(set: &libc::sigset_t) -> Result<i32> {
    let mut signal = 0;
    // SAFETY: `set` is an initialised sigset_t and `signal` a valid place for the result.
    let status = unsafe { libc::sigwait(set, &mut signal) };
    if status != 0 {
        return Err(std::io::Error::from_raw_os_error(status)).context("waiting for signals");
    }
    Ok(signal)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn info(array: &Array, json: bool) -> Result<()> {
    let info = array.info();
    if json {
        return print_json(&info);
    }
    println!(
        "array      {} (generation {})",
        info.array_id, info.generation
    );
    println!(
        "stripe     {} disks x {} chunks, {}-byte blocks",
        info.stripe_disks,
        format_size(info.chunk_size),
        info.block_size
    );
    println!(
        "capacity   {}, used {}, free {}",
        format_size(info.capacity),
        format_size(info.used),
        format_size(info.free)
    );
    println!("partitions {}, hosts {}", info.partitions, info.hosts);
    for (index, disk) in info.disks.iter().enumerate() {
        let kind = if disk.block_device {
            "block device"
        } else {
            "file"
        };
        let io = if disk.direct_io {
            "O_DIRECT"
        } else {
            "buffered"
        };
        println!(
            "disk {index}     {} ({kind}, {}, {io})",
            disk.path.display(),
            format_size(disk.size)
        );
    }
    Ok(())
}

fn partition(action: PartitionAction) -> Result<()> {
    match action {
        PartitionAction::Create(command) => {
            let view =
                open(&command)?.create_partition(&command.name, command.size, command.shared)?;
            let mode = if view.shared { "shared" } else { "private" };
            println!(
                "created partition {} (id {}, {}, {mode})",
                view.name,
                view.id,
                format_size(view.size)
            );
        }
        PartitionAction::Grow(command) => {
            let view = open(&command)?.grow_partition(&command.name, command.size)?;
            println!("partition {} is now {}", view.name, format_size(view.size));
        }
        PartitionAction::Delete(command) => {
            open(&command)?.delete_partition(&command.name)?;
            println!("deleted partition {}", command.name);
        }
        PartitionAction::List(command) => {
            let partitions = open(&command)?.partitions();
            if command.json {
                return print_json(&partitions);
            }
            for view in partitions {
                let holders: Vec<String> = view
                    .holders
                    .iter()
                    .map(|h| format!("{}:{}", h.host, access_name(h.access)))
                    .collect();
                let mode = if view.shared { "shared" } else { "private" };
                println!(
                    "{:>4} {:<20} {:>10} {mode:<8} {}",
                    view.id,
                    view.name,
                    format_size(view.size),
                    holders.join(",")
                );
            }
        }
    }
    Ok(())
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::ReadWrite => "rw",
        Access::ReadOnly => "ro",
    }
}

fn host(action: HostAction) -> Result<()> {
    match action {
        HostAction::Create(command) => {
            let created = open(&command)?.create_host(&command.name)?;
            show_secret(
                &created.host,
                &created.secret,
                command.secret_file.as_deref(),
            )
        }
        HostAction::Rotate(command) => {
            let rotated = open(&command)?.rotate_secret(&command.name)?;
            show_secret(
                &rotated.host,
                &rotated.secret,
                command.secret_file.as_deref(),
            )
        }
        HostAction::Delete(command) => {
            open(&command)?.delete_host(&command.name)?;
            println!("deleted host {}", command.name);
            Ok(())
        }
        HostAction::List(command) => {
            let hosts = open(&command)?.hosts();
            if command.json {
                return print_json(&hosts);
            }
            for view in hosts {
                let partitions: Vec<String> = view
                    .partitions
                    .iter()
                    .map(|p| format!("{}:{}", p.partition, access_name(p.access)))
                    .collect();
                println!("{:<20} {}", view.name, partitions.join(","));
            }
            Ok(())
        }
    }
}

/// Hands a new secret to the operator: into `file` (mode 0600) and never on the terminal
/// when a file is given, else printed once.
fn show_secret(host: &str, secret: &str, file: Option<&Path>) -> Result<()> {
    match file {
        Some(path) => {
            admin::token::write_private(path, secret)?;
            println!(
                "secret of host {host} written to {} (mode 0600; it is not shown)",
                path.display()
            );
        }
        None => {
            println!("secret of host {host} (shown only now; keep it):");
            println!("{secret}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(extra: &[&str]) -> ServeCommand {
        let mut args = vec!["--disk", "d0.img"];
        args.extend_from_slice(extra);
        ServeCommand::from_args(&["serve"], &args).expect("valid serve arguments")
    }

    fn admin_of(extra: &[&str]) -> Option<SocketAddr> {
        let command = serve_args(extra);
        let settings = ConfigFile::default().settings(&overrides(&command));
        settings.expect("valid settings").admin
    }

    #[test]
    fn serve_runs_the_admin_service_on_loopback_7780_by_default() {
        let default: SocketAddr = admin::DEFAULT_ADDR.parse().unwrap();
        assert_eq!(default, SocketAddr::from(([127, 0, 0, 1], 7780)));
        assert_eq!(admin_of(&[]), Some(default));
        assert_eq!(
            admin_of(&["--admin", "127.0.0.1:9999"]),
            "127.0.0.1:9999".parse().ok()
        );
        assert_eq!(admin_of(&["--no-admin"]), None);
    }

    #[test]
    fn serve_flags_reach_the_settings() {
        let command = serve_args(&[
            "--array",
            "6f1f8a52-8a0e-4c1b-9f7e-2d9a4c0b7e11",
            "--scan",
            "/srv/*.img",
            "--no-device-scan",
            "--max-in-flight",
            "8",
        ]);
        let settings = ConfigFile::default()
            .settings(&overrides(&command))
            .unwrap();
        assert_eq!(settings.server.max_in_flight, 8);
        assert_eq!(settings.disks.disks, vec![PathBuf::from("d0.img")]);
        assert_eq!(settings.disks.scan, vec!["/srv/*.img".to_string()]);
        assert!(!settings.disks.scan_block_devices);
        assert!(settings.disks.array_id.is_some());
    }
}
