//! The TCP server.
//!
//! # Threads
//!
//! [`start`] binds `threads` listening sockets to the same address with `SO_REUSEPORT`
//! (the first one picks the port when it is 0) and runs one tokio-uring runtime per
//! thread, each accepting on its own socket: the kernel spreads new connections over
//! the threads, and a connection lives on the thread that accepted it, with its own
//! io_uring for the socket and the disks. Nothing on the data path crosses threads.
//! With 2..N threads on N CPUs each thread is pinned to a CPU and takes the connections
//! that arrive there (`placement`); while the requests are large on average, the threads
//! run on any CPU (`spread`, the policy, applied by `spreader`).
//!
//! # Connections
//!
//! Each connection runs the handshake under a deadline, registers in [`Sessions`], then
//! serves control ([`control`]) or data ([`data`]). A frame that does not decode closes
//! that connection only. Beyond `max_connections` sessions, hellos are answered
//! `Refused(Busy)`. Connections still in their handshake have a small room of their own,
//! and a failing `accept` backs off (see `net/admission.rs`). A connection that ends while a
//! receive is pending on its socket (a missed deadline, an aborted reader) shuts the socket
//! down first, so that the receive completes and the descriptor is really closed.

mod admission;
mod budget;
mod control;
mod data;
mod frames;
mod handshake;
mod live;
mod liveness;
mod placement;
mod recv_all;
mod reply_queue;
mod reply_run;
mod sessions;
mod spread;
mod spreader;

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use socket2::{Domain, Socket, Type};
use tokio::sync::watch;
use tokio_uring::net::{TcpListener, TcpStream};

pub use crate::array::io::buffer::{AlignedBuf, BufPart, BUFFER_ALIGN, DATA_OFFSET};
pub use live::{
    LiveSessions, PartitionTraffic, PathTraffic, SessionKind, SessionSnapshot, Traffic,
};
pub use sessions::{
    CounterView, LaneCounters, Session, SessionView, Sessions, LATENCY_BOUNDS_US, LATENCY_BUCKETS,
};

use crate::array::io::DiskSet;
use crate::array::Array;
use crate::error::{Error, Result};
use admission::{AcceptBackoff, Unauthenticated};
use frames::{send_message, FrameReader};

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 7700;
/// Default cap on live authenticated connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on one host's live authenticated connections: twice what 64 queues x 4
/// lanes x 2 paths open, a quarter of [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_HOST_CONNECTIONS: usize = 1024;
/// Default cap on connections that have not finished their handshake.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;
/// Default number of requests one connection runs at once.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
/// Default byte budget of one data connection: 16 of the largest reads.
pub const DEFAULT_MAX_LANE_BYTES: u32 = 64 << 20;
/// Default byte budget all the data connections of one host share: 16 lanes' worth.
pub const DEFAULT_MAX_HOST_BYTES: u64 = 1 << 30;
/// Default deadline for a handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Listen backlog of each socket.
const LISTEN_BACKLOG: i32 = 1024;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Further addresses to listen on, one per further network a host may reach the
    /// server over (its multipath paths); each thread accepts on all of them.
    pub also_listen: Vec<SocketAddr>,
    /// The addresses `Welcome` announces to hosts (`wire::Welcome::addresses`); empty:
    /// the bound listen addresses, except wildcard ones (`0.0.0.0`, `::`), which no host
    /// can dial.
    pub announce: Vec<String>,
    /// Runtime threads, each with its own listener and io_uring.
    pub threads: usize,
    /// Pin thread `i` to the `i`-th CPU and hand each new connection to the thread on the
    /// CPU its SYN arrived on (see `net/placement.rs`); applies with 2 to N threads on N
    /// usable CPUs. While the requests are large on average, the threads run on any CPU
    /// (`net/spread.rs`).
    pub pin_threads: bool,
    /// Most live authenticated connections; more are refused with `Busy`.
    pub max_connections: usize,
    /// Most live authenticated connections of one host; more are refused with `Busy`, so
    /// that one host cannot take every place.
    pub max_host_connections: usize,
    /// Most connections still in their handshake (see `net/admission.rs`).
    pub max_unauthenticated: usize,
    /// Largest payload per request, offered in `Welcome`.
    pub max_io: u32,
    /// Requests one data connection runs at once.
    pub max_in_flight: u32,
    /// Deadline for a connection's handshake.
    pub handshake_timeout: Duration,
    /// Bytes of read data and write payloads one data connection holds at once (raised to
    /// `max_io` if below); see `data`'s module docs.
    pub max_lane_bytes: u32,
    /// Bytes of read data and write payloads all the data connections of one host hold at
    /// once (raised to `max_io` if below): a host cannot hold more of the server's memory
    /// by opening more lanes.
    pub max_host_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            also_listen: Vec::new(),
            announce: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_threads: true,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_host_connections: DEFAULT_MAX_HOST_CONNECTIONS,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_io: wire::DEFAULT_MAX_IO,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_lane_bytes: DEFAULT_MAX_LANE_BYTES,
            max_host_bytes: DEFAULT_MAX_HOST_BYTES,
        }
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Hellos refused because of `max_connections`.
    pub refused_busy: AtomicU64,
    /// Proofs that failed (unknown host or wrong secret).
    pub failed_authentications: AtomicU64,
    /// Data connections for a partition the host does not hold.
    pub refused_not_assigned: AtomicU64,
    /// Handshakes that missed their deadline.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed for a frame that did not decode.
    pub protocol_errors: AtomicU64,
    /// Unauthenticated connections shut down to make room for newer ones.
    pub evicted_unauthenticated: AtomicU64,
    /// `accept` calls that failed (out of descriptors...).
    pub accept_failures: AtomicU64,
}

/// A snapshot of [`ServerStats`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatsView {
    /// Connections accepted.
    pub accepted: u64,
    /// Hellos refused for the connection cap.
    pub refused_busy: u64,
    /// Failed proofs.
    pub failed_authentications: u64,
    /// Refused data connections (not assigned).
    pub refused_not_assigned: u64,
    /// Handshake deadlines missed.
    pub handshake_timeouts: u64,
    /// Connections closed for malformed frames.
    pub protocol_errors: u64,
    /// Unauthenticated connections evicted for newer ones.
    pub evicted_unauthenticated: u64,
    /// Failed `accept` calls.
    pub accept_failures: u64,
    /// Authenticated connections open now.
    pub live_connections: usize,
    /// Whether the pinned server threads run on any CPU now, while the requests are large
    /// on average (see `net/spread.rs`).
    pub threads_unpinned: bool,
}

/// What every thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) array: Arc<Array>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) config: ServerConfig,
    /// Authenticated connections open now.
    live: Arc<AtomicUsize>,
    /// `max_connections` as the descriptor limit allows (see [`admission`]).
    session_room: usize,
    /// Drawn at start; announced in every `Welcome` (see `wire::Welcome::boot_epoch`).
    pub(crate) boot_epoch: u64,
    /// Announced in every `Welcome` (see [`announced_addresses`]).
    pub(crate) announced: Vec<String>,
}

/// What `Welcome` announces: `announce` when configured, else every bound address that
/// is not a wildcard.
fn announced_addresses(announce: &[String], bound: &[SocketAddr]) -> Vec<String> {
    if !announce.is_empty() {
        return announce.to_vec();
    }
    bound
        .iter()
        .filter(|address| !address.ip().is_unspecified())
        .map(ToString::to_string)
        .collect()
}

/// A running server; [`RunningServer::stop`] (or dropping it) shuts it down.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    also_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Lets the pinned threads go while the requests are large; `None` when threads are
    /// not pinned.
    spreader: Option<spreader::Spreader>,
}

impl RunningServer {
    /// The address the server listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every address the server listens on: [`RunningServer::local_addr`], then those of
    /// `also_listen`, in order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.local_addr)
            .chain(self.also_addrs.iter().copied())
            .collect()
    }

    /// The array it serves.
    pub fn array(&self) -> &Arc<Array> {
        &self.shared.array
    }

    /// Live sessions and their counters.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.shared.sessions
    }

    /// The read-only view of the server while it runs: sessions, traffic, refusals.
    pub fn live_sessions(&self) -> Arc<dyn LiveSessions> {
        self.shared.clone()
    }

    /// Server-wide counters.
    pub fn stats(&self) -> StatsView {
        let stats = &self.shared.stats;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsView {
            accepted: get(&stats.accepted),
            refused_busy: get(&stats.refused_busy),
            failed_authentications: get(&stats.failed_authentications),
            refused_not_assigned: get(&stats.refused_not_assigned),
            handshake_timeouts: get(&stats.handshake_timeouts),
            protocol_errors: get(&stats.protocol_errors),
            evicted_unauthenticated: get(&stats.evicted_unauthenticated),
            accept_failures: get(&stats.accept_failures),
            live_connections: self.shared.live.load(Ordering::Relaxed),
            threads_unpinned: self
                .spreader
                .as_ref()
                .is_some_and(spreader::Spreader::unpinned),
        }
    }

    /// Stops accepting, closes every connection, and waits for the threads to end. The
    /// server's references to the array (and the disks' locks with it, once the caller's
    /// own handles are gone) are released when this returns.
    pub fn stop(mut self) {
        self.shut_down();
    }

    /// Blocks until the server stops (it only stops through [`RunningServer::stop`] on
    /// another handle, so this is for binaries that serve until killed).
    pub fn wait(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    fn shut_down(&mut self) {
        self.spreader = None;
        self.shutdown.send_replace(true);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("a server thread panicked");
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Starts serving `array` with `config`; returns once every listener is bound.
pub fn start(array: Arc<Array>, config: ServerConfig) -> Result<RunningServer> {
    let threads = config.threads.max(1);
    let mut listeners: Vec<Vec<StdListener>> = (0..threads).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for address in std::iter::once(config.listen).chain(config.also_listen.iter().copied()) {
        refuse_if_listened_on(address)?;
        let first = bind_reuseport(address)?;
        let bound = first
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        listeners[0].push(first);
        for thread in listeners.iter_mut().skip(1) {
            thread.push(bind_reuseport(bound)?);
        }
        addrs.push(bound);
    }
    let placement = Arc::new(placement::Placement::plan(
        config.pin_threads,
        threads,
        &placement::allowed_cpus(),
    ));
    for listener in &listeners[0] {
        placement.steer(listener)?;
    }
    let local_addr = addrs[0];
    let also_addrs = addrs[1..].to_vec();
    let fd_limit = admission::raise_fd_limit();
    let session_room =
        admission::session_room(fd_limit, config.max_connections, config.max_unauthenticated);
    let announced = announced_addresses(&config.announce, &addrs);
    let shared = Arc::new(Shared {
        announced,
        array,
        sessions: Arc::default(),
        stats: Arc::default(),
        session_room,
        config,
        live: Arc::default(),
        boot_epoch: draw_boot_epoch()?,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let mut handles = Vec::with_capacity(threads);
    let tids: spreader::ThreadIds = (0..threads).map(|_| AtomicI32::new(0)).collect();
    for (index, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let shutdown_rx = shutdown_rx.clone();
        let ready = ready_tx.clone();
        let placement = placement.clone();
        let tids = tids.clone();
        let handle = std::thread::Builder::new()
            .name(format!("array-net-{index}"))
            .spawn(move || {
                if let Err(error) = placement.pin_current_thread(index) {
                    log::warn!("{error}; the thread runs unpinned");
                }
                tids[index].store(placement::current_thread_id(), Ordering::Relaxed);
                tokio_uring::start(run_thread(listener, shared, shutdown_rx, ready))
            })
            .map_err(|e| Error::io("starting a server thread", e))?;
        handles.push(handle);
    }
    drop(ready_tx);
    // Every thread has its ring and its disk handles before `start` returns; on an error
    // dropping `server` stops the threads that did start.
    let mut server = RunningServer {
        local_addr,
        also_addrs,
        shared,
        shutdown,
        threads: handles,
        spreader: None,
    };
    for _ in 0..threads {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(Error::io(
                    "starting a server thread",
                    std::io::Error::other("the thread stopped before it was ready"),
                ))
            }
        }
    }
    if placement.is_pinned() {
        let sessions = server.shared.sessions.clone();
        server.spreader = Some(spreader::Spreader::start(
            placement.clone(),
            sessions,
            tids,
        )?);
        log::info!(
            "serving on {addrs:?} with {threads} threads pinned to CPUs {:?}, connections \
             steered to the thread on their incoming CPU",
            placement.cpus
        );
    } else {
        log::info!("serving on {addrs:?} with {threads} threads");
    }
    Ok(server)
}

/// A fresh random boot epoch (never 0, so a host can use 0 for "none seen yet").
fn draw_boot_epoch() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        Error::io(
            "drawing the boot epoch",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(u64::from_le_bytes(bytes).max(1))
}

/// Fails if a socket already listens on `address` (another server, or this one started
/// twice): the listeners bind with `SO_REUSEPORT`, which would let a second server share
/// the port silently and the kernel split the hosts' connections between the two. A probe
/// bound without `SO_REUSEPORT` (with `SO_REUSEADDR`, so that connections of an earlier
/// run in `TIME_WAIT` do not count) is refused only by a listening socket.
fn refuse_if_listened_on(address: SocketAddr) -> Result<()> {
    if address.port() == 0 {
        return Ok(());
    }
    let fail = |e| Error::io(format!("listening on {address}"), e);
    let probe = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(fail)?;
    probe.set_reuse_address(true).map_err(fail)?;
    match probe.bind(&address.into()) {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(Error::io(
            format!("listening on {address}: the address is in use (is another array-server serving it?)"),
            error,
        )),
        other => other.map_err(fail),
    }
}

fn bind_reuseport(address: SocketAddr) -> Result<StdListener> {
    let fail = |e| Error::io(format!("listening on {address}"), e);
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.bind(&address.into()).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)?;
    Ok(socket.into())
}

/// Accepts on every one of the thread's `listeners` (one per listen address) until the
/// shutdown.
async fn run_thread(
    listeners: Vec<StdListener>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let disks = match DiskSet::new(&shared.array) {
        Ok(disks) => Rc::new(disks),
        Err(error) => {
            log::error!("server thread cannot open the disks: {error}");
            let _ = ready.send(Err(error));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let threads = shared.config.threads.max(1);
    let waiting = Unauthenticated::new(shared.config.max_unauthenticated / threads);
    // Every accept loop runs as a task, and this future (the runtime's root) only waits
    // for the first: tokio polls the root future each time it runs any task of the
    // thread, so a root that ran an accept loop's `select!` itself cost every request
    // a few hundred instructions (callgrind, scripts/bench-instructions).
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio_uring::spawn(accept_loop(
                TcpListener::from_std(listener),
                shared.clone(),
                disks.clone(),
                waiting.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    if let Some(first) = loops.into_iter().next() {
        let _ = first.await;
    }
}

/// Accepts connections on `listener` until the shutdown; `waiting` is the thread's
/// unauthenticated connections, shared by its listeners.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    disks: Rc<DiskSet>,
    waiting: Rc<RefCell<Unauthenticated>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    let stream = Rc::new(stream);
                    let admission = waiting.borrow_mut().admit(stream.clone(), peer.ip());
                    if admission.evicted {
                        shared.stats.evicted_unauthenticated.fetch_add(1, Ordering::Relaxed);
                    }
                    let slot = WaitingSlot {
                        waiting: waiting.clone(),
                        id: admission.id,
                        spoke: admission.spoke,
                    };
                    tokio_uring::spawn(connection(shared.clone(), disks.clone(), stream, peer, slot));
                }
                Err(error) => {
                    shared.stats.accept_failures.fetch_add(1, Ordering::Relaxed);
                    let pause = backoff.failed(&error);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// A connection's place among the unauthenticated ones, left when dropped.
struct WaitingSlot {
    waiting: Rc<RefCell<Unauthenticated>>,
    id: u64,
    /// Set by the handshake once the peer's `Hello` decoded.
    spoke: Rc<std::cell::Cell<bool>>,
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.waiting.borrow_mut().leave(self.id);
    }
}

/// Counts a live authenticated connection while it exists.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    shared: Arc<Shared>,
    disks: Rc<DiskSet>,
    stream: Rc<TcpStream>,
    peer: SocketAddr,
    slot: WaitingSlot,
) {
    shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = stream.set_nodelay(true) {
        log::debug!("{peer}: TCP_NODELAY: {error}");
    }
    // Silent peers (no RST) are dropped within a bound; see liveness.rs.
    if let Err(error) = liveness::set(&stream) {
        log::debug!("{peer}: keepalive / TCP_USER_TIMEOUT: {error}");
    }
    let local =
        liveness::local_addr(&stream).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut reader = FrameReader::new(stream.clone());
    let busy = shared.live.load(Ordering::Relaxed) >= shared.session_room;
    let deadline = shared.config.handshake_timeout;
    let handshake = handshake::run(&stream, &mut reader, &shared, peer, busy, &slot.spoke);
    let outcome = tokio::time::timeout(deadline, handshake).await;
    drop(slot);
    let admitted = match outcome {
        Err(_) => {
            shared
                .stats
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            log::info!("{peer}: handshake not done within {deadline:?}; closing");
            // The abandoned receive holds the socket until it completes.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        Ok(Err(error)) => {
            note_failure(&shared, peer, &error);
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(admitted))) => admitted,
    };
    shared.live.fetch_add(1, Ordering::Relaxed);
    let _live = LiveGuard(shared.live.clone());
    let guard = shared
        .sessions
        .register(&admitted.host, (peer, local), admitted.purpose);
    if let Err(error) = send_message(&stream, &wire::ProofReply::Welcome(admitted.welcome)).await {
        log::debug!("{peer}: {error}");
        return;
    }
    log::debug!(
        "{peer}: host {:?} connected for {:?}",
        admitted.host,
        admitted.purpose
    );
    let outcome = match admitted.grant {
        None => control::serve(&shared, stream, reader, &admitted.host).await,
        Some(grant) => {
            let session = guard.session.clone();
            data::serve(shared.clone(), disks, stream, reader, session, grant).await
        }
    };
    if let Err(error) = outcome {
        note_failure(&shared, peer, &error);
    }
    drop(guard);
}

fn note_failure(shared: &Shared, peer: SocketAddr, error: &Error) {
    if matches!(error, Error::Wire(_)) {
        shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        log::info!("{peer}: closing connection: {error}");
    } else {
        log::debug!("{peer}: connection ended: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_not_announced_unless_configured() {
        let bound: Vec<SocketAddr> = ["0.0.0.0:7700", "10.1.0.2:7700", "[::]:7700"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(announced_addresses(&[], &bound), ["10.1.0.2:7700"]);
        let configured = ["a.example:7700".to_owned()];
        assert_eq!(announced_addresses(&configured, &bound), configured);
    }
}
