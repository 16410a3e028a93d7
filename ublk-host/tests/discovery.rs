//! Discovery against the fake server: the list, and live pushes.

mod common;

use std::time::Duration;

use common::real::{any_loopback_port, RealArray};
use common::*;
use ublk_host::client::Discovery;
use ublk_host::HostError;
use wire::Access;

#[test]
fn lists_and_watches_partitions() {
    within(Duration::from_secs(30), || {
        let server = FakeServer::start(Options::new(partition(1 << 20, Access::ReadWrite)));
        let mut discovery = Discovery::open(&server.client(secret())).unwrap();
        let list = discovery.list().unwrap();
        assert_eq!(list.partitions.len(), 1);
        assert_eq!(list.find("vol0").unwrap().id, 7);
        assert!(matches!(
            list.find("nope"),
            Err(HostError::UnknownPartition(_))
        ));
        let mut grown = partition(2 << 20, Access::ReadOnly);
        grown.name = "vol1".into();
        server.push(2, vec![partition(1 << 20, Access::ReadWrite), grown]);
        let change = discovery.next_change(Duration::from_secs(10)).unwrap();
        assert_eq!(change.generation, 2);
        assert_eq!(change.find("vol1").unwrap().access, Access::ReadOnly);
    });
}

#[test]
fn watch_pings_when_quiet() {
    within(Duration::from_secs(30), || {
        let server = FakeServer::start(Options::new(partition(1 << 20, Access::ReadWrite)));
        let mut discovery = Discovery::open(&server.client(secret())).unwrap();
        discovery.list().unwrap();
        let pusher = std::thread::spawn(move || {
            // The push comes only after at least one keepalive round trip.
            let shared = server.shared.clone();
            wait_until(Duration::from_secs(10), || {
                shared.pings.load(std::sync::atomic::Ordering::SeqCst) >= 2
            });
            server.push(5, Vec::new());
            server
        });
        let change = discovery.next_change(Duration::from_millis(100)).unwrap();
        assert_eq!(change.generation, 5);
        pusher.join().unwrap();
    });
}

/// Member files and partition size of the real arrays below (served, stopped and served
/// again on the same address).
const DISKS: usize = 3;
const DISK_SIZE: u64 = 24 << 20;
const PARTITION_SIZE: u64 = 4 << 20;

fn real_array() -> RealArray {
    RealArray::format(DISKS, DISK_SIZE, PARTITION_SIZE, wire::Access::ReadWrite)
}

#[test]
fn watch_follows_changes_across_a_server_restart() {
    use ublk_host::client::discovery::Watch;
    use ublk_host::client::ClientConfig;

    within(Duration::from_secs(60), || {
        let setup = real_array();
        let server = setup.serve(any_loopback_port(), 1);
        let addr = server.local_addr();
        let mut config = ClientConfig::new(addr.to_string(), "h1", setup.secret.clone());
        config.handshake_timeout = Duration::from_secs(2);
        let mut watch = Watch::open(&config, Duration::from_secs(10)).unwrap();
        let names = |list: &ublk_host::client::PartitionList| -> Vec<String> {
            let mut names: Vec<_> = list.partitions.iter().map(|p| p.name.clone()).collect();
            names.sort();
            names
        };
        assert_eq!(names(&watch.next_list().unwrap()), ["vol"]);

        let (lists, received) = std::sync::mpsc::channel();
        let watcher = std::thread::spawn(move || {
            for _ in 0..2 {
                let list = watch.next_list().unwrap();
                lists.send(list).unwrap();
            }
        });
        // The server goes away; while it is down, a partition is assigned to h1.
        server.stop();
        let array = &setup.array;
        let size = PARTITION_SIZE;
        array.create_partition("vol2", size, false).unwrap();
        array.assign("h1", "vol2", wire::Access::ReadOnly).unwrap();
        let server = setup.serve(addr, 1);
        let after_restart = received.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(names(&after_restart), ["vol", "vol2"]);
        // The reconnected watch also gets the next live push.
        array.create_partition("vol3", size, false).unwrap();
        array.assign("h1", "vol3", wire::Access::ReadWrite).unwrap();
        let pushed = received.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(names(&pushed), ["vol", "vol2", "vol3"]);
        assert!(pushed.generation > after_restart.generation);
        watcher.join().unwrap();
        server.stop();
    });
}

#[test]
fn watch_gives_up_when_the_restarted_server_refuses_the_host() {
    use ublk_host::client::discovery::Watch;
    use ublk_host::client::ClientConfig;

    within(Duration::from_secs(60), || {
        let setup = real_array();
        let server = setup.serve(any_loopback_port(), 1);
        let addr = server.local_addr();
        let config = ClientConfig::new(addr.to_string(), "h1", setup.secret.clone());
        let mut watch = Watch::open(&config, Duration::from_secs(10)).unwrap();
        watch.next_list().unwrap();
        server.stop();
        setup.array.delete_host_forced("h1").unwrap();
        let server = setup.serve(addr, 1);
        let error = watch.next_list().unwrap_err();
        assert!(
            matches!(error, HostError::Wire(wire::WireError::Refused { .. })),
            "{error}"
        );
        server.stop();
    });
}

/// `ublk-host discover --watch` (the binary) goes on printing after a server restart.
#[test]
fn discover_watch_command_survives_a_server_restart() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    within(Duration::from_secs(60), || {
        let setup = real_array();
        let server = setup.serve(any_loopback_port(), 1);
        let addr = server.local_addr();
        let key = setup.dir().join("h1.key");
        std::fs::write(&key, hex::encode(setup.secret.0)).unwrap();
        // Secret files others can read are refused, as ssh refuses open keys.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ublk-host"))
            .args(["discover", "--watch", "--host", "h1", "--server"])
            .arg(addr.to_string())
            .arg("--secret-file")
            .arg(&key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let heading = |count: usize| {
            let want = format!(": {count} partition(s)");
            loop {
                let line = received.recv_timeout(Duration::from_secs(30)).unwrap();
                if line.starts_with("generation ") && line.ends_with(&want) {
                    return;
                }
            }
        };
        heading(1);
        server.stop();
        let size = PARTITION_SIZE;
        setup.array.create_partition("vol2", size, false).unwrap();
        setup
            .array
            .assign("h1", "vol2", wire::Access::ReadWrite)
            .unwrap();
        let server = setup.serve(addr, 1);
        heading(2);
        assert!(child.try_wait().unwrap().is_none(), "the watch exited");
        child.kill().unwrap();
        child.wait().unwrap();
        server.stop();
    });
}

/// A server that answers the hello with a frame prefix announcing a large head, then
/// trickles it one byte per `gap` (each byte well within the handshake deadline); returns
/// its address. It stops when the client hangs up.
fn trickling_server(gap: Duration) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut hello = [0u8; 4096];
        let _ = stream.read(&mut hello);
        let mut prefix = 60_000u32.to_le_bytes().to_vec();
        prefix.extend_from_slice(&0u32.to_le_bytes());
        if stream.write_all(&prefix).is_err() {
            return;
        }
        while stream.write_all(&[0]).is_ok() {
            std::thread::sleep(gap);
        }
    });
    addr
}

#[test]
fn the_handshake_deadline_holds_against_a_trickling_server() {
    within(Duration::from_secs(30), || {
        let addr = trickling_server(Duration::from_millis(100));
        let mut config = ublk_host::client::ClientConfig::new(addr, "host-a", secret());
        config.handshake_timeout = Duration::from_millis(800);
        let started = std::time::Instant::now();
        let error = Discovery::open(&config).unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(error, HostError::HandshakeTimeout { .. }),
            "{error}"
        );
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    });
}

#[test]
fn an_unsolicited_pong_is_a_protocol_error() {
    within(Duration::from_secs(30), || {
        let mut options = Options::new(partition(1 << 20, Access::ReadWrite));
        options.pongs_before_list = 3;
        let server = FakeServer::start(options);
        let mut discovery = Discovery::open(&server.client(secret())).unwrap();
        let error = discovery.list().unwrap_err();
        assert!(matches!(error, HostError::Protocol(_)), "{error}");
    });
}

#[test]
fn the_list_has_one_deadline_against_a_trickling_server() {
    within(Duration::from_secs(60), || {
        let mut options = Options::new(partition(1 << 20, Access::ReadWrite));
        options.trickle_list = Some(Duration::from_millis(200));
        let server = FakeServer::start(options);
        let config = server.client(secret());
        let mut discovery = Discovery::open(&config).unwrap();
        let started = std::time::Instant::now();
        assert!(discovery.list().is_err(), "the list trickles for ~20 s");
        let waited = started.elapsed();
        assert!(
            waited < config.handshake_timeout + Duration::from_secs(1),
            "{waited:?}"
        );
    });
}

/// Partitions no server can describe: each with what makes it impossible.
fn impossible_partitions() -> Vec<(&'static str, wire::PartitionInfo)> {
    let good = partition(1 << 20, Access::ReadWrite);
    let with = |edit: fn(&mut wire::PartitionInfo)| {
        let mut bad = good.clone();
        edit(&mut bad);
        bad
    };
    vec![
        ("block size 0", with(|p| p.block_size = 0)),
        ("block size 3", with(|p| p.block_size = 3)),
        ("block size 256", with(|p| p.block_size = 256)),
        ("block size 2 GiB", with(|p| p.block_size = 1 << 31)),
        ("size not whole blocks", with(|p| p.size += 100)),
        ("chunk 0", with(|p| p.chunk_size = 0)),
        ("chunk not a power of two", with(|p| p.chunk_size = 3 << 12)),
        ("no disks", with(|p| p.stripe_disks = 0)),
    ]
}

#[test]
fn a_partition_no_server_can_describe_is_refused_in_the_list_and_the_welcome() {
    within(Duration::from_secs(60), || {
        for (why, bad) in impossible_partitions() {
            let server = FakeServer::start(Options::new(bad.clone()));
            let config = server.client(secret());
            let mut discovery = Discovery::open(&config).unwrap();
            let error = discovery.list().expect_err(why).to_string();
            assert!(error.contains("vol0"), "{why}: {error}");
            let engine = ublk_host::client::EngineConfig::new(config);
            let opened = ublk_host::client::run_queue_thread(&engine, &bad, 0, |_| async {});
            assert!(opened.is_err(), "{why}: a data lane took it");
        }
    });
}
