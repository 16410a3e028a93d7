//! The Multilane host driver: makes a partition of an array server a local block device,
//! `/dev/ublkbN`, with one persistent TCP lane set per ublk hardware queue.
//!
//! # Layout
//!
//! - [`client`]: no kernel needed. [`client::connect`] (TCP + mutual handshake, liveness
//!   socket options), [`client::discovery`] (control connection: partition list and live
//!   pushes, a watch that reconnects across server restarts), and the request engine [`client::QueueEngine`]: a queue's lanes, splitting
//!   at stripe-chunk boundaries, batched sends and tag-matched replies on the queue's
//!   io_uring, reconnection with reissue. Each lane's decisions (tags, in-flight table,
//!   reissue order, heartbeats, dead-lane detection, the failure policy, final refusals)
//!   live in a sans-IO core (`client/lane_core.rs`) its driver (`client/lane.rs`) feeds
//!   with events; [`client::Durability`] is the device-wide boot-epoch / FLUSH rule;
//!   [`client::ratelog`] keeps repeated errors out of the log. [`client::paths`] is native
//!   multipath: lanes on every path of the server, the per-request path choice
//!   (queue-depth or round-robin), takeover over another path and homing;
//!   [`client::PathStats`] counts lanes up, requests and bytes per path, shared lock-free
//!   by every queue's engine.
//! - [`ublk`]: the libublk device: parameters from the partition, one queue thread per
//!   hardware queue running the same engine, teardown; user recovery (a new daemon takes
//!   over a device whose daemon died), a planned handover from a live daemon to a new binary
//!   (`ublk/handover.rs`, `ublk/upgrade.rs`: quiesce where the driver offers it), device states and state files, the daemon's mount
//!   namespace, stable names (`/dev/multilane/<partition>`). Zero copy where the driver
//!   offers automatic buffer registration (asked with `GET_FEATURES` at attach; `--copy`
//!   forces copy mode): each request's pages are registered in the queue's ring at the
//!   tag's index and the lanes send and receive them with fixed-buffer operations
//!   ([`client::BufRef::Fixed`]): replies whose whole frames a peek shows are received in
//!   one linked chain (`client/receive/ahead.rs`), writes go out as linked, corked chains
//!   (`client/transfer.rs`); live resize (`ublk/resize.rs`: a discovery watch grows
//!   the device with `UPDATE_SIZE`); the per-path report `list` shows
//!   (`ublk/path_report.rs`).
//! - [`hostconfig`]: the host configuration file (`/etc/multilane/host.toml`): servers,
//!   identity, partitions to attach; each entry becomes an `attach` command line.
//! - [`nbd`]: a partition as an NBD export on a local Unix socket (fixed newstyle, simple
//!   replies), each NBD connection on its own queue engine; [`nbd::proto`] is the sans-IO
//!   codec.
//! - [`error`]: [`HostError`] and the errno a failed block I/O completes with.
//!
//! # Driving the engine (tests, bench)
//!
//! One thread per queue. [`client::run_queue_thread`] gives the current thread libublk's
//! thread-local io_uring and a smol `LocalExecutor`, opens the queue's lanes, runs your
//! future, then closes the lanes:
//!
//! ```no_run
//! use ublk_host::client::{run_queue_thread, BlockIo, ClientConfig, Discovery, EngineConfig};
//! # fn main() -> ublk_host::Result<()> {
//! let secret = ublk_host::client::config::read_secret_file("/etc/multilane/host.key")?;
//! let client = ClientConfig::new("10.0.0.1:7700", "host-a", secret);
//! let partition = Discovery::open(&client)?.list()?.find("vol0")?.clone();
//! let mut config = EngineConfig::new(client);
//! config.lanes_per_queue = 2;
//! config.split = 128 << 10;
//! let read_ok = run_queue_thread(&config, &partition, 0, |engine| async move {
//!     let io = BlockIo { op: wire::Op::Read, offset: 0, len: 4096, fua: false };
//!     // Many of these may run at once: spawn them with `engine.spawn(...)`.
//!     let (outcome, _data) = engine.execute_owned(io, vec![0; 4096]).await;
//!     outcome.is_ok()
//! })?;
//! # let _ = read_ok; Ok(()) }
//! ```
//!
//! [`client::QueueEngine::execute`] is the zero-copy form (a raw buffer pointer, `unsafe`:
//! the buffer must outlive the operation); the ublk queue uses it on its I/O buffers.
//! Outcomes are `Result<(), Errno>`; a ublk I/O completes with `-errno`.

pub mod client;
pub mod error;
pub mod hostconfig;
pub mod nbd;
pub mod ublk;

pub use error::{Errno, HostError, Result};
