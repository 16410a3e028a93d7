//! The mapped engine: a RAM-backed member file (tmpfs, ramfs) mapped shared as a whole.
//! Reads and writes are a `memcpy` on the calling thread, with no system call and no
//! per-page lookup; read replies can be sent straight from the mapping ([`MappedSlice`])
//! and write payloads received straight into it ([`MappedTarget`]).
//!
//! On this kernel io_uring hands every tmpfs read and write to an io-wq worker thread (such
//! files cannot do non-blocking I/O): a cross-thread hop and two context switches per
//! operation for what is a copy from the page cache. The mapping removes the hop, a
//! system call and a copy.

use std::io;
use std::ptr::NonNull;
use std::rc::Rc;

use tokio_uring::buf::{IoBuf, IoBufMut};

use super::buffer::BufPart;
use super::file::{DiskFile, DiskRange};
use super::Engine;
use crate::array::stripe::Piece;
use crate::error::Result;

/// A member disk driven through its mapping.
#[derive(Debug)]
pub struct Mapped {
    pub(super) file: DiskFile,
    map: Rc<Mapping>,
}

impl Mapped {
    /// Maps `file` (a file of a memory file system); gives it back if that fails (see
    /// [`Mapping::new`]).
    pub fn new(file: DiskFile) -> std::result::Result<Mapped, DiskFile> {
        match Mapping::new(file.raw_fd) {
            Some(map) => Ok(Mapped {
                file,
                map: Rc::new(map),
            }),
            None => Err(file),
        }
    }

    /// `len` bytes at `offset` of the mapping, checked to lie inside it.
    fn bytes(&self, offset: u64, len: usize) -> io::Result<*mut u8> {
        self.map
            .range(offset, len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn fill_zero(&self, range: DiskRange) -> io::Result<()> {
        let to = self.bytes(range.offset, range.len as usize)?;
        // Mapped pages must stay allocated (see `Mapping::new`): zero, never punch.
        // SAFETY: `to` has `range.len` mapped, writable bytes (checked by `bytes`).
        unsafe { std::ptr::write_bytes(to, 0, range.len as usize) };
        Ok(())
    }
}

impl Engine for Mapped {
    fn file(&self) -> &DiskFile {
        &self.file
    }

    async fn read(&self, piece: Piece, mut part: BufPart) -> Result<()> {
        let from = self
            .bytes(piece.disk_offset, piece.len as usize)
            .map_err(|e| {
                self.file
                    .error(crate::error::DiskOp::Read, piece.disk_offset, e)
            })?;
        let target = part.as_mut_slice();
        // SAFETY: `from` has `target.len()` mapped bytes (checked by `bytes`); the mapping
        // and `target` (a pooled buffer) never overlap.
        unsafe { std::ptr::copy_nonoverlapping(from, target.as_mut_ptr(), target.len()) };
        Ok(())
    }

    async fn write(&self, piece: Piece, part: BufPart) -> Result<()> {
        let to = self
            .bytes(piece.disk_offset, piece.len as usize)
            .map_err(|e| {
                self.file
                    .error(crate::error::DiskOp::Write, piece.disk_offset, e)
            })?;
        let source = part.as_slice();
        // SAFETY: as in `read`, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), to, source.len()) };
        Ok(())
    }

    async fn release(&self, range: DiskRange) -> io::Result<()> {
        self.fill_zero(range)
    }

    async fn zero(&self, range: DiskRange) -> io::Result<()> {
        self.fill_zero(range)
    }

    fn view(&self, piece: Piece) -> Option<MappedSlice> {
        let ptr = self.map.range(piece.disk_offset, piece.len as usize)?;
        Some(MappedSlice {
            _map: self.map.clone(),
            ptr,
            len: piece.len as usize,
        })
    }
}

/// A shared mapping of a whole member file, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: u64,
}

impl Mapping {
    /// Maps `fd` (a file of a memory file system) read-write and shared, after allocating
    /// every page of it.
    ///
    /// A fault on a page a memory file system has not allocated yet allocates it, and
    /// raises `SIGBUS` when the file system is full; so the whole file is allocated first
    /// (`fallocate`; on failure nothing is mapped and I/O uses `pread`/`pwrite`, which
    /// report `ENOSPC` instead), and a discard on a mapped disk zeroes its range rather
    /// than punching a hole (see [`DiskSet::discard`]). Member files keep their size
    /// while the array is open, so no access inside the mapping faults. A RAM-backed
    /// disk thus holds its whole size in RAM from the start.
    fn new(fd: i32) -> Option<Mapping> {
        // SAFETY: `stat` is plain old data, filled in by `fstat` on an open descriptor.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut stat) } != 0 || stat.st_size <= 0 {
            return None;
        }
        let len = stat.st_size as u64;
        // SAFETY: plain system call on an open descriptor; mode 0 only allocates.
        if unsafe { libc::fallocate(fd, 0, 0, stat.st_size) } != 0 {
            log::warn!(
                "cannot allocate a RAM-backed member disk ({}); using pread/pwrite",
                io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: a fresh mapping chosen by the kernel; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                usize::try_from(len).ok()?,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            log::debug!("mmap of a member disk: {}", io::Error::last_os_error());
            return None;
        }
        Some(Mapping {
            ptr: NonNull::new(ptr.cast())?,
            len,
        })
    }

    /// The mapped bytes `[offset, offset + len)`, if inside the mapping.
    fn range(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len as u64)?;
        // SAFETY: `offset + len <= self.len`, inside the mapping.
        (end <= self.len).then(|| unsafe { self.ptr.as_ptr().add(offset as usize) })
    }
}

/// Bytes of a member disk's mapping, kept alive by the view (see
/// [`super::Done::Mapped`]).
#[derive(Debug)]
pub struct MappedSlice {
    _map: Rc<Mapping>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr..ptr + len` lies inside the mapping (checked by `Mapping::range`), which
// `_map` keeps mapped while the view lives; mapped file pages are always initialised.
unsafe impl IoBuf for MappedSlice {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }

    fn bytes_init(&self) -> usize {
        self.len
    }

    fn bytes_total(&self) -> usize {
        self.len
    }
}

/// A write payload's destination in a member disk's mapping (a [`MappedSlice`]),
/// filled front to back by copies from the staging buffer and by socket receives.
///
/// As an I/O buffer its "initialised" bytes are the ones filled so far: a receive
/// (`readv`) fills `filled..len` and advances `filled` through `set_init`.
#[derive(Debug)]
pub struct MappedTarget {
    view: MappedSlice,
    filled: usize,
}

impl MappedTarget {
    /// An empty target over `view`.
    pub fn new(view: MappedSlice) -> MappedTarget {
        MappedTarget { view, filled: 0 }
    }

    /// Bytes still to fill.
    pub fn remaining(&self) -> usize {
        self.view.len - self.filled
    }

    /// Copies as much of `source` as fits into the unfilled part; returns how much.
    pub fn fill_from(&mut self, source: &[u8]) -> usize {
        let take = source.len().min(self.remaining());
        // SAFETY: `filled + take <= len`, so the destination lies inside the view's mapped,
        // writable range (see `MappedSlice`); `source` (a socket staging buffer) never
        // lies inside a disk mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(source.as_ptr(), self.view.ptr.add(self.filled), take)
        };
        self.filled += take;
        take
    }
}

// SAFETY: `view.ptr..view.ptr + view.len` lies inside the mapping, which the view keeps
// mapped; `filled <= len` bytes count as initialised (mapped file pages always are).
unsafe impl IoBuf for MappedTarget {
    fn stable_ptr(&self) -> *const u8 {
        self.view.ptr
    }

    fn bytes_init(&self) -> usize {
        self.filled
    }

    fn bytes_total(&self) -> usize {
        self.view.len
    }
}

// SAFETY: the mapping is writable (`PROT_WRITE`); a receive into it writes file pages,
// which is the point. A read reply in flight over an overlapping range may show some of
// the new bytes, as a read concurrent with an overlapping write may on any block device.
unsafe impl IoBufMut for MappedTarget {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.view.ptr
    }

    unsafe fn set_init(&mut self, pos: usize) {
        self.filled = self.filled.max(pos.min(self.view.len));
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing uses them any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len as usize) };
    }
}
