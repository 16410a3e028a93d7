//! A real array for tests that run against array-server in-process: member files in a
//! temporary directory, formatted with 64 KiB chunks, with partition `vol` assigned to host
//! `h1`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use array_server::net::{self, RunningServer, ServerConfig};
use array_server::{Array, FormatOptions};
use ublk_host::client::ClientConfig;
use wire::{Access, Secret};

/// Stripe chunk of every test array.
pub const ARRAY_CHUNK: u64 = 64 << 10;

/// The array, the directory holding its member files (removed when this is dropped), and
/// the secret of host `h1`.
pub struct RealArray {
    dir: tempfile::TempDir,
    pub array: Arc<Array>,
    pub secret: Secret,
}

impl RealArray {
    /// `disks` member files of `disk_size` bytes; partition `vol` of `partition_size`
    /// bytes, assigned to `h1` with `access`.
    pub fn format(disks: usize, disk_size: u64, partition_size: u64, access: Access) -> RealArray {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..disks)
            .map(|i| dir.path().join(format!("disk{i}.img")))
            .collect();
        for path in &paths {
            std::fs::File::create(path)
                .unwrap()
                .set_len(disk_size)
                .unwrap();
        }
        let options = FormatOptions {
            chunk: ARRAY_CHUNK,
            force: false,
            create_size: None,
        };
        let array = Array::format(&paths, &options).unwrap();
        array
            .create_partition("vol", partition_size, false)
            .unwrap();
        let secret = array.create_host("h1").unwrap().secret;
        array.assign("h1", "vol", access).unwrap();
        RealArray {
            dir,
            array,
            secret: Secret::from_hex(&secret).unwrap(),
        }
    }

    /// The temporary directory of the member files (room for the test's own files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Serves the array on `listen` (`127.0.0.1:0` for any port) with `threads` threads.
    pub fn serve(&self, listen: SocketAddr, threads: usize) -> RunningServer {
        self.serve_with(ServerConfig {
            listen,
            threads,
            ..ServerConfig::default()
        })
    }

    /// Serves the array with `config`.
    pub fn serve_with(&self, config: ServerConfig) -> RunningServer {
        net::start(self.array.clone(), config).unwrap()
    }

    /// A client of `server` as host `h1`.
    pub fn client(&self, server: &RunningServer) -> ClientConfig {
        ClientConfig::new(server.local_addr().to_string(), "h1", self.secret.clone())
    }
}

/// Any port on the loopback address.
pub fn any_loopback_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}
