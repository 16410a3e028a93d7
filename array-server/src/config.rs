//! The server's configuration file (`array-server serve --config FILE`), TOML.
//!
//! Why TOML: it is the Rust ecosystem's configuration format (Cargo's own), has comments,
//! and `serde` maps it onto plain structs whose unknown keys are refused
//! (`deny_unknown_fields`), so a typo is an error at start, not a silently ignored
//! setting. The commented example is `packaging/array.toml.example` (a unit test parses
//! it, so it stays valid).
//!
//! Every setting is optional; a command-line flag overrides the file's value
//! ([`ServeOverrides`]), and the file overrides the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use crate::array::scan::DiskSpec;
use crate::error::{Error, Result};
use crate::net::ServerConfig;

/// Where the packaged unit expects the file.
pub const DEFAULT_PATH: &str = "/etc/multilane/array.toml";

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`: the data service.
    #[serde(default)]
    pub server: ServerSection,
    /// `[admin]`: the admin page, API and `/metrics`.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[array]`: which disks to serve.
    #[serde(default)]
    pub array: ArraySection,
}

/// `[server]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address hosts connect to (`0.0.0.0:7700` reaches every interface).
    pub listen: Option<SocketAddr>,
    /// Further addresses, one per further network hosts reach the server over
    /// (multipath).
    pub also_listen: Option<Vec<SocketAddr>>,
    /// Addresses (`host:port`) announced to hosts in discovery (default: the listen
    /// addresses that are not wildcards such as `0.0.0.0`).
    pub announce: Option<Vec<String>>,
    /// Runtime threads (default: the number of CPUs).
    pub threads: Option<usize>,
    /// Pin the threads to CPUs and steer connections by incoming CPU (default true).
    pub pin_threads: Option<bool>,
    /// Most live connections.
    pub max_connections: Option<usize>,
    /// Requests one data connection runs at once.
    pub max_in_flight: Option<u32>,
    /// Deadline for a connection's handshake, in milliseconds.
    pub handshake_timeout_ms: Option<u64>,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Serve the admin service at all (default true).
    pub enabled: Option<bool>,
    /// Its address (default `127.0.0.1:7780`).
    pub listen: Option<SocketAddr>,
    /// The admin token file (default: the one `format` wrote).
    pub token_file: Option<PathBuf>,
}

/// `[array]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArraySection {
    /// The array to assemble by scanning (see [`crate::array::scan`]).
    pub id: Option<Uuid>,
    /// Member disks named explicitly.
    #[serde(default)]
    pub disks: Vec<PathBuf>,
    /// Extra paths or globs to probe for members.
    #[serde(default)]
    pub scan: Vec<String>,
    /// Probe the machine's block devices too (default true).
    pub scan_block_devices: Option<bool>,
}

/// What the command line gives `serve`; every `Some` (or non-empty list, or set switch)
/// wins over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeOverrides {
    /// `--listen` (the first one).
    pub listen: Option<SocketAddr>,
    /// `--listen` after the first (replaces the file's `also_listen`).
    pub also_listen: Vec<SocketAddr>,
    /// `--announce` (replaces the file's `announce`).
    pub announce: Vec<String>,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--no-pin-threads`.
    pub no_pin_threads: bool,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-in-flight`.
    pub max_in_flight: Option<u32>,
    /// `--handshake-timeout-ms`.
    pub handshake_timeout_ms: Option<u64>,
    /// `--admin`: also turns the admin service on when the file turned it off.
    pub admin: Option<SocketAddr>,
    /// `--no-admin`.
    pub no_admin: bool,
    /// `--admin-token-file`.
    pub admin_token_file: Option<PathBuf>,
    /// `--disk` (replaces the file's list).
    pub disks: Vec<PathBuf>,
    /// `--array`.
    pub array_id: Option<Uuid>,
    /// `--scan` (replaces the file's list).
    pub scan: Vec<String>,
    /// `--no-device-scan`.
    pub no_device_scan: bool,
}

/// Everything `serve` runs with, file and flags merged.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The network server's configuration.
    pub server: ServerConfig,
    /// The admin service's address, `None` when it is off.
    pub admin: Option<SocketAddr>,
    /// The admin token file, `None` for the default.
    pub admin_token_file: Option<PathBuf>,
    /// The member disks.
    pub disks: DiskSpec,
}

impl ConfigFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        ConfigFile::parse(&text, path)
    }

    /// Parses and checks `text` (read from `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile> {
        let fail = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        file.check().map_err(fail)?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        let server = &self.server;
        positive("server.threads", server.threads.map(|v| v as u64))?;
        positive(
            "server.max_connections",
            server.max_connections.map(|v| v as u64),
        )?;
        positive("server.max_in_flight", server.max_in_flight.map(u64::from))?;
        positive("server.handshake_timeout_ms", server.handshake_timeout_ms)
    }

    /// Merges the file with the command line's `overrides` (flags win).
    pub fn settings(&self, overrides: &ServeOverrides) -> Result<ServeSettings> {
        let defaults = ServerConfig::default();
        let file = &self.server;
        let check = |name: &str, value: Option<u64>| {
            positive(name, value).map_err(|message| Error::Config {
                path: PathBuf::from("(command line)"),
                message,
            })
        };
        check("--threads", overrides.threads.map(|v| v as u64))?;
        check(
            "--max-connections",
            overrides.max_connections.map(|v| v as u64),
        )?;
        check("--max-in-flight", overrides.max_in_flight.map(u64::from))?;
        check("--handshake-timeout-ms", overrides.handshake_timeout_ms)?;
        let handshake_ms = overrides.handshake_timeout_ms.or(file.handshake_timeout_ms);
        let server = ServerConfig {
            listen: overrides.listen.or(file.listen).unwrap_or(defaults.listen),
            also_listen: if overrides.also_listen.is_empty() {
                file.also_listen.clone().unwrap_or_default()
            } else {
                overrides.also_listen.clone()
            },
            announce: if overrides.announce.is_empty() {
                file.announce.clone().unwrap_or_default()
            } else {
                overrides.announce.clone()
            },
            threads: overrides
                .threads
                .or(file.threads)
                .unwrap_or(defaults.threads),
            pin_threads: !overrides.no_pin_threads
                && file.pin_threads.unwrap_or(defaults.pin_threads),
            max_connections: overrides
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_in_flight: overrides
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(defaults.max_in_flight),
            handshake_timeout: handshake_ms
                .map_or(defaults.handshake_timeout, Duration::from_millis),
            ..defaults
        };
        let admin_on = !overrides.no_admin
            && (overrides.admin.is_some() || self.admin.enabled.unwrap_or(true));
        let admin = admin_on.then(|| {
            overrides
                .admin
                .or(self.admin.listen)
                .unwrap_or_else(crate::admin::default_addr)
        });
        let array = &self.array;
        let pick =
            |flag: &[PathBuf], file: &[PathBuf]| if flag.is_empty() { file } else { flag }.to_vec();
        let disks = DiskSpec {
            disks: pick(&overrides.disks, &array.disks),
            array_id: overrides.array_id.or(array.id),
            scan: if overrides.scan.is_empty() {
                array.scan.clone()
            } else {
                overrides.scan.clone()
            },
            scan_block_devices: !overrides.no_device_scan
                && array.scan_block_devices.unwrap_or(true),
        };
        Ok(ServeSettings {
            server,
            admin,
            admin_token_file: overrides
                .admin_token_file
                .clone()
                .or_else(|| self.admin.token_file.clone()),
            disks,
        })
    }
}

fn positive(name: &str, value: Option<u64>) -> Result<(), String> {
    match value {
        Some(0) => Err(format!("{name} must be at least 1")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../packaging/array.toml.example");

    const FULL: &str = r#"
        [server]
        listen = "192.0.2.7:7701"
        threads = 3
        max_connections = 99
        max_in_flight = 17
        handshake_timeout_ms = 2500

        [admin]
        listen = "127.0.0.1:9780"
        token_file = "/etc/multilane/admin-token"

        [array]
        id = "6f1f8a52-8a0e-4c1b-9f7e-2d9a4c0b7e11"
        disks = ["/dev/vdb"]
        scan = ["/var/lib/multilane/*.img"]
        scan_block_devices = false
    "#;

    fn parse(text: &str) -> Result<ConfigFile> {
        ConfigFile::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn a_file_sets_everything() {
        let settings = parse(FULL)
            .unwrap()
            .settings(&ServeOverrides::default())
            .unwrap();
        assert_eq!(settings.server.listen, "192.0.2.7:7701".parse().unwrap());
        assert_eq!(settings.server.threads, 3);
        assert_eq!(settings.server.max_connections, 99);
        assert_eq!(settings.server.max_in_flight, 17);
        assert_eq!(
            settings.server.handshake_timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(settings.admin, "127.0.0.1:9780".parse().ok());
        assert_eq!(
            settings.admin_token_file,
            Some(PathBuf::from("/etc/multilane/admin-token"))
        );
        assert_eq!(
            settings.disks,
            DiskSpec {
                disks: vec![PathBuf::from("/dev/vdb")],
                array_id: "6f1f8a52-8a0e-4c1b-9f7e-2d9a4c0b7e11".parse().ok(),
                scan: vec!["/var/lib/multilane/*.img".into()],
                scan_block_devices: false,
            }
        );
    }

    #[test]
    fn further_listen_addresses_come_from_the_file_or_the_flags() {
        let file =
            parse("[server]\nlisten = \"10.1.0.2:7700\"\nalso_listen = [\"10.2.0.2:7700\"]\n")
                .unwrap();
        let settings = file.settings(&ServeOverrides::default()).unwrap();
        assert_eq!(settings.server.listen, "10.1.0.2:7700".parse().unwrap());
        assert_eq!(
            settings.server.also_listen,
            vec!["10.2.0.2:7700".parse().unwrap()]
        );
        let overrides = ServeOverrides {
            listen: "127.0.0.1:1".parse().ok(),
            also_listen: vec![
                "127.0.0.2:1".parse().unwrap(),
                "127.0.0.3:1".parse().unwrap(),
            ],
            ..ServeOverrides::default()
        };
        let settings = file.settings(&overrides).unwrap();
        assert_eq!(
            settings.server.also_listen.len(),
            2,
            "the flags replace the file's list"
        );
        let none = parse("")
            .unwrap()
            .settings(&ServeOverrides::default())
            .unwrap();
        assert!(none.server.also_listen.is_empty());
        assert!(none.server.announce.is_empty());
        let announce = parse("[server]\nannounce = [\"a:1\", \"b:1\"]\n").unwrap();
        let settings = announce.settings(&ServeOverrides::default()).unwrap();
        assert_eq!(settings.server.announce, ["a:1", "b:1"]);
        let overrides = ServeOverrides {
            announce: vec!["c:1".to_owned()],
            ..ServeOverrides::default()
        };
        let settings = announce.settings(&overrides).unwrap();
        assert_eq!(
            settings.server.announce,
            ["c:1"],
            "the flags replace the file's"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let overrides = ServeOverrides {
            listen: "127.0.0.1:1234".parse().ok(),
            threads: Some(1),
            handshake_timeout_ms: Some(100),
            admin: "127.0.0.1:4321".parse().ok(),
            disks: vec!["/tmp/d0.img".into()],
            scan: vec!["/tmp/*.img".into()],
            ..ServeOverrides::default()
        };
        let file = parse(FULL).unwrap();
        let settings = file.settings(&overrides).unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(settings.server.threads, 1);
        assert_eq!(settings.server.max_connections, 99, "kept from the file");
        assert_eq!(
            settings.server.handshake_timeout,
            Duration::from_millis(100)
        );
        assert_eq!(settings.admin, "127.0.0.1:4321".parse().ok());
        assert_eq!(settings.disks.disks, vec![PathBuf::from("/tmp/d0.img")]);
        assert_eq!(settings.disks.scan, vec!["/tmp/*.img".to_string()]);
        let off = ServeOverrides {
            no_admin: true,
            ..ServeOverrides::default()
        };
        assert_eq!(file.settings(&off).unwrap().admin, None);
        let disabled = parse("[admin]\nenabled = false\n").unwrap();
        assert_eq!(
            disabled.settings(&ServeOverrides::default()).unwrap().admin,
            None
        );
        assert_eq!(
            disabled.settings(&overrides).unwrap().admin,
            "127.0.0.1:4321".parse().ok(),
            "--admin turns it back on"
        );
        let bad_flag = ServeOverrides {
            threads: Some(0),
            ..ServeOverrides::default()
        };
        assert!(file.settings(&bad_flag).is_err());
    }

    #[test]
    fn thread_pinning_is_on_unless_the_file_or_the_flag_turns_it_off() {
        let defaults = parse("").unwrap();
        let none = ServeOverrides::default();
        assert!(defaults.settings(&none).unwrap().server.pin_threads);
        let off = parse("[server]\npin_threads = false\n").unwrap();
        assert!(!off.settings(&none).unwrap().server.pin_threads);
        let flag = ServeOverrides {
            no_pin_threads: true,
            ..ServeOverrides::default()
        };
        assert!(!defaults.settings(&flag).unwrap().server.pin_threads);
    }

    #[test]
    fn an_empty_file_gives_the_built_in_defaults() {
        let settings = parse("")
            .unwrap()
            .settings(&ServeOverrides::default())
            .unwrap();
        let defaults = ServerConfig::default();
        assert_eq!(settings.server.listen, defaults.listen);
        assert_eq!(settings.server.max_connections, defaults.max_connections);
        assert_eq!(settings.admin, Some(crate::admin::default_addr()));
        assert!(settings.disks.scan_block_devices);
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let error = parse("[server]\nlisten_address = \"0.0.0.0:7700\"\n").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("test.toml"), "{text}");
        assert!(text.contains("listen_address"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(parse("[storage]\n").is_err());
    }

    #[test]
    fn a_bad_value_is_refused() {
        for (text, expect) in [
            ("[server]\nlisten = \"not-an-address\"\n", "listen"),
            (
                "[server]\nthreads = 0\n",
                "server.threads must be at least 1",
            ),
            ("[server]\nthreads = \"two\"\n", "threads"),
            ("[array]\nid = \"no-uuid\"\n", "id"),
            ("[server]\nmax_in_flight = -1\n", "max_in_flight"),
        ] {
            let text_error = parse(text).unwrap_err().to_string();
            assert!(text_error.contains(expect), "{text:?}: {text_error}");
        }
    }

    #[test]
    fn the_shipped_example_parses() {
        let file = parse(EXAMPLE).unwrap();
        assert!(file.array.id.is_some());
        file.settings(&ServeOverrides::default()).unwrap();
    }
}
