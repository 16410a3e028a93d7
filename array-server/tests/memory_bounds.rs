//! One connection costs the server a bounded amount of memory however its peer behaves:
//! a data lane that sends reads and never reads the replies, and a control connection
//! that floods pings without reading the pongs; and one host costs a bounded amount
//! however many such lanes it opens. The server runs in this process, so its
//! resident set is this process's (`VmRSS`); this binary holds only this test.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use array_server::net::{self, ServerConfig};
use common::probe::rss_bytes;
use common::*;
use wire::frame;
use wire::{Access, ControlRequest, Status};

/// Reads sent without reading a reply.
const READS: u32 = 1000;
/// Size of each read: the largest a request may ask.
const READ_LEN: u32 = wire::DEFAULT_MAX_IO;
/// Partition size; reads repeat its offsets.
const PART: u64 = 16 << 20;
/// What the read flood may add to the resident set: the lane's byte budget (64 MiB of
/// buffers, `net::DEFAULT_MAX_LANE_BYTES`), the thread's buffer pool and slack.
const READ_FLOOD_BOUND: u64 = 300 << 20;
/// Lanes of one host that send reads and never read a reply.
const LANES: u16 = 8;
/// Reads each of them sends: more than its own byte budget holds.
const READS_PER_LANE: u32 = 40;
/// The host's byte budget in that test (`ServerConfig::max_host_bytes`); its lanes' own
/// budgets add up to 512 MiB.
const HOST_BYTES: u64 = 96 << 20;
/// What the many-lane flood may add to the resident set: the host's budget, the thread's
/// buffer pool and slack (without the host's budget it grew by about `LANES` x 64 MiB).
const HOST_FLOOD_BOUND: u64 = 220 << 20;
/// Bytes of pings the control flood tries to send.
const PING_BYTES: usize = 64 << 20;
/// What the ping flood may add to the resident set.
const PING_FLOOD_BOUND: u64 = 32 << 20;
/// How long the resident set is watched once the server stopped taking work.
const OBSERVE: Duration = Duration::from_secs(2);
/// Pause between two looks at the resident set while watching.
const POLL: Duration = Duration::from_millis(20);
/// How long a blocked send of the ping flood waits before the flood counts as stopped.
const SEND_STALL: Duration = Duration::from_millis(500);

/// The most the resident set grows above `baseline` while `done` is false, looked at
/// until `done` or for [`OBSERVE`] once `started` holds.
fn peak_growth(
    baseline: u64,
    mut started: impl FnMut() -> bool,
    mut done: impl FnMut() -> bool,
) -> u64 {
    let mut peak = 0;
    eventually("the flood to reach the server", || {
        peak = peak.max(rss_bytes().saturating_sub(baseline));
        started()
    });
    let until = Instant::now() + OBSERVE;
    while Instant::now() < until && !done() {
        peak = peak.max(rss_bytes().saturating_sub(baseline));
        std::thread::sleep(POLL);
    }
    peak.max(rss_bytes().saturating_sub(baseline))
}

#[test]
fn floods_that_never_read_replies_cost_bounded_memory() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let paths: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("disk{i}.img")))
        .collect();
    for path in &paths {
        std::fs::File::create(path)
            .unwrap()
            .set_len(DISK_SIZE)
            .unwrap();
    }
    let disks = Disks { dir, paths };
    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", PART, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", Access::ReadWrite).unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        max_host_bytes: HOST_BYTES,
        ..ServerConfig::default()
    };
    let server = net::start(array, config).unwrap();
    let mut lane = Client::data(server.local_addr(), "h", &secret, p.id);
    let data = pattern(1, READ_LEN as usize);
    for block in 0..PART / u64::from(READ_LEN) {
        assert_eq!(
            lane.write_fua(block * u64::from(READ_LEN), &data),
            Status::Ok
        );
    }
    let session = server.sessions().data_lanes("h", p.id).pop().unwrap();

    // Reads, never reading a reply.
    let baseline = rss_bytes();
    let blocks = (PART / u64::from(READ_LEN)) as u32;
    let requests = read_heads(READS, READ_LEN, blocks);
    lane.stream.write_all(&requests).unwrap();
    let reads = || session.counters.snapshot().reads;
    let growth = peak_growth(baseline, || reads() >= 8, || reads() >= u64::from(READS));
    eprintln!(
        "read flood: +{} MiB resident, {} reads run",
        growth >> 20,
        reads()
    );
    assert!(
        growth < READ_FLOOD_BOUND,
        "{READS} unread {READ_LEN}-byte reads grew the server by {} MiB ({} reads run)",
        growth >> 20,
        reads()
    );
    // Reading again lets the lane go on.
    for _ in 0..2 * blocks {
        let (reply, data) = lane.recv_reply().unwrap();
        assert_eq!(reply.status, Status::Ok);
        assert_eq!(data.len(), READ_LEN as usize);
    }
    drop(lane);

    // Many lanes of the host, each reading more than its own budget, never reading a reply.
    let mut lanes: Vec<Client> = (0..LANES)
        .map(|queue| Client::lane(server.local_addr(), "h", &secret, p.id, queue, 0))
        .collect();
    let baseline = rss_bytes();
    let requests = read_heads(READS_PER_LANE, READ_LEN, blocks);
    for lane in &mut lanes {
        lane.stream.write_all(&requests).unwrap();
    }
    let host_reads = || -> u64 {
        let sessions = server.sessions().data_lanes("h", p.id);
        sessions.iter().map(|s| s.counters.snapshot().reads).sum()
    };
    let growth = peak_growth(baseline, || host_reads() >= 8, || false);
    eprintln!(
        "{LANES}-lane read flood: +{} MiB resident, {} reads run",
        growth >> 20,
        host_reads()
    );
    assert!(
        growth < HOST_FLOOD_BOUND,
        "{LANES} lanes of unread {READ_LEN}-byte reads grew the server by {} MiB ({} reads run)",
        growth >> 20,
        host_reads()
    );
    // Reading again lets every lane go on (all at once: a lane waits for the host's bytes
    // that the others hold until their replies are read).
    std::thread::scope(|scope| {
        for lane in &mut lanes {
            scope.spawn(move || {
                for _ in 0..READS_PER_LANE {
                    let (reply, data) = lane.recv_reply().unwrap();
                    assert_eq!(reply.status, Status::Ok);
                    assert_eq!(data.len(), READ_LEN as usize);
                }
            });
        }
    });
    drop(lanes);

    // Pings, never reading a pong.
    let mut control = Client::control(server.local_addr(), "h", &secret);
    control.stream.set_write_timeout(Some(SEND_STALL)).unwrap();
    let ping = frame::encode_message(&ControlRequest::Ping(7)).unwrap();
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 4096)
        .collect();
    let baseline = rss_bytes();
    let mut sent = 0;
    while sent < PING_BYTES && control.stream.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let growth = peak_growth(baseline, || true, || false);
    eprintln!(
        "ping flood: {} MiB sent, +{} MiB resident",
        sent >> 20,
        growth >> 20
    );
    assert!(
        growth < PING_FLOOD_BOUND,
        "a ping flood ({} MiB sent) grew the server by {} MiB",
        sent >> 20,
        growth >> 20
    );
}
