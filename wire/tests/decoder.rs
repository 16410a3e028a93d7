//! Property tests of the incremental [`FrameDecoder`], driven the way a socket reader
//! drives it: bytes arrive in arbitrary chunks, heads are decoded from a staging buffer,
//! payloads are taken partly from that buffer and the rest "received straight into place".

use proptest::prelude::*;
use wire::frame::{self, FrameDecoder, FrameHeader, Limits, Progress};
use wire::*;

/// Payload limit of the data connections in these tests.
const TEST_MAX_IO: u32 = 1 << 20;
/// Largest write / read payload generated (keeps streams small).
const MAX_TEST_PAYLOAD: u32 = 2048;

/// What one drive of a stream produced: the frames decoded, and how the stream ended.
struct Drive<M> {
    frames: Vec<(M, Vec<u8>)>,
    end: Result<(), WireError>,
}

/// Next chunk size from the cycling list (at least 1 byte).
fn chunk(chunks: &[usize], turn: &mut usize) -> usize {
    let size = chunks[*turn % chunks.len()].max(1);
    *turn += 1;
    size
}

/// Feeds `stream` to a decoder in chunks of the sizes in `chunks` (cycling), and checks on
/// every answer that the decoder never asks for more than the limits allow.
fn drive<M: FrameHeader>(stream: &[u8], chunks: &[usize], limits: Limits) -> Drive<M> {
    let mut decoder = FrameDecoder::new(limits);
    let max_head = PREFIX_LEN + limits.max_header as usize;
    let mut input = stream;
    let mut staging: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut turn = 0;
    let end = loop {
        let head = match decoder.next_head::<M>(&staging) {
            Ok(Progress::NeedMore(n)) => {
                assert!(n >= 1, "NeedMore(0)");
                assert!(staging.len() + n <= max_head, "asked beyond the head limit");
                if input.is_empty() {
                    break decoder.eof(&staging);
                }
                let take = chunk(chunks, &mut turn).min(input.len());
                staging.extend_from_slice(&input[..take]);
                input = &input[take..];
                continue;
            }
            Ok(Progress::Ready(head)) => head,
            Err(error) => break Err(error),
        };
        staging.drain(..head.prefix.head_len());
        let remaining = decoder.payload_remaining();
        assert_eq!(remaining, head.prefix.payload_len as usize);
        assert!(remaining <= limits.max_payload as usize);
        let mut payload = Vec::with_capacity(remaining);
        let took = decoder.consume_payload(staging.len());
        payload.extend(staging.drain(..took));
        while decoder.payload_remaining() > 0 && !input.is_empty() {
            let take = chunk(chunks, &mut turn)
                .min(input.len())
                .min(decoder.payload_remaining());
            decoder.payload_received(take).unwrap();
            payload.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        if decoder.payload_remaining() > 0 {
            // The receive straight into place returned 0: end of stream.
            break decoder.payload_received(0);
        }
        frames.push((head.message, payload));
    };
    Drive { frames, end }
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Read),
        Just(Op::Write),
        Just(Op::Flush),
        Just(Op::Discard),
        Just(Op::WriteZeroes),
        Just(Op::Heartbeat),
    ]
}

/// A request and its payload (a write's data).
fn any_request_frame() -> impl Strategy<Value = (Request, Vec<u8>)> {
    (
        any::<u32>(),
        any_op(),
        any::<u64>(),
        0u32..MAX_TEST_PAYLOAD,
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(tag, op, offset, len, flags, fill)| {
            let request = Request {
                tag,
                op,
                offset,
                len,
                flags,
            };
            let payload = (0..request.payload_len())
                .map(|i| fill.wrapping_add(i as u8))
                .collect();
            (request, payload)
        })
}

/// A reply and its payload (a read's data; a run's data for `Run`; none for `Later`,
/// whose data comes in a run).
fn any_reply_frame() -> impl Strategy<Value = (Reply, Vec<u8>)> {
    (any::<u32>(), 0u32..MAX_TEST_PAYLOAD, 0u8..4, any::<u8>()).prop_map(
        |(tag, len, kind, fill)| {
            let (status, len) = match kind {
                0 => (Status::Ok, len),
                1 => (Status::Errno(libc_errno::EIO), 0),
                2 => (Status::Later, len),
                _ => (Status::Run, len),
            };
            let reply = Reply { tag, status, len };
            let payload = (0..reply.payload_len()).map(|i| fill ^ i as u8).collect();
            (reply, payload)
        },
    )
}

/// Encodes frames into one stream; returns it and where each frame ends.
fn encode<M: serde::Serialize>(frames: &[(M, Vec<u8>)]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for (message, payload) in frames {
        frame::encode_head(message, payload.len() as u32, &mut stream).unwrap();
        stream.extend_from_slice(payload);
        ends.push(stream.len());
    }
    (stream, ends)
}

fn chunkings() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..300, 1..16)
}

proptest! {
    #[test]
    fn any_split_of_requests_decodes_the_same_frames(
        frames in prop::collection::vec(any_request_frame(), 0..12),
        chunks in chunkings(),
    ) {
        let (stream, _) = encode(&frames);
        let drive = drive::<Request>(&stream, &chunks, Limits::data(TEST_MAX_IO));
        prop_assert_eq!(drive.end, Ok(()));
        prop_assert_eq!(drive.frames, frames);
    }

    #[test]
    fn any_split_of_replies_decodes_the_same_frames(
        frames in prop::collection::vec(any_reply_frame(), 0..12),
        chunks in chunkings(),
    ) {
        let (stream, _) = encode(&frames);
        let drive = drive::<Reply>(&stream, &chunks, Limits::data(TEST_MAX_IO));
        prop_assert_eq!(drive.end, Ok(()));
        prop_assert_eq!(drive.frames, frames);
    }

    /// Cut at every byte: the frames wholly before the cut decode, then EOF is clean on a
    /// frame boundary and `Truncated` (with the cut frame's lengths) anywhere else.
    #[test]
    fn truncation_at_every_byte_needs_more_then_fails_at_eof(
        frames in prop::collection::vec(any_request_frame(), 1..4),
        chunks in chunkings(),
    ) {
        let (stream, ends) = encode(&frames);
        for cut in 0..=stream.len() {
            let drive = drive::<Request>(&stream[..cut], &chunks, Limits::data(TEST_MAX_IO));
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            prop_assert_eq!(&drive.frames[..], &frames[..whole]);
            let start = if whole == 0 { 0 } else { ends[whole - 1] };
            if cut == start {
                prop_assert_eq!(drive.end, Ok(()));
            } else {
                let need = if cut - start < PREFIX_LEN { PREFIX_LEN } else { ends[whole] - start };
                prop_assert_eq!(drive.end, Err(WireError::Truncated { have: cut - start, need }));
            }
        }
    }

    /// Garbage in any chunking: errors or need-more, never a panic, never a request for
    /// more head bytes than the limits allow (checked inside `drive`).
    #[test]
    fn garbage_never_panics_or_asks_beyond_limits(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        chunks in chunkings(),
    ) {
        let data = Limits::data(TEST_MAX_IO);
        let _ = drive::<Request>(&bytes, &chunks, data);
        let _ = drive::<Reply>(&bytes, &chunks, data);
        let _ = drive::<Hello>(&bytes, &chunks, Limits::HANDSHAKE);
        let _ = drive::<ControlEvent>(&bytes, &chunks, Limits::HANDSHAKE);
        let _ = drive::<ProofReply>(&bytes, &chunks, Limits::HANDSHAKE);
    }
}

#[test]
fn limits_are_checked_on_the_prefix_alone() {
    let mut decoder = FrameDecoder::new(Limits::data(TEST_MAX_IO));
    let prefix = FramePrefix {
        header_len: 16,
        payload_len: TEST_MAX_IO + 1,
    };
    assert_eq!(
        decoder.next_prefix(&prefix.encode()),
        Err(WireError::PayloadTooLarge {
            len: TEST_MAX_IO + 1,
            max: TEST_MAX_IO
        })
    );
    let mut decoder = FrameDecoder::new(Limits::HANDSHAKE);
    let prefix = FramePrefix {
        header_len: MAX_HEADER_LEN + 1,
        payload_len: 0,
    };
    assert_eq!(
        decoder.next_prefix(&prefix.encode()),
        Err(WireError::HeaderTooLarge {
            len: MAX_HEADER_LEN + 1,
            max: MAX_HEADER_LEN
        })
    );
}

#[test]
fn a_head_is_refused_while_a_payload_is_owed() {
    let request = Request {
        tag: 1,
        op: Op::Write,
        offset: 0,
        len: 4,
        flags: FLAG_FUA,
    };
    let (stream, _) = encode(&[(request, vec![9; 4])]);
    let mut decoder = FrameDecoder::new(Limits::data(TEST_MAX_IO));
    let Ok(Progress::Ready(head)) = decoder.next_head::<Request>(&stream) else {
        panic!("a whole frame is buffered");
    };
    assert_eq!(head.message, request);
    let rest = &stream[head.prefix.head_len()..];
    assert_eq!(
        decoder.next_head::<Request>(rest),
        Err(WireError::PayloadPending { remaining: 4 })
    );
    assert_eq!(decoder.consume_payload(1), 1);
    assert_eq!(
        decoder.eof(&[]),
        Err(WireError::Truncated {
            have: stream.len() - 3,
            need: stream.len()
        })
    );
    assert_eq!(decoder.consume_payload(100), 3);
    assert_eq!(decoder.payload_remaining(), 0);
    assert_eq!(decoder.eof(&[]), Ok(()));
}

#[test]
fn a_payload_less_message_with_a_payload_is_refused() {
    let mut stream = Vec::new();
    frame::encode_head(&ControlRequest::Ping(7), 3, &mut stream).unwrap();
    let mut decoder = FrameDecoder::new(Limits::data(TEST_MAX_IO));
    assert_eq!(
        decoder.next_head::<ControlRequest>(&stream),
        Err(WireError::PayloadMismatch {
            expected: 0,
            actual: 3
        })
    );
}
