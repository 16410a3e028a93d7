//! Member disks: block devices or plain files, locked against other processes, with an
//! O_DIRECT handle for data and a buffered one for metadata.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{DiskOp, Error, Result};

/// The smallest logical block any member disk uses.
pub const SECTOR_SIZE: u32 = wire::SECTOR_SIZE;
/// Permission of a member file `format --size` creates: owner only, since the metadata
/// area holds the hosts' secrets.
pub const MEMBER_FILE_MODE: u32 = 0o600;
/// The permission bits of a file mode (shown in messages).
const PERMISSION_BITS: u32 = 0o7777;
/// Permission bits a member file should not have (group or others).
const OPEN_TO_OTHERS: u32 = 0o077;
/// `ioctl` returning a block device's logical sector size (`_IO(0x12, 104)`).
const BLKSSZGET: libc::c_ulong = 0x1268;

/// One opened member disk.
#[derive(Debug)]
pub struct MemberDisk {
    path: PathBuf,
    /// Buffered handle: metadata I/O, and the holder of the exclusive `flock`.
    control: File,
    /// Data handle: O_DIRECT when the file system allows it.
    data: File,
    direct: bool,
    block_device: bool,
    size: u64,
    logical_block: u32,
    /// Data I/Os that failed since the array was opened.
    io_errors: AtomicU64,
    /// The last of them (only touched when an I/O fails, never on the data path's
    /// success path).
    last_error: Mutex<Option<DiskFault>>,
}

/// The last failed data I/O of a member disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskFault {
    /// When it failed, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// What failed.
    pub message: String,
}

/// What the admin layer shows about a disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskView {
    /// Path as given.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a block device (else a plain file).
    pub block_device: bool,
    /// Whether data I/O bypasses the page cache.
    pub direct_io: bool,
    /// The device's logical block size.
    pub logical_block: u32,
    /// Data I/Os that failed since the array was opened.
    pub io_errors: u64,
    /// The last of them, if any.
    pub last_error: Option<DiskFault>,
}

impl MemberDisk {
    /// Opens `path` read-write and takes an exclusive lock on it, so that a running server
    /// and an offline command never touch the same disk at once.
    pub fn open(path: &Path) -> Result<MemberDisk> {
        let open_error = |source| Error::Disk {
            path: path.to_owned(),
            offset: 0,
            op: DiskOp::Open,
            source,
        };
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(open_error)?;
        lock_exclusive(&control, path)?;
        let file_metadata = control.metadata().map_err(open_error)?;
        let block_device = file_metadata.file_type().is_block_device();
        let mode = file_metadata.permissions().mode();
        if !block_device && mode & OPEN_TO_OTHERS != 0 {
            log::warn!(
                "{}: member file is accessible by group or others (mode {:04o}) and its \
                 metadata holds the hosts' secrets: chmod 600 it",
                path.display(),
                mode & PERMISSION_BITS
            );
        }
        let size = (&control).seek(SeekFrom::End(0)).map_err(open_error)?;
        let logical_block = if block_device {
            device_logical_block(&control).map_err(open_error)?
        } else {
            SECTOR_SIZE
        };
        let (data, direct) = open_data_handle(path, &control, logical_block)?;
        Ok(MemberDisk {
            path: path.to_owned(),
            control,
            data,
            direct,
            block_device,
            size,
            logical_block,
            io_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// Path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The device's logical block size.
    pub fn logical_block(&self) -> u32 {
        self.logical_block
    }

    /// The buffered handle used for metadata.
    pub fn control_file(&self) -> &File {
        &self.control
    }

    /// The handle used for data I/O (O_DIRECT when possible).
    pub fn data_file(&self) -> &File {
        &self.data
    }

    /// The admin view.
    pub fn view(&self) -> DiskView {
        DiskView {
            path: self.path.clone(),
            size: self.size,
            block_device: self.block_device,
            direct_io: self.direct,
            logical_block: self.logical_block,
            io_errors: self.io_errors(),
            last_error: self.last_error(),
        }
    }

    /// Data I/Os that failed since the array was opened.
    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    /// Counts one failed data I/O, described by `message`, as the disk's last error.
    pub fn note_io_error(&self, message: &str) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(DiskFault {
            at_unix_ms,
            message: message.to_owned(),
        });
    }

    /// The last failed data I/O, if any.
    pub fn last_error(&self) -> Option<DiskFault> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Writes `bytes` (an encoded metadata slot, or zeroes) into metadata slot `index`
    /// through the buffered handle, and syncs it.
    pub fn write_metadata_slot(&self, index: u64, bytes: &[u8]) -> Result<()> {
        #[cfg(test)]
        if let Some(error) = faults::before_write(&self.path, index, bytes) {
            return Err(error);
        }
        super::metadata::write_slot_bytes(&self.control, &self.path, index, bytes)?;
        #[cfg(test)]
        if let Some(error) = faults::after_write(&self.path, index) {
            return Err(error);
        }
        Ok(())
    }
}

impl MemberDisk {
    /// Makes `len` bytes at `offset` read back as zeroes, durably: space handed to a
    /// partition must not show what an earlier one left there. Block devices use
    /// `BLKZEROOUT` (the device's write-zeroes command, or the kernel's own writes); files
    /// get a hole punched, else a zeroed range, else written zeroes. Blocking: for the
    /// control plane only.
    pub fn zero_durably(&self, offset: u64, len: u64) -> Result<()> {
        let error = |source| Error::Disk {
            path: self.path.clone(),
            offset,
            op: DiskOp::WriteZeroes,
            source,
        };
        if len == 0 {
            return Ok(());
        }
        let zeroed = if self.block_device {
            self.zero_out_device(offset, len)
        } else {
            self.zero_file_range(offset, len)
        };
        zeroed.map_err(error)?;
        self.control.sync_data().map_err(error)
    }

    fn zero_out_device(&self, offset: u64, len: u64) -> std::io::Result<()> {
        /// `ioctl` zeroing a byte range of a block device (`_IO(0x12, 127)`).
        const BLKZEROOUT: libc::c_ulong = 0x127f;
        let span: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer, which
        // points at `span`; the fd is this disk's open control handle.
        let status = unsafe { libc::ioctl(self.control.as_raw_fd(), BLKZEROOUT, span.as_ptr()) };
        if status < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn zero_file_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let fd = self.control.as_raw_fd();
        let (Ok(at), Ok(count)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        for mode in [
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        ] {
            // SAFETY: plain system call on our open descriptor; no memory is passed.
            if unsafe { libc::fallocate(fd, mode, at, count) } == 0 {
                return Ok(());
            }
            let error = std::io::Error::last_os_error();
            if !matches!(
                error.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) {
                return Err(error);
            }
        }
        write_zeroes(&self.control, offset, len)
    }
}

/// Bytes of zeroes one write puts down when a file can neither punch nor zero a range.
const ZERO_WRITE_LEN: u64 = 1 << 20;

fn write_zeroes(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeroes = vec![0u8; ZERO_WRITE_LEN.min(len) as usize];
    let mut done = 0;
    while done < len {
        let step = (len - done).min(ZERO_WRITE_LEN) as usize;
        file.write_all_at(&zeroes[..step], offset + done)?;
        done += step as u64;
    }
    Ok(())
}

fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock on a file descriptor this `File` owns and keeps open; no memory involved.
    let status = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if status == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(Error::Locked {
            path: path.to_owned(),
        });
    }
    Err(Error::Disk {
        path: path.to_owned(),
        offset: 0,
        op: DiskOp::Open,
        source: error,
    })
}

fn device_logical_block(file: &File) -> std::io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points at `size`.
    let status = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut size) };
    if status < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u32::try_from(size).unwrap_or(SECTOR_SIZE).max(SECTOR_SIZE))
}

/// Opens the O_DIRECT data handle and proves it works with one aligned read; falls back to
/// a duplicate of the buffered handle (with a warning) where the file system refuses.
fn open_data_handle(path: &Path, control: &File, logical_block: u32) -> Result<(File, bool)> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct.and_then(|file| probe_direct(&file, logical_block).map(|()| file)) {
        Ok(file) => Ok((file, true)),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            log::warn!(
                "{}: O_DIRECT refused ({error}); using buffered I/O, FLUSH and FUA still sync",
                path.display()
            );
            let buffered = control.try_clone().map_err(|source| Error::Disk {
                path: path.to_owned(),
                offset: 0,
                op: DiskOp::Open,
                source,
            })?;
            Ok((buffered, false))
        }
        Err(source) => Err(Error::Disk {
            path: path.to_owned(),
            offset: 0,
            op: DiskOp::Open,
            source,
        }),
    }
}

fn probe_direct(file: &File, logical_block: u32) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = logical_block as usize;
    let layout = std::alloc::Layout::from_size_align(len, len)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `layout` has a non-zero size (a logical block is at least 512 bytes).
    let memory = unsafe { std::alloc::alloc_zeroed(layout) };
    if memory.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `memory` points to `len` initialised (zeroed) bytes that nothing else uses.
    let buffer = unsafe { std::slice::from_raw_parts_mut(memory, len) };
    let result = file.read_at(buffer, 0).map(|_| ());
    // SAFETY: `memory` came from `alloc_zeroed` with this very layout and is freed once.
    unsafe { std::alloc::dealloc(memory, layout) };
    result
}

/// Creates `path` as a plain file of `size` bytes if it does not exist yet.
pub fn create_file_if_missing(path: &Path, size: u64) -> Result<bool> {
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MEMBER_FILE_MODE)
        .open(path);
    match created {
        Ok(file) => {
            file.set_len(size).map_err(|source| Error::Disk {
                path: path.to_owned(),
                offset: size,
                op: DiskOp::Open,
                source,
            })?;
            Ok(true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(Error::Disk {
            path: path.to_owned(),
            offset: 0,
            op: DiskOp::Open,
            source,
        }),
    }
}

/// Test-only fault injection for metadata writes: a unit test arms a fault for one member
/// disk on its own thread, and the next metadata write there fails as a dying disk would.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    use crate::error::{DiskOp, Error};

    /// How the armed write fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fault {
        /// `EIO` before anything reaches the disk.
        BeforeWrite,
        /// The bytes land (readable afterwards), then the sync reports `EIO`.
        AfterWrite,
    }

    thread_local! {
        static ARMED: RefCell<Option<(PathBuf, Fault)>> = const { RefCell::new(None) };
    }

    /// Makes the next metadata write of an encoded slot to `path` on this thread fail
    /// with `fault`; wipes (all zeroes) still succeed.
    pub(crate) fn arm(path: &Path, fault: Fault) {
        ARMED.with(|armed| *armed.borrow_mut() = Some((path.to_owned(), fault)));
    }

    fn take(path: &Path, fault: Fault) -> bool {
        ARMED.with(|armed| {
            let mut armed = armed.borrow_mut();
            let hit = armed.as_ref().is_some_and(|(armed_path, armed_fault)| {
                armed_path == path && *armed_fault == fault
            });
            if hit {
                *armed = None;
            }
            hit
        })
    }

    fn eio(path: &Path, index: u64) -> Error {
        Error::Disk {
            path: path.to_owned(),
            offset: index,
            op: DiskOp::WriteMetadata,
            source: std::io::Error::from_raw_os_error(libc::EIO),
        }
    }

    pub(super) fn before_write(path: &Path, index: u64, bytes: &[u8]) -> Option<Error> {
        let is_wipe = bytes.iter().all(|b| *b == 0);
        (!is_wipe && take(path, Fault::BeforeWrite)).then(|| eio(path, index))
    }

    pub(super) fn after_write(path: &Path, index: u64) -> Option<Error> {
        take(path, Fault::AfterWrite).then(|| eio(path, index))
    }
}
