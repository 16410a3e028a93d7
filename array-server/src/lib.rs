//! The Multilane array server: member disks striped into one array, carved into
//! partitions, served to authenticated hosts over TCP.
//!
//! # Layout
//!
//! - [`array`]: member disks ([`array::disk`]), the RAID-0 stripe map ([`array::stripe`]),
//!   on-disk metadata slots ([`array::metadata`]), free space ([`array::space`]), the
//!   operator's mutations as pure functions ([`array::catalog`]), the data lanes' snapshot
//!   ([`array::grant`]), their revocation gates ([`array::gate`]: a commit that takes a
//!   right away closes the lanes and drains their disk work before it returns), the
//!   storage layer ([`array::io`]: typed commands, one engine per kind of member disk),
//!   assembling by array id ([`array::scan`]) and the management handle [`Array`] with
//!   its serialisable views.
//! - [`net`]: the TCP server: thread-per-core tokio-uring runtimes ([`net::start`]),
//!   connection budgets and accept back-off, handshake with lane fencing, control sessions
//!   (discovery, live pushes), data sessions (block I/O under a per-lane budget of requests
//!   and bytes), the sessions registry with per-lane counters ([`net::Sessions`]), and the
//!   read-only view of the running server other layers read ([`net::LiveSessions`]); it
//!   only moves bytes.
//! - [`admin`]: the admin HTTP service (page, JSON API, `/metrics`) and `ctl`; it reads
//!   the server through [`net::LiveSessions`] and changes the array through [`Array`].
//! - [`config`]: the server's TOML configuration file and its merge with the command
//!   line.
//! - [`error`]: [`Error`], one enum for the crate, with the errno each variant fails a
//!   block request with.
//! - [`units`]: human-readable sizes (`4K`, `1.5G`).
//!
//! The binary (`src/main.rs`) formats arrays, serves them and runs offline admin commands.

pub mod admin;
pub mod array;
pub mod config;
pub mod error;
pub mod net;
pub mod units;

pub use array::{Array, FormatOptions};
pub use error::{Error, Result};
