//! Probes of the test process itself (the server runs in it): socket queues, open file
//! descriptors, resident memory.

use std::net::{SocketAddr, TcpStream};

/// Bytes waiting in the receive queue of the server's end of `client`'s connection
/// (from `/proc/net/tcp`), or `None` if that socket is not listed (closed).
pub fn server_rx_queue(client: &TcpStream) -> Option<u64> {
    let local = client.local_addr().ok()?;
    let server = client.peer_addr().ok()?;
    tcp_queues(server, local).map(|(_, rx)| rx)
}

/// `(tx_queue, rx_queue)` of the IPv4 socket bound to `local` and connected to `remote`.
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
        if port_of(l)? != local.port() || port_of(r)? != remote.port() {
            return None;
        }
        let (tx, rx) = queues.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// Waits until every byte sent on `client` has reached the server's socket (none left in
/// `client`'s send queue) and at most `unread` of them are still there: the server has
/// taken the rest. A server receiving a large payload leaves its first bytes in the socket
/// until all of it has arrived (its low-water mark, `net/recv_all.rs`).
pub fn wait_server_received(client: &TcpStream, unread: u64) {
    let (local, server) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    super::eventually("the server to receive everything sent", || {
        let sent = tcp_queues(local, server).is_some_and(|(tx, _)| tx == 0);
        sent && server_rx_queue(client).is_some_and(|rx| rx <= unread)
    });
}

/// Waits until the server has taken every byte sent on `client` out of its socket.
pub fn wait_server_consumed(client: &TcpStream) {
    wait_server_received(client, 0);
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib << 10)
}
