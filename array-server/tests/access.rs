//! Authentication, authorisation, revocation, discovery pushes and the sessions registry.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use array_server::Error;
use common::*;
use wire::frame::{self, Limits};
use wire::libc_errno::EROFS;
use wire::{
    ClientHandshake, ControlEvent, ControlRequest, HelloReply, ProofReply, Purpose, RefusedCode,
    Secret, Status, WireError,
};

fn refused_code(error: WireError) -> (RefusedCode, String) {
    match error {
        WireError::Refused { code, message } => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn read_only_assignment_gets_erofs_on_writes() {
    let disks = temp_disks(1, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", 1 << 20, true).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", wire::Access::ReadOnly).unwrap();
    let server = serve(array);
    let mut client = Client::data(server.local_addr(), "h", &secret, p.id);
    assert_eq!(
        client.welcome.partition.as_ref().unwrap().access,
        wire::Access::ReadOnly
    );
    assert_eq!(client.write(0, &[1u8; 4096]), Status::Errno(EROFS));
    for op in [wire::Op::Discard, wire::Op::WriteZeroes] {
        assert_eq!(client.call(op, 0, 4096, 0, &[]).0, Status::Errno(EROFS));
    }
    assert_eq!(client.read(0, 4096).0, Status::Ok);
}

#[test]
fn unassigned_partition_is_refused_not_assigned() {
    let disks = temp_disks(1, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", 1 << 20, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    let server = serve(array);
    let error = Client::connect(
        server.local_addr(),
        "h",
        &secret,
        Purpose::Data {
            partition: p.id,
            queue: 0,
            lane: 0,
            epoch: 1,
        },
    )
    .err()
    .expect("refused")
    .wire();
    assert_eq!(refused_code(error).0, RefusedCode::NotAssigned);
    assert_eq!(server.stats().refused_not_assigned, 1);
}

#[test]
fn shared_partition_hosts_see_each_others_writes_and_private_refuses_a_second() {
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let shared = array.create_partition("shared", 1 << 20, true).unwrap();
    array.create_partition("private", 1 << 20, false).unwrap();
    let one = array.create_host("one").unwrap().secret;
    let two = array.create_host("two").unwrap().secret;
    array
        .assign("one", "shared", wire::Access::ReadWrite)
        .unwrap();
    array
        .assign("two", "shared", wire::Access::ReadWrite)
        .unwrap();
    array
        .assign("one", "private", wire::Access::ReadWrite)
        .unwrap();
    assert!(matches!(
        array.assign("two", "private", wire::Access::ReadWrite),
        Err(Error::PrivatePartitionTaken { .. })
    ));
    let server = serve(array);
    let mut lane_one = Client::data(server.local_addr(), "one", &one, shared.id);
    let mut lane_two = Client::data(server.local_addr(), "two", &two, shared.id);
    assert!(lane_one.welcome.partition.as_ref().unwrap().shared);
    let from_one = pattern(1, 8192);
    let from_two = pattern(2, 8192);
    assert_eq!(lane_one.write(0, &from_one), Status::Ok);
    assert_eq!(lane_two.write(8192, &from_two), Status::Ok);
    assert_eq!(lane_two.read_ok(0, 8192), from_one);
    assert_eq!(lane_one.read_ok(8192, 8192), from_two);
}

#[test]
fn wrong_secret_unknown_host_and_replayed_proof_get_the_same_refusal() {
    let disks = temp_disks(1, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let secret = array.create_host("h").unwrap().secret;
    let server = serve(array);
    let addr = server.local_addr();
    let wrong = Secret([9u8; 32]).to_hex();
    let wrong_secret = refused_code(
        Client::connect(addr, "h", &wrong, Purpose::Control)
            .err()
            .unwrap()
            .wire(),
    );
    let unknown_host = refused_code(
        Client::connect(addr, "ghost", &secret, Purpose::Control)
            .err()
            .unwrap()
            .wire(),
    );

    // Capture a valid proof on one connection, replay it on another.
    let secret_bytes = Secret::from_hex(&secret).unwrap();
    let mut first = open_stream(addr);
    let (mut handshake, hello) =
        ClientHandshake::new("h", secret_bytes, Purpose::Control, nonce()).unwrap();
    first
        .write_all(&frame::encode_message(&hello).unwrap())
        .unwrap();
    let (_, header, _) = read_frame(&mut first, Limits::HANDSHAKE).unwrap();
    let reply: HelloReply = frame::decode_header(&header, "HelloReply").unwrap();
    let captured = handshake.on_hello_reply(reply).unwrap();
    let mut second = open_stream(addr);
    second
        .write_all(&frame::encode_message(&hello).unwrap())
        .unwrap();
    read_frame(&mut second, Limits::HANDSHAKE).unwrap();
    second
        .write_all(&frame::encode_message(&captured).unwrap())
        .unwrap();
    let (_, header, _) = read_frame(&mut second, Limits::HANDSHAKE).unwrap();
    let replayed = match frame::decode_header::<ProofReply>(&header, "ProofReply").unwrap() {
        ProofReply::Refused(refused) => (refused.code, refused.message),
        ProofReply::Welcome(_) => panic!("a replayed proof was accepted"),
    };
    assert_eq!(wrong_secret.0, RefusedCode::Authentication);
    assert_eq!(wrong_secret, unknown_host);
    assert_eq!(wrong_secret, replayed);
    assert!(
        wrong_secret.1.contains("unknown host or wrong secret"),
        "{}",
        wrong_secret.1
    );
    assert_eq!(server.stats().failed_authentications, 3);
}

#[test]
fn unassign_revokes_open_lanes_and_pushes_the_list() {
    let rig = assigned(2, 1 << 20);
    let server = serve(rig.array.clone());
    let mut control = Client::control(server.local_addr(), "h", &rig.secret);
    assert_eq!(control.list().len(), 1);
    let mut lane = Client::data(server.local_addr(), "h", &rig.secret, rig.partition.id);
    assert_eq!(lane.write(0, &[7u8; 4096]), Status::Ok);

    let unassigned_at = Instant::now();
    rig.array.unassign("h", "p").unwrap();
    match control.recv_event().expect("pushed list") {
        ControlEvent::Partitions { partitions, .. } => assert!(partitions.is_empty()),
        other => panic!("expected Partitions, got {other:?}"),
    }
    assert!(
        unassigned_at.elapsed() < Duration::from_secs(1),
        "push took {:?}",
        unassigned_at.elapsed()
    );
    // The server closes a revoked lane at once, idle or not, so the admin page stops
    // listing it; a request racing the close is answered EACCES before the close.
    assert!(lane.closed_by_server());

    // Assigning again is pushed too, and the control session still answers pings.
    rig.array.assign("h", "p", wire::Access::ReadOnly).unwrap();
    match control.recv_event().expect("pushed list") {
        ControlEvent::Partitions { partitions, .. } => {
            assert_eq!(partitions[0].access, wire::Access::ReadOnly)
        }
        other => panic!("expected Partitions, got {other:?}"),
    }
    control.send_control(&ControlRequest::Ping(42));
    assert_eq!(control.recv_event().unwrap(), ControlEvent::Pong(42));
}

#[test]
fn control_lists_exactly_the_hosts_partitions() {
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    array.create_partition("mine", 1 << 20, false).unwrap();
    array.create_partition("theirs", 1 << 20, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.create_host("other").unwrap();
    array.assign("h", "mine", wire::Access::ReadWrite).unwrap();
    array
        .assign("other", "theirs", wire::Access::ReadWrite)
        .unwrap();
    let server = serve(array);
    let mut control = Client::control(server.local_addr(), "h", &secret);
    let list = control.list();
    assert_eq!(list.len(), 1);
    let info = &list[0];
    assert_eq!(info.name, "mine");
    assert_eq!(info.block_size, 512);
    assert_eq!(u64::from(info.chunk_size), CHUNK);
    assert_eq!(info.stripe_disks, 2);
    assert_eq!(info.features, wire::Features::ALL);
    assert!(!info.shared);
}

#[test]
fn sessions_registry_counts_lanes_and_their_requests() {
    let rig = assigned(2, 1 << 20);
    let server = serve(rig.array);
    let mut lanes: Vec<Client> = (0..4u16)
        .map(|i| {
            Client::lane(
                server.local_addr(),
                "h",
                &rig.secret,
                rig.partition.id,
                i / 2,
                i % 2,
            )
        })
        .collect();
    assert_eq!(server.sessions().data_lanes("h", rig.partition.id).len(), 4);
    for (i, lane) in lanes.iter_mut().enumerate() {
        for _ in 0..=i {
            assert_eq!(lane.write(0, &[1u8; 4096]), Status::Ok);
        }
    }
    let mut per_lane: Vec<(Purpose, u64, u64)> = server
        .sessions()
        .data_lanes("h", rig.partition.id)
        .iter()
        .map(|s| {
            let counters = s.counters.snapshot();
            (s.purpose, counters.ops(), counters.write_bytes)
        })
        .collect();
    per_lane.sort_by_key(|(_, ops, _)| *ops);
    assert_eq!(
        per_lane.iter().map(|(_, ops, _)| *ops).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(per_lane[3].2, 4 * 4096);
    let views = server.sessions().views();
    assert!(serde_json::to_string(&views)
        .unwrap()
        .contains("\"host\":\"h\""));
    drop(lanes);
    eventually("lanes to leave the registry", || {
        server
            .sessions()
            .data_lanes("h", rig.partition.id)
            .is_empty()
    });
}

#[test]
fn connections_beyond_the_cap_are_refused_busy() {
    let disks = temp_disks(1, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let secret = array.create_host("h").unwrap().secret;
    let config = array_server::net::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        max_connections: 1,
        ..Default::default()
    };
    let server = array_server::net::start(array, config).unwrap();
    let _first = Client::control(server.local_addr(), "h", &secret);
    let error = Client::connect(server.local_addr(), "h", &secret, Purpose::Control)
        .err()
        .unwrap()
        .wire();
    assert_eq!(refused_code(error).0, RefusedCode::Busy);
}

/// Space a deleted partition held reads back as zeroes for its next owner, and a partition
/// grown in place over such space keeps its own data and gains zeroes only.
#[test]
fn reused_space_reads_as_zeroes_never_another_tenants_data() {
    // Whole stripes (3 disks of `CHUNK`), so that sizes are not rounded up.
    const SIZE: u64 = 6 * 3 * CHUNK;
    let disks = temp_disks(3, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let old = array.create_partition("old", SIZE, false).unwrap();
    let kept = array.create_partition("kept", SIZE, false).unwrap();
    let next_to_kept = array.create_partition("next-to-kept", SIZE, false).unwrap();
    let first = array.create_host("first").unwrap().secret;
    let second = array.create_host("second").unwrap().secret;
    for name in ["old", "kept", "next-to-kept"] {
        array
            .assign("first", name, wire::Access::ReadWrite)
            .unwrap();
    }
    let server = serve(array.clone());
    let addr = server.local_addr();
    let written = pattern(21, SIZE as usize);
    for id in [old.id, kept.id, next_to_kept.id] {
        let mut lane = Client::data(addr, "first", &first, id);
        assert_eq!(lane.write_fua(0, &written), Status::Ok);
    }
    array.delete_partition_forced("old").unwrap();
    array.delete_partition_forced("next-to-kept").unwrap();

    let new = array.create_partition("new", SIZE, false).unwrap();
    array
        .assign("second", "new", wire::Access::ReadWrite)
        .unwrap();
    let mut lane = Client::data(addr, "second", &second, new.id);
    let zeroes = |data: Vec<u8>| data.iter().all(|&byte| byte == 0);
    assert!(
        zeroes(lane.read_ok(0, SIZE as u32)),
        "the new partition shows the deleted one's data"
    );

    let grown = array.grow_partition("kept", 2 * SIZE).unwrap();
    assert_eq!(grown.size, 2 * SIZE);
    let mut lane = Client::data(addr, "first", &first, kept.id);
    assert!(
        lane.read_ok(0, SIZE as u32) == written,
        "the partition's own data"
    );
    assert!(
        zeroes(lane.read_ok(SIZE, SIZE as u32)),
        "the grown part shows the deleted neighbour's data"
    );
}

/// A second server on an address a server already listens on fails to start, instead of
/// sharing the port through `SO_REUSEPORT` and taking some of the hosts' connections.
#[test]
fn a_second_server_on_a_busy_address_fails_to_start() {
    let first_disks = temp_disks(1, DISK_SIZE);
    let first = serve(format(&first_disks, CHUNK));
    let second_disks = temp_disks(1, DISK_SIZE);
    let config = array_server::net::ServerConfig {
        listen: first.local_addr(),
        ..array_server::net::ServerConfig::default()
    };
    let Err(error) = array_server::net::start(format(&second_disks, CHUNK), config) else {
        panic!("the second server must not start");
    };
    assert!(error.to_string().contains("in use"), "{error}");
}

/// One host cannot take every place: past `max_host_connections` its hellos are refused
/// `Busy`, another host still connects, and a lane reconnecting (replacing its own older
/// connection) still does.
#[test]
fn one_host_cannot_take_every_connection() {
    const LIMIT: usize = 3;
    let disks = temp_disks(1, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", 1 << 20, false).unwrap();
    let greedy = array.create_host("greedy").unwrap().secret;
    let other = array.create_host("other").unwrap().secret;
    array
        .assign("greedy", "p", wire::Access::ReadWrite)
        .unwrap();
    let config = array_server::net::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_host_connections: LIMIT,
        ..array_server::net::ServerConfig::default()
    };
    let server = array_server::net::start(array, config).unwrap();
    let addr = server.local_addr();
    let lane = |epoch| Purpose::Data {
        partition: p.id,
        queue: 0,
        lane: 0,
        epoch,
    };
    let _held: Vec<Client> = (0..LIMIT - 1)
        .map(|_| Client::control(addr, "greedy", &greedy))
        .collect();
    let _data = Client::connect(addr, "greedy", &greedy, lane(10)).unwrap();
    let error = Client::connect(addr, "greedy", &greedy, Purpose::Control)
        .err()
        .expect("a connection past the host's limit")
        .wire();
    let (code, message) = refused_code(error);
    assert_eq!(code, RefusedCode::Busy);
    assert!(message.contains("host at its limit of 3"), "{message}");
    Client::control(addr, "other", &other);
    Client::connect(addr, "greedy", &greedy, lane(11)).expect("a lane replacing its own");
}
