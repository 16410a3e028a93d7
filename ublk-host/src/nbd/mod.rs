//! A partition as an NBD export on a local Unix socket, for VM disks (qemu
//! `-blockdev driver=nbd`), `qemu-img`, `qemu-io` and `nbd-client` on machines without
//! the ublk module.
//!
//! - [`proto`]: the protocol, sans-IO: handshake messages, request decoding, replies.
//! - [`negotiate`]: the fixed-newstyle handshake (`NBD_OPT_GO`, `INFO`, `LIST`, `ABORT`,
//!   `EXPORT_NAME`) on a blocking stream.
//! - [`transmit`]: the transmission phase on a queue engine thread: one task per request,
//!   simple replies.
//! - [`server`]: the socket, one thread and one queue engine (own lanes) per connection.
//!
//! Transmission flags: FLUSH, FUA, MULTI_CONN always; TRIM and WRITE_ZEROES when the
//! server performs them; READ_ONLY for a read-only assignment. Structured replies are not
//! offered (`NBD_OPT_STRUCTURED_REPLY` is answered "unsupported").

pub mod negotiate;
pub mod proto;
pub mod server;
pub mod transmit;

pub use negotiate::Export;
pub use server::{serve, NbdExport, DEFAULT_MAX_CONNECTIONS};
