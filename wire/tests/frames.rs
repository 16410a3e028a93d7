//! Property tests of the framing: round trips, truncation at every byte, garbage.

use proptest::prelude::*;
use wire::frame::{self, Limits};
use wire::*;

fn any_purpose() -> impl Strategy<Value = Purpose> {
    prop_oneof![
        Just(Purpose::Control),
        (any::<u32>(), any::<u16>(), any::<u16>(), any::<u64>()).prop_map(
            |(partition, queue, lane, epoch)| Purpose::Data {
                partition,
                queue,
                lane,
                epoch,
            }
        ),
    ]
}

fn any_hello() -> impl Strategy<Value = Hello> {
    (
        "[a-z0-9._-]{1,64}",
        any::<[u8; 32]>(),
        any_purpose(),
        any::<u16>(),
    )
        .prop_map(|(host, client_nonce, purpose, max_version)| Hello {
            magic: MAGIC,
            min_version: 1,
            max_version,
            host,
            client_nonce,
            purpose,
        })
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Read),
        Just(Op::Write),
        Just(Op::Flush),
        Just(Op::Discard),
        Just(Op::WriteZeroes),
    ]
}

fn any_request() -> impl Strategy<Value = Request> {
    (
        any::<u32>(),
        any_op(),
        any::<u64>(),
        0u32..(1 << 20),
        any::<u8>(),
    )
        .prop_map(|(tag, op, offset, len, flags)| Request {
            tag,
            op,
            offset,
            len,
            flags,
        })
}

fn any_partition_info() -> impl Strategy<Value = PartitionInfo> {
    (
        any::<u32>(),
        "[a-z]{1,20}",
        any::<u64>(),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|(id, name, size, shared, features)| PartitionInfo {
            id,
            name,
            size,
            block_size: 512,
            chunk_size: 65536,
            stripe_disks: 3,
            access: if shared {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            },
            shared,
            features: Features(features),
        })
}

proptest! {
    #[test]
    fn hello_round_trips(hello in any_hello()) {
        let bytes = frame::encode_message(&hello).unwrap();
        let parsed = frame::parse::<Hello>(&bytes, Limits::HANDSHAKE, "Hello").unwrap().unwrap();
        prop_assert_eq!(parsed.message, hello);
        prop_assert_eq!(parsed.consumed, bytes.len());
        prop_assert!(parsed.payload.is_empty());
    }

    #[test]
    fn partitions_round_trip(generation in any::<u64>(), partitions in prop::collection::vec(any_partition_info(), 0..20)) {
        let event = ControlEvent::Partitions { generation, partitions };
        let bytes = frame::encode_message(&event).unwrap();
        let parsed = frame::parse::<ControlEvent>(&bytes, Limits::HANDSHAKE, "ControlEvent").unwrap().unwrap();
        prop_assert_eq!(parsed.message, event);
    }

    #[test]
    fn welcome_with_addresses_round_trips(
        boot_epoch in any::<u64>(),
        addresses in prop::collection::vec("[a-z0-9.]{1,30}:[0-9]{1,5}", 0..8),
        partition in prop::option::of(any_partition_info()),
    ) {
        let welcome = ProofReply::Welcome(Welcome {
            mac: [7; 32],
            max_io: 1 << 20,
            max_in_flight: 256,
            array_id: [3; 16],
            partition,
            boot_epoch,
            addresses,
        });
        let bytes = frame::encode_message(&welcome).unwrap();
        let parsed = frame::parse::<ProofReply>(&bytes, Limits::HANDSHAKE, "ProofReply").unwrap().unwrap();
        prop_assert_eq!(parsed.message, welcome);
        prop_assert_eq!(parsed.consumed, bytes.len());
    }

    #[test]
    fn request_with_payload_round_trips(request in any_request()) {
        let payload: Vec<u8> = (0..request.payload_len()).map(|i| i as u8).collect();
        let mut bytes = Vec::new();
        frame::encode_head(&request, request.payload_len(), &mut bytes).unwrap();
        bytes.extend_from_slice(&payload);
        let prefix = frame::check(&bytes, Limits::data(1 << 20)).unwrap().unwrap();
        let header = &bytes[PREFIX_LEN..prefix.head_len()];
        let decoded = frame::decode_request(header, prefix).unwrap();
        prop_assert_eq!(decoded, request);
        prop_assert_eq!(&bytes[prefix.head_len()..], &payload[..]);
    }

    /// The inline head is byte for byte the head `encode_head` writes, for any request.
    #[test]
    fn inline_head_is_the_same_bytes(request in any_request()) {
        let mut bytes = Vec::new();
        frame::encode_head(&request, request.payload_len(), &mut bytes).unwrap();
        let inline = frame::InlineHead::encode(&request, request.payload_len()).unwrap();
        prop_assert_eq!(inline.as_bytes(), &bytes[..]);
    }

    #[test]
    fn every_truncation_is_incomplete_never_wrong(request in any_request()) {
        let mut bytes = Vec::new();
        frame::encode_head(&request, request.payload_len(), &mut bytes).unwrap();
        bytes.resize(bytes.len() + request.payload_len() as usize, 0xAB);
        let limits = Limits::data(1 << 20);
        for cut in 0..bytes.len() {
            let partial = &bytes[..cut];
            prop_assert_eq!(frame::check(partial, limits).unwrap(), None);
            let eof = frame::check_eof(partial, limits);
            if cut == 0 {
                prop_assert!(eof.is_ok());
            } else {
                let is_truncated = matches!(eof, Err(WireError::Truncated { .. }));
                prop_assert!(is_truncated);
            }
        }
        prop_assert!(frame::check(&bytes, limits).unwrap().is_some());
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits::data(1 << 20);
        let _ = frame::parse::<Hello>(&bytes, Limits::HANDSHAKE, "Hello");
        let _ = frame::parse::<ControlEvent>(&bytes, Limits::HANDSHAKE, "ControlEvent");
        if let Ok(Some(prefix)) = frame::check(&bytes, limits) {
            let header = &bytes[PREFIX_LEN..prefix.head_len()];
            let _ = frame::decode_request(header, prefix);
            let _ = frame::decode_reply(header, prefix);
        }
        let _ = frame::check_eof(&bytes, limits);
    }

    #[test]
    fn flipped_header_bytes_never_panic(request in any_request(), position in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut bytes = Vec::new();
        frame::encode_head(&request, 0, &mut bytes).unwrap();
        let index = PREFIX_LEN + position.index(bytes.len() - PREFIX_LEN);
        bytes[index] = value;
        if let Ok(Some(prefix)) = frame::check(&bytes, Limits::data(1 << 20)) {
            let _ = frame::decode_request(&bytes[PREFIX_LEN..prefix.head_len()], prefix);
        }
    }
}

#[test]
fn oversized_lengths_are_refused_before_allocation() {
    let huge_header = FramePrefix {
        header_len: u32::MAX,
        payload_len: 0,
    }
    .encode();
    assert_eq!(
        frame::check(&huge_header, Limits::HANDSHAKE),
        Err(WireError::HeaderTooLarge {
            len: u32::MAX,
            max: MAX_HEADER_LEN
        })
    );
    let huge_payload = FramePrefix {
        header_len: 4,
        payload_len: (1 << 20) + 1,
    }
    .encode();
    assert_eq!(
        frame::check(&huge_payload, Limits::data(1 << 20)),
        Err(WireError::PayloadTooLarge {
            len: (1 << 20) + 1,
            max: 1 << 20
        })
    );
    let empty = FramePrefix {
        header_len: 0,
        payload_len: 0,
    }
    .encode();
    assert_eq!(
        frame::check(&empty, Limits::HANDSHAKE),
        Err(WireError::EmptyHeader)
    );
}

#[test]
fn payload_must_match_the_message() {
    let request = Request {
        tag: 7,
        op: Op::Write,
        offset: 0,
        len: 4096,
        flags: 0,
    };
    let mut bytes = Vec::new();
    frame::encode_head(&request, 512, &mut bytes).unwrap();
    let prefix = FramePrefix::decode(bytes.first_chunk().unwrap(), Limits::data(1 << 20)).unwrap();
    assert_eq!(
        frame::decode_request(&bytes[PREFIX_LEN..prefix.head_len()], prefix),
        Err(WireError::PayloadMismatch {
            expected: 4096,
            actual: 512
        })
    );
    let failed_with_data = Reply {
        tag: 1,
        status: Status::Errno(libc_errno::EIO),
        len: 512,
    };
    let mut bytes = Vec::new();
    frame::encode_head(&failed_with_data, 512, &mut bytes).unwrap();
    let prefix = FramePrefix::decode(bytes.first_chunk().unwrap(), Limits::data(1 << 20)).unwrap();
    assert!(frame::decode_reply(&bytes[PREFIX_LEN..prefix.head_len()], prefix).is_err());
}

#[test]
fn trailing_header_bytes_are_refused() {
    let mut bytes = frame::encode_message(&ControlRequest::Ping(3)).unwrap();
    bytes.push(0);
    let header_len = (bytes.len() - PREFIX_LEN) as u32;
    bytes[..4].copy_from_slice(&header_len.to_le_bytes());
    let result = frame::parse::<ControlRequest>(&bytes, Limits::HANDSHAKE, "ControlRequest");
    assert_eq!(
        result,
        Err(WireError::TrailingBytes {
            what: "ControlRequest",
            extra: 1
        })
    );
}

#[test]
fn unknown_op_variant_is_malformed() {
    let request = Request {
        tag: 1,
        op: Op::Read,
        offset: 0,
        len: 512,
        flags: 0,
    };
    let mut bytes = Vec::new();
    frame::encode_head(&request, 0, &mut bytes).unwrap();
    // The op is the byte after the one-byte varint tag.
    bytes[PREFIX_LEN + 1] = 42;
    let prefix = FramePrefix::decode(bytes.first_chunk().unwrap(), Limits::data(1 << 20)).unwrap();
    let error = frame::decode_request(&bytes[PREFIX_LEN..prefix.head_len()], prefix).unwrap_err();
    assert!(matches!(
        error,
        WireError::Malformed {
            what: "Request",
            ..
        }
    ));
}

/// Decodes `reply`'s head, encoded with `payload_len` bytes of payload announced.
fn decode_reply_with(reply: Reply, payload_len: u32) -> Result<Reply, WireError> {
    let mut bytes = Vec::new();
    frame::encode_head(&reply, payload_len, &mut bytes).unwrap();
    let prefix = FramePrefix::decode(bytes.first_chunk().unwrap(), Limits::data(1 << 20)).unwrap();
    frame::decode_reply(&bytes[PREFIX_LEN..prefix.head_len()], prefix)
}

#[test]
fn a_reply_errno_must_be_a_positive_errno() {
    let reply = |errno| Reply {
        tag: 3,
        status: Status::Errno(errno),
        len: 0,
    };
    assert_eq!(decode_reply_with(reply(5), 0), Ok(reply(5)));
    assert_eq!(
        decode_reply_with(reply(frame::MAX_ERRNO), 0),
        Ok(reply(frame::MAX_ERRNO))
    );
    // Completed as -errno, these would tell the kernel the request succeeded.
    for bad in [0, -4096, -5, frame::MAX_ERRNO + 1, i32::MIN, i32::MAX] {
        assert!(
            matches!(
                decode_reply_with(reply(bad), 0),
                Err(WireError::Malformed { what: "Reply", .. })
            ),
            "errno {bad}"
        );
    }
}

#[test]
fn a_run_carries_the_data_of_its_later_replies() {
    let later = Reply {
        tag: 7,
        status: Status::Later,
        len: 4096,
    };
    assert_eq!(
        decode_reply_with(later, 0),
        Ok(later),
        "its data comes in the run"
    );
    assert_eq!(
        decode_reply_with(later, 4096),
        Err(WireError::PayloadMismatch {
            expected: 0,
            actual: 4096
        }),
        "a Later reply carries no payload of its own"
    );
    let run = Reply {
        tag: 2,
        status: Status::Run,
        len: 8192,
    };
    assert_eq!(decode_reply_with(run, 8192), Ok(run));
    assert!(
        decode_reply_with(run, 4096).is_err(),
        "a run carries all of it"
    );
    assert_eq!(run.payload_len(), 8192);
    assert_eq!(later.payload_len(), 0);
}

/// Decodes `request`'s head, encoded with `payload_len` bytes of payload announced.
fn decode_request_with(request: Request, payload_len: u32) -> Result<Request, WireError> {
    let mut bytes = Vec::new();
    frame::encode_head(&request, payload_len, &mut bytes).unwrap();
    let prefix = FramePrefix::decode(bytes.first_chunk().unwrap(), Limits::data(1 << 20)).unwrap();
    frame::decode_request(&bytes[PREFIX_LEN..prefix.head_len()], prefix)
}

#[test]
fn a_request_run_carries_the_data_of_its_later_writes() {
    let later = Request {
        tag: 7,
        op: Op::Write,
        offset: 8192,
        len: 4096,
        flags: FLAG_LATER | FLAG_FUA,
    };
    assert!(later.data_later() && later.fua());
    assert_eq!(later.payload_len(), 0);
    assert_eq!(
        decode_request_with(later, 0),
        Ok(later),
        "its data comes in the run"
    );
    assert_eq!(
        decode_request_with(later, 4096),
        Err(WireError::PayloadMismatch {
            expected: 0,
            actual: 4096
        }),
        "a later write carries no payload of its own"
    );
    let read = Request {
        op: Op::Read,
        ..later
    };
    assert!(!read.data_later(), "only writes come later");
    let run = Request {
        tag: 2,
        op: Op::Run,
        offset: 0,
        len: 8192,
        flags: 0,
    };
    assert_eq!(run.payload_len(), 8192);
    assert_eq!(decode_request_with(run, 8192), Ok(run));
    assert!(
        decode_request_with(run, 4096).is_err(),
        "a run carries all of it"
    );
}

#[test]
fn a_request_run_of_no_writes_too_many_or_with_an_offset_or_flags_is_malformed() {
    let run = Request {
        tag: 1,
        op: Op::Run,
        offset: 0,
        len: 512,
        flags: 0,
    };
    let malformed = |request: Request| {
        matches!(
            decode_request_with(request, request.len),
            Err(WireError::Malformed {
                what: "Request",
                ..
            })
        )
    };
    assert!(malformed(Request { tag: 0, ..run }));
    assert!(malformed(Request {
        tag: MAX_RUN_REQUESTS + 1,
        ..run
    }));
    assert!(malformed(Request { offset: 512, ..run }));
    assert!(malformed(Request {
        flags: FLAG_FUA,
        ..run
    }));
    assert!(!malformed(Request {
        tag: MAX_RUN_REQUESTS,
        ..run
    }));
}
