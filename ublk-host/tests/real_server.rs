//! The engine and discovery against the real array server, started in-process on
//! temporary member disks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use array_server::net::{self, RunningServer, ServerConfig};
use array_server::{Array, FormatOptions};
use common::{pattern, within, KIB, MIB};
use ublk_host::client::{run_queue_thread, BlockIo, ClientConfig, Discovery, EngineConfig};
use ublk_host::Errno;
use wire::{libc_errno, Access, Op, Secret};

const DISKS: usize = 3;
const DISK_SIZE: u64 = 24 << 20;
const ARRAY_CHUNK: u64 = 64 << 10;

struct Setup {
    _dir: tempfile::TempDir,
    server: RunningServer,
    secret: Secret,
}

fn setup(partition_size: u64, access: Access) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = (0..DISKS)
        .map(|i| dir.path().join(format!("disk{i}.img")))
        .collect();
    for path in &paths {
        std::fs::File::create(path)
            .unwrap()
            .set_len(DISK_SIZE)
            .unwrap();
    }
    let options = FormatOptions {
        chunk: ARRAY_CHUNK,
        force: false,
        create_size: None,
    };
    let array: Arc<Array> = Array::format(&paths, &options).unwrap();
    array
        .create_partition("vol", partition_size, false)
        .unwrap();
    let secret = array.create_host("h1").unwrap().secret;
    array.assign("h1", "vol", access).unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        ..ServerConfig::default()
    };
    let server = net::start(array, config).unwrap();
    Setup {
        _dir: dir,
        server,
        secret: Secret::from_hex(&secret).unwrap(),
    }
}

fn client(setup: &Setup) -> ClientConfig {
    let mut config = ClientConfig::new(
        setup.server.local_addr().to_string(),
        "h1",
        setup.secret.clone(),
    );
    config.handshake_timeout = Duration::from_secs(5);
    config
}

#[test]
fn round_trips_and_splits_against_the_real_server() {
    within(Duration::from_secs(120), || {
        let setup = setup(12 << 20, Access::ReadWrite);
        let partition = Discovery::open(&client(&setup))
            .unwrap()
            .list()
            .unwrap()
            .find("vol")
            .unwrap()
            .clone();
        let mut config = EngineConfig::new(client(&setup));
        config.lanes_per_queue = 3;
        config.split = 128 * KIB;
        let stats = run_queue_thread(&config, &partition, 0, |engine| async move {
            for (i, &size) in [512, 4096, 192 * KIB, MIB + 4096, 3 * MIB]
                .iter()
                .enumerate()
            {
                let offset = (i as u64 + 1) * ARRAY_CHUNK - 2048;
                let data = pattern(offset, size as usize, i as u8);
                let write = BlockIo {
                    op: Op::Write,
                    offset,
                    len: size,
                    fua: i % 2 == 0,
                };
                engine.execute_owned(write, data.clone()).await.0.unwrap();
                let read = BlockIo {
                    op: Op::Read,
                    ..write
                };
                let (outcome, back) = engine.execute_owned(read, vec![0; size as usize]).await;
                outcome.unwrap();
                assert!(back == data, "{size} B at {offset} round trip");
            }
            let flush = BlockIo {
                op: Op::Flush,
                offset: 0,
                len: 0,
                fua: false,
            };
            engine.execute_owned(flush, Vec::new()).await.0.unwrap();
            engine.lane_stats()
        })
        .unwrap();
        assert!(stats.iter().all(|s| s.requests > 0), "{stats:?}");
    });
}

#[test]
fn read_only_assignment_refuses_writes() {
    within(Duration::from_secs(60), || {
        let setup = setup(4 << 20, Access::ReadOnly);
        let list = Discovery::open(&client(&setup)).unwrap().list().unwrap();
        let partition = list.find("vol").unwrap().clone();
        assert_eq!(partition.access, Access::ReadOnly);
        let config = EngineConfig::new(client(&setup));
        run_queue_thread(&config, &partition, 0, |engine| async move {
            let write = BlockIo {
                op: Op::Write,
                offset: 0,
                len: 4096,
                fua: false,
            };
            let outcome = engine.execute_owned(write, vec![1; 4096]).await.0;
            assert_eq!(outcome, Err(Errno(libc_errno::EROFS)));
            let read = BlockIo {
                op: Op::Read,
                ..write
            };
            assert!(engine.execute_owned(read, vec![0; 4096]).await.0.is_ok());
        })
        .unwrap();
    });
}
