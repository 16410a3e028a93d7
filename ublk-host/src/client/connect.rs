//! Opening a connection: TCP (`TCP_NODELAY`, and the liveness options below), then the
//! mutual handshake, with blocking std sockets and one deadline for the whole attempt.
//!
//! Liveness: `TCP_USER_TIMEOUT` is the configured dead bound (data the peer does not
//! acknowledge for that long kills the connection), and TCP keepalive probes an idle
//! connection after the same bound, [`KEEPALIVE_PROBES`] times [`KEEPALIVE_INTERVAL`]
//! apart, so even a lane with nothing outstanding is found dead within a bounded time.
//!
//! The established socket is handed over as a plain [`TcpStream`]; a data lane then does
//! all its I/O on its queue's io_uring.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde::Serialize;
use wire::frame::encode_message;
use wire::{
    ClientHandshake, FrameDecoder, FrameHeader, HelloReply, Limits, Progress, ProofReply, Purpose,
    Welcome,
};

use crate::client::config::ClientConfig;
use crate::error::{HostError, Result};

/// Pause between two keepalive probes of an idle connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered keepalive probes after which an idle connection is dead.
pub const KEEPALIVE_PROBES: u32 = 5;

/// An authenticated connection.
#[derive(Debug)]
pub struct Connection {
    /// The socket, blocking, with `TCP_NODELAY` and no timeouts set.
    pub stream: TcpStream,
    /// What the server said about the session.
    pub welcome: Welcome,
}

/// Connects to the server and authenticates for `purpose`, within the configured deadline.
pub fn connect(config: &ClientConfig, purpose: Purpose) -> Result<Connection> {
    let deadline = Instant::now() + config.handshake_timeout;
    let connect_deadline = deadline.min(Instant::now() + config.connect_timeout);
    let stream = connect_tcp(&config.server, connect_deadline)?;
    set_liveness(&stream, config.dead_after)
        .map_err(|e| HostError::io("setting TCP_USER_TIMEOUT and keepalive", e))?;
    let timed_out = || HostError::HandshakeTimeout {
        addr: config.server.clone(),
        secs: config.handshake_timeout.as_secs_f64(),
    };
    let welcome = match handshake(&stream, config, purpose, deadline) {
        Err(HostError::Io { source, .. }) if is_timeout(&source) => return Err(timed_out()),
        other => other?,
    };
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| HostError::io("clearing socket timeouts", e))?;
    Ok(Connection { stream, welcome })
}

/// Sets `TCP_USER_TIMEOUT` and keepalive from the dead bound (see the module doc).
pub fn set_liveness(stream: &TcpStream, dead_after: Duration) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_user_timeout(Some(dead_after))?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(dead_after)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)
}

/// The kernel's `struct tcp_info` up to `tcpi_bytes_received` (Linux 4.1): glibc's
/// `tcp_info`, and so the `libc` crate's, ends before it.
#[repr(C)]
#[derive(Default)]
struct TcpInfoHead {
    /// `tcpi_state` .. the wscale and app-limited bit fields.
    bytes: [u8; 8],
    /// `tcpi_rto` .. `tcpi_total_retrans`.
    words: [u32; 24],
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
}

/// Bytes the connection has received in all (`TCP_INFO`'s `tcpi_bytes_received`); `None`
/// where the socket or kernel does not say. A stream that still brings bytes is alive,
/// however slowly a large reply arrives.
pub fn bytes_received(stream: &TcpStream) -> Option<u64> {
    let mut info = TcpInfoHead::default();
    let mut len = std::mem::size_of::<TcpInfoHead>() as libc::socklen_t;
    // SAFETY: `info` is plain old data of `len` bytes; the kernel writes at most `len`
    // bytes and reports how many in `len`.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut TcpInfoHead).cast(),
            &mut len,
        )
    };
    let whole = len as usize == std::mem::size_of::<TcpInfoHead>();
    (result == 0 && whole).then_some(info.bytes_received)
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn resolve(server: &str) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = server
        .to_socket_addrs()
        .map_err(|source| HostError::Resolve {
            addr: server.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(HostError::Resolve {
            addr: server.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        });
    }
    Ok(addrs)
}

fn connect_tcp(server: &str, deadline: Instant) -> Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "deadline passed");
    for addr in resolve(server)? {
        let Some(left) = remaining(deadline) else {
            break;
        };
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| HostError::io("setting TCP_NODELAY", e))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(HostError::Connect {
        addr: server.to_owned(),
        source: last,
    })
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// Arms the socket's timeouts with what is left of the deadline.
fn arm(stream: &TcpStream, deadline: Instant) -> Result<()> {
    let left = remaining(deadline).ok_or_else(|| {
        HostError::io(
            "handshake",
            io::Error::new(io::ErrorKind::TimedOut, "deadline passed"),
        )
    })?;
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(|e| HostError::io("setting socket timeouts", e))
}

fn handshake(
    stream: &TcpStream,
    config: &ClientConfig,
    purpose: Purpose,
    deadline: Instant,
) -> Result<Welcome> {
    let (mut state, hello) =
        ClientHandshake::new(&config.host, config.secret.clone(), purpose, nonce()?)?;
    arm(stream, deadline)?;
    write_message(stream, &hello)?;
    arm(stream, deadline)?;
    let reply: HelloReply = read_message(stream, "HelloReply")?;
    let proof = state.on_hello_reply(reply)?;
    arm(stream, deadline)?;
    write_message(stream, &proof)?;
    arm(stream, deadline)?;
    let reply: ProofReply = read_message(stream, "ProofReply")?;
    Ok(state.on_proof_reply(reply)?)
}

/// A lane epoch newer than every one this host handed out before, in this process or an
/// earlier one (a daemon that took over after a crash included): the wall clock in
/// nanoseconds, forced to grow within the process.
pub fn next_lane_epoch() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        });
    let mut last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(
            last,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A fresh random handshake nonce.
pub fn nonce() -> Result<wire::Nonce> {
    let mut nonce = [0u8; wire::NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| {
        HostError::io(
            "generating a nonce",
            io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    Ok(nonce)
}

/// Writes one payload-less frame.
pub fn write_message<M: Serialize>(mut stream: &TcpStream, message: &M) -> Result<()> {
    let bytes = encode_message(message)?;
    stream
        .write_all(&bytes)
        .map_err(|e| HostError::io("sending a frame", e))
}

/// Bytes reserved up front for a handshake or control head (most are far smaller; a
/// larger one grows the buffer, up to what the limits allow).
const HEAD_CAPACITY: usize = 256;

/// Reads one payload-less frame (handshake and control limits) with wire's
/// [`FrameDecoder`]. Each receive asks for exactly the bytes the decoder still needs, so
/// nothing past the frame is taken from the socket. Errors name the message by
/// [`FrameHeader::WHAT`]; `_what` stays for the callers' sake.
pub fn read_message<M: FrameHeader>(mut stream: &TcpStream, _what: &'static str) -> Result<M> {
    let mut decoder = FrameDecoder::new(Limits::HANDSHAKE);
    let mut buffered = Vec::with_capacity(HEAD_CAPACITY);
    loop {
        let more = match decoder.next_head::<M>(&buffered)? {
            Progress::Ready(head) => return Ok(head.message),
            Progress::NeedMore(more) => more,
        };
        let filled = buffered.len();
        buffered.resize(filled + more, 0);
        let received = read_some(&mut stream, &mut buffered[filled..])?;
        buffered.truncate(filled + received);
        if received == 0 {
            decoder.eof(&buffered)?;
            return Err(HostError::Closed);
        }
    }
}

/// One receive into `buf`, retried when interrupted; `Ok(0)` at end of stream.
fn read_some(stream: &mut &TcpStream, buf: &mut [u8]) -> Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result.map_err(|e| HostError::io("receiving a frame", e)),
        }
    }
}
