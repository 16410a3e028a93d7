//! Feeds arbitrary bytes to every decoder a server or host runs on untrusted input.
//! Decoding may fail; it must never panic, hang or allocate beyond the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{self, Limits};
use wire::{ControlEvent, ControlRequest, Hello, HelloReply, Proof, ProofReply, PREFIX_LEN};

const FUZZ_MAX_IO: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::data(FUZZ_MAX_IO);
    let mut rest = data;
    // Walk a stream of frames the way a connection's reader does.
    while let Ok(Some(prefix)) = frame::check(rest, limits) {
        let header = &rest[PREFIX_LEN..prefix.head_len()];
        let _ = frame::decode_request(header, prefix);
        let _ = frame::decode_reply(header, prefix);
        let _ = frame::decode_header::<Hello>(header, "Hello");
        let _ = frame::decode_header::<HelloReply>(header, "HelloReply");
        let _ = frame::decode_header::<Proof>(header, "Proof");
        let _ = frame::decode_header::<ProofReply>(header, "ProofReply");
        let _ = frame::decode_header::<ControlRequest>(header, "ControlRequest");
        let _ = frame::decode_header::<ControlEvent>(header, "ControlEvent");
        rest = &rest[prefix.frame_len()..];
    }
    let _ = frame::check_eof(rest, limits);
});
