//! The same checks against every engine: bytes written read back equal across chunk and
//! disk boundaries, discarded and zeroed ranges read back as zeroes, flush and FUA succeed.

use std::path::Path;
use std::sync::Arc;

use tokio_uring::buf::IoBuf;
use wire::Access;

use super::*;
use crate::array::FormatOptions;

/// Member disk size.
const DISK: u64 = 8 << 20;
/// Stripe chunk.
const CHUNK: u64 = 64 << 10;
/// Partition size.
const PART: u64 = 4 << 20;

fn array_in(dir: &Path) -> (Arc<Array>, Arc<LaneGrant>) {
    let paths: Vec<_> = (0..3).map(|i| dir.join(format!("disk{i}.img"))).collect();
    for path in &paths {
        std::fs::File::create(path).unwrap().set_len(DISK).unwrap();
    }
    let options = FormatOptions {
        chunk: CHUNK,
        force: false,
        create_size: None,
    };
    let array = Array::format(&paths, &options).unwrap();
    let partition = array.create_partition("p", PART, false).unwrap();
    array.create_host("h").unwrap();
    array.assign("h", "p", Access::ReadWrite).unwrap();
    let grant = array.lane_grant("h", partition.id).unwrap();
    (array, grant)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

async fn read(disks: &DiskSet, grant: &LaneGrant, offset: u64, len: u64) -> Vec<u8> {
    let plan = disks.plan(grant, offset, len);
    match disks.run(Command::Read { plan }).await.unwrap() {
        Done::Data(buffer) => buffer.data()[..len as usize].to_vec(),
        Done::Mapped(views) => views
            .iter()
            .flat_map(|view| {
                // SAFETY: a view's bytes are mapped and initialised while it lives.
                unsafe {
                    std::slice::from_raw_parts(IoBuf::stable_ptr(view), IoBuf::bytes_init(view))
                }
                .to_vec()
            })
            .collect(),
        Done::Nothing => panic!("a read returned no data"),
    }
}

async fn write(disks: &DiskSet, grant: &LaneGrant, offset: u64, data: &[u8], fua: bool) {
    let plan = disks.plan(grant, offset, data.len() as u64);
    let mut buffer = AlignedBuf::for_data(data.len());
    buffer.data_mut().copy_from_slice(data);
    let payload = Payload::Buffer(buffer);
    let command = Command::Write { plan, payload, fua };
    assert!(matches!(disks.run(command).await.unwrap(), Done::Nothing));
}

/// The checks, on disks in `dir` driven by `kind`.
fn exercise(dir: &Path, kind: EngineKind) {
    let (array, grant) = array_in(dir);
    tokio_uring::start(async {
        let disks = DiskSet::with_engine(&array, kind).unwrap();
        let (offset, len) = (CHUNK / 2, 5 * CHUNK + 4096);
        let data = pattern(1, len as usize);
        write(&disks, &grant, offset, &data, true).await;
        assert!(
            read(&disks, &grant, offset, len).await == data,
            "{kind:?}: read back"
        );
        let zeroed: [fn(Plan) -> Command; 2] = [
            |plan| Command::Discard { plan },
            |plan| Command::WriteZeroes { plan },
        ];
        for (index, make) in zeroed.into_iter().enumerate() {
            write(&disks, &grant, 0, &pattern(2, PART as usize / 2), false).await;
            let (from, span) = (CHUNK, 3 * CHUNK);
            let plan = disks.plan(&grant, from, span);
            disks.run(make(plan)).await.unwrap();
            let back = read(&disks, &grant, 0, 5 * CHUNK).await;
            let expected: Vec<u8> = pattern(2, 5 * CHUNK as usize)
                .into_iter()
                .enumerate()
                .map(|(at, byte)| {
                    let inside = (from..from + span).contains(&(at as u64));
                    if inside {
                        0
                    } else {
                        byte
                    }
                })
                .collect();
            assert!(back == expected, "{kind:?}: zeroing command {index}");
        }
        assert!(matches!(
            disks.run(Command::Flush).await.unwrap(),
            Done::Nothing
        ));
    });
}

/// A disk-backed directory for the io_uring engine.
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").unwrap()
}

/// A RAM-backed directory, `None` without `/dev/shm`.
fn ram_dir() -> Option<tempfile::TempDir> {
    tempfile::tempdir_in("/dev/shm").ok()
}

#[test]
fn direct_engine() {
    exercise(disk_dir().path(), EngineKind::Direct);
}

#[test]
fn inline_engine() {
    if let Some(dir) = ram_dir() {
        exercise(dir.path(), EngineKind::Inline);
    }
}

#[test]
fn mapped_engine() {
    if let Some(dir) = ram_dir() {
        exercise(dir.path(), EngineKind::Auto);
    }
}

/// What [`DiskSet::run_now`] finishes on the spot on disks driven by `kind`: reads and
/// in-place writes without FUA on mapped disks, and nothing else; a command it hands back
/// is the one it was given.
fn finishes_now(dir: &Path, kind: EngineKind) {
    let (array, grant) = array_in(dir);
    tokio_uring::start(async {
        let disks = DiskSet::with_engine(&array, kind).unwrap();
        let data = pattern(3, 3 * CHUNK as usize);
        write(&disks, &grant, CHUNK / 2, &data, false).await;
        let plan = || disks.plan(&grant, CHUNK / 2, data.len() as u64);
        let mapped = kind == EngineKind::Auto;
        match disks.run_now(Command::Read { plan: plan() }) {
            Ok(Done::Mapped(views)) if mapped => {
                let len: usize = views.iter().map(IoBuf::bytes_init).sum();
                assert_eq!(len, data.len());
            }
            Err(Command::Read { plan: back }) if !mapped => assert_eq!(back, plan()),
            other => panic!("{kind:?}: a read gave {other:?}"),
        }
        let in_place = |fua| Command::Write {
            plan: plan(),
            payload: Payload::InPlace,
            fua,
        };
        // In place means the payload is already in the pages: only a mapped disk has those.
        if mapped {
            assert!(matches!(disks.run_now(in_place(false)), Ok(Done::Nothing)));
            assert!(matches!(
                disks.run_now(in_place(true)),
                Err(Command::Write { fua: true, .. })
            ));
        }
        let buffered = Command::Write {
            plan: plan(),
            payload: Payload::Buffer(AlignedBuf::for_data(data.len())),
            fua: false,
        };
        assert!(matches!(
            disks.run_now(buffered),
            Err(Command::Write {
                payload: Payload::Buffer(_),
                ..
            })
        ));
        assert!(matches!(disks.run_now(Command::Flush), Err(Command::Flush)));
        assert!(read(&disks, &grant, CHUNK / 2, data.len() as u64).await == data);
    });
}

#[test]
fn only_commands_without_waiting_finish_now() {
    finishes_now(disk_dir().path(), EngineKind::Direct);
    if let Some(dir) = ram_dir() {
        finishes_now(dir.path(), EngineKind::Inline);
        finishes_now(dir.path(), EngineKind::Auto);
    }
}
