//! How the engine rides through faults, against the fake server over loopback: a silent
//! server (no bytes, no RST), a revoked assignment, a server restart with a new boot
//! epoch, and the fail-fast policy.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::engine_io::{flush, read, write};
use common::*;
use ublk_host::client::{run_queue_thread, uring, EngineConfig};
use ublk_host::Errno;
use wire::PartitionInfo;
use wire::{libc_errno, Access};

const LIMIT: Duration = Duration::from_secs(60);
const PART_SIZE: u64 = 8 << 20;
/// The dead-lane bound the tests run with.
const DEAD_AFTER: Duration = Duration::from_secs(2);
/// Slack on top of a bound for scheduling and the lane clock's tick.
const SLACK: Duration = Duration::from_millis(1500);

/// A fake server serving a read-write partition, misbehaving as `misbehave` sets, and an
/// engine configuration for it (dead-lane bound [`DEAD_AFTER`]). The server stops when
/// the rig is dropped.
struct Rig {
    server: FakeServer,
    config: EngineConfig,
    part: PartitionInfo,
}

fn rig(misbehave: impl FnOnce(&mut Options)) -> Rig {
    let mut options = Options::new(partition(PART_SIZE, Access::ReadWrite));
    misbehave(&mut options);
    let server = FakeServer::start(options);
    let mut client = server.client(secret());
    client.dead_after = DEAD_AFTER;
    let part = server.shared.options.partition.clone();
    Rig {
        server,
        config: EngineConfig::new(client),
        part,
    }
}

#[test]
fn silent_server_is_detected_and_the_request_reissued() {
    within(LIMIT, || {
        let setup = rig(|options| {
            options.silent_at = Some(2);
        });
        let shared = setup.server.shared.clone();
        let (stats, waited) =
            run_queue_thread(&setup.config, &setup.part, 0, |engine| async move {
                write(&engine, 0, pattern(0, 8192, 1)).await.unwrap();
                let started = Instant::now();
                // The server swallows this one and goes quiet without closing.
                let data = pattern(8192, 8192, 2);
                write(&engine, 8192, data.clone()).await.unwrap();
                let waited = started.elapsed();
                assert!(read(&engine, 8192, 8192).await.unwrap() == data);
                (engine.lane_stats(), waited)
            })
            .unwrap();
        assert!(waited >= DEAD_AFTER, "not before the bound: {waited:?}");
        assert!(
            waited <= DEAD_AFTER + SLACK,
            "detected within the bound: {waited:?}"
        );
        assert_eq!(stats[0].dead_detections, 1, "{stats:?}");
        assert_eq!(stats[0].reconnects, 1, "{stats:?}");
        assert!(
            stats[0].heartbeats >= 1,
            "probed before giving up: {stats:?}"
        );
        assert_eq!(shared.data_connections.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn a_server_that_stalls_in_the_middle_of_a_reply_is_detected() {
    within(LIMIT, || {
        let setup = rig(|options| {
            options.stall_mid_reply_at = Some(2);
        });
        let (stats, waited) =
            run_queue_thread(&setup.config, &setup.part, 0, |engine| async move {
                let data = pattern(0, 64 * 1024, 3);
                write(&engine, 0, data.clone()).await.unwrap();
                let started = Instant::now();
                // The only request in flight: its head and half its data arrive, then nothing.
                assert!(read(&engine, 0, 64 * 1024).await.unwrap() == data);
                (engine.lane_stats(), started.elapsed())
            })
            .unwrap();
        assert!(
            waited <= DEAD_AFTER + SLACK,
            "detected within the bound: {waited:?}"
        );
        assert_eq!(stats[0].dead_detections, 1, "{stats:?}");
        assert_eq!(stats[0].reconnects, 1, "{stats:?}");
    });
}

#[test]
fn a_reply_that_trickles_in_slower_than_the_dead_bound_is_not_dead() {
    within(LIMIT, || {
        let setup = rig(|options| {
            // Ten pieces 400 ms apart: 4 s for one reply, twice the dead bound.
            options.trickle_reply_at = Some((2, Duration::from_millis(400)));
        });
        let stats = run_queue_thread(&setup.config, &setup.part, 0, |engine| async move {
            let data = pattern(0, 64 * 1024, 4);
            write(&engine, 0, data.clone()).await.unwrap();
            assert!(read(&engine, 0, 64 * 1024).await.unwrap() == data);
            engine.lane_stats()
        })
        .unwrap();
        assert_eq!(stats[0].dead_detections, 0, "{stats:?}");
        assert_eq!(stats[0].reconnects, 0, "{stats:?}");
    });
}

#[test]
fn a_malformed_run_drops_the_lane_and_the_read_is_reissued() {
    within(LIMIT, || {
        let mut setup = rig(|options| {
            options.bad_run_at = Some(2);
        });
        // A lane that receives exactly flags its reads for runs (the fake server offers
        // them); owned buffers, so the test sees the data.
        setup.config.zero_copy = true;
        let shared = setup.server.shared.clone();
        let stats = run_queue_thread(&setup.config, &setup.part, 0, |engine| async move {
            let data = pattern(0, 16 * 1024, 5);
            write(&engine, 0, data.clone()).await.unwrap();
            // Its reply claims a run of two replies after one `Later` head.
            assert!(read(&engine, 0, 16 * 1024).await.unwrap() == data);
            engine.lane_stats()
        })
        .unwrap();
        assert_eq!(stats[0].reconnects, 1, "{stats:?}");
        assert_eq!(stats[0].runs, 0, "{stats:?}");
        let log = shared.log.lock().unwrap();
        let reads: Vec<_> = log.iter().filter(|r| r.op == wire::Op::Read).collect();
        assert_eq!(
            reads.len(),
            1,
            "the reissued read (the first never reached the log)"
        );
        assert!(
            reads.iter().all(|r| r.may_run()),
            "reads are flagged: {reads:?}"
        );
    });
}

#[test]
fn busy_lane_with_a_live_server_is_not_declared_dead() {
    within(LIMIT, || {
        let setup = rig(|options| {
            // Eight requests are held back until the eighth arrives: with one at a time
            // in flight the first waits; heartbeats get it answered.
            options.reverse_window = 2;
        });
        let shared = setup.server.shared.clone();
        let stats = run_queue_thread(&setup.config, &setup.part, 0, |engine| async move {
            // A lone request waits for a partner; the heartbeat (1 s) is that partner.
            read(&engine, 0, 4096).await.unwrap();
            engine.lane_stats()
        })
        .unwrap();
        assert_eq!(stats[0].dead_detections, 0, "{stats:?}");
        assert_eq!(stats[0].reconnects, 0, "{stats:?}");
        assert!(shared.heartbeats.load(Ordering::SeqCst) >= 1);
    });
}

#[test]
fn revocation_fails_io_with_eacces_at_once_and_reassignment_brings_it_back() {
    within(LIMIT, || {
        let mut setup = rig(|options| {
            options.revoke_at = Some(2);
        });
        setup.config.wait_bound = Duration::from_secs(120);
        let shared = setup.server.shared.clone();
        run_queue_thread(&setup.config, &setup.part, 0, move |engine| async move {
            read(&engine, 0, 4096).await.unwrap();
            let started = Instant::now();
            let revoked = read(&engine, 0, 4096).await;
            assert_eq!(revoked.err(), Some(Errno(libc_errno::EACCES)));
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(1), "final at once: {waited:?}");
            let started = Instant::now();
            let again = write(&engine, 0, vec![1; 4096]).await;
            assert_eq!(again.err(), Some(Errno(libc_errno::EACCES)));
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "new I/O too"
            );
            let stats = engine.lane_stats();
            assert_eq!(stats[0].refusals, 1, "{stats:?}");
            // Re-assigned: the lane's slow re-check brings it back.
            shared.revoked.store(false, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match read(&engine, 0, 4096).await {
                    Ok(_) => break,
                    Err(errno) => assert_eq!(errno, Errno(libc_errno::EACCES)),
                }
                assert!(Instant::now() < deadline, "not back after re-assignment");
                // SAFETY: awaited to completion right here.
                unsafe { uring::sleep(Duration::from_millis(100)) }.await;
            }
        })
        .unwrap();
    });
}

#[test]
fn restart_with_unflushed_writes_fails_the_next_flush() {
    within(LIMIT, || {
        let setup = rig(|options| {
            options.drop_at = Some(2);
        });
        let shared = setup.server.shared.clone();
        run_queue_thread(&setup.config, &setup.part, 0, move |engine| async move {
            write(&engine, 0, vec![7; 4096]).await.unwrap();
            // The server "loses power": a new boot epoch, the connection drops.
            shared.boot_epoch.store(2, Ordering::SeqCst);
            write(&engine, 4096, vec![8; 4096]).await.unwrap();
            assert_eq!(
                flush(&engine).await,
                Err(Errno::EIO),
                "the loss is reported"
            );
            assert_eq!(flush(&engine).await, Ok(()), "once");
        })
        .unwrap();
    });
}

#[test]
fn restart_after_a_flush_is_invisible() {
    within(LIMIT, || {
        let setup = rig(|options| {
            options.drop_at = Some(3);
        });
        let shared = setup.server.shared.clone();
        run_queue_thread(&setup.config, &setup.part, 0, move |engine| async move {
            write(&engine, 0, vec![7; 4096]).await.unwrap();
            flush(&engine).await.unwrap();
            shared.boot_epoch.store(2, Ordering::SeqCst);
            read(&engine, 0, 4096).await.unwrap();
            assert_eq!(flush(&engine).await, Ok(()));
        })
        .unwrap();
    });
}

#[test]
fn a_flush_on_one_queue_covers_writes_of_another() {
    within(LIMIT, || {
        let setup = rig(|options| {
            options.drop_at = Some(3);
        });
        // Queue 0 writes and ends.
        run_queue_thread(&setup.config, &setup.part, 0, |engine| async move {
            write(&engine, 0, vec![7; 4096]).await.unwrap();
        })
        .unwrap();
        // Queue 1 (same device: a clone of the same config) sees the restart.
        let shared = setup.server.shared.clone();
        let same_device = setup.config.clone();
        run_queue_thread(&same_device, &setup.part, 1, move |engine| async move {
            shared.boot_epoch.store(2, Ordering::SeqCst);
            read(&engine, 0, 4096).await.unwrap();
            assert_eq!(flush(&engine).await, Err(Errno::EIO));
        })
        .unwrap();
    });
}

#[test]
fn fail_fast_fails_io_within_its_bound() {
    within(LIMIT, || {
        let mut setup = rig(|options| {
            options.drop_at = Some(2);
            options.dead_after_drop = true;
        });
        setup.config.wait_bound = Duration::from_secs(120);
        setup.config.fail_fast = Some(Duration::from_secs(1));
        run_queue_thread(&setup.config, &setup.part, 0, |engine| async move {
            read(&engine, 0, 4096).await.unwrap();
            let started = Instant::now();
            assert_eq!(read(&engine, 0, 4096).await.err(), Some(Errno::EIO));
            let waited = started.elapsed();
            assert!(waited >= Duration::from_secs(1), "{waited:?}");
            assert!(waited <= Duration::from_secs(1) + SLACK, "{waited:?}");
            let stats = engine.lane_stats();
            assert!(stats[0].failed >= 1, "{stats:?}");
        })
        .unwrap();
    });
}
