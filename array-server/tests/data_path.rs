//! Data written through the server reads back byte for byte, across chunk, disk and
//! extent boundaries; partitions are isolated; FUA and FLUSH reach the disks.

mod common;

use std::os::unix::fs::FileExt;

use array_server::array::stripe::StripeMap;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use wire::{Access, Op, Status};

const SECTOR: u64 = 512;

fn round_trip_on(disk_count: usize) {
    round_trip(temp_disks(disk_count, DISK_SIZE));
}

#[test]
fn round_trip_on_ram_disks() {
    if let Some(disks) = ram_disks(3) {
        round_trip(disks);
    }
}

#[test]
fn discard_and_write_zeroes_on_ram_disks() {
    if let Some(disks) = ram_disks(2) {
        discard_and_write_zeroes(disks);
    }
}

fn round_trip(disks: Disks) {
    let array = format(&disks, CHUNK);
    let partition = array.create_partition("p", 12 << 20, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", Access::ReadWrite).unwrap();
    let server = serve(array);
    let client = std::cell::RefCell::new(Client::data(
        server.local_addr(),
        "h",
        &secret,
        partition.id,
    ));
    let size = client.borrow().welcome.partition.as_ref().unwrap().size;
    assert_eq!(size, partition.size);

    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let max_sectors = (4 << 20) / SECTOR;
    let strategy = (0..size / SECTOR, 1..=max_sectors, any::<u64>());
    runner
        .run(&strategy, |(start, sectors, seed)| {
            let len = (sectors * SECTOR).min(size - start * SECTOR).max(SECTOR);
            let offset = (size - len).min(start * SECTOR);
            let data = pattern(seed, len as usize);
            let mut client = client.borrow_mut();
            prop_assert_eq!(client.write(offset, &data), Status::Ok);
            let back = client.read_ok(offset, len as u32);
            prop_assert!(back == data, "mismatch at {}+{}", offset, len);
            Ok(())
        })
        .unwrap();
}

#[test]
fn round_trip_one_disk() {
    round_trip_on(1);
}

#[test]
fn round_trip_two_disks() {
    round_trip_on(2);
}

#[test]
fn round_trip_three_disks() {
    round_trip_on(3);
}

#[test]
fn bytes_land_where_the_stripe_map_says() {
    let rig = assigned(3, 3 * CHUNK * 4);
    let logical_start = rig.partition.extents[0].start;
    let server = serve(rig.array.clone());
    let mut client = Client::data(server.local_addr(), "h", &rig.secret, rig.partition.id);
    let data = pattern(7, (5 * CHUNK + 1024) as usize);
    let offset = CHUNK / 2;
    assert_eq!(client.write_fua(offset, &data), Status::Ok);
    let map = StripeMap::new(CHUNK, 3);
    for piece in map.pieces(logical_start + offset, data.len() as u64) {
        let file = std::fs::File::open(&rig.disks.paths[piece.disk as usize]).unwrap();
        let mut on_disk = vec![0u8; piece.len as usize];
        file.read_exact_at(&mut on_disk, piece.disk_offset).unwrap();
        let from = (piece.logical - logical_start - offset) as usize;
        assert_eq!(on_disk, data[from..from + piece.len as usize]);
    }
}

#[test]
fn grown_partition_spans_extents() {
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let stripe = 2 * CHUNK;
    let p = array.create_partition("p", stripe, false).unwrap();
    array.create_partition("blocker", stripe, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", Access::ReadWrite).unwrap();
    let server = serve(array.clone());
    let mut client = Client::data(server.local_addr(), "h", &secret, p.id);
    let grown = array.grow_partition("p", 3 * stripe).unwrap();
    assert_eq!(grown.extents.len(), 2);
    // The lane sees the new size without reconnecting.
    let data = pattern(3, (2 * stripe) as usize);
    assert_eq!(client.write(stripe / 2, &data), Status::Ok);
    assert_eq!(client.read_ok(stripe / 2, data.len() as u32), data);
}

#[test]
fn partitions_never_see_each_others_data() {
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let a = array.create_partition("a", 1 << 20, false).unwrap();
    let b = array.create_partition("b", 1 << 20, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "a", Access::ReadWrite).unwrap();
    array.assign("h", "b", Access::ReadWrite).unwrap();
    let server = serve(array);
    let mut lane_a = Client::data(server.local_addr(), "h", &secret, a.id);
    let mut lane_b = Client::data(server.local_addr(), "h", &secret, b.id);
    let ones = vec![0x11u8; 1 << 20];
    let twos = vec![0x22u8; 1 << 20];
    assert_eq!(lane_a.write(0, &ones), Status::Ok);
    assert_eq!(lane_b.write(0, &twos), Status::Ok);
    assert_eq!(lane_a.read_ok(0, 1 << 20), ones);
    assert_eq!(lane_b.read_ok(0, 1 << 20), twos);
    // Past the end of a is not b.
    assert_eq!(
        lane_a.read(1 << 20, 512).0,
        Status::Errno(wire::libc_errno::EINVAL)
    );
}

#[test]
fn fua_and_flush_reach_the_files() {
    let rig = assigned(2, 1 << 20);
    let logical = rig.partition.extents[0].start;
    let server = serve(rig.array.clone());
    let mut client = Client::data(server.local_addr(), "h", &rig.secret, rig.partition.id);
    let data = pattern(11, 4096);
    assert_eq!(client.write_fua(0, &data), Status::Ok);
    let second = pattern(12, 4096);
    assert_eq!(client.write(CHUNK, &second), Status::Ok);
    assert_eq!(client.flush(), Status::Ok);
    drop(client);
    server.stop();
    drop(rig.array);
    let map = StripeMap::new(CHUNK, 2);
    for (offset, expected) in [(0, &data), (CHUNK, &second)] {
        let position = map.locate(logical + offset);
        let file = std::fs::File::open(&rig.disks.paths[position.disk as usize]).unwrap();
        let mut on_disk = vec![0u8; 4096];
        file.read_exact_at(&mut on_disk, position.offset).unwrap();
        assert_eq!(&on_disk, expected);
    }
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes() {
    discard_and_write_zeroes(temp_disks(2, DISK_SIZE));
}

fn discard_and_write_zeroes(disks: Disks) {
    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", 2 << 20, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", Access::ReadWrite).unwrap();
    let server = serve(array);
    let mut client = Client::data(server.local_addr(), "h", &secret, p.id);
    let data = pattern(5, 1 << 20);
    assert_eq!(client.write(0, &data), Status::Ok);
    let zeroed = (3 * CHUNK) as u32;
    assert_eq!(
        client.call(Op::WriteZeroes, 4096, zeroed, 0, &[]).0,
        Status::Ok
    );
    assert_eq!(
        client.call(Op::Discard, 512 << 10, zeroed, 0, &[]).0,
        Status::Ok
    );
    let back = client.read_ok(0, 1 << 20);
    let mut expected = data.clone();
    expected[4096..4096 + zeroed as usize].fill(0);
    expected[(512 << 10)..(512 << 10) + zeroed as usize].fill(0);
    assert_eq!(back, expected);
}

#[test]
fn many_requests_in_flight_complete_out_of_order() {
    let rig = assigned(3, 8 << 20);
    let server = serve(rig.array);
    let mut client = Client::data(server.local_addr(), "h", &rig.secret, rig.partition.id);
    let block = 128 << 10;
    let count = 64u32;
    for tag in 0..count {
        let data = pattern(u64::from(tag), block);
        let request = wire::Request {
            tag,
            op: Op::Write,
            offset: u64::from(tag) * block as u64,
            len: block as u32,
            flags: 0,
        };
        client.send_request(request, &data).unwrap();
    }
    let mut seen = vec![false; count as usize];
    for _ in 0..count {
        let (reply, _) = client.recv_reply().unwrap();
        assert_eq!(reply.status, Status::Ok);
        assert!(!std::mem::replace(&mut seen[reply.tag as usize], true));
    }
    for tag in 0..count {
        let request = wire::Request {
            tag,
            op: Op::Read,
            offset: u64::from(tag) * block as u64,
            len: block as u32,
            flags: 0,
        };
        client.send_request(request, &[]).unwrap();
    }
    for _ in 0..count {
        let (reply, data) = client.recv_reply().unwrap();
        assert_eq!(data, pattern(u64::from(reply.tag), block));
    }
}

/// On mapped disks a write's payload is received straight into the disks' pages, so a
/// refused write (read-only, out of range, misaligned) must be drained, not written: it
/// gets its errno, the bytes stay as they were, and the lane keeps its framing.
#[test]
fn refused_writes_on_ram_disks_do_not_touch_them() {
    let Some(disks) = ram_disks(3) else { return };
    let array = format(&disks, CHUNK);
    let size = 4 * 3 * CHUNK;
    let p = array.create_partition("p", size, true).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", Access::ReadWrite).unwrap();
    let ro = array.create_host("ro").unwrap().secret;
    array.assign("ro", "p", Access::ReadOnly).unwrap();
    let server = serve(array);
    let mut writer = Client::data(server.local_addr(), "h", &secret, p.id);
    let mut reader = Client::data(server.local_addr(), "ro", &ro, p.id);
    let before = pattern(11, size as usize);
    assert_eq!(writer.write(0, &before), Status::Ok);

    let payload = pattern(12, (3 * CHUNK) as usize);
    assert_eq!(
        reader.write(CHUNK / 2, &payload),
        Status::Errno(wire::libc_errno::EROFS)
    );
    assert_eq!(
        writer.write(size - CHUNK, &payload),
        Status::Errno(wire::libc_errno::EINVAL)
    );
    assert_eq!(
        writer.write(SECTOR / 2, &payload[..SECTOR as usize]),
        Status::Errno(wire::libc_errno::EINVAL)
    );
    assert_eq!(reader.read_ok(0, size as u32), before);
    // Both lanes still frame correctly, and an admitted write lands.
    assert_eq!(writer.write_fua(CHUNK / 2, &payload), Status::Ok);
    let back = reader.read_ok(CHUNK / 2, payload.len() as u32);
    assert!(back == payload);
}

/// Frames cut into pieces of a few bytes, with pauses, and many frames in one burst must
/// both be assembled whole, for writes received into mapped pages and into buffers: a
/// receive path that stops reading a socket with a burst still in it (as a readiness-based
/// receive that clears readiness after a full receive does) stalls here.
#[test]
fn frames_in_pieces_and_in_bursts_are_assembled() {
    trickled_and_burst(temp_disks(3, DISK_SIZE));
    if let Some(disks) = ram_disks(3) {
        trickled_and_burst(disks);
    }
}

fn trickled_and_burst(disks: Disks) {
    use std::io::Write;

    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", 4 << 20, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", Access::ReadWrite).unwrap();
    let server = serve(array);
    let mut client = Client::data(server.local_addr(), "h", &secret, p.id);
    let block = 96 << 10; // spans chunks, so a write lands in several mapped pieces
    let frame = |tag: u32, op: Op, data: &[u8]| {
        let request = wire::Request {
            tag,
            op,
            offset: u64::from(tag) * block as u64,
            len: block as u32,
            flags: 0,
        };
        let mut bytes = Vec::new();
        let payload_len = if op == Op::Write { block as u32 } else { 0 };
        wire::frame::encode_head(&request, payload_len, &mut bytes).unwrap();
        bytes.extend_from_slice(data);
        bytes
    };
    // Trickled: each write's frame in pieces of 1..=7 bytes for its head and first bytes,
    // the rest in 3 KiB pieces, each piece its own segment (TCP_NODELAY).
    for tag in 0..3u32 {
        let bytes = frame(tag, Op::Write, &pattern(u64::from(tag), block));
        let (head, rest) = bytes.split_at(64);
        for (i, piece) in head.chunks(1 + tag as usize * 3).enumerate() {
            client.stream.write_all(piece).unwrap();
            if i % 8 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        for piece in rest.chunks(3 << 10) {
            client.stream.write_all(piece).unwrap();
        }
        let (reply, _) = client.recv_reply().unwrap();
        assert_eq!((reply.tag, reply.status), (tag, Status::Ok));
    }
    // Burst: writes for tags 3..8 and reads of every tag in one send.
    let mut burst = Vec::new();
    for tag in 3..8u32 {
        burst.extend(frame(tag, Op::Write, &pattern(u64::from(tag), block)));
    }
    client.stream.write_all(&burst).unwrap();
    for _ in 3..8 {
        assert_eq!(client.recv_reply().unwrap().0.status, Status::Ok);
    }
    let reads: Vec<u8> = (0..8u32)
        .flat_map(|tag| frame(tag, Op::Read, &[]))
        .collect();
    client.stream.write_all(&reads).unwrap();
    for _ in 0..8 {
        let (reply, data) = client.recv_reply().unwrap();
        assert_eq!(reply.status, Status::Ok);
        assert!(
            data == pattern(u64::from(reply.tag), block),
            "tag {} read back different bytes",
            reply.tag
        );
    }
}
