//! A corpus of malformed frames: each closes (or errors) its own connection only, and the
//! server keeps serving other clients correctly.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;

use common::*;
use wire::frame;
use wire::libc_errno::EINVAL;
use wire::{Op, Request, Status};

struct Setup {
    server: array_server::net::RunningServer,
    secret: String,
    partition: u32,
    _disks: Disks,
}

fn setup() -> Setup {
    let rig = assigned(2, 1 << 20);
    // Fields drop in order: the server stops before the disks' directory goes.
    Setup {
        server: serve(rig.array),
        secret: rig.secret,
        partition: rig.partition.id,
        _disks: rig.disks,
    }
}

fn still_serves(setup: &Setup) {
    let mut client = Client::data(
        setup.server.local_addr(),
        "h",
        &setup.secret,
        setup.partition,
    );
    let data = pattern(99, 4096);
    assert_eq!(client.write(8192, &data), Status::Ok);
    assert_eq!(client.read_ok(8192, 4096), data);
}

fn expect_closed(client: &mut Client) {
    let mut rest = Vec::new();
    // Replies sent before the close may arrive first; then EOF or reset, never a hang.
    let _ = client.stream.read_to_end(&mut rest);
}

fn request_frame(request: Request, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame::encode_head(&request, payload.len() as u32, &mut bytes).unwrap();
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let setup = setup();
    let write = Request {
        tag: 1,
        op: Op::Write,
        offset: 0,
        len: 4096,
        flags: 0,
    };
    let max_io = wire::DEFAULT_MAX_IO;
    let corpus: Vec<(&str, Vec<u8>, bool)> = vec![
        ("empty header", vec![0, 0, 0, 0, 0, 0, 0, 0], false),
        (
            "oversized header",
            [u32::MAX.to_le_bytes(), 0u32.to_le_bytes()].concat(),
            false,
        ),
        (
            "oversized payload",
            [8u32.to_le_bytes(), (max_io + 1).to_le_bytes()].concat(),
            false,
        ),
        (
            "garbage header",
            [
                6u32.to_le_bytes().as_slice(),
                &0u32.to_le_bytes(),
                &[0xff; 6],
            ]
            .concat(),
            false,
        ),
        (
            "unknown op variant",
            [
                6u32.to_le_bytes().as_slice(),
                &0u32.to_le_bytes(),
                &[1, 9, 0, 0, 0, 0],
            ]
            .concat(),
            false,
        ),
        (
            "payload disagrees with request",
            {
                let mut bytes = Vec::new();
                frame::encode_head(&write, 512, &mut bytes).unwrap();
                bytes.extend_from_slice(&[0u8; 512]);
                bytes
            },
            false,
        ),
        (
            "truncated then EOF",
            request_frame(write, &[0u8; 4096])[..100].to_vec(),
            true,
        ),
        ("prefix cut short then EOF", vec![10, 0, 0], true),
    ];
    for (name, bytes, then_eof) in corpus {
        let mut client = Client::data(
            setup.server.local_addr(),
            "h",
            &setup.secret,
            setup.partition,
        );
        client.stream.write_all(&bytes).unwrap();
        if then_eof {
            client.stream.shutdown(Shutdown::Write).unwrap();
        }
        expect_closed(&mut client);
        still_serves(&setup);
        eprintln!("survived: {name}");
    }
    assert!(setup.server.stats().protocol_errors >= 6);
}

#[test]
fn bad_requests_get_errno_and_the_connection_lives() {
    let setup = setup();
    let mut client = Client::data(
        setup.server.local_addr(),
        "h",
        &setup.secret,
        setup.partition,
    );
    let size = 1u64 << 20;
    assert_eq!(
        client.read(size, 512).0,
        Status::Errno(EINVAL),
        "offset past the end"
    );
    assert_eq!(
        client.read(size - 512, 1024).0,
        Status::Errno(EINVAL),
        "range past the end"
    );
    assert_eq!(
        client.read(u64::MAX - 511, 512).0,
        Status::Errno(EINVAL),
        "overflowing range"
    );
    assert_eq!(
        client.read(100, 512).0,
        Status::Errno(EINVAL),
        "misaligned offset"
    );
    assert_eq!(
        client.read(0, 100).0,
        Status::Errno(EINVAL),
        "misaligned length"
    );
    assert_eq!(
        client.write(0, &[0u8; 700]),
        Status::Errno(EINVAL),
        "misaligned write"
    );
    assert_eq!(
        client.call(Op::Discard, 512, 3, 0, &[]).0,
        Status::Errno(EINVAL)
    );
    let data = pattern(1, 512);
    assert_eq!(client.write(0, &data), Status::Ok);
    assert_eq!(client.read_ok(0, 512), data);
}

#[test]
fn garbage_instead_of_hello_and_silent_clients_do_not_hurt() {
    let setup = setup();
    let mut garbage = open_stream(setup.server.local_addr());
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest);
    let _silent = open_stream(setup.server.local_addr());
    still_serves(&setup);
}
