//! The engine and discovery against the real array server, started in-process on
//! temporary member disks.

mod common;

use std::rc::Rc;
use std::time::Duration;

use array_server::net::{self, RunningServer, ServerConfig};
use common::engine_io::io;
use common::real::{any_loopback_port, RealArray, ARRAY_CHUNK};
use common::{pattern, within, KIB, MIB};
use ublk_host::client::{
    run_queue_thread, BlockIo, BufRef, ClientConfig, Discovery, EngineConfig, LaneStats,
    QueueEngine,
};
use ublk_host::Errno;
use wire::{libc_errno, Access, Op};

const DISKS: usize = 3;
const DISK_SIZE: u64 = 24 << 20;

struct Setup {
    array: RealArray,
    server: RunningServer,
}

fn setup(partition_size: u64, access: Access) -> Setup {
    let array = RealArray::format(DISKS, DISK_SIZE, partition_size, access);
    let server = array.serve(any_loopback_port(), 2);
    Setup { array, server }
}

fn client(setup: &Setup) -> ClientConfig {
    let mut config = setup.array.client(&setup.server);
    config.handshake_timeout = Duration::from_secs(5);
    config
}

/// The partition "vol" as discovery reports it to the test host.
fn discover_vol(setup: &Setup) -> wire::PartitionInfo {
    Discovery::open(&client(setup))
        .unwrap()
        .list()
        .unwrap()
        .find("vol")
        .unwrap()
        .clone()
}

#[test]
fn round_trips_and_splits_against_the_real_server() {
    within(Duration::from_secs(120), || {
        let setup = setup(12 << 20, Access::ReadWrite);
        let partition = discover_vol(&setup);
        let mut config = EngineConfig::new(client(&setup));
        config.lanes_per_queue = 3;
        config.split = 128 * KIB;
        let stats = run_queue_thread(&config, &partition, 0, |engine| async move {
            for (i, &size) in [512, 4096, 192 * KIB, MIB + 4096, 3 * MIB]
                .iter()
                .enumerate()
            {
                let offset = (i as u64 + 1) * ARRAY_CHUNK - 2048;
                let data = pattern(offset, size as usize, i as u8);
                let write = BlockIo {
                    op: Op::Write,
                    offset,
                    len: size,
                    fua: i % 2 == 0,
                };
                engine.execute_owned(write, data.clone()).await.0.unwrap();
                let read = BlockIo {
                    op: Op::Read,
                    ..write
                };
                let (outcome, back) = engine.execute_owned(read, vec![0; size as usize]).await;
                outcome.unwrap();
                assert!(back == data, "{size} B at {offset} round trip");
            }
            let flush = BlockIo {
                op: Op::Flush,
                offset: 0,
                len: 0,
                fua: false,
            };
            engine.execute_owned(flush, Vec::new()).await.0.unwrap();
            engine.lane_stats()
        })
        .unwrap();
        assert!(stats.iter().all(|s| s.requests > 0), "{stats:?}");
    });
}

#[test]
fn read_only_assignment_refuses_writes() {
    within(Duration::from_secs(60), || {
        let setup = setup(4 << 20, Access::ReadOnly);
        let list = Discovery::open(&client(&setup)).unwrap().list().unwrap();
        let partition = list.find("vol").unwrap().clone();
        assert_eq!(partition.access, Access::ReadOnly);
        let config = EngineConfig::new(client(&setup));
        run_queue_thread(&config, &partition, 0, |engine| async move {
            let write = BlockIo {
                op: Op::Write,
                offset: 0,
                len: 4096,
                fua: false,
            };
            let outcome = engine.execute_owned(write, vec![1; 4096]).await.0;
            assert_eq!(outcome, Err(Errno(libc_errno::EROFS)));
            let read = BlockIo {
                op: Op::Read,
                ..write
            };
            assert!(engine.execute_owned(read, vec![0; 4096]).await.0.is_ok());
        })
        .unwrap();
    });
}

#[test]
fn revocation_under_io_fails_it_with_eacces_within_a_second() {
    within(Duration::from_secs(60), || {
        let setup = setup(4 << 20, Access::ReadWrite);
        let partition = discover_vol(&setup);
        let mut config = EngineConfig::new(client(&setup));
        config.lanes_per_queue = 2;
        let array = setup.server.array().clone();
        run_queue_thread(&config, &partition, 0, move |engine| async move {
            let readers: Vec<_> = (0..8u64)
                .map(|i| {
                    let engine = engine.clone();
                    engine.clone().spawn(async move {
                        loop {
                            let read = io(Op::Read, i * 8192, 8192);
                            let (outcome, _) = engine.execute_owned(read, vec![0; 8192]).await;
                            if let Err(errno) = outcome {
                                return (errno, std::time::Instant::now());
                            }
                        }
                    })
                })
                .collect();
            // Let the readers get going, then withdraw the partition under them.
            let warm_up = engine.execute_owned(io(Op::Read, 0, 4096), vec![0; 4096]);
            warm_up.await.0.unwrap();
            let revoked_at = std::time::Instant::now();
            array.unassign("h1", "vol").unwrap();
            for reader in readers {
                let (errno, at) = reader.await;
                assert_eq!(errno, Errno(libc_errno::EACCES));
                let after = at.duration_since(revoked_at);
                assert!(
                    after < Duration::from_secs(1),
                    "failed {after:?} after revoke"
                );
            }
            let write = engine.execute_owned(io(Op::Write, 0, 4096), vec![1; 4096]);
            assert_eq!(write.await.0, Err(Errno(libc_errno::EACCES)), "new I/O too");
        })
        .unwrap();
    });
}

/// Stops the server and starts a new one (a new boot epoch) on the same array and port.
fn restart(server: &std::cell::RefCell<Option<RunningServer>>) {
    let old = server.borrow_mut().take().unwrap();
    let (addr, array) = (old.local_addr(), old.array().clone());
    old.stop();
    let config = ServerConfig {
        listen: addr,
        threads: 2,
        ..ServerConfig::default()
    };
    *server.borrow_mut() = Some(net::start(array, config).unwrap());
}

fn restart_then_flush(flush_before: bool) -> Result<(), Errno> {
    let setup = setup(4 << 20, Access::ReadWrite);
    let partition = Discovery::open(&client(&setup))
        .unwrap()
        .list()
        .unwrap()
        .find("vol")
        .unwrap()
        .clone();
    let config = EngineConfig::new(client(&setup));
    // `array` keeps the member files until the end.
    let Setup { array, server } = setup;
    let server = std::cell::RefCell::new(Some(server));
    let outcome = run_queue_thread(&config, &partition, 0, move |engine| async move {
        let flush = || engine.execute_owned(io(Op::Flush, 0, 0), Vec::new());
        let write = engine.execute_owned(io(Op::Write, 0, 4096), vec![5; 4096]);
        write.await.0.unwrap();
        if flush_before {
            flush().await.0.unwrap();
        }
        restart(&server);
        // The lane reconnects to the new server process on this read.
        let (outcome, back) = engine
            .execute_owned(io(Op::Read, 0, 4096), vec![0; 4096])
            .await;
        outcome.unwrap();
        assert_eq!(back, vec![5; 4096]);
        let first = flush().await.0;
        assert_eq!(flush().await.0, Ok(()), "a loss is reported once");
        drop(server);
        first
    })
    .unwrap();
    drop(array);
    outcome
}

#[test]
fn server_restart_with_unflushed_writes_fails_the_next_flush() {
    within(Duration::from_secs(60), || {
        assert_eq!(restart_then_flush(false), Err(Errno::EIO));
    });
}

#[test]
fn server_restart_after_a_flush_is_invisible() {
    within(Duration::from_secs(60), || {
        assert_eq!(restart_then_flush(true), Ok(()));
    });
}

/// A buffer of this process registered as fixed buffer `index` of the calling thread's
/// ring: the engine must reach it only through fixed-buffer operations, as it reaches a
/// ublk request's pages in zero-copy mode.
fn register_fixed(buffers: &mut [Vec<u8>]) {
    let iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buf| libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        })
        .collect();
    libublk::io::with_task_io_ring_mut(|ring| {
        // SAFETY: the buffers outlive the ring's use of them (the test unregisters them
        // before they drop).
        unsafe { ring.submitter().register_buffers(&iovecs) }
    })
    .unwrap();
}

#[test]
fn fixed_buffers_round_trip_split_and_concurrent() {
    fixed_buffers_round_trip(2, 128 * KIB);
}

#[test]
fn fixed_buffers_round_trip_one_lane_unsplit() {
    fixed_buffers_round_trip(1, 0);
}

fn fixed_buffers_round_trip(lanes: u16, split: u32) {
    within(Duration::from_secs(120), move || {
        let setup = setup(12 << 20, Access::ReadWrite);
        let partition = discover_vol(&setup);
        let mut config = EngineConfig::new(client(&setup));
        config.lanes_per_queue = lanes;
        config.split = split;
        config.zero_copy = true;
        const ROOM: usize = 3 * MIB as usize;
        run_queue_thread(&config, &partition, 0, |engine| async move {
            let mut buffers = vec![vec![0u8; ROOM], vec![0u8; ROOM]];
            register_fixed(&mut buffers);
            let (source, dest) = (buffers[0].as_mut_ptr(), buffers[1].as_mut_ptr());
            let fixed = |index: u16, ptr: *mut u8| BufRef::Fixed {
                index,
                addr: ptr as u64,
            };
            for (i, &size) in [4096, 192 * KIB, MIB + 4096, 3 * MIB].iter().enumerate() {
                let offset = (i as u64 + 1) * ARRAY_CHUNK - 2048;
                let data = pattern(offset, size as usize, i as u8);
                // SAFETY: `source` holds ROOM >= size bytes, not touched while the
                // engine runs.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), source, data.len()) };
                let write = io(Op::Write, offset, size);
                // SAFETY: both buffers hold ROOM >= size bytes, are registered, and
                // each future is awaited to completion.
                unsafe { engine.execute(write, fixed(0, source)) }
                    .await
                    .unwrap();
                let read = io(Op::Read, offset, size);
                // SAFETY: as for the write.
                unsafe { engine.execute(read, fixed(1, dest)) }
                    .await
                    .unwrap();
                // SAFETY: the read completed; nothing else uses `dest`.
                let back = unsafe { std::slice::from_raw_parts(dest, size as usize) };
                assert!(back == &data[..], "{size} B at {offset} round trip");
            }
            // Many 4 KiB reads in flight at once on both lanes: replies arrive back to
            // back and each one's data must land in its own part of the buffer.
            const READS: usize = 64;
            let reads: Vec<_> = (0..READS)
                .map(|i| {
                    let engine = engine.clone();
                    // SAFETY: see above; each read has its own 4 KiB of `dest`.
                    let at = unsafe { dest.add(i * 4096) } as u64;
                    engine.clone().spawn(async move {
                        let read = io(Op::Read, (i as u64) * 4096, 4096);
                        let buf = BufRef::Fixed { index: 1, addr: at };
                        // SAFETY: registered, 4 KiB of its own, awaited to completion.
                        unsafe { engine.execute(read, buf) }.await
                    })
                })
                .collect();
            for read in reads {
                read.await.unwrap();
            }
            let expect = pattern(ARRAY_CHUNK - 2048, 4096, 0);
            // SAFETY: every read completed.
            let all = unsafe { std::slice::from_raw_parts(dest, READS * 4096) };
            let written_at = (ARRAY_CHUNK - 2048) as usize;
            assert!(all[written_at..written_at + 4096] == expect[..]);
            // Eight 256 KiB writes in flight at once from one fixed buffer (the sender
            // interleaves heads and fixed-buffer payloads), then read back.
            const WRITES: usize = 8;
            const WRITE_LEN: usize = 256 * KIB as usize;
            let data = pattern(0, WRITES * WRITE_LEN, 9);
            // SAFETY: `source` holds ROOM >= WRITES * WRITE_LEN bytes, idle now.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), source, data.len()) };
            let writes: Vec<_> = (0..WRITES)
                .map(|i| {
                    let engine = engine.clone();
                    // SAFETY: inside `source` (see above).
                    let at = unsafe { source.add(i * WRITE_LEN) } as u64;
                    engine.clone().spawn(async move {
                        let write = io(
                            Op::Write,
                            (4 * MIB as usize + i * WRITE_LEN) as u64,
                            WRITE_LEN as u32,
                        );
                        let buf = BufRef::Fixed { index: 0, addr: at };
                        // SAFETY: registered, a part of its own, awaited to completion.
                        unsafe { engine.execute(write, buf) }.await
                    })
                })
                .collect();
            for write in writes {
                write.await.unwrap();
            }
            let read = io(Op::Read, 4 * MIB as u64, (WRITES * WRITE_LEN) as u32);
            // SAFETY: as above.
            unsafe { engine.execute(read, fixed(1, dest)) }
                .await
                .unwrap();
            // SAFETY: the read completed.
            let back = unsafe { std::slice::from_raw_parts(dest, data.len()) };
            let first_bad = back.iter().zip(&data).position(|(a, b)| a != b);
            assert!(
                first_bad.is_none(),
                "concurrent fixed writes read back: first bad byte {first_bad:?}"
            );
            // Many 4 KiB writes in flight at once: the sender corks and chains heads and
            // fixed payloads, the receiver takes many payload-less replies at once.
            const SMALL: usize = 96;
            let small = pattern(8 * MIB as u64, SMALL * 4096, 11);
            // SAFETY: `source` holds ROOM >= SMALL * 4 KiB bytes, idle now.
            unsafe { std::ptr::copy_nonoverlapping(small.as_ptr(), source, small.len()) };
            let writes: Vec<_> = (0..SMALL)
                .map(|i| {
                    let engine = engine.clone();
                    // SAFETY: see above; each write has its own 4 KiB of `source`.
                    let at = unsafe { source.add(i * 4096) } as u64;
                    engine.clone().spawn(async move {
                        let write = io(Op::Write, 8 * MIB as u64 + (i * 4096) as u64, 4096);
                        let buf = BufRef::Fixed { index: 0, addr: at };
                        // SAFETY: registered, 4 KiB of its own, awaited to completion.
                        unsafe { engine.execute(write, buf) }.await
                    })
                })
                .collect();
            for write in writes {
                write.await.unwrap();
            }
            let read = io(Op::Read, 8 * MIB as u64, small.len() as u32);
            // SAFETY: as above.
            unsafe { engine.execute(read, fixed(1, dest)) }
                .await
                .unwrap();
            // SAFETY: the read completed.
            let back = unsafe { std::slice::from_raw_parts(dest, small.len()) };
            assert!(
                back == &small[..],
                "concurrent small fixed writes read back"
            );
            libublk::io::with_task_io_ring_mut(|ring| ring.submitter().unregister_buffers())
                .unwrap();
            drop(buffers);
        })
        .unwrap();
    });
}

/// Bytes the run tests write and read.
const RUN_AREA: usize = 2 * MIB as usize;

/// A server with a 12 MiB partition, the partition, and an engine configuration with
/// zero-copy lanes (fixed buffers), for the run tests.
fn zero_copy_lane() -> (Setup, wire::PartitionInfo, EngineConfig) {
    let setup = setup(12 << 20, Access::ReadWrite);
    let partition = discover_vol(&setup);
    let mut config = EngineConfig::new(client(&setup));
    config.zero_copy = true;
    (setup, partition, config)
}

/// `(offset, len)` parts covering `area` back to back, the `n`th `len_of(n)` long (the
/// last cut short).
fn parts(area: usize, len_of: impl Fn(usize) -> usize) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let mut at = 0;
    while at < area {
        let len = len_of(parts.len()).min(area - at);
        parts.push((at, len));
        at += len;
    }
    parts
}

/// Runs `op` on every part at once, in a scrambled order, each part at the same offset of
/// fixed buffer 0 (which starts at `base`), and waits for all of them. A part whose
/// length `copied` picks goes through the same memory as ordinary memory instead (what a
/// ublk device's copied small writes are, `ublk/small_writes.rs`).
///
/// # Safety
///
/// Fixed buffer 0 must be registered, start at `base` and cover every part until this
/// returns.
async unsafe fn all_at_once(
    engine: &Rc<QueueEngine>,
    op: Op,
    parts: &[(usize, usize)],
    base: *mut u8,
    copied: impl Fn(usize) -> bool,
) {
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&i| (i * 7919) % parts.len());
    let tasks: Vec<_> = order
        .into_iter()
        .map(|i| {
            let (at, len) = parts[i];
            let engine = engine.clone();
            // SAFETY: inside the registered buffer (the caller's promise).
            let addr = unsafe { base.add(at) };
            let buf = if copied(len) {
                BufRef::Ptr(addr)
            } else {
                BufRef::Fixed {
                    index: 0,
                    addr: addr as u64,
                }
            };
            engine.clone().spawn(async move {
                let request = io(op, at as u64, len as u32);
                // SAFETY: registered, a part of its own, awaited to completion.
                unsafe { engine.execute(request, buf) }.await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Writes the parts `len_of` cuts of the run area with pattern `seed`, all in flight at
/// once on one zero-copy lane (those `copied` picks from ordinary memory, the rest from a
/// fixed buffer), reads the area back and checks it byte for byte; returns the lane
/// statistics.
fn write_all_at_once_and_read_back(
    seed: u8,
    len_of: impl Fn(usize) -> usize,
    copied: impl Fn(usize) -> bool + 'static,
) -> Vec<LaneStats> {
    let (_setup, partition, config) = zero_copy_lane();
    let data = pattern(0, RUN_AREA, seed);
    let writes = parts(RUN_AREA, len_of);
    run_queue_thread(&config, &partition, 0, move |engine| async move {
        let mut buffers = vec![data.clone()];
        register_fixed(&mut buffers);
        let source = buffers[0].as_mut_ptr();
        // SAFETY: the buffer is registered (index 0) and outlives the call.
        unsafe { all_at_once(&engine, Op::Write, &writes, source, copied) }.await;
        libublk::io::with_task_io_ring_mut(|ring| ring.submitter().unregister_buffers()).unwrap();
        drop(buffers);
        let read = io(Op::Read, 0, RUN_AREA as u32);
        let (result, back) = engine.execute_owned(read, vec![0u8; RUN_AREA]).await;
        result.unwrap();
        let first_bad = back.iter().zip(&data).position(|(a, b)| a != b);
        assert!(first_bad.is_none(), "first bad byte {first_bad:?}");
        engine.lane_stats()
    })
    .unwrap()
}

/// Writes of a zero-copy lane go out in runs (wire's `FLAG_LATER` and `Op::Run`): many
/// writes of mixed sizes in flight at once on one lane, each from its own part of a fixed
/// buffer (the small ones in runs, the large ones whole), must each land exactly where
/// they belong, and the lane must have sent runs of several writes.
#[test]
fn fixed_writes_go_out_in_runs_each_from_its_own_buffer() {
    within(Duration::from_secs(120), || {
        // 4, 8, 12 and 16 KiB writes and a 128 KiB one now and then (too large for a
        // run), back to back over the area in a scrambled order.
        let len_of = |n| match n % 9 {
            8 => 128 * 1024,
            n => (n % 4 + 1) * 4096,
        };
        let stats = write_all_at_once_and_read_back(29, len_of, |_| false);
        let (runs, writes) = (stats[0].write_runs, stats[0].run_writes);
        assert!(runs > 0, "no run sent: {stats:?}");
        assert!(
            writes >= 2 * runs,
            "a run carries several writes: {stats:?}"
        );
    });
}

/// What a ublk device with user copy sends (`ublk/small_writes.rs`): writes of up to
/// 32 KiB from ordinary memory (copied) in the same bursts as 48 KiB fixed-buffer writes
/// (which go in runs) and 128 KiB ones (too large for a run), all in flight at once on one
/// zero-copy lane; every write must land exactly, and runs must still have been sent.
#[test]
fn copied_and_fixed_writes_mix_in_one_burst() {
    const COPIED_MAX: usize = 32 * 1024;
    within(Duration::from_secs(120), || {
        let len_of = |n| match n % 6 {
            5 => 128 * 1024,
            1 | 3 => 48 * 1024,
            n => (n + 1) * 8 * 1024, // 8, 24 and 40 KiB: two copied, one in a run
        };
        let stats = write_all_at_once_and_read_back(31, len_of, |len| len <= COPIED_MAX);
        assert!(stats[0].write_runs > 0, "no run sent: {stats:?}");
    });
}

/// Reads of a zero-copy lane come back in runs (wire's `Status::Later` and `Run`): many
/// reads of mixed sizes in flight at once on one lane, each into its own part of a fixed
/// buffer, must each get exactly its own data, and the lane must have received runs.
#[test]
fn fixed_reads_come_back_in_runs_each_into_its_own_buffer() {
    within(Duration::from_secs(120), || {
        let (_setup, partition, config) = zero_copy_lane();
        let data = pattern(0, RUN_AREA, 23);
        let stats = run_queue_thread(&config, &partition, 0, move |engine| async move {
            let write = io(Op::Write, 0, RUN_AREA as u32);
            engine.execute_owned(write, data.clone()).await.0.unwrap();
            let mut buffers = vec![vec![0u8; RUN_AREA]];
            register_fixed(&mut buffers);
            let dest = buffers[0].as_mut_ptr();
            // 4, 8, 12 and 16 KiB reads, back to back over the area in a scrambled order,
            // all in flight at once.
            let reads = parts(RUN_AREA, |n| (n % 4 + 1) * 4096);
            // SAFETY: the buffer is registered (index 0) and outlives the call.
            unsafe { all_at_once(&engine, Op::Read, &reads, dest, |_| false) }.await;
            // SAFETY: every read completed; nothing else uses the buffer.
            let back = unsafe { std::slice::from_raw_parts(dest, RUN_AREA) };
            let first_bad = back.iter().zip(&data).position(|(a, b)| a != b);
            assert!(first_bad.is_none(), "first bad byte {first_bad:?}");
            libublk::io::with_task_io_ring_mut(|ring| ring.submitter().unregister_buffers())
                .unwrap();
            drop(buffers);
            engine.lane_stats()
        })
        .unwrap();
        let (runs, replies) = (stats[0].runs, stats[0].run_replies);
        assert!(runs > 0, "no run received: {stats:?}");
        assert!(
            replies >= 2 * runs,
            "a run carries several replies: {stats:?}"
        );
    });
}
