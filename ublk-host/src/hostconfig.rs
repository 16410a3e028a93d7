//! The host configuration file (`/etc/multilane/host.toml`): the servers, who this host is,
//! and the partitions to attach with their options.
//!
//! The file does not configure the daemon directly: each partition entry becomes the
//! `attach` command line it stands for ([`HostConfig::attach_argv`]), parsed by the very
//! parser `ublk-host attach` uses. So a file setting means exactly what the flag of the
//! same name means, flags given on the command line override it by replacing it in that
//! argument list, and the argument list saved in the device's state file (for a process
//! that takes the device over) is complete without the file.
//!
//! Adding an attach flag to the file is one optional field in [`PartitionEntry`] and one
//! line each in [`PartitionEntry::flags`] and its defaults merge. Unknown keys are refused, with their line.
//!
//! See `packaging/host.toml.example` for a commented example.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{HostError, Result};

/// Where `ublk-host` looks for its configuration file by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/multilane/host.toml";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// This host's name on the servers (a server entry may override it).
    pub host: Option<String>,
    /// The file holding this host's secret (a server entry may override it).
    pub secret_file: Option<String>,
    /// Array servers by a name of the operator's choice.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerEntry>,
    /// Options every partition gets unless its entry says otherwise.
    #[serde(default)]
    pub defaults: PartitionEntry,
    /// Partitions to attach, by entry name (`ublk-host attach --config FILE NAME`, the
    /// systemd instance name).
    #[serde(default)]
    pub partitions: BTreeMap<String, PartitionEntry>,
}

/// One array server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// `host:port` of the server: shorthand for a one-element `addresses`.
    pub address: Option<String>,
    /// `host:port` of each path to the server (one per network), each passed as its own
    /// `--server` flag: the device keeps lanes on every path. Give `address` or this, not
    /// both.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// This host's name on this server, if not the file's `host`.
    pub host: Option<String>,
    /// The secret file for this server, if not the file's `secret_file`.
    pub secret_file: Option<String>,
}

impl ServerEntry {
    /// The server's addresses, `address` or `addresses`; an error names what is wrong.
    pub fn paths(&self) -> std::result::Result<Vec<&str>, String> {
        match (&self.address, self.addresses.as_slice()) {
            (Some(address), []) => Ok(vec![address.as_str()]),
            (None, []) => Err("has no `address` (or `addresses`)".to_owned()),
            (None, many) => Ok(many.iter().map(String::as_str).collect()),
            (Some(_), _) => Err("sets both `address` and `addresses`: give one".to_owned()),
        }
    }
}

/// One partition to attach (`[partitions.NAME]`), or the defaults of every entry
/// (`[defaults]`). Besides `server` and `partition`, each key stands for the
/// `ublk-host attach` flag of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    /// The server entry's name; may be left out when the file names exactly one server.
    pub server: Option<String>,
    /// The partition's name on the server, if not the entry's name (two servers may each
    /// have a `vol0`: name the entries `a-vol0` and `b-vol0`). Not in `[defaults]`.
    pub partition: Option<String>,
    /// `--queues`: hardware queues.
    pub queues: Option<u16>,
    /// `--depth`: tags per queue.
    pub depth: Option<u16>,
    /// `--lanes-per-queue`: TCP lanes per queue.
    pub lanes_per_queue: Option<u16>,
    /// `--split`: split requests above this size (`"128K"`; `"0"` never).
    pub split: Option<String>,
    /// `--id`: the device id N of `/dev/ublkbN` to ask for.
    pub id: Option<u32>,
    /// `--wait-bound`: seconds I/O waits for a lost server before failing with EIO.
    pub wait_bound: Option<u64>,
    /// `--fail-fast`: fail I/O after this many seconds without the server instead (md
    /// RAID1 or multipath above the device).
    pub fail_fast: Option<u64>,
    /// `--dead-after`: seconds of silence, with I/O outstanding, after which a lane is dead.
    pub dead_after: Option<u64>,
    /// `--timeout`: handshake deadline in seconds.
    pub timeout: Option<u64>,
    /// `--poll-us`: microseconds a queue thread polls for completions at least before it
    /// sleeps.
    pub poll_us: Option<u64>,
}

impl PartitionEntry {
    /// The attach flags this entry stands for (set ones only; not `server`,
    /// `partition`), in a fixed order.
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        fn text<T: ToString>(value: &Option<T>) -> Option<String> {
            value.as_ref().map(ToString::to_string)
        }
        [
            ("--queues", text(&self.queues)),
            ("--depth", text(&self.depth)),
            ("--lanes-per-queue", text(&self.lanes_per_queue)),
            ("--split", text(&self.split)),
            ("--id", text(&self.id)),
            ("--wait-bound", text(&self.wait_bound)),
            ("--fail-fast", text(&self.fail_fast)),
            ("--dead-after", text(&self.dead_after)),
            ("--timeout", text(&self.timeout)),
            ("--poll-us", text(&self.poll_us)),
        ]
        .into_iter()
        .filter_map(|(flag, value)| Some((flag, value?)))
        .collect()
    }

    /// `self`, with every option it leaves unset taken from `defaults`.
    fn or(&self, defaults: &PartitionEntry) -> PartitionEntry {
        PartitionEntry {
            server: self.server.clone().or_else(|| defaults.server.clone()),
            partition: self.partition.clone(),
            queues: self.queues.or(defaults.queues),
            depth: self.depth.or(defaults.depth),
            lanes_per_queue: self.lanes_per_queue.or(defaults.lanes_per_queue),
            split: self.split.clone().or_else(|| defaults.split.clone()),
            id: self.id.or(defaults.id),
            wait_bound: self.wait_bound.or(defaults.wait_bound),
            fail_fast: self.fail_fast.or(defaults.fail_fast),
            dead_after: self.dead_after.or(defaults.dead_after),
            timeout: self.timeout.or(defaults.timeout),
            poll_us: self.poll_us.or(defaults.poll_us),
        }
    }
}

fn invalid(reason: String) -> HostError {
    HostError::Config {
        what: "configuration file",
        reason,
    }
}

impl HostConfig {
    /// Parses the text of a configuration file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<HostConfig> {
        let config: HostConfig =
            toml::from_str(text).map_err(|e| invalid(format!("{origin}: {e}")))?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<HostConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        HostConfig::parse(&text, &path.display().to_string())
    }

    /// Every partition entry must resolve to a server, a host name and a secret file.
    fn validate(&self, origin: &str) -> Result<()> {
        for (key, set) in [
            ("partition", self.defaults.partition.is_some()),
            ("id", self.defaults.id.is_some()),
        ] {
            if set {
                return Err(invalid(format!(
                    "{origin}: `{key}` names one device: it cannot be in [defaults]"
                )));
            }
        }
        for name in self.partitions.keys() {
            self.attach_argv(name)
                .map_err(|e| invalid(format!("{origin}: {e}")))?;
        }
        Ok(())
    }

    /// The partition entries' names, in order.
    pub fn partition_names(&self) -> Vec<String> {
        self.partitions.keys().cloned().collect()
    }

    /// The `ublk-host attach` arguments (after the subcommand) that partition entry `name`
    /// stands for.
    pub fn attach_argv(&self, name: &str) -> std::result::Result<Vec<String>, String> {
        let entry = self.partitions.get(name).ok_or_else(|| {
            format!(
                "no partition entry {name:?} (entries: {})",
                self.partition_names().join(", ")
            )
        })?;
        let entry = &entry.or(&self.defaults);
        let (server_name, server) = self.server_of(name, entry)?;
        let host = server.host.as_ref().or(self.host.as_ref()).ok_or_else(|| {
            format!("no host name for server {server_name:?}: set `host` at the top")
        })?;
        let secret_file = server
            .secret_file
            .as_ref()
            .or(self.secret_file.as_ref())
            .ok_or_else(|| {
                format!("no secret file for server {server_name:?}: set `secret_file` at the top")
            })?;
        let partition = entry.partition.as_deref().unwrap_or(name);
        let paths = server
            .paths()
            .map_err(|e| format!("server {server_name:?} {e}"))?;
        let mut argv: Vec<String> = paths
            .into_iter()
            .flat_map(|address| ["--server".to_owned(), address.to_owned()])
            .collect();
        argv.extend(
            [
                "--host",
                host,
                "--secret-file",
                secret_file,
                "--partition",
                partition,
            ]
            .map(String::from),
        );
        for (flag, value) in entry.flags() {
            argv.extend([flag.to_owned(), value]);
        }
        Ok(argv)
    }

    fn server_of<'a>(
        &'a self,
        name: &str,
        entry: &'a PartitionEntry,
    ) -> std::result::Result<(&'a str, &'a ServerEntry), String> {
        match &entry.server {
            Some(server) => self
                .servers
                .get_key_value(server)
                .map(|(k, v)| (k.as_str(), v))
                .ok_or_else(|| format!("partition {name:?} names unknown server {server:?}")),
            None if self.servers.len() == 1 => self
                .servers
                .iter()
                .next()
                .map(|(k, v)| (k.as_str(), v))
                .ok_or_else(|| "no server".to_owned()),
            None => Err(format!(
                "partition {name:?} must say which server (`server = \"...\"`): the file has {}",
                self.servers.len()
            )),
        }
    }
}

/// `base` (`--flag value` pairs) with every flag that `overrides` sets replaced by the
/// override, followed by the overrides (`--flag value` pairs or `--switch`es).
pub fn apply_overrides(base: &[String], overrides: &[String]) -> Vec<String> {
    let overridden = |flag: &str| overrides.iter().any(|arg| arg == flag);
    let mut out = Vec::with_capacity(base.len() + overrides.len());
    for pair in base.chunks(2) {
        if !overridden(&pair[0]) {
            out.extend_from_slice(pair);
        }
    }
    out.extend_from_slice(overrides);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../packaging/host.toml.example");

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_shipped_example_parses() {
        let config = HostConfig::parse(EXAMPLE, "host.toml.example").unwrap();
        assert!(!config.partitions.is_empty());
        for name in config.partition_names() {
            config.attach_argv(&name).unwrap();
        }
    }

    #[test]
    fn an_entry_becomes_its_attach_command_line() {
        let text = r#"
            host = "h1"
            secret_file = "/etc/multilane/host.key"
            [servers.a]
            address = "10.0.0.1:7700"
            [servers.b]
            address = "10.0.0.2:7700"
            host = "h1-b"
            [defaults]
            lanes_per_queue = 2
            split = "128K"
            [partitions.vol0]
            server = "a"
            queues = 4
            [partitions.b-vol0]
            server = "b"
            partition = "vol0"
            lanes_per_queue = 3
            fail_fast = 10
            poll_us = 0
        "#;
        let config = HostConfig::parse(text, "test").unwrap();
        assert_eq!(config.partition_names(), ["b-vol0", "vol0"]);
        assert_eq!(
            config.attach_argv("vol0").unwrap(),
            argv(&[
                "--server",
                "10.0.0.1:7700",
                "--host",
                "h1",
                "--secret-file",
                "/etc/multilane/host.key",
                "--partition",
                "vol0",
                "--queues",
                "4",
                "--lanes-per-queue",
                "2",
                "--split",
                "128K",
            ])
        );
        assert_eq!(
            config.attach_argv("b-vol0").unwrap(),
            argv(&[
                "--server",
                "10.0.0.2:7700",
                "--host",
                "h1-b",
                "--secret-file",
                "/etc/multilane/host.key",
                "--partition",
                "vol0",
                "--lanes-per-queue",
                "3",
                "--split",
                "128K",
                "--fail-fast",
                "10",
                "--poll-us",
                "0",
            ])
        );
        assert!(config.attach_argv("nope").unwrap_err().contains("vol0"));
    }

    #[test]
    fn a_server_with_several_addresses_gives_one_server_flag_per_path() {
        let text = r#"
            host = "h1"
            secret_file = "/k"
            [servers.a]
            addresses = ["10.0.0.1:7700", "10.0.1.1:7700"]
            [partitions.vol0]
        "#;
        let config = HostConfig::parse(text, "test").unwrap();
        assert_eq!(
            config.attach_argv("vol0").unwrap(),
            argv(&[
                "--server",
                "10.0.0.1:7700",
                "--server",
                "10.0.1.1:7700",
                "--host",
                "h1",
                "--secret-file",
                "/k",
                "--partition",
                "vol0",
            ])
        );
        let overridden = apply_overrides(
            &config.attach_argv("vol0").unwrap(),
            &argv(&["--server", "10.0.2.1:7700"]),
        );
        assert_eq!(
            overridden.iter().filter(|a| *a == "10.0.2.1:7700").count(),
            1
        );
        assert!(!overridden.iter().any(|a| a.starts_with("10.0.0.1")));
        for (servers, error) in [
            ("address = \"x:1\"\naddresses = [\"y:1\"]", "both"),
            ("host = \"h2\"", "no `address`"),
        ] {
            let text = format!(
                "host = \"h\"\nsecret_file = \"/k\"\n[servers.a]\n{servers}\n[partitions.v]\n"
            );
            let got = HostConfig::parse(&text, "t").unwrap_err().to_string();
            assert!(got.contains(error), "{got}");
        }
    }

    #[test]
    fn command_line_flags_override_the_file() {
        let base = argv(&["--server", "s:1", "--lanes-per-queue", "2", "--queues", "4"]);
        let overrides = argv(&["--lanes-per-queue", "8", "--depth", "64"]);
        assert_eq!(
            apply_overrides(&base, &overrides),
            argv(&[
                "--server",
                "s:1",
                "--queues",
                "4",
                "--lanes-per-queue",
                "8",
                "--depth",
                "64"
            ])
        );
        assert_eq!(apply_overrides(&base, &[]), base);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let cases = [
            ("hots = \"h\"", "hots"),
            ("[servers.a]\naddress = \"x:1\"\nport = 7", "port"),
            (
                "[servers.a]\naddress = \"x:1\"\n[partitions.v]\nlanes = 2",
                "lanes",
            ),
            ("[defaults]\nqueue = 2", "queue"),
        ];
        for (text, key) in cases {
            let error = HostConfig::parse(text, "bad.toml").unwrap_err().to_string();
            assert!(
                error.contains(key) && error.contains("bad.toml"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn incomplete_entries_are_refused_at_load() {
        let no_host = "secret_file = \"/k\"\n[servers.a]\naddress = \"x:1\"\n[partitions.v]\n";
        let error = HostConfig::parse(no_host, "t").unwrap_err().to_string();
        assert!(error.contains("host"), "{error}");
        let two_servers = "host = \"h\"\nsecret_file = \"/k\"\n[servers.a]\naddress = \"x:1\"\n\
                           [servers.b]\naddress = \"y:1\"\n[partitions.v]\n";
        let error = HostConfig::parse(two_servers, "t").unwrap_err().to_string();
        assert!(error.contains("which server"), "{error}");
        let bad_server = "host = \"h\"\nsecret_file = \"/k\"\n[servers.a]\naddress = \"x:1\"\n\
                          [partitions.v]\nserver = \"c\"\n";
        let error = HostConfig::parse(bad_server, "t").unwrap_err().to_string();
        assert!(error.contains("unknown server"), "{error}");
        for key in ["partition = \"v\"", "id = 3"] {
            let text = format!("[defaults]\n{key}\n");
            let error = HostConfig::parse(&text, "t").unwrap_err().to_string();
            assert!(error.contains("cannot be in [defaults]"), "{error}");
        }
    }
}
