//! The Multilane wire protocol, version 2, sans-IO: no sockets, no runtime.
//!
//! Version 2 added the lane epoch in `Purpose::Data` (fencing a replaced connection), the
//! server's boot epoch and its announced addresses (multipath discovery) in `Welcome`,
//! `Op::Heartbeat` and `RefusedCode::Stale`. The MAC labels
//! keep their `v1` text: they name the transcript format, which did not change.
//!
//! # Layout
//!
//! - [`messages`]: every message as plain data (what is said).
//! - [`frame`]: prefix + postcard header + raw payload (how it becomes bytes), with the
//!   length checks made before anything is allocated, and [`FrameDecoder`], the one
//!   incremental decoder every reader on both sides runs (`frame/decoder.rs`).
//! - [`handshake`]: the mutual HMAC-SHA256 challenge-response and the transcript it binds.
//! - [`error`]: [`WireError`], and the errno a failed block I/O completes with.
//!
//! # Connections
//!
//! Every TCP connection (`TCP_NODELAY`) starts with the handshake, then is either a
//! *control* connection (discovery) or a *data* connection ("lane": block I/O on one
//! partition, owned by one host queue).
//!
//! | direction | message | payload | when |
//! |---|---|---|---|
//! | C→S | [`Hello`] | – | first frame: magic, version range, host, client nonce, purpose |
//! | S→C | [`HelloReply`]: [`Challenge`] or [`Refused`] | – | version chosen, server nonce |
//! | C→S | [`Proof`] | – | `HMAC(secret, "multilane v1 client" ‖ transcript)` |
//! | S→C | [`ProofReply`]: [`Welcome`] or [`Refused`] | – | `HMAC(secret, "multilane v1 server" ‖ transcript)`, `max_io`, array id, partition, boot epoch, announced addresses |
//! | C→S | [`ControlRequest`] | – | control: `ListPartitions`, `Ping` |
//! | S→C | [`ControlEvent`] | – | control: `Partitions` (asked for, or pushed on change), `Pong` |
//! | C→S | [`Request`] | write data (`len`) | data: `Read`, `Write`, `Flush`, `Discard`, `WriteZeroes`, `Heartbeat`, FUA flag; writes flagged [`FLAG_LATER`] come as a run: their heads, then one `Run` request with their data |
//! | S→C | [`Reply`] | read data (`len`) | data: `tag`, `Ok` or `Errno(e)`; any order; reads flagged [`FLAG_RUN`] may come as a run: `Later` heads, then one `Run` frame with their data |
//!
//! A request the server cannot honour (out of range, misaligned, read-only, revoked) gets
//! an errno reply and the connection lives on; a frame that does not decode closes that
//! connection. A FLUSH acknowledged on any lane covers every write acknowledged earlier on
//! any lane of the same partition ([`Features::MULTI_LANE_FLUSH`]).

pub mod error;
pub mod frame;
pub mod handshake;
pub mod messages;

pub use error::{libc_errno, WireError};
pub use frame::{
    FrameDecoder, FrameHeader, FramePrefix, Head, Limits, Parsed, Progress, DEFAULT_MAX_IO,
    MAX_HEADER_LEN, PREFIX_LEN,
};
pub use handshake::{ClientHandshake, Secret, ServerHandshake};
pub use messages::*;
