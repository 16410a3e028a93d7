//! Thread placement: with one pinned server thread per CPU, a connection is served by the
//! thread on the CPU its SYN came from, so a host dialling from CPU `c` (on this machine)
//! gets a lane served on CPU `c`; `pin_threads: false` leaves it to the kernel's hash.

mod common;

use std::sync::Arc;

use array_server::net::{self, RunningServer, ServerConfig};
use array_server::Array;
use common::*;

/// The CPUs this process may use.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain old data; the kernel fills it for the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a live set of the size given.
    let done = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(done, 0, "sched_getaffinity");
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` is initialised and `cpu` below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Runs `work` on a thread pinned to `cpu`.
fn on_cpu<T: Send + 'static>(cpu: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` came from sched_getaffinity, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: a live set of the size given; pid 0 is this thread.
        let done = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        assert_eq!(done, 0, "pinning the test thread to CPU {cpu}");
        work()
    })
    .join()
    .expect("pinned thread")
}

fn start(array: Arc<Array>, threads: usize, pin_threads: bool) -> RunningServer {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads,
        pin_threads,
        ..ServerConfig::default()
    };
    net::start(array, config).expect("start server")
}

#[test]
fn each_lane_is_served_on_the_cpu_it_dialled_from() {
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "steering needs 2 CPUs; this machine gives the test {cpus:?}"
    );
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", 1 << 20, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", wire::Access::ReadWrite).unwrap();
    let server = start(array, cpus.len(), true);
    let addr = server.local_addr();
    const ROUNDS: usize = 4;
    let mut lanes = Vec::new();
    for round in 0..ROUNDS {
        for (queue, &cpu) in cpus.iter().enumerate() {
            let secret = secret.clone();
            let lane = round as u16;
            let mut client = on_cpu(cpu, move || {
                Client::lane(addr, "h", &secret, p.id, queue as u16, lane)
            });
            assert_eq!(client.write(0, &[queue as u8; 4096]), wire::Status::Ok);
            lanes.push((cpu, queue as u16, lane, client));
        }
    }
    let views = server.sessions().views();
    for (cpu, queue, lane, _) in &lanes {
        let view = views
            .iter()
            .find(|v| {
                matches!(v.purpose, wire::Purpose::Data { queue: q, lane: l, .. }
                    if q == *queue && l == *lane)
            })
            .expect("the lane's session");
        assert_eq!(
            view.cpu,
            Some(*cpu as u32),
            "queue {queue} lane {lane} dialled from CPU {cpu}"
        );
    }
}

#[test]
fn unpinned_threads_still_serve_every_lane() {
    let cpus = allowed_cpus();
    let rig = assigned(2, 1 << 20);
    let server = start(rig.array, cpus.len().max(2), false);
    let addr = server.local_addr();
    let mut clients = Vec::new();
    for queue in 0..8u16 {
        let mut client = Client::lane(addr, "h", &rig.secret, rig.partition.id, queue, 0);
        let data = pattern(u64::from(queue), 4096);
        assert_eq!(
            client.write(u64::from(queue) * 4096, &data),
            wire::Status::Ok
        );
        assert_eq!(client.read_ok(u64::from(queue) * 4096, 4096), data);
        clients.push(client);
    }
    assert_eq!(server.sessions().views().len(), clients.len());
}

/// The CPUs the server thread named `name` may run on (`Cpus_allowed_list` of its
/// `/proc` status, e.g. "0-1" or "1").
fn thread_cpus(name: &str) -> String {
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let task = task.expect("a task").path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).expect("its status");
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list");
        return line.trim().to_owned();
    }
    panic!("no thread named {name}");
}

/// Reads `len` bytes at offset 0 over `client` until `done` holds; at most `IO_TIMEOUT`.
fn read_until(client: &mut Client, len: u32, what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        client.read_ok(0, len);
    }
}

#[test]
fn large_requests_let_the_threads_run_on_any_cpu_and_small_ones_pin_them_again() {
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "pinning needs 2 CPUs; this machine gives the test {cpus:?}"
    );
    let rig = assigned(2, 4 << 20);
    let server = start(rig.array, cpus.len(), true);
    let addr = server.local_addr();
    let mut client = Client::lane(addr, "h", &rig.secret, rig.partition.id, 0, 0);
    let pinned: Vec<String> = cpus.iter().map(ToString::to_string).collect();
    let threads: Vec<String> = (0..cpus.len()).map(|i| format!("array-net-{i}")).collect();
    let affinities = || threads.iter().map(|t| thread_cpus(t)).collect::<Vec<_>>();
    assert_eq!(affinities(), pinned);
    assert!(!server.stats().threads_unpinned);

    read_until(&mut client, 256 << 10, "the threads to be let go", || {
        server.stats().threads_unpinned
    });
    let unpinned = affinities();
    assert!(
        unpinned
            .iter()
            .all(|cpus| cpus == &unpinned[0] && cpus.contains(['-', ','])),
        "every thread runs on every CPU: {unpinned:?}"
    );

    read_until(&mut client, 4096, "the threads to be pinned again", || {
        !server.stats().threads_unpinned
    });
    assert_eq!(affinities(), pinned);
}
