//! Descriptors are released and budgeted: a missed handshake deadline and an ended
//! control session really close their sockets; silent unauthenticated connections cannot
//! lock authenticated hosts out; a failing `accept` backs off instead of spinning. The
//! server runs in this process, so its descriptors are this process's (`/proc/self/fd`);
//! the tests of this binary take turns.

mod common;

use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use array_server::net::{self, RunningServer, ServerConfig};
use common::probe::open_fds;
use common::*;
use wire::{Purpose, Status};

/// Silent connections opened against the handshake deadline.
const SILENT: usize = 200;
/// Control sessions ended by the server while their peers stay silent.
const CONTROLS: usize = 50;
/// Connections of the unauthenticated flood.
const FLOOD: usize = 400;
/// The server's cap on unauthenticated connections in the flood test.
const UNAUTHENTICATED_CAP: usize = 64;
/// The unauthenticated room in the test of a host amid a flood.
const SMALL_ROOM: usize = 8;
/// Descriptors the test process may open beyond its own sockets and the server's cap.
const MARGIN: u64 = 48;
/// Descriptors that may come and go besides the ones counted (runtime internals).
const SLACK: usize = 8;
/// Short handshake deadline for the deadline test.
const SHORT_DEADLINE: Duration = Duration::from_millis(300);
/// How long failing accepts are watched.
const OBSERVE: Duration = Duration::from_secs(2);
/// Most failed accepts allowed in [`OBSERVE`]: with pauses from 10 ms doubling up to 1 s
/// there are about 9; a fixed 50 ms pause would give 40.
const MAX_FAILURES_OBSERVED: u64 = 12;

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets the soft descriptor limit; the previous one is restored on drop.
struct FdLimit(libc::rlimit);

impl FdLimit {
    fn set(soft: u64) -> FdLimit {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `getrlimit` fills the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: plain system call with a valid struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        FdLimit(old)
    }
}

impl Drop for FdLimit {
    fn drop(&mut self) {
        // SAFETY: plain system call with the limit read before.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

struct Setup {
    _disks: Disks,
    server: RunningServer,
    secret: String,
    partition: u32,
}

fn setup(config: ServerConfig) -> Setup {
    let rig = assigned(2, 1 << 20);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    let server = net::start(rig.array, config).unwrap();
    Setup {
        _disks: rig.disks,
        server,
        secret: rig.secret,
        partition: rig.partition.id,
    }
}

/// A host connects a lane and writes and reads back a block.
fn host_does_io(setup: &Setup) {
    let mut lane = Client::data(
        setup.server.local_addr(),
        "h",
        &setup.secret,
        setup.partition,
    );
    let data = pattern(9, 4096);
    assert_eq!(lane.write(0, &data), Status::Ok);
    assert_eq!(lane.read_ok(0, 4096), data);
}

#[test]
fn silent_connections_release_their_descriptors_at_the_deadline() {
    let _turn = turn();
    let setup = setup(ServerConfig {
        handshake_timeout: SHORT_DEADLINE,
        max_unauthenticated: SILENT * 2,
        threads: 2,
        ..ServerConfig::default()
    });
    let baseline = open_fds();
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| open_stream(setup.server.local_addr()))
        .collect();
    eventually("every silent connection to miss its deadline", || {
        setup.server.stats().handshake_timeouts >= SILENT as u64
    });
    eventually("the server to close their descriptors", || {
        open_fds() <= baseline + SILENT + SLACK
    });
    drop(silent);
    host_does_io(&setup);
}

#[test]
fn ended_control_sessions_release_their_descriptors() {
    let _turn = turn();
    let setup = setup(ServerConfig {
        threads: 2,
        ..ServerConfig::default()
    });
    let array = setup.server.array().clone();
    array.create_host("gone").unwrap();
    let secret = array.create_host("quiet").unwrap().secret;
    let baseline = open_fds();
    let controls: Vec<Client> = (0..CONTROLS)
        .map(|_| Client::control(setup.server.local_addr(), "quiet", &secret))
        .collect();
    array.delete_host_forced("quiet").unwrap();
    eventually("the control sessions to end", || {
        setup.server.sessions().control_sessions("quiet").is_empty()
    });
    eventually("the server to close their descriptors", || {
        open_fds() <= baseline + CONTROLS + SLACK
    });
    drop(controls);
}

#[test]
fn a_flood_of_silent_connections_cannot_lock_hosts_out() {
    let _turn = turn();
    let setup = setup(ServerConfig {
        max_unauthenticated: UNAUTHENTICATED_CAP,
        threads: 2,
        ..ServerConfig::default()
    });
    let baseline = open_fds();
    // Room for the flood's own sockets and the server's unauthenticated cap, no more.
    let _limit = FdLimit::set((baseline + FLOOD + UNAUTHENTICATED_CAP) as u64 + MARGIN);
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map_while(|_| TcpStream::connect(setup.server.local_addr()).ok())
        .collect();
    eventually("the server to take the flood", || {
        setup.server.stats().accepted >= flood.len() as u64
    });
    host_does_io(&setup);
    assert_eq!(flood.len(), FLOOD, "the flood ran out of descriptors");
    eventually("the server to hold at most its cap", || {
        open_fds() <= baseline + FLOOD + UNAUTHENTICATED_CAP + SLACK
    });
    assert!(setup.server.stats().evicted_unauthenticated >= (FLOOD - UNAUTHENTICATED_CAP) as u64);
}

#[test]
fn a_host_that_said_hello_outlasts_a_flood_of_silent_connections() {
    let _turn = turn();
    let setup = setup(ServerConfig {
        max_unauthenticated: SMALL_ROOM,
        threads: 1,
        ..ServerConfig::default()
    });
    let addr = setup.server.local_addr();
    let mut flood: Vec<TcpStream> = Vec::new();
    let purpose = Purpose::Data {
        partition: setup.partition,
        queue: 0,
        lane: 0,
        epoch: next_epoch(),
    };
    // The host has its challenge (the server read its hello) when the flood comes, from
    // the host's own address, and sends its proof only after the flood took every place.
    let mut lane = Client::connect_pausing(addr, "h", &setup.secret, purpose, || {
        flood = (0..SMALL_ROOM * 10).map(|_| open_stream(addr)).collect();
        eventually("the server to take the flood", || {
            setup.server.stats().accepted > flood.len() as u64
        });
    })
    .expect("the host's handshake outlasts the flood");
    let data = pattern(11, 4096);
    assert_eq!(lane.write(0, &data), Status::Ok);
    assert_eq!(lane.read_ok(0, 4096), data);
    let evicted = setup.server.stats().evicted_unauthenticated;
    assert!(evicted >= (SMALL_ROOM * 9) as u64, "evicted {evicted}");
}

#[test]
fn failing_accepts_back_off() {
    let _turn = turn();
    // One thread, so one accept loop backs off.
    let setup = setup(ServerConfig {
        threads: 1,
        ..ServerConfig::default()
    });
    let waiting = {
        let _limit = FdLimit::set(open_fds() as u64 + 2);
        let waiting: Vec<TcpStream> = (0..2)
            .map_while(|_| TcpStream::connect(setup.server.local_addr()).ok())
            .collect();
        eventually("accept to fail for want of descriptors", || {
            setup.server.stats().accept_failures > 0
        });
        let before = setup.server.stats().accept_failures;
        let until = Instant::now() + OBSERVE;
        while Instant::now() < until {
            std::thread::sleep(OBSERVE / 10);
        }
        let failures = setup.server.stats().accept_failures - before;
        assert!(
            failures <= MAX_FAILURES_OBSERVED,
            "{failures} failed accepts in {OBSERVE:?}"
        );
        waiting
    };
    // With descriptors back, the server accepts again within its longest pause.
    host_does_io(&setup);
    drop(waiting);
}
