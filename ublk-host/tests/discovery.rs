//! Discovery against the fake server: the list, and live pushes.

mod common;

use std::time::Duration;

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
