//! What every engine shares: a member disk's data handle on the thread's ring, its errors,
//! and the operations that are the same for all (sync, zero-filling by writes).

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::fs::File;

use super::buffer::{AlignedBuf, DATA_OFFSET};
use crate::array::disk::MemberDisk;
use crate::error::{DiskOp, Error, Result};

/// Largest zero buffer written at once when a disk cannot zero a range itself.
const ZERO_FILL_LEN: u64 = 1 << 20;
/// `statfs` magic numbers of file systems whose data lives in memory.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

pub use crate::array::stripe::DiskRange;

/// One member disk's data handle on this thread's ring.
#[derive(Debug)]
pub struct DiskFile {
    pub(super) file: File,
    pub(super) raw_fd: i32,
    pub(super) path: PathBuf,
    pub(super) block_device: bool,
}

impl DiskFile {
    /// Duplicates `member`'s data handle onto the calling thread's runtime.
    pub fn open(member: &MemberDisk) -> Result<DiskFile> {
        let std_file = member
            .data_file()
            .try_clone()
            .map_err(|source| Error::Disk {
                path: member.path().to_owned(),
                offset: 0,
                op: DiskOp::Open,
                source,
            })?;
        Ok(DiskFile {
            raw_fd: std_file.as_raw_fd(),
            file: File::from_std(std_file),
            path: member.path().to_owned(),
            block_device: member.is_block_device(),
        })
    }

    /// Whether the data lives in memory (tmpfs, ramfs): such files cannot do non-blocking
    /// I/O, so io_uring would hand every operation to a worker thread (see `mapped`).
    pub fn in_memory(&self) -> bool {
        if self.block_device {
            return false;
        }
        // SAFETY: `statfs` is plain old data; all-zero is a valid value to overwrite.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `raw_fd` is open and `stat` a valid, exclusively borrowed statfs.
        if unsafe { libc::fstatfs(self.raw_fd, &mut stat) } != 0 {
            return false;
        }
        #[allow(clippy::unnecessary_cast)]
        let magic = stat.f_type as i64;
        magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
    }

    /// The error of `op` at `offset` on this disk.
    pub fn error(&self, op: DiskOp, offset: u64, source: io::Error) -> Error {
        Error::Disk {
            path: self.path.clone(),
            offset,
            op,
            source,
        }
    }

    /// `fdatasync` through the ring.
    pub async fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .await
            .map_err(|e| self.error(DiskOp::Sync, 0, e))
    }

    /// Punches a hole (files) or discards (block devices) `range`.
    pub async fn punch(&self, range: DiskRange) -> io::Result<()> {
        if self.block_device {
            /// `ioctl` discarding a byte range of a block device (`_IO(0x12, 119)`).
            const BLKDISCARD: libc::c_ulong = 0x1277;
            let span: [u64; 2] = [range.offset, range.len];
            // SAFETY: BLKDISCARD reads two u64 (start, length) through the pointer, which
            // points at `span`; the fd is this disk's open data handle.
            let status = unsafe { libc::ioctl(self.raw_fd, BLKDISCARD, span.as_ptr()) };
            if status < 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        self.file.fallocate(range.offset, range.len, mode).await
    }

    /// `FALLOC_FL_ZERO_RANGE` on `range`.
    pub async fn zero_range(&self, range: DiskRange) -> io::Result<()> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        self.file.fallocate(range.offset, range.len, mode).await
    }

    /// Writes zeroes over `range` (for disks that cannot discard or zero a range).
    pub async fn fill_zeroes(&self, range: DiskRange, op: DiskOp) -> Result<()> {
        let mut buffer = AlignedBuf::for_data(range.len.min(ZERO_FILL_LEN) as usize);
        buffer.data_mut().fill(0);
        let mut done = 0;
        while done < range.len {
            let step = (range.len - done).min(ZERO_FILL_LEN) as usize;
            let at = range.offset + done;
            let (result, slice) = self
                .file
                .write_at(buffer.slice(DATA_OFFSET..DATA_OFFSET + step), at)
                .submit()
                .await;
            buffer = slice.into_inner();
            match result {
                Ok(0) => return Err(self.error(op, at, io::ErrorKind::WriteZero.into())),
                Ok(written) => done += written as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(op, at, e)),
            }
        }
        Ok(())
    }
}
