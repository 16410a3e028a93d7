//! `ublk-host nbd`: serve a partition as an NBD export on a Unix socket.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{bail, Context};
use argh::FromArgs;
use ublk_host::client::Discovery;
use ublk_host::hostconfig::{apply_overrides, HostConfig};
use ublk_host::nbd::{self, NbdExport, DEFAULT_MAX_CONNECTIONS};

use crate::device_cmds;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "nbd")]
/// Serve a partition as an NBD export on a Unix socket (no ublk module needed), in the
/// foreground: `ublk-host nbd --config /etc/multilane/host.toml vol0 --socket
/// /run/multilane/vol0.sock`, or with --server/--host/--secret-file/--partition. The export
/// is named after the partition.
pub struct NbdArgs {
    /// the Unix socket to listen on
    #[argh(option)]
    socket: String,
    /// host configuration file; then name the partition entry
    #[argh(option)]
    config: Option<String>,
    /// the partition entry of the configuration file
    #[argh(positional)]
    entry: Option<String>,
    /// server address, host:port
    #[argh(option)]
    server: Option<String>,
    /// this host's name on the server
    #[argh(option)]
    host: Option<String>,
    /// file holding the host secret (64 hex digits)
    #[argh(option)]
    secret_file: Option<String>,
    /// the partition's name
    #[argh(option)]
    partition: Option<String>,
    /// TCP lanes per NBD connection (default 1)
    #[argh(option)]
    lanes_per_queue: Option<u16>,
    /// split requests above this size over a connection's lanes; 0 never (default)
    #[argh(option)]
    split: Option<String>,
    /// simultaneous NBD connections at most (default 16)
    #[argh(option, default = "DEFAULT_MAX_CONNECTIONS")]
    max_connections: u16,
}

impl NbdArgs {
    /// The attach-style flags given on the command line.
    fn flags(&self) -> Vec<String> {
        let lanes = self.lanes_per_queue.map(|n| n.to_string());
        [
            ("--server", self.server.as_ref()),
            ("--host", self.host.as_ref()),
            ("--secret-file", self.secret_file.as_ref()),
            ("--partition", self.partition.as_ref()),
            ("--lanes-per-queue", lanes.as_ref()),
            ("--split", self.split.as_ref()),
        ]
        .into_iter()
        .filter_map(|(flag, value)| Some([flag.to_owned(), value?.clone()]))
        .flatten()
        .collect()
    }

    /// The `attach` arguments these options stand for (from the file, overridden by flags).
    fn attach_argv(&self) -> anyhow::Result<Vec<String>> {
        match (&self.config, &self.entry) {
            (Some(path), Some(entry)) => {
                let config = HostConfig::load(Path::new(path))?;
                let base = config
                    .attach_argv(entry)
                    .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
                Ok(apply_overrides(&base, &self.flags()))
            }
            (Some(path), None) => bail!("name a partition entry of {path}"),
            (None, Some(entry)) => bail!("{entry}: a partition entry needs --config FILE"),
            (None, None) => Ok(self.flags()),
        }
    }
}

/// Binds `path`, replacing a stale socket nobody listens on.
fn bind(path: &str) -> anyhow::Result<UnixListener> {
    let stale = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && UnixStream::connect(path).is_err();
    if stale {
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {path}"))?;
    }
    UnixListener::bind(path).with_context(|| format!("listening on {path}"))
}

pub fn serve(args: &NbdArgs) -> anyhow::Result<()> {
    let options = device_cmds::options_from_argv(args.attach_argv()?)?;
    let partition = Discovery::open(&options.engine.client)
        .and_then(|mut discovery| Ok(discovery.list()?.find(&options.partition)?.clone()))
        .with_context(|| format!("discovering partition {}", options.partition))?;
    let listener = bind(&args.socket)?;
    println!(
        "ublk-host: NBD export {} ({} bytes) on {}",
        partition.name, partition.size, args.socket
    );
    let export = NbdExport {
        engine: options.engine,
        partition,
        max_connections: args.max_connections.max(1),
    };
    nbd::serve(listener, export).context("serving NBD")
}
