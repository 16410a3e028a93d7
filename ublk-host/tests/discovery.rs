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
