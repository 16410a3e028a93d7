//! Drives the one frame decoder every server and host reader runs
//! ([`wire::FrameDecoder`]) over arbitrary bytes in arbitrary chunks, decoding the headers
//! as the message a connection of the chosen kind expects. Decoding may fail; it must never
//! panic, hang, or ask for more head bytes than the limits allow.
//!
//! Input: byte 0 picks the message kind, the next [`CHUNK_SEEDS`] bytes are the sizes the
//! stream arrives in (cycling, as a socket's receives would), the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{FrameDecoder, FrameHeader, Limits, Progress};
use wire::{
    ControlEvent, ControlRequest, Hello, HelloReply, Proof, ProofReply, Reply, Request,
    PREFIX_LEN,
};

const FUZZ_MAX_IO: u32 = 1 << 20;
/// Input bytes that give the receive sizes.
const CHUNK_SEEDS: usize = 4;
/// Message kinds byte 0 chooses among.
const KINDS: u8 = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((seeds, stream)) = rest.split_first_chunk::<CHUNK_SEEDS>() else {
        return;
    };
    let data_limits = Limits::data(FUZZ_MAX_IO);
    match kind % KINDS {
        0 => drive::<Request>(stream, seeds, data_limits),
        1 => drive::<Reply>(stream, seeds, data_limits),
        2 => drive::<Hello>(stream, seeds, Limits::HANDSHAKE),
        3 => drive::<HelloReply>(stream, seeds, Limits::HANDSHAKE),
        4 => drive::<Proof>(stream, seeds, Limits::HANDSHAKE),
        5 => drive::<ProofReply>(stream, seeds, Limits::HANDSHAKE),
        6 => drive::<ControlRequest>(stream, seeds, Limits::HANDSHAKE),
        _ => drive::<ControlEvent>(stream, seeds, Limits::HANDSHAKE),
    }
});

/// Reads `stream` as a connection's reader does: heads into a staging buffer sized by the
/// decoder's answers, payloads partly from the staging buffer, the rest "received straight
/// into place" (counted, not stored).
fn drive<M: FrameHeader>(stream: &[u8], seeds: &[u8; CHUNK_SEEDS], limits: Limits) {
    let mut decoder = FrameDecoder::new(limits);
    let max_head = PREFIX_LEN + limits.max_header as usize;
    let mut input = stream;
    let mut staging: Vec<u8> = Vec::new();
    let mut turn = 0;
    let mut chunk = || {
        let size = usize::from(seeds[turn % CHUNK_SEEDS]) + 1;
        turn += 1;
        size
    };
    loop {
        let head = match decoder.next_head::<M>(&staging) {
            Ok(Progress::NeedMore(n)) => {
                assert!(n >= 1 && staging.len() + n <= max_head);
                if input.is_empty() {
                    let _ = decoder.eof(&staging);
                    return;
                }
                let take = chunk().min(input.len());
                staging.extend_from_slice(&input[..take]);
                input = &input[take..];
                continue;
            }
            Ok(Progress::Ready(head)) => head,
            Err(_) => return,
        };
        staging.drain(..head.prefix.head_len());
        assert!(decoder.payload_remaining() <= limits.max_payload as usize);
        let took = decoder.consume_payload(staging.len());
        staging.drain(..took);
        while decoder.payload_remaining() > 0 {
            if input.is_empty() {
                // The receive straight into place returned 0: end of stream.
                assert!(decoder.payload_received(0).is_err());
                return;
            }
            let take = chunk().min(input.len()).min(decoder.payload_remaining());
            decoder.payload_received(take).expect("a receive within the payload");
            input = &input[take..];
        }
    }
}
