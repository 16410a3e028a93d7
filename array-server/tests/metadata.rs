//! Metadata survives restarts and interrupted updates; disks are locked while in use.

mod common;

use std::os::unix::fs::FileExt;

use array_server::array::metadata::{self, Slot, SLOT_SIZE};
use array_server::{Array, Error, FormatOptions};
use common::*;
use wire::{Access, Status};

#[test]
fn metadata_and_data_survive_a_restart() {
    let disks = temp_disks(3, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let p = array.create_partition("p", 2 << 20, false).unwrap();
    array.create_partition("s", 1 << 20, true).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.create_host("ro").unwrap();
    array.assign("h", "p", Access::ReadWrite).unwrap();
    array.assign("ro", "s", Access::ReadOnly).unwrap();
    let before = (
        array.partitions(),
        array.hosts(),
        array.assignments(),
        array.info().generation,
    );
    let server = serve(array);
    let data = pattern(4, 1 << 20);
    {
        let mut client = Client::data(server.local_addr(), "h", &secret, p.id);
        assert_eq!(client.write(4096, &data), Status::Ok);
        assert_eq!(client.flush(), Status::Ok);
    }
    server.stop();

    // Another order on the command line: disks find their places from their metadata.
    let reversed: Vec<_> = disks.paths.iter().rev().cloned().collect();
    let array = Array::open(&reversed).expect("reopen");
    let after = (
        array.partitions(),
        array.hosts(),
        array.assignments(),
        array.info().generation,
    );
    assert_eq!(before, after);
    let server = serve(array);
    let mut client = Client::data(server.local_addr(), "h", &secret, p.id);
    assert_eq!(client.read_ok(4096, 1 << 20), data);
}

/// The slot index (0 or 1) of `path` holding `generation`, and both slots.
fn slot_holding(path: &std::path::Path, generation: u64) -> (u64, [Option<Slot>; 2]) {
    let file = std::fs::File::open(path).unwrap();
    let slots = metadata::read_slots(&file, path).unwrap();
    let index = slots
        .iter()
        .position(|s| s.as_ref().is_some_and(|s| s.generation == generation))
        .expect("the committed generation is on every disk");
    (index as u64, slots)
}

#[test]
fn an_update_interrupted_between_disks_never_reappears() {
    let disks = temp_disks(3, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let kept = array.create_partition("kept", 1 << 20, false).unwrap();
    let generation = array.info().generation;
    drop(array);

    // "Crash" mid-commit: the next generation reached disk 0 only (in the slot a commit
    // writes: the one not holding the committed generation).
    let (committed, slots) = slot_holding(&disks.paths[0], generation);
    let mut next = slots[committed as usize].clone().unwrap();
    next.generation += 1;
    next.metadata.partitions[0].name = "renamed".into();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disks.paths[0])
        .unwrap();
    let target = metadata::other_slot(committed);
    metadata::write_slot(&file, &disks.paths[0], target, &next).unwrap();
    drop(file);

    let array = Array::open(&disks.paths).unwrap();
    assert_eq!(array.partition("kept").unwrap().size, kept.size);
    assert!(matches!(
        array.partition("renamed"),
        Err(Error::PartitionNotFound(_))
    ));
    // Opening discarded the unfinished commit with a fresh generation on every disk,
    // above the unfinished one's number.
    let healed = array.info().generation;
    assert!(healed > generation + 1);
    drop(array);
    for path in &disks.paths {
        let (_, slots) = slot_holding(path, healed);
        for slot in slots.iter().flatten() {
            assert_eq!(slot.metadata.partitions[0].name, "kept");
        }
    }
    let array = Array::open(&disks.paths).unwrap();
    assert!(array.partition("renamed").is_err());
    assert_eq!(array.info().generation, healed);
}

#[test]
fn a_corrupted_newest_slot_is_ignored() {
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    array.create_partition("old", 1 << 20, false).unwrap();
    array.create_partition("new", 1 << 20, false).unwrap();
    let generation = array.info().generation;
    drop(array);
    for path in &disks.paths {
        let (index, _) = slot_holding(path, generation);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let offset = index * SLOT_SIZE as u64 + 20;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], offset).unwrap();
    }
    let array = Array::open(&disks.paths).unwrap();
    assert!(array.partition("old").is_ok());
    assert!(matches!(
        array.partition("new"),
        Err(Error::PartitionNotFound(_))
    ));
}

#[test]
fn disks_are_locked_while_open_and_format_refuses_existing_arrays() {
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    assert!(matches!(
        Array::open(&disks.paths),
        Err(Error::Locked { .. })
    ));
    drop(array);
    let options = FormatOptions {
        chunk: CHUNK,
        force: false,
        create_size: None,
    };
    assert!(matches!(
        Array::format(&disks.paths, &options),
        Err(Error::AlreadyFormatted { .. })
    ));
    let forced = FormatOptions {
        force: true,
        ..options
    };
    let array = Array::format(&disks.paths, &forced).unwrap();
    assert!(array.partitions().is_empty());
    drop(array);
    assert!(matches!(
        Array::open(&disks.paths[..1]),
        Err(Error::DiskSetMismatch(_))
    ));
}

#[test]
fn failed_mutations_change_nothing() {
    let disks = temp_disks(2, DISK_SIZE);
    let array = format(&disks, CHUNK);
    let generation = array.info().generation;
    let capacity = array.info().capacity;
    assert!(matches!(
        array.create_partition("huge", capacity + 1, false),
        Err(Error::NoSpace { .. })
    ));
    assert!(matches!(
        array.assign("nobody", "nothing", Access::ReadWrite),
        Err(Error::HostNotFound(_))
    ));
    assert!(matches!(
        array.create_host("no spaces"),
        Err(Error::InvalidName(_))
    ));
    assert_eq!(array.info().generation, generation);
    assert_eq!(array.info().free, capacity);
}
