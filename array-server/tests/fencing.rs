//! Fencing of data lanes: a connection that replaces another (same host, partition, queue
//! and lane, newer epoch) is welcomed only after the old one is closed and everything it
//! admitted finished, so the old connection's bytes can never land afterwards; an epoch
//! that is not newer is refused `Stale`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use common::*;
use wire::frame;
use wire::{Op, Purpose, RefusedCode, Request, Status, WireError};

const BLOCK: usize = 4096;

fn lane(partition: u32, queue: u16, epoch: u64) -> Purpose {
    Purpose::Data {
        partition,
        queue,
        lane: 0,
        epoch,
    }
}

fn connect(addr: SocketAddr, secret: &str, purpose: Purpose) -> Result<Client, WireError> {
    Client::connect(addr, "h", secret, purpose).map_err(ConnectError::wire)
}

fn refusal(outcome: Result<Client, WireError>) -> RefusedCode {
    match outcome {
        Err(WireError::Refused { code, .. }) => code,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got a Welcome"),
    }
}

#[test]
fn a_stalled_write_of_a_replaced_connection_never_lands() {
    let rig = assigned(2, 1 << 20);
    let server = serve(rig.array);
    let addr = server.local_addr();

    let mut old = connect(addr, &rig.secret, lane(rig.partition.id, 0, 10)).unwrap();
    // A write whose payload stops halfway: the server admits it and waits for the rest.
    let stale = vec![0xee; BLOCK];
    let request = Request {
        tag: 1,
        op: Op::Write,
        offset: 0,
        len: BLOCK as u32,
        flags: 0,
    };
    let mut head = Vec::new();
    frame::encode_head(&request, BLOCK as u32, &mut head).unwrap();
    old.stream.write_all(&head).unwrap();
    old.stream.write_all(&stale[..BLOCK / 2]).unwrap();
    let sessions = server.sessions().clone();
    eventually("the write to be admitted", || {
        sessions
            .list()
            .iter()
            .any(|s| s.admitted.load(Ordering::Acquire) == 1)
    });

    // The host replaces the lane; the Welcome comes only once the old one is fenced.
    let mut new = connect(addr, &rig.secret, lane(rig.partition.id, 0, 11)).unwrap();
    let live = sessions.list();
    assert_eq!(live.len(), 1, "the old session left the registry");
    assert!(matches!(live[0].purpose, Purpose::Data { epoch: 11, .. }));

    // The rest of the stale payload arrives late: it must never be applied.
    let _ = old.stream.write_all(&stale[BLOCK / 2..]);
    assert!(old.recv_reply().is_err(), "the old connection is closed");
    assert!(new.read_ok(0, BLOCK as u32).iter().all(|&b| b == 0));

    // The reissued write on the new connection is what lands.
    let fresh = pattern(3, BLOCK);
    assert_eq!(new.write(0, &fresh), Status::Ok);
    assert_eq!(new.read_ok(0, BLOCK as u32), fresh);
}

#[test]
fn an_epoch_not_newer_than_the_live_one_is_stale() {
    let rig = assigned(1, 1 << 20);
    let server = serve(rig.array);
    let addr = server.local_addr();

    let mut live = connect(addr, &rig.secret, lane(rig.partition.id, 0, 50)).unwrap();
    assert_eq!(
        refusal(connect(addr, &rig.secret, lane(rig.partition.id, 0, 50))),
        RefusedCode::Stale
    );
    assert_eq!(
        refusal(connect(addr, &rig.secret, lane(rig.partition.id, 0, 49))),
        RefusedCode::Stale
    );
    assert_eq!(
        live.write(0, &[1; BLOCK]),
        Status::Ok,
        "the live lane is untouched"
    );
    // Another queue's lane is another lane.
    let mut other = connect(addr, &rig.secret, lane(rig.partition.id, 1, 1)).unwrap();
    assert_eq!(other.read_ok(0, BLOCK as u32), vec![1; BLOCK]);
    // After the live one is gone, an older epoch is still stale: a newer one existed.
    drop(live);
    let sessions = server.sessions().clone();
    eventually("the lane to close", || sessions.list().len() == 1);
    assert_eq!(
        refusal(connect(addr, &rig.secret, lane(rig.partition.id, 0, 40))),
        RefusedCode::Stale
    );
    connect(addr, &rig.secret, lane(rig.partition.id, 0, 51)).unwrap();
}

#[test]
fn an_epoch_far_ahead_of_the_clock_is_refused_and_does_not_lock_the_lane() {
    let rig = assigned(1, 1 << 20);
    let server = serve(rig.array);
    let addr = server.local_addr();
    let error = connect(addr, &rig.secret, lane(rig.partition.id, 0, u64::MAX))
        .err()
        .expect("an epoch years ahead");
    let WireError::Refused { code, message } = error else {
        panic!("expected a refusal, got {error:?}");
    };
    assert_eq!(code, RefusedCode::BadHello);
    assert!(message.contains("ahead of the server's clock"), "{message}");
    // Not recorded: the lane's next ordinary epoch is welcome.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    connect(addr, &rig.secret, lane(rig.partition.id, 0, now_ns)).unwrap();
}

#[test]
fn replacing_an_idle_lane_is_immediate_and_closes_it() {
    let rig = assigned(1, 1 << 20);
    let server = serve(rig.array);
    let addr = server.local_addr();
    let mut old = connect(addr, &rig.secret, lane(rig.partition.id, 0, 5)).unwrap();
    let mut new = connect(addr, &rig.secret, lane(rig.partition.id, 0, 6)).unwrap();
    assert!(old.closed_by_server(), "the replaced lane is closed");
    assert_eq!(new.write(0, &[2; BLOCK]), Status::Ok);
    assert_eq!(server.sessions().list().len(), 1);
}
