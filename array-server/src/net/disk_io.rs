//! Block requests against the member disks: partition range → extents → stripe chunks →
//! per-disk io_uring reads and writes, all pieces of a request in flight at once.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::rc::Rc;

use futures_util::future::join_all;
use tokio_uring::buf::{BoundedBuf, IoBuf, IoBufMut};
use tokio_uring::fs::File;

use super::buffer::{AlignedBuf, BufPart, DATA_OFFSET};
use crate::array::grant::{LaneGrant, MappedPiece};
use crate::array::stripe::{Piece, StripeMap};
use crate::array::Array;
use crate::error::{DiskOp, Error, Result};

/// `ioctl` discarding a byte range of a block device (`_IO(0x12, 119)`).
const BLKDISCARD: libc::c_ulong = 0x1277;
/// Largest zero buffer written at once when a disk cannot zero a range itself.
const ZERO_FILL_LEN: u64 = 1 << 20;

/// `statfs` magic numbers of file systems whose data lives in memory.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Most pieces a read is sent in straight from the mappings (one iovec each; the writer
/// keeps a `writev` under `IOV_MAX` with this); longer ones are copied into a buffer.
pub const MAX_MAPPED_PIECES: usize = 256;

/// One member disk's data handle on this thread's ring.
#[derive(Debug)]
struct DiskHandle {
    file: File,
    raw_fd: i32,
    path: PathBuf,
    block_device: bool,
    /// Reads and writes run inline on the thread rather than on the ring (see
    /// [`in_memory`]).
    inline: bool,
    /// For an inline disk, the whole file mapped shared: reads and writes are a `memcpy`
    /// with no system call and no per-page lookup. `None` if mapping failed (`pread`
    /// and `pwrite` then).
    map: Option<Rc<Mapping>>,
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
/// [`DiskSet::mapped_read`]).
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

/// Whether `fd` is a file on a memory file system (tmpfs, ramfs).
///
/// Such files cannot do non-blocking I/O (`RWF_NOWAIT` is refused), so io_uring hands
/// every read and write on them to an io-wq kernel worker thread: a cross-thread hop and
/// two context switches per operation for what is a `memcpy` from the page cache, which
/// cannot wait for a device. Copying inline on the calling thread does the same work
/// without the hop (`randread 4k`: about 2x the requests per second on one thread).
fn in_memory(fd: i32) -> bool {
    // SAFETY: `statfs` is plain old data; all-zero is a valid value to overwrite.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `stat` a valid, exclusively borrowed statfs.
    if unsafe { libc::fstatfs(fd, &mut stat) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = stat.f_type as i64;
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

impl DiskHandle {
    fn error(&self, op: DiskOp, offset: u64, source: io::Error) -> Error {
        Error::Disk {
            path: self.path.clone(),
            offset,
            op,
            source,
        }
    }
}

/// The member disks as one thread's runtime sees them.
#[derive(Debug)]
pub struct DiskSet {
    disks: Vec<DiskHandle>,
    stripes: StripeMap,
}

/// A contiguous range on one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiskRange {
    disk: u32,
    offset: u64,
    len: u64,
}

impl DiskSet {
    /// Duplicates the array's data handles onto the calling thread's tokio-uring runtime.
    pub fn new(array: &Array) -> Result<DiskSet> {
        let disks = array
            .disks()
            .iter()
            .map(|member| {
                let std_file = member
                    .data_file()
                    .try_clone()
                    .map_err(|source| Error::Disk {
                        path: member.path().to_owned(),
                        offset: 0,
                        op: DiskOp::Open,
                        source,
                    })?;
                let raw_fd = std_file.as_raw_fd();
                let inline = !member.is_block_device() && in_memory(raw_fd);
                Ok(DiskHandle {
                    inline,
                    map: if inline {
                        Mapping::new(raw_fd).map(Rc::new)
                    } else {
                        None
                    },
                    raw_fd,
                    file: File::from_std(std_file),
                    path: member.path().to_owned(),
                    block_device: member.is_block_device(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DiskSet {
            disks,
            stripes: array.stripes(),
        })
    }

    fn disk(&self, index: u32) -> &DiskHandle {
        &self.disks[index as usize]
    }

    /// A request's disk pieces: the partition range `offset..offset + len` of `grant`
    /// mapped through the stripes, once per request (every operation below takes it).
    pub fn plan(&self, grant: &LaneGrant, offset: u64, len: u64) -> Vec<MappedPiece> {
        grant.map(&self.stripes, offset, len)
    }

    /// Reads the request planned as `pieces` into the data area of `buffer`.
    pub async fn read(&self, pieces: &[MappedPiece], buffer: AlignedBuf) -> Result<AlignedBuf> {
        if self.all_inline(pieces) {
            let mut buffer = buffer;
            for mapped in pieces {
                let start = DATA_OFFSET + mapped.buffer_offset as usize;
                let target = &mut buffer.as_mut_slice()[start..start + mapped.piece.len as usize];
                self.read_inline(mapped.piece, target)?;
            }
            return Ok(buffer);
        }
        let owner = Rc::new(buffer);
        let reads = pieces.iter().map(|mapped| {
            let part = part_of(&owner, mapped);
            self.read_piece(mapped.piece, part)
        });
        let results = join_all(reads).await;
        let buffer = reclaim(owner)?;
        results.into_iter().collect::<Result<()>>()?;
        Ok(buffer)
    }

    /// The `len` bytes at partition `offset` as views of the disks' mappings, in order,
    /// when every piece lies on a mapped (RAM-backed) disk: a read reply can then be sent
    /// straight from the disks' pages, with no copy into a buffer first. `None` otherwise.
    ///
    /// The views keep their mapping alive. Their bytes are read when the reply is sent; a
    /// write to the same range that the host issues before this read's reply arrives may
    /// show in it, which is what a read concurrent with an overlapping write may return on
    /// any block device.
    pub fn mapped_read(&self, pieces: &[MappedPiece]) -> Option<Vec<MappedSlice>> {
        if pieces.len() > MAX_MAPPED_PIECES {
            return None;
        }
        let mut slices = Vec::with_capacity(pieces.len());
        for mapped in pieces {
            let map = self.disk(mapped.piece.disk).map.as_ref()?;
            let ptr = map.range(mapped.piece.disk_offset, mapped.piece.len as usize)?;
            slices.push(MappedSlice {
                _map: map.clone(),
                ptr,
                len: mapped.piece.len as usize,
            });
        }
        Some(slices)
    }

    /// The `len` bytes at partition `offset` as writable views of the disks' mappings, in
    /// order, when every piece lies on a mapped (RAM-backed) disk: a write payload can
    /// then be received from the socket straight into the disks' pages. `None` otherwise.
    /// The caller has admitted the request (range, access) first; once the payload is in,
    /// [`DiskSet::finish_mapped_write`] completes it.
    pub fn mapped_write(&self, pieces: &[MappedPiece]) -> Option<Vec<MappedTarget>> {
        let views = self.mapped_read(pieces)?;
        Some(views.into_iter().map(MappedTarget::new).collect())
    }

    /// Completes a write whose payload [`DiskSet::mapped_write`]'s views received: with
    /// `fua`, the touched disks are synced, as [`DiskSet::write`] does.
    pub async fn finish_mapped_write(&self, pieces: &[MappedPiece], fua: bool) -> Result<()> {
        if fua {
            self.sync_touched(pieces).await?;
        }
        Ok(())
    }

    async fn sync_touched(&self, pieces: &[MappedPiece]) -> Result<()> {
        let mut touched: Vec<u32> = pieces.iter().map(|m| m.piece.disk).collect();
        touched.sort_unstable();
        touched.dedup();
        self.sync(&touched).await
    }

    /// Writes the data area of `buffer` (`len` bytes) at partition `offset`; with `fua`,
    /// the touched disks are synced before this returns.
    pub async fn write(&self, pieces: &[MappedPiece], buffer: AlignedBuf, fua: bool) -> Result<()> {
        if self.all_inline(pieces) {
            for mapped in pieces {
                let start = DATA_OFFSET + mapped.buffer_offset as usize;
                let source = &buffer.as_slice()[start..start + mapped.piece.len as usize];
                self.write_inline(mapped.piece, source)?;
            }
        } else {
            let owner = Rc::new(buffer);
            let writes = pieces.iter().map(|mapped| {
                let part = part_of(&owner, mapped);
                self.write_piece(mapped.piece, part)
            });
            let results = join_all(writes).await;
            drop(reclaim(owner)?);
            results.into_iter().collect::<Result<()>>()?;
        }
        if fua {
            self.sync_touched(pieces).await?;
        }
        Ok(())
    }

    /// Makes every completed write durable: `fdatasync` on every member disk. The sync is
    /// per inode, so it covers writes completed on any lane and any thread.
    pub async fn flush(&self) -> Result<()> {
        let all: Vec<u32> = (0..self.disks.len() as u32).collect();
        self.sync(&all).await
    }

    async fn sync(&self, disks: &[u32]) -> Result<()> {
        let syncs = disks.iter().map(|&index| async move {
            let disk = self.disk(index);
            disk.file
                .sync_data()
                .await
                .map_err(|e| disk.error(DiskOp::Sync, 0, e))
        });
        join_all(syncs).await.into_iter().collect()
    }

    /// Releases the range: punch a hole in files, `BLKDISCARD` on block devices; where
    /// neither is supported, the range is zeroed instead.
    pub async fn discard(&self, pieces: &[MappedPiece]) -> Result<()> {
        let ranges = disk_ranges(pieces);
        let discards = ranges.iter().map(|&range| async move {
            match self.release(range).await {
                Err(error) if unsupported(&error) => self.fill_zeroes(range, DiskOp::Discard).await,
                other => other.map_err(|e| {
                    self.disk(range.disk)
                        .error(DiskOp::Discard, range.offset, e)
                }),
            }
        });
        join_all(discards).await.into_iter().collect()
    }

    /// Makes the range read back as zeroes: `FALLOC_FL_ZERO_RANGE`, else zero writes.
    pub async fn write_zeroes(&self, pieces: &[MappedPiece]) -> Result<()> {
        let ranges = disk_ranges(pieces);
        let zeroings = ranges.iter().map(|&range| async move {
            let disk = self.disk(range.disk);
            let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
            match disk.file.fallocate(range.offset, range.len, mode).await {
                Err(error) if unsupported(&error) => {
                    self.fill_zeroes(range, DiskOp::WriteZeroes).await
                }
                other => other.map_err(|e| disk.error(DiskOp::WriteZeroes, range.offset, e)),
            }
        });
        join_all(zeroings).await.into_iter().collect()
    }

    async fn release(&self, range: DiskRange) -> io::Result<()> {
        let disk = self.disk(range.disk);
        if let Some(to) = disk
            .map
            .as_ref()
            .and_then(|m| m.range(range.offset, range.len as usize))
        {
            // Mapped pages must stay allocated (see `Mapping::new`): zero, do not punch.
            // SAFETY: `to` has `range.len` mapped bytes (checked by `range`).
            unsafe { std::ptr::write_bytes(to, 0, range.len as usize) };
            return Ok(());
        }
        if disk.block_device {
            let span: [u64; 2] = [range.offset, range.len];
            // SAFETY: BLKDISCARD reads two u64 (start, length) through the pointer, which
            // points at `span`; the fd is this disk's open data handle.
            let status = unsafe { libc::ioctl(disk.raw_fd, BLKDISCARD, span.as_ptr()) };
            if status < 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        disk.file.fallocate(range.offset, range.len, mode).await
    }

    async fn fill_zeroes(&self, range: DiskRange, op: DiskOp) -> Result<()> {
        let disk = self.disk(range.disk);
        let mut buffer = AlignedBuf::for_data(range.len.min(ZERO_FILL_LEN) as usize);
        buffer.data_mut().fill(0);
        let mut done = 0;
        while done < range.len {
            let step = (range.len - done).min(ZERO_FILL_LEN) as usize;
            let at = range.offset + done;
            let (result, slice) = disk
                .file
                .write_at(buffer.slice(DATA_OFFSET..DATA_OFFSET + step), at)
                .submit()
                .await;
            buffer = slice.into_inner();
            match result {
                Ok(0) => return Err(disk.error(op, at, io::ErrorKind::WriteZero.into())),
                Ok(written) => done += written as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(disk.error(op, at, e)),
            }
        }
        Ok(())
    }

    fn all_inline(&self, pieces: &[MappedPiece]) -> bool {
        pieces
            .iter()
            .all(|mapped| self.disk(mapped.piece.disk).inline)
    }

    /// Reads a piece of an in-memory disk on this thread (see [`in_memory`]).
    fn read_inline(&self, piece: Piece, target: &mut [u8]) -> Result<()> {
        let disk = self.disk(piece.disk);
        if let Some(from) = disk
            .map
            .as_ref()
            .and_then(|m| m.range(piece.disk_offset, target.len()))
        {
            // SAFETY: `from` has `target.len()` mapped bytes (checked by `range`); the
            // mapping and `target` (a pooled buffer) never overlap.
            unsafe { std::ptr::copy_nonoverlapping(from, target.as_mut_ptr(), target.len()) };
            return Ok(());
        }
        let mut done = 0;
        while done < target.len() {
            let at = piece.disk_offset + done as u64;
            let rest = &mut target[done..];
            // SAFETY: reads at most `rest.len()` bytes into `rest`, which we borrow mutably.
            let read = unsafe {
                libc::pread(disk.raw_fd, rest.as_mut_ptr().cast(), rest.len(), at as i64)
            };
            match read {
                0 => return Err(disk.error(DiskOp::Read, at, io::ErrorKind::UnexpectedEof.into())),
                n if n > 0 => done += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(disk.error(DiskOp::Read, at, error));
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes a piece of an in-memory disk on this thread (see [`in_memory`]).
    fn write_inline(&self, piece: Piece, source: &[u8]) -> Result<()> {
        let disk = self.disk(piece.disk);
        if let Some(to) = disk
            .map
            .as_ref()
            .and_then(|m| m.range(piece.disk_offset, source.len()))
        {
            // SAFETY: as in `read_inline`, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), to, source.len()) };
            return Ok(());
        }
        let mut done = 0;
        while done < source.len() {
            let at = piece.disk_offset + done as u64;
            let rest = &source[done..];
            // SAFETY: writes at most `rest.len()` bytes from `rest`, which we borrow.
            let written =
                unsafe { libc::pwrite(disk.raw_fd, rest.as_ptr().cast(), rest.len(), at as i64) };
            match written {
                0 => return Err(disk.error(DiskOp::Write, at, io::ErrorKind::WriteZero.into())),
                n if n > 0 => done += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(disk.error(DiskOp::Write, at, error));
                    }
                }
            }
        }
        Ok(())
    }

    async fn read_piece(&self, piece: Piece, mut part: BufPart) -> Result<()> {
        let disk = self.disk(piece.disk);
        let total = piece.len as usize;
        let mut done = 0;
        while done < total {
            let at = piece.disk_offset + done as u64;
            let (result, slice) = disk.file.read_at(part.slice(done..total), at).await;
            part = slice.into_inner();
            match result {
                Ok(0) => {
                    return Err(disk.error(DiskOp::Read, at, io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(read) => done += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(disk.error(DiskOp::Read, at, e)),
            }
        }
        Ok(())
    }

    async fn write_piece(&self, piece: Piece, mut part: BufPart) -> Result<()> {
        let disk = self.disk(piece.disk);
        let total = piece.len as usize;
        let mut done = 0;
        while done < total {
            let at = piece.disk_offset + done as u64;
            let (result, slice) = disk
                .file
                .write_at(part.slice(done..total), at)
                .submit()
                .await;
            part = slice.into_inner();
            match result {
                Ok(0) => {
                    return Err(disk.error(DiskOp::Write, at, io::ErrorKind::WriteZero.into()))
                }
                Ok(written) => done += written,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(disk.error(DiskOp::Write, at, e)),
            }
        }
        Ok(())
    }
}

/// The request's pieces merged into contiguous ranges per disk (consecutive chunks of
/// one disk are adjacent on it), so large discards are few system calls.
fn disk_ranges(pieces: &[MappedPiece]) -> Vec<DiskRange> {
    let mut ranges: Vec<DiskRange> = pieces
        .iter()
        .map(|mapped| DiskRange {
            disk: mapped.piece.disk,
            offset: mapped.piece.disk_offset,
            len: mapped.piece.len,
        })
        .collect();
    ranges.sort_by_key(|range| (range.disk, range.offset));
    let mut merged: Vec<DiskRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.disk == range.disk && last.offset + last.len == range.offset => {
                last.len += range.len;
            }
            _ => merged.push(range),
        }
    }
    merged
}

fn part_of(owner: &Rc<AlignedBuf>, mapped: &MappedPiece) -> BufPart {
    let start = DATA_OFFSET + mapped.buffer_offset as usize;
    BufPart::new(owner.clone(), start, mapped.piece.len as usize)
}

/// Takes the buffer back once every view of it has been dropped.
fn reclaim(owner: Rc<AlignedBuf>) -> Result<AlignedBuf> {
    Rc::try_unwrap(owner).map_err(|_| {
        Error::io(
            "reclaiming an I/O buffer",
            io::Error::other("a disk I/O still holds a view of the buffer"),
        )
    })
}

fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOTTY)
    )
}
