//! Native multipath against the real array server, started in-process and listening on
//! two loopback addresses (127.0.0.1 and 127.0.0.2). Path 0 runs through a proxy the
//! test owns, which can cut it silently (no byte, no FIN, no RST) and heal it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use array_server::net::{RunningServer, ServerConfig};
use common::real::{any_loopback_port, RealArray};
use common::{pattern, within, KIB};
use ublk_host::client::{
    run_queue_thread, uring, BlockIo, ClientConfig, Discovery, EngineConfig, LanePath, PathPolicy,
    PathSnapshot, PathStats, QueueEngine,
};
use wire::{Access, Op, PartitionInfo};

const DISKS: usize = 2;
const DISK_SIZE: u64 = 16 << 20;
const PARTITION_SIZE: u64 = 8 << 20;
const LIMIT: Duration = Duration::from_secs(120);
/// The dead-lane bound and handshake deadline the tests run with.
const DEAD_AFTER: Duration = Duration::from_secs(2);
/// Slack on top of a bound for scheduling, the lane clock's tick and the server's fence.
const SLACK: Duration = Duration::from_secs(3);
/// Writes in flight at once.
const DEPTH: u64 = 16;
const BLOCK: u32 = 16 * KIB;
/// How often the proxy's pumps look at the cut flag while idle.
const PUMP_POLL: Duration = Duration::from_millis(50);

struct Setup {
    array: RealArray,
    server: RunningServer,
}

/// The array, served on two loopback addresses (the two paths).
fn setup() -> Setup {
    let array = RealArray::format(DISKS, DISK_SIZE, PARTITION_SIZE, Access::ReadWrite);
    let server = array.serve_with(ServerConfig {
        listen: any_loopback_port(),
        also_listen: vec!["127.0.0.2:0".parse().unwrap()],
        threads: 1,
        ..ServerConfig::default()
    });
    Setup { array, server }
}

/// A TCP proxy that can cut its connections silently. A connection alive across a cut
/// or a heal never forwards again (its stream lost bytes), like a TCP connection whose
/// peer timed out; new ones made after the heal work.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    cut: AtomicBool,
    era: AtomicU64,
    stop: AtomicBool,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        let era = shared.era.load(Ordering::Relaxed);
                        pump(&client, &server, era, &shared);
                        pump(&server, &client, era, &shared);
                    }
                    Err(_) => std::thread::sleep(PUMP_POLL),
                }
            }
        });
        Proxy { addr, state }
    }

    fn set_cut(&self, cut: bool) {
        self.state.era.fetch_add(1, Ordering::Relaxed);
        self.state.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` on a thread while the connection's `era` is current and the
/// proxy is not cut; swallows everything otherwise.
fn pump(from: &TcpStream, to: &TcpStream, era: u64, state: &Arc<ProxyState>) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    let state = state.clone();
    from.set_read_timeout(Some(PUMP_POLL)).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !state.stop.load(Ordering::Relaxed) {
            let alive = || state.era.load(Ordering::Relaxed) == era;
            match from.read(&mut buf) {
                Ok(0) => {
                    if alive() {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(n) if alive() && !state.cut.load(Ordering::Relaxed) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    });
}

fn client(setup: &Setup, path0: SocketAddr) -> ClientConfig {
    let mut config = ClientConfig::new(path0.to_string(), "h1", setup.array.secret.clone());
    config.more_paths = vec![setup.server.local_addrs()[1].to_string()];
    config.handshake_timeout = DEAD_AFTER;
    config.dead_after = DEAD_AFTER;
    config
}

fn partition(config: &ClientConfig) -> PartitionInfo {
    Discovery::open(config)
        .unwrap()
        .list()
        .unwrap()
        .find("vol")
        .unwrap()
        .clone()
}

/// Writes `DEPTH` blocks at once (block `i` of wave `wave` at `i * BLOCK`), each with
/// the wave's pattern; panics on any error.
async fn write_wave(engine: &std::rc::Rc<QueueEngine>, wave: u8) {
    let tasks: Vec<_> = (0..DEPTH)
        .map(|i| {
            let engine = engine.clone();
            engine.clone().spawn(async move {
                let offset = i * u64::from(BLOCK);
                let io = BlockIo {
                    op: Op::Write,
                    offset,
                    len: BLOCK,
                    fua: false,
                };
                let data = pattern(offset, BLOCK as usize, wave);
                engine.execute_owned(io, data).await.0
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no write may fail while one path is up");
    }
}

/// Reads blocks `0..blocks` back and checks each holds wave `wave`'s pattern.
async fn read_back(engine: &QueueEngine, blocks: u64, wave: u8) {
    for i in 0..blocks {
        let offset = i * u64::from(BLOCK);
        let io = BlockIo {
            op: Op::Read,
            offset,
            len: BLOCK,
            fua: false,
        };
        let (outcome, data) = engine.execute_owned(io, vec![0; BLOCK as usize]).await;
        outcome.unwrap();
        assert!(data == pattern(offset, BLOCK as usize, wave), "block {i}");
    }
}

/// Runs write waves until `done` holds on the lanes' paths (bounded by `limit`); returns
/// how long it took and the last wave's number.
async fn waves_until(
    engine: &std::rc::Rc<QueueEngine>,
    mut wave: u8,
    limit: Duration,
    done: impl Fn(&[LanePath]) -> bool,
) -> (Duration, u8) {
    let started = Instant::now();
    loop {
        wave = wave.wrapping_add(1);
        write_wave(engine, wave).await;
        if done(&engine.lane_paths()) {
            return (started.elapsed(), wave);
        }
        assert!(
            started.elapsed() < limit,
            "lanes did not get there within {limit:?}: {:?}",
            engine.lane_paths()
        );
        // SAFETY: awaited to completion right here.
        unsafe { uring::sleep(Duration::from_millis(20)) }.await;
    }
}

fn path_requests(engine: &QueueEngine, lanes_per_path: usize) -> Vec<u64> {
    engine
        .lane_stats()
        .chunks(lanes_per_path)
        .map(|lanes| lanes.iter().map(|s| s.requests).sum())
        .collect()
}

/// Polls the device's path stats until `done` holds (lanes publish at their clock tick);
/// panics after [`SLACK`].
async fn stats_until(
    stats: &PathStats,
    done: impl Fn(&[PathSnapshot]) -> bool,
) -> Vec<PathSnapshot> {
    let started = Instant::now();
    loop {
        let now = stats.snapshot();
        if done(&now) {
            return now;
        }
        assert!(started.elapsed() < SLACK, "path stats stuck at {now:?}");
        // SAFETY: awaited to completion right here.
        unsafe { uring::sleep(Duration::from_millis(20)) }.await;
    }
}

#[test]
fn a_silently_cut_path_moves_its_writes_to_the_other_and_comes_back() {
    within(LIMIT, || {
        let setup = setup();
        let proxy = Proxy::start(setup.server.local_addrs()[0]);
        let mut config = EngineConfig::new(client(&setup, proxy.addr));
        config.lanes_per_queue = 2;
        let part = partition(&config.client);
        let proxy = Arc::new(proxy);
        let cutter = proxy.clone();
        let stats = config.path_stats.clone();
        let (failover, homing) = run_queue_thread(&config, &part, 0, move |engine| async move {
            assert_eq!(engine.path_count(), 2);
            assert_eq!(engine.lane_count(), 4);
            write_wave(&engine, 1).await;
            let before = path_requests(&engine, 2);
            assert!(
                before.iter().all(|&n| n > 0),
                "both paths carry: {before:?}"
            );

            cutter.set_cut(true);
            let moved = |paths: &[LanePath]| paths.iter().all(|p| p.up && p.via == 1);
            let (failover, wave) = waves_until(&engine, 1, LIMIT / 4, moved).await;
            read_back(&engine, DEPTH, wave).await;
            // The device's path stats show path 0 down and its traffic stopped.
            let lanes =
                |want: [u64; 2]| move |s: &[PathSnapshot]| s.iter().map(|p| p.lanes_up).eq(want);
            let cut = stats_until(&stats, lanes([0, 4])).await;
            assert!(!cut[0].up && cut[1].up, "{cut:?}");
            write_wave(&engine, wave).await;
            let during = stats.snapshot();
            assert_eq!(during[0].requests, cut[0].requests, "nothing over path 0");
            assert!(
                during[1].requests > cut[1].requests,
                "{cut:?} -> {during:?}"
            );

            cutter.set_cut(false);
            let home = |paths: &[LanePath]| paths.iter().all(|p| p.up && p.via == p.home);
            let (homing, wave) = waves_until(&engine, wave, LIMIT / 4, home).await;
            let healed = stats_until(&stats, lanes([2, 2])).await;
            assert!(healed.iter().all(|p| p.up), "{healed:?}");
            let back = path_requests(&engine, 2);
            write_wave(&engine, wave.wrapping_add(1)).await;
            let after = path_requests(&engine, 2);
            assert!(
                after[0] > back[0],
                "path 0 carries again: {back:?} -> {after:?}"
            );
            read_back(&engine, DEPTH, wave.wrapping_add(1)).await;
            let later = stats.snapshot();
            assert!(later[0].requests > healed[0].requests, "{later:?}");
            (failover, homing)
        })
        .unwrap();
        // Detection, one home attempt that stalls in the handshake, the takeover's fence.
        let bound = DEAD_AFTER * 2 + SLACK;
        assert!(
            failover < bound,
            "failover took {failover:?} (bound {bound:?})"
        );
        assert!(homing < bound, "homing took {homing:?} (bound {bound:?})");
        eprintln!("failover {failover:?}, back home {homing:?}");
    });
}

#[test]
fn round_robin_alternates_between_two_healthy_paths() {
    within(LIMIT, || {
        let setup = setup();
        let path0 = setup.server.local_addrs()[0];
        let mut config = EngineConfig::new(client(&setup, path0));
        config.path_policy = PathPolicy::RoundRobin;
        let part = partition(&config.client);
        let sessions = setup.server.sessions().clone();
        let part_id = part.id;
        let counts = run_queue_thread(&config, &part, 0, move |engine| async move {
            // The server sees one lane on each of its addresses, with its traffic.
            let mut locals: Vec<String> = sessions
                .data_lanes("h1", part_id)
                .iter()
                .map(|s| s.local.ip().to_string())
                .collect();
            locals.sort();
            assert_eq!(locals, vec!["127.0.0.1", "127.0.0.2"]);
            write_some(&engine).await;
            read_back(&engine, SOME, SOME_WAVE).await;
            let ops: Vec<u64> = sessions
                .data_lanes("h1", part_id)
                .iter()
                .map(|s| s.counters.snapshot().ops())
                .collect();
            assert_eq!(ops, vec![10, 10], "per-path server counters");
            path_requests(&engine, 1)
        })
        .unwrap();
        assert_eq!(counts, vec![10, 10], "10 writes then 10 reads, alternating");
    });
}

#[test]
fn traffic_on_both_paths_shows_in_the_device_path_stats() {
    within(LIMIT, || {
        let setup = setup();
        let path0 = setup.server.local_addrs()[0];
        let mut config = EngineConfig::new(client(&setup, path0));
        config.path_policy = PathPolicy::RoundRobin;
        let stats = config.path_stats.clone();
        let part = partition(&config.client);
        let seen = stats.clone();
        let snapshot = run_queue_thread(&config, &part, 0, move |engine| async move {
            write_some(&engine).await;
            read_back(&engine, SOME, SOME_WAVE).await;
            // Lanes publish their path at their next clock tick.
            stats_until(&seen, |s| s.iter().all(|path| path.up)).await
        })
        .unwrap();
        let per_path = u64::from(BLOCK) * 10;
        for (path, snap) in snapshot.iter().enumerate() {
            assert!(snap.up && snap.lanes_up == 1, "path {path}: {snap:?}");
            assert_eq!((snap.requests, snap.bytes), (10, per_path), "path {path}");
        }
        let closed = stats.snapshot();
        assert!(
            closed.iter().all(|path| !path.up && path.lanes_up == 0),
            "closed lanes leave their paths: {closed:?}"
        );
    });
}

/// Blocks [`write_some`] writes, one at a time.
const SOME: u64 = 10;
/// The wave whose pattern [`write_some`] writes.
const SOME_WAVE: u8 = 7;

/// Writes blocks `0..SOME` with wave [`SOME_WAVE`]'s pattern (what `read_back(engine,
/// SOME, SOME_WAVE)` checks).
async fn write_some(engine: &QueueEngine) {
    for i in 0..SOME {
        let io = BlockIo {
            op: Op::Write,
            offset: i * u64::from(BLOCK),
            len: BLOCK,
            fua: false,
        };
        let data = pattern(io.offset, BLOCK as usize, SOME_WAVE);
        engine.execute_owned(io, data).await.0.unwrap();
    }
}

#[test]
fn the_server_announces_both_addresses_and_all_paths_adds_the_missing_one() {
    within(LIMIT, || {
        let setup = setup();
        let addrs: Vec<String> = setup
            .server
            .local_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(addrs[0].starts_with("127.0.0.1:") && addrs[1].starts_with("127.0.0.2:"));
        let mut config = client(&setup, setup.server.local_addrs()[0]);
        config.more_paths.clear();
        let discovery = Discovery::open(&config).unwrap();
        assert_eq!(
            discovery.welcome().addresses,
            addrs,
            "discovery announces both"
        );
        let added = ublk_host::ublk::daemon::announced_paths(&config).unwrap();
        assert_eq!(added, addrs[1..], "one --server: the other is added");
        config.more_paths = added;
        assert_eq!(config.paths(), addrs);
        let again = ublk_host::ublk::daemon::announced_paths(&config).unwrap();
        assert!(again.is_empty(), "both given: nothing to add: {again:?}");
    });
}

#[test]
fn attach_refuses_a_path_to_a_server_that_does_not_know_the_host() {
    within(LIMIT, || {
        let one = setup();
        let other = setup();
        let mut config = client(&one, one.server.local_addrs()[0]);
        config.more_paths = vec![other.server.local_addrs()[0].to_string()];
        let options = ublk_host::ublk::AttachOptions {
            engine: EngineConfig::new(config),
            partition: "vol".into(),
            queues: 1,
            depth: 1,
            id: None,
            saved_args: Vec::new(),
            copy: false,
        };
        assert!(ublk_host::ublk::daemon::discover(&options).is_err());
        // A path that cannot be reached now is let be.
        let mut config = client(&one, one.server.local_addrs()[0]);
        config.more_paths = vec!["127.0.0.1:1".into()];
        let options = ublk_host::ublk::AttachOptions {
            engine: EngineConfig::new(config),
            ..options
        };
        let (partition, _) = ublk_host::ublk::daemon::discover(&options).unwrap();
        assert_eq!(partition.name, "vol");
    });
}
