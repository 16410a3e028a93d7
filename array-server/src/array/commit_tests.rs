//! A metadata commit that fails on one member disk is reported failed and never comes
//! back: not in memory, not after the array is opened again (the disk layer's test-only
//! fault injection, [`super::disk::faults`], makes the write fail). The API's answer to such
//! a failure is tested in `admin::routes`.

use std::path::PathBuf;
use std::sync::Arc;

use super::disk::faults::{self, Fault};
use super::{Array, FormatOptions};
use crate::error::Error;

/// Member disks of the test arrays.
pub(crate) const DISKS: usize = 3;
const DISK_SIZE: u64 = 16 << 20;
const CHUNK: u64 = 64 << 10;

/// A formatted array of [`DISKS`] member files holding one host, `kept`.
pub(crate) fn formatted() -> (tempfile::TempDir, Vec<PathBuf>, Arc<Array>) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..DISKS)
        .map(|i| dir.path().join(format!("d{i}")))
        .collect();
    let options = FormatOptions {
        chunk: CHUNK,
        force: false,
        create_size: Some(DISK_SIZE),
    };
    let array = Array::format(&paths, &options).unwrap();
    array.create_host("kept").unwrap();
    (dir, paths, array)
}

fn assert_failed_change_is_absent(fault: Fault, disk: usize) {
    let (_dir, paths, array) = formatted();
    let generation = array.info().generation;
    faults::arm(&paths[disk], fault);
    let failed = array.create_partition("lost", 1 << 20, false);
    assert!(
        matches!(failed, Err(Error::Disk { .. })),
        "the commit reports the failure: {failed:?}"
    );
    assert!(matches!(
        array.partition("lost"),
        Err(Error::PartitionNotFound(_))
    ));
    assert_eq!(array.info().generation, generation);
    drop(array);

    let array = Array::open(&paths).unwrap();
    assert!(
        matches!(array.partition("lost"), Err(Error::PartitionNotFound(_))),
        "a failed commit came back after reopening"
    );
    assert_eq!(array.hosts().len(), 1, "the last committed state is intact");
    // The array still commits, and that commit sticks.
    array.create_partition("later", 1 << 20, false).unwrap();
    drop(array);
    let array = Array::open(&paths).unwrap();
    assert!(array.partition("later").is_ok());
    assert!(array.partition("lost").is_err());
}

#[test]
fn a_commit_failing_on_a_middle_disk_never_reappears() {
    assert_failed_change_is_absent(Fault::BeforeWrite, 1);
}

#[test]
fn a_commit_whose_last_sync_fails_never_reappears() {
    // The bytes reach every disk; the last disk's sync reports the error.
    assert_failed_change_is_absent(Fault::AfterWrite, DISKS - 1);
}
