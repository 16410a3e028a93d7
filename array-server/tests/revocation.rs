//! A revoked lane never touches the disks again once the revocation call has returned,
//! in both storage engines (mapped RAM-backed member files on tmpfs; O_DIRECT io_uring on
//! a disk-backed file system): the races are driven step by step, not by timing.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use array_server::Array;
use common::probe::{wait_server_consumed, wait_server_received};
use common::*;
use wire::frame::{self, Limits};
use wire::{Access, Op, Request, Status};

/// Size of the partition each host gets.
const PART: u64 = 4 << 20;
/// Bytes of the stalled write.
const WRITE_LEN: usize = 256 << 10;
/// Read size of the client that stops reading.
const READ_LEN: u32 = 1 << 20;
/// Reads sent by the client that stops reading: far more reply bytes than the socket
/// buffers of both ends hold.
const READS: u32 = 48;
/// How soon a revoked lane must be gone from the registry without the client's help.
const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// Member disks on a disk-backed file system (the O_DIRECT io_uring engine).
fn real_disks(count: usize) -> Disks {
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir in /var/tmp");
    disks_in(dir, count, DISK_SIZE)
}

/// An array with partition "old" assigned to host "a"; returns a's secret.
fn setup(disks: &Disks) -> (std::sync::Arc<Array>, u32, String) {
    let array = format(disks, CHUNK);
    let old = array.create_partition("old", PART, false).unwrap();
    let secret = array.create_host("a").unwrap().secret;
    array.assign("a", "old", Access::ReadWrite).unwrap();
    (array, old.id, secret)
}

/// Deletes "old" by force, then gives host "b" a new partition on the same space and
/// fills it with `fill`; returns b's lane and the new partition's id.
fn hand_space_to_b(
    array: &Array,
    server: &array_server::net::RunningServer,
    fill: &[u8],
) -> (Client, u32) {
    let old_extents = array.partition("old").unwrap().extents;
    array.delete_partition_forced("old").unwrap();
    let new = array.create_partition("new", PART, false).unwrap();
    assert_eq!(
        new.extents, old_extents,
        "the new partition reuses the space"
    );
    let secret = array.create_host("b").unwrap().secret;
    array.assign("b", "new", Access::ReadWrite).unwrap();
    let mut b = Client::data(server.local_addr(), "b", &secret, new.id);
    assert_eq!(b.write_fua(0, fill), Status::Ok);
    (b, new.id)
}

fn write_header(tag: u32, offset: u64, len: usize) -> Vec<u8> {
    let request = Request {
        tag,
        op: Op::Write,
        offset,
        len: len as u32,
        flags: wire::FLAG_FUA,
    };
    let mut bytes = Vec::new();
    frame::encode_head(&request, len as u32, &mut bytes).unwrap();
    bytes
}

/// Host a writes `before` over its partition, then sends [`READS`] reads and never reads
/// the replies, until the server's writer is stuck on a full socket (a queued `Close`
/// would wait behind them). Returns the registry's session of a's lane.
fn stop_reading(
    a: &mut Client,
    server: &array_server::net::RunningServer,
    old: u32,
    before: &[u8],
) -> std::sync::Arc<array_server::net::Session> {
    assert_eq!(a.write_fua(0, before), Status::Ok);
    let requests = read_heads(READS, READ_LEN, (PART / u64::from(READ_LEN)) as u32);
    a.stream.write_all(&requests).unwrap();
    wait_server_consumed(&a.stream);
    let lane = server
        .sessions()
        .data_lanes("a", old)
        .pop()
        .expect("a's lane");
    eventually("the server to run reads until the socket is full", || {
        lane.counters.snapshot().reads >= u64::from(READS) / 4
    });
    lane
}

/// Host a (whose replies are stuck, see [`stop_reading`]) sends a write's header and part
/// of its payload, and stalls; its partition is deleted and the space given to host b,
/// who fills it; then a sends the rest of the payload. b's data must be untouched.
fn stalled_write_payload(disks: Disks) {
    let (array, old, secret) = setup(&disks);
    let server = serve(array.clone());
    let mut a = Client::data(server.local_addr(), "a", &secret, old);
    let lane = stop_reading(&mut a, &server, old, &pattern(3, PART as usize));
    let payload = pattern(1, WRITE_LEN);
    let (first, rest) = payload.split_at(WRITE_LEN / 4);
    let (second, third) = rest.split_at(WRITE_LEN / 4);
    let mut head_and_first = write_header(READS, 0, WRITE_LEN);
    head_and_first.extend_from_slice(first);
    a.stream.write_all(&head_and_first).unwrap();
    // The server took the header (what it reads now is payload), so the write is
    // admitted and waiting for the rest of its bytes; with the payload this large the
    // server leaves the bytes that came so far in its socket until all have arrived.
    wait_server_received(&a.stream, first.len() as u64);
    a.stream.write_all(second).unwrap();
    wait_server_received(&a.stream, (first.len() + second.len()) as u64);

    let fill = pattern(2, PART as usize);
    let (mut b, _) = hand_space_to_b(&array, &server, &fill);
    // The rest of a's payload; the server may already have reset the connection.
    let _ = a.stream.write_all(third);
    eventually("a's write to run or its lane to close", || {
        lane.counters.snapshot().writes >= 2 || server.sessions().data_lanes("a", old).is_empty()
    });
    assert_eq!(lane.counters.snapshot().writes, 1, "the revoked write ran");
    let back = b.read_ok(0, WRITE_LEN as u32);
    assert!(
        back == fill[..WRITE_LEN],
        "host b's data was overwritten by revoked host a"
    );
    assert_eq!(b.read_ok(0, PART as u32), fill);
}

/// Host a stops reading replies (see [`stop_reading`]); a's partition is deleted and the
/// space given to b. a's lane must be closed within a bound while a still does not read,
/// and whatever a then reads is old data, never b's.
fn reader_that_stops_reading(disks: Disks) {
    let (array, old, secret) = setup(&disks);
    let server = serve(array.clone());
    let mut a = Client::data(server.local_addr(), "a", &secret, old);
    let before = pattern(3, PART as usize);
    stop_reading(&mut a, &server, old, &before);
    let blocks = (PART / u64::from(READ_LEN)) as u32;

    let fill = pattern(4, PART as usize);
    let revoked_at = Instant::now();
    let (_b, _) = hand_space_to_b(&array, &server, &fill);
    eventually("a's revoked lane to close", || {
        server.sessions().data_lanes("a", old).is_empty()
    });
    assert!(
        revoked_at.elapsed() < CLOSE_BOUND,
        "a's lane took {:?} to close",
        revoked_at.elapsed()
    );

    // Whatever reached a is old data: every complete read reply matches what a wrote.
    let limits = Limits::data(a.welcome.max_io);
    let mut replies = 0;
    while let Ok((prefix, header, data)) = read_frame(&mut a.stream, limits) {
        let reply = frame::decode_reply(&header, prefix).unwrap();
        if reply.status != Status::Ok || reply.len == 0 {
            continue;
        }
        let offset = (reply.tag % blocks) as usize * READ_LEN as usize;
        assert!(
            data == before[offset..offset + READ_LEN as usize],
            "reply {} carried data a never wrote (host b's?)",
            reply.tag
        );
        replies += 1;
    }
    assert!(
        replies < READS,
        "every read was answered although a was revoked"
    );
    let mut rest = Vec::new();
    let _ = a.stream.read_to_end(&mut rest);
}

#[test]
fn stalled_write_payload_cannot_reach_new_partition_mapped() {
    if let Some(disks) = ram_disks(2) {
        stalled_write_payload(disks);
    }
}

#[test]
fn stalled_write_payload_cannot_reach_new_partition_direct() {
    stalled_write_payload(real_disks(2));
}

#[test]
fn revoked_reader_that_stops_reading_is_closed_mapped() {
    if let Some(disks) = ram_disks(2) {
        reader_that_stops_reading(disks);
    }
}

#[test]
fn revoked_reader_that_stops_reading_is_closed_direct() {
    reader_that_stops_reading(real_disks(2));
}
