//! The request engine against the fake server, over loopback.

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use common::engine_io::{io, read, write};
use common::*;
use ublk_host::client::{run_queue_thread, BlockIo, Discovery, EngineConfig, QueueEngine};
use ublk_host::{Errno, HostError};
use wire::{libc_errno, Access, Op, RefusedCode, WireError, FLAG_FUA};

const LIMIT: Duration = Duration::from_secs(60);
const PART_SIZE: u64 = 32 << 20;

fn config(server: &FakeServer, lanes: u16, split: u32) -> EngineConfig {
    let mut config = EngineConfig::new(server.client(secret()));
    config.lanes_per_queue = lanes;
    config.split = split;
    config
}

fn round_trips(lanes: u16, split: u32) {
    let server = FakeServer::start(Options::new(partition(PART_SIZE, Access::ReadWrite)));
    let config = config(&server, lanes, split);
    let part = server.shared.options.partition.clone();
    let sizes = [
        512,
        4096,
        65536,
        65536 + 512,
        300 * KIB,
        MIB,
        3 * MIB + 512,
        6 * MIB,
    ];
    let shared = server.shared.clone();
    run_queue_thread(&config, &part, 0, move |engine| async move {
        for (i, &size) in sizes.iter().enumerate() {
            // Start mid-chunk so most requests cross chunk boundaries.
            let offset = u64::from(CHUNK) * (i as u64 * 3 + 1) - 1024;
            let data = pattern(offset, size as usize, i as u8);
            write(&engine, offset, data.clone()).await.unwrap();
            let stored = shared.store.lock().unwrap()[offset as usize..][..size as usize].to_vec();
            assert!(stored == data, "server holds what was written ({size} B)");
            let back = read(&engine, offset, size).await.unwrap();
            assert!(back == data, "read back {size} B at {offset} byte for byte");
        }
    })
    .unwrap();
}

#[test]
fn round_trip_one_lane_no_split() {
    within(LIMIT, || round_trips(1, 0));
}

#[test]
fn round_trip_split_over_three_lanes() {
    within(LIMIT, || round_trips(3, 128 * KIB));
}

#[test]
fn concurrent_requests_from_many_tasks() {
    within(LIMIT, || {
        let server = FakeServer::start(Options::new(partition(PART_SIZE, Access::ReadWrite)));
        let config = config(&server, 2, 64 * KIB);
        let part = server.shared.options.partition.clone();
        run_queue_thread(&config, &part, 0, |engine| async move {
            let tasks: Vec<_> = (0..64u64)
                .map(|i| {
                    let engine = engine.clone();
                    engine.clone().spawn(async move {
                        let offset = i * 200 * 1024;
                        let len = 4096 * (1 + (i as usize % 40));
                        let data = pattern(offset, len, i as u8);
                        write(&engine, offset, data.clone()).await.unwrap();
                        assert!(read(&engine, offset, len as u32).await.unwrap() == data);
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        })
        .unwrap();
    });
}

/// A batch of large writes leaves in several `sendmsg` calls (at most 1 MiB each, cut
/// between iovecs): large and small writes queued together arrive whole and in place.
#[test]
fn a_batch_of_large_and_small_writes_arrives_whole() {
    within(LIMIT, || {
        let server = FakeServer::start(Options::new(partition(PART_SIZE, Access::ReadWrite)));
        let config = config(&server, 1, 0);
        let part = server.shared.options.partition.clone();
        let shared = server.shared.clone();
        run_queue_thread(&config, &part, 0, move |engine| async move {
            let sizes: Vec<usize> = (0..12u32)
                .map(|i| {
                    if i % 3 == 2 {
                        4096
                    } else {
                        (MIB + 512 * i) as usize
                    }
                })
                .collect();
            let tasks: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let engine = engine.clone();
                    engine.clone().spawn(async move {
                        let offset = i as u64 * 2 * u64::from(MIB);
                        let data = pattern(offset, len, i as u8 + 1);
                        write(&engine, offset, data.clone()).await.unwrap();
                        (offset, data)
                    })
                })
                .collect();
            let mut written = Vec::new();
            for task in tasks {
                written.push(task.await);
            }
            for (offset, data) in written {
                let stored = shared.store.lock().unwrap()[offset as usize..][..data.len()].to_vec();
                assert!(stored == data, "{} B at {offset} stored whole", data.len());
                let back = read(&engine, offset, data.len() as u32).await.unwrap();
                assert!(back == data, "{} B at {offset} read back", data.len());
            }
        })
        .unwrap();
    });
}

#[test]
fn out_of_order_replies_match_their_requests() {
    within(LIMIT, || {
        let mut options = Options::new(partition(PART_SIZE, Access::ReadWrite));
        options.reverse_window = 8;
        let server = FakeServer::start(options);
        for i in 0..8usize {
            let data = pattern(i as u64 * 8192, 8192, i as u8);
            server.shared.store.lock().unwrap()[i * 8192..][..8192].copy_from_slice(&data);
        }
        let config = config(&server, 1, 0);
        let part = server.shared.options.partition.clone();
        run_queue_thread(&config, &part, 0, |engine: Rc<QueueEngine>| async move {
            let tasks: Vec<_> = (0..8u64)
                .map(|i| {
                    let engine = engine.clone();
                    engine.clone().spawn(async move {
                        let back = read(&engine, i * 8192, 8192).await.unwrap();
                        assert!(back == pattern(i * 8192, 8192, i as u8), "read {i}");
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        })
        .unwrap();
        let log = server.shared.log.lock().unwrap();
        assert_eq!(log.len(), 8, "all eight travelled before any reply");
    });
}

#[test]
fn split_request_travels_on_every_lane() {
    within(LIMIT, || {
        let server = FakeServer::start(Options::new(partition(PART_SIZE, Access::ReadWrite)));
        let config = config(&server, 4, 64 * KIB);
        let part = server.shared.options.partition.clone();
        let stats = run_queue_thread(&config, &part, 3, |engine| async move {
            read(&engine, 0, MIB).await.unwrap();
            engine.lane_stats()
        })
        .unwrap();
        assert!(stats.iter().all(|s| s.requests == 4), "{stats:?}");
        assert_eq!(server.lanes_used(), 4);
        let log = server.shared.log.lock().unwrap();
        assert_eq!(log.len(), 16);
        assert!(log
            .iter()
            .all(|r| r.len == CHUNK && r.offset % u64::from(CHUNK) == 0));
    });
}

#[test]
fn flush_fua_discard_pass_through() {
    within(LIMIT, || {
        let server = FakeServer::start(Options::new(partition(PART_SIZE, Access::ReadWrite)));
        let config = config(&server, 2, 0);
        let part = server.shared.options.partition.clone();
        let shared = server.shared.clone();
        run_queue_thread(&config, &part, 0, move |engine| async move {
            let data = vec![0xab; 8192];
            let fua = BlockIo {
                fua: true,
                ..io(Op::Write, 0, 8192)
            };
            engine.execute_owned(fua, data).await.0.unwrap();
            engine
                .execute_owned(io(Op::Flush, 0, 0), Vec::new())
                .await
                .0
                .unwrap();
            engine
                .execute_owned(io(Op::WriteZeroes, 0, 4096), Vec::new())
                .await
                .0
                .unwrap();
            let back = read(&engine, 0, 8192).await.unwrap();
            assert!(back[..4096].iter().all(|&b| b == 0));
            assert!(back[4096..].iter().all(|&b| b == 0xab));
            let log = shared.log.lock().unwrap();
            assert_eq!(log[0].flags & FLAG_FUA, FLAG_FUA);
            assert_eq!(log[1].op, Op::Flush);
        })
        .unwrap();
    });
}

fn errno<T>(outcome: Result<T, Errno>) -> Option<i32> {
    outcome.err().map(|e| e.0)
}

#[test]
fn errors_map_to_errnos() {
    within(LIMIT, || {
        let mut options = Options::new(partition(PART_SIZE, Access::ReadOnly));
        options.fail = Some((1 << 20, libc_errno::EIO));
        let server = FakeServer::start(options);
        let config = config(&server, 2, 128 * KIB);
        let part = server.shared.options.partition.clone();
        run_queue_thread(&config, &part, 0, |engine| async move {
            // A split read where one part fails fails as a whole.
            let failed = read(&engine, (1 << 20) - 256 * 1024, 512 * KIB).await;
            assert_eq!(errno(failed), Some(libc_errno::EIO));
            let refused = write(&engine, 0, vec![1; 4096]).await;
            assert_eq!(errno(refused), Some(libc_errno::EROFS));
            let misaligned = read(&engine, 100, 512).await;
            assert_eq!(errno(misaligned), Some(libc_errno::EINVAL));
            let beyond = read(&engine, PART_SIZE - 512, 1024).await;
            assert_eq!(errno(beyond), Some(libc_errno::EINVAL));
            assert!(read(&engine, 0, 4096).await.is_ok(), "the lane lives on");
        })
        .unwrap();
    });
}

#[test]
fn wrong_secret_is_refused_clearly() {
    within(LIMIT, || {
        let server = FakeServer::start(Options::new(partition(PART_SIZE, Access::ReadWrite)));
        let mut config = config(&server, 1, 0);
        config.client.secret = other_secret();
        let part = server.shared.options.partition.clone();
        let error = run_queue_thread(&config, &part, 0, |_| async {}).unwrap_err();
        assert!(
            matches!(
                error,
                HostError::Wire(WireError::Refused {
                    code: RefusedCode::Authentication,
                    ..
                })
            ),
            "{error}"
        );
        assert_eq!(error.errno().0, libc_errno::EACCES);
        let error = Discovery::open(&config.client).unwrap_err();
        assert!(error.to_string().contains("Authentication"), "{error}");
    });
}

#[test]
fn server_that_cannot_prove_itself_is_refused() {
    within(LIMIT, || {
        let mut options = Options::new(partition(PART_SIZE, Access::ReadWrite));
        options.prove_with = Some(other_secret());
        let server = FakeServer::start(options);
        let error = Discovery::open(&server.client(secret())).unwrap_err();
        assert!(
            matches!(error, HostError::Wire(WireError::BadServerProof)),
            "{error}"
        );
        let config = config(&server, 1, 0);
        let part = server.shared.options.partition.clone();
        let error = run_queue_thread(&config, &part, 0, |_| async {}).unwrap_err();
        assert!(
            matches!(error, HostError::Wire(WireError::BadServerProof)),
            "{error}"
        );
    });
}

#[test]
fn handshake_has_a_deadline() {
    within(LIMIT, || {
        // A listener that accepts but never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut client = ublk_host::client::ClientConfig::new(addr, "host-a", secret());
        client.handshake_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = Discovery::open(&client).unwrap_err();
        assert!(
            matches!(error, HostError::HandshakeTimeout { .. }),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    });
}

#[test]
fn dropped_lane_reconnects_and_reissues() {
    within(LIMIT, || {
        let mut options = Options::new(partition(PART_SIZE, Access::ReadWrite));
        options.drop_at = Some(6);
        let server = FakeServer::start(options);
        let config = config(&server, 2, 64 * KIB);
        let part = server.shared.options.partition.clone();
        let stats = run_queue_thread(&config, &part, 0, |engine| async move {
            for i in 0..10u64 {
                let offset = i * 100 * 1024;
                let data = pattern(offset, 128 * 1024, i as u8);
                write(&engine, offset, data.clone()).await.unwrap();
                assert!(read(&engine, offset, 128 * KIB).await.unwrap() == data);
            }
            engine.lane_stats()
        })
        .unwrap();
        let reconnects: u64 = stats.iter().map(|s| s.reconnects).sum();
        assert_eq!(reconnects, 1, "{stats:?}");
        assert!(
            server
                .shared
                .data_connections
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 3
        );
    });
}

#[test]
fn lane_down_past_deadline_fails_with_eio() {
    within(LIMIT, || {
        let mut options = Options::new(partition(PART_SIZE, Access::ReadWrite));
        options.drop_at = Some(2);
        options.dead_after_drop = true;
        let server = FakeServer::start(options);
        let mut config = config(&server, 1, 0);
        config.wait_bound = Duration::from_millis(500);
        let part = server.shared.options.partition.clone();
        run_queue_thread(&config, &part, 0, |engine| async move {
            read(&engine, 0, 4096).await.unwrap();
            let started = Instant::now();
            let lost = read(&engine, 0, 4096).await;
            assert_eq!(lost.err(), Some(Errno::EIO));
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(450), "{waited:?}");
            let again = read(&engine, 0, 4096).await;
            assert_eq!(again.err(), Some(Errno::EIO), "fails fast while still down");
        })
        .unwrap();
    });
}
