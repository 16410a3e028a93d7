//! Request runs (wire's `FLAG_LATER` and `Op::Run`): writes whose heads come first and
//! whose data comes in one run frame land like any write, each answered on its own; a
//! refused write in a run has its data skipped; a run that does not match the writes held
//! before it, too many held writes, or a held write larger than `max_io` close that
//! connection only, on RAM-backed (mapped) and on file disks.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};

use common::*;
use wire::frame;
use wire::libc_errno::EINVAL;
use wire::{Op, Request, Status, FLAG_FUA, FLAG_LATER, MAX_RUN_REQUESTS};

struct Setup {
    server: array_server::net::RunningServer,
    secret: String,
    partition: u32,
    _disks: Disks,
}

const PARTITION_SIZE: u64 = 1 << 20;

fn setup(ram: bool) -> Option<Setup> {
    let disks = if ram {
        ram_disks(2)?
    } else {
        temp_disks(2, DISK_SIZE)
    };
    let rig = assigned_on(disks, PARTITION_SIZE);
    // Fields drop in order: the server stops before the disks' directory goes.
    Some(Setup {
        server: serve(rig.array),
        secret: rig.secret,
        partition: rig.partition.id,
        _disks: rig.disks,
    })
}

fn client(setup: &Setup) -> Client {
    Client::data(
        setup.server.local_addr(),
        "h",
        &setup.secret,
        setup.partition,
    )
}

fn later_write(tag: u32, offset: u64, len: u32) -> Request {
    Request {
        tag,
        op: Op::Write,
        offset,
        len,
        flags: FLAG_LATER,
    }
}

fn run(count: u32, len: u32) -> Request {
    Request {
        tag: count,
        op: Op::Run,
        offset: 0,
        len,
        flags: 0,
    }
}

fn frame_of(request: Request, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame::encode_head(&request, payload.len() as u32, &mut bytes).unwrap();
    bytes.extend_from_slice(payload);
    bytes
}

/// Sends `writes` (tag, offset, data) as one run, a read and a flush among their heads.
fn send_run(client: &mut Client, writes: &[(u32, u64, Vec<u8>)]) {
    let mut bytes = Vec::new();
    let mut data = Vec::new();
    for (i, (tag, offset, payload)) in writes.iter().enumerate() {
        let mut head = later_write(*tag, *offset, payload.len() as u32);
        if i == 1 {
            head.flags |= FLAG_FUA;
        }
        bytes.extend(frame_of(head, &[]));
        data.extend_from_slice(payload);
        if i == 0 {
            let read = Request {
                tag: 1000,
                op: Op::Read,
                offset: 0,
                len: 512,
                flags: 0,
            };
            bytes.extend(frame_of(read, &[]));
        }
    }
    bytes.extend(frame_of(run(writes.len() as u32, data.len() as u32), &data));
    client.stream.write_all(&bytes).unwrap();
}

fn each_engine(test: impl Fn(&Setup)) {
    for ram in [true, false] {
        match setup(ram) {
            Some(setup) => test(&setup),
            None => eprintln!("no RAM-backed file system here: file disks only"),
        }
    }
}

#[test]
fn writes_of_a_run_land_and_are_each_answered() {
    each_engine(|setup| {
        let mut client = client(setup);
        let writes: Vec<(u32, u64, Vec<u8>)> = (0..6u32)
            .map(|i| {
                let len = 4096 * (i as usize % 3 + 1);
                (
                    i + 1,
                    u64::from(i) * 65536 + 512,
                    pattern(u64::from(i), len),
                )
            })
            .collect();
        send_run(&mut client, &writes);
        let mut answered = HashMap::new();
        for _ in 0..writes.len() + 1 {
            let (reply, _) = client.recv_reply().unwrap();
            answered.insert(reply.tag, reply.status);
        }
        assert_eq!(answered.len(), writes.len() + 1, "{answered:?}");
        assert!(answered.values().all(|status| *status == Status::Ok));
        for (_, offset, data) in &writes {
            assert_eq!(&client.read_ok(*offset, data.len() as u32), data);
        }
    });
}

#[test]
fn a_refused_write_in_a_run_gets_its_errno_and_the_others_land() {
    each_engine(|setup| {
        let mut client = client(setup);
        let first = pattern(7, 4096);
        let refused = pattern(8, 4096);
        let last = pattern(9, 8192);
        let writes = vec![
            (1, 0, first.clone()),
            (2, PARTITION_SIZE, refused),
            (3, 16384, last.clone()),
        ];
        send_run(&mut client, &writes);
        let mut answered = HashMap::new();
        for _ in 0..4 {
            let (reply, _) = client.recv_reply().unwrap();
            answered.insert(reply.tag, reply.status);
        }
        assert_eq!(answered[&1], Status::Ok);
        assert_eq!(answered[&2], Status::Errno(EINVAL), "past the end");
        assert_eq!(answered[&3], Status::Ok);
        assert_eq!(client.read_ok(0, 4096), first);
        assert_eq!(client.read_ok(16384, 8192), last);
    });
}

fn expect_closed(client: &mut Client) {
    let mut rest = Vec::new();
    // Replies sent before the close may arrive first; then EOF or reset, never a hang.
    let _ = client.stream.read_to_end(&mut rest);
}

#[test]
fn a_run_that_does_not_match_its_writes_closes_only_its_connection() {
    let setup = setup(false).unwrap();
    let data = pattern(3, 8192);
    let held = [
        frame_of(later_write(1, 0, 4096), &[]),
        frame_of(later_write(2, 4096, 4096), &[]),
    ]
    .concat();
    let too_many: Vec<u8> = (0..=MAX_RUN_REQUESTS)
        .flat_map(|tag| frame_of(later_write(tag, 0, 512), &[]))
        .collect();
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        (
            "a run with nothing held",
            frame_of(run(1, 4096), &data[..4096]),
        ),
        (
            "a run of fewer writes",
            [held.clone(), frame_of(run(1, 8192), &data)].concat(),
        ),
        (
            "a run of more bytes",
            [held.clone(), frame_of(run(2, 4096), &data[..4096])].concat(),
        ),
        ("more held writes than a run may carry", too_many),
        (
            "a held write larger than max_io",
            frame_of(later_write(1, 0, wire::DEFAULT_MAX_IO + 512), &[]),
        ),
    ];
    for (name, bytes) in corpus {
        let errors = setup.server.stats().protocol_errors;
        let mut client = client(&setup);
        client.stream.write_all(&bytes).unwrap();
        expect_closed(&mut client);
        eventually(name, || setup.server.stats().protocol_errors > errors);
        // The data of the refused runs was never written.
        let mut other = self::client(&setup);
        assert_eq!(other.read_ok(0, 8192), vec![0u8; 8192], "{name}");
        let fresh = pattern(4, 4096);
        assert_eq!(other.write(65536, &fresh), Status::Ok);
        assert_eq!(other.read_ok(65536, 4096), fresh);
        eprintln!("survived: {name}");
    }
}
