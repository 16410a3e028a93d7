//! Socket options that make the server drop silent connections within a bound: a host
//! that vanished without a RST (cable cut, host frozen or powered off) would otherwise
//! leave a half-open lane, counted as a live session, for as long as TCP waits (minutes).
//!
//! Keepalive probes an idle connection after [`KEEPALIVE_IDLE`], [`KEEPALIVE_PROBES`]
//! times [`KEEPALIVE_INTERVAL`] apart; `TCP_USER_TIMEOUT` ends one whose sent data stays
//! unacknowledged for [`USER_TIMEOUT`]. A dead peer is thus noticed within about 20 s,
//! idle or busy. The bounds are looser than the hosts' (5 s), so a host always notices
//! first and replaces the lane, which fences the old session at once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use tokio_uring::net::TcpStream;

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Pause between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered probes after which the connection is dead.
pub const KEEPALIVE_PROBES: u32 = 5;
/// Longest time sent data may stay unacknowledged.
pub const USER_TIMEOUT: Duration = Duration::from_secs(20);

/// The server's own address of an accepted connection (which of its listen addresses).
pub fn local_addr(stream: &TcpStream) -> io::Result<std::net::SocketAddr> {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// Sets keepalive and `TCP_USER_TIMEOUT` on an accepted connection.
pub fn set(stream: &TcpStream) -> io::Result<()> {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let socket = socket2::SockRef::from(&fd);
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)
}
