//! A member disk's health: failed data I/Os are counted, the last one kept with its
//! message and time (the admin page's disk health table).

use super::commit_tests::formatted;
use crate::error::{DiskOp, Error};

#[test]
fn a_failed_data_io_is_counted_with_its_message_and_time() {
    let (_dir, paths, array) = formatted();
    assert!(array.info().disks.iter().all(|d| d.last_error.is_none()));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    array.note_disk_failure(&Error::Disk {
        path: paths[1].clone(),
        offset: 4096,
        op: DiskOp::Write,
        source: std::io::Error::from_raw_os_error(libc::EIO),
    });
    array.note_disk_error(&paths[1]);
    let disks = array.info().disks;
    assert_eq!(disks[0].io_errors, 0);
    assert_eq!(disks[1].io_errors, 2);
    let last = disks[1].last_error.clone().expect("the last error is kept");
    assert!(last.at_unix_ms >= before, "{last:?}");
    // A failure that is not the disk's (a bad request) counts nothing.
    array.note_disk_failure(&Error::ReadOnly);
    assert_eq!(array.info().disks[1].io_errors, 2);
    array.note_disk_failure(&Error::Disk {
        path: paths[1].clone(),
        offset: 8192,
        op: DiskOp::Read,
        source: std::io::Error::from_raw_os_error(libc::EIO),
    });
    let last = array.info().disks[1].last_error.clone().unwrap();
    assert!(
        last.message.contains("read on") && last.message.contains("8192"),
        "{last:?}"
    );
}
