//! The storage layer: block requests on a partition, run on the member disks.
//!
//! Admission (in `net`) turns a request into a [`Command`] carrying its stripe plan (the
//! partition range mapped to disk pieces, computed once by [`DiskSet::plan`]);
//! [`DiskSet::run`] executes it. Each member disk is driven by one engine behind the
//! `Engine` trait, one module each:
//!
//! - `direct`: O_DIRECT io_uring, for real disks and files on disk file systems;
//! - `mapped`: a shared mapping of a RAM-backed file: `memcpy` on the calling thread,
//!   read replies sent straight from the pages, write payloads received straight into them;
//! - `inline`: `pread`/`pwrite` on the calling thread, for RAM-backed files that could
//!   not be mapped.
//!
//! `net` only moves bytes: it receives a write's payload into the destination the command
//! names and sends what [`Done`] returns.

pub mod buffer;
mod direct;
mod file;
mod inline;
mod mapped;
#[cfg(test)]
mod tests;

use std::io;
use std::rc::Rc;

use futures_util::future::join_all;

use crate::array::grant::{LaneGrant, MappedPiece};
use crate::array::stripe::{Piece, StripeMap};
use crate::array::Array;
use crate::error::{DiskOp, Result};
pub use buffer::BUFFER_ALIGN;
use buffer::{AlignedBuf, BufPart, DATA_OFFSET};
use file::{DiskFile, DiskRange};
pub use mapped::{MappedSlice, MappedTarget};

/// Most pieces a read is sent in straight from the mappings (one iovec each; the writer
/// keeps a `writev` under `IOV_MAX` with this); longer ones are copied into a buffer.
pub const MAX_MAPPED_PIECES: usize = 256;

/// A request's disk pieces, in buffer order.
pub type Plan = Vec<MappedPiece>;

/// How one member disk is driven. Operations take one piece (or range) of one disk.
pub(crate) trait Engine {
    /// The disk's handle on the ring (syncs, zero-filling).
    fn file(&self) -> &DiskFile;
    /// Reads `piece` into `part`.
    async fn read(&self, piece: Piece, part: BufPart) -> Result<()>;
    /// Writes `part` to `piece`.
    async fn write(&self, piece: Piece, part: BufPart) -> Result<()>;
    /// Releases `range` (discard); `EOPNOTSUPP`-like errors make the caller zero it.
    async fn release(&self, range: DiskRange) -> io::Result<()>;
    /// Makes `range` read back as zeroes; `EOPNOTSUPP`-like errors make the caller write
    /// zeroes.
    async fn zero(&self, range: DiskRange) -> io::Result<()>;
    /// `piece` as a view of the disk's pages, for engines that map them.
    fn view(&self, _piece: Piece) -> Option<MappedSlice> {
        None
    }
}

/// Which engine a member disk gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Mapped for RAM-backed files (inline if mapping fails), io_uring otherwise.
    Auto,
    /// io_uring.
    Direct,
    /// `pread`/`pwrite` on the calling thread.
    Inline,
}

/// One member disk with its engine.
#[derive(Debug)]
enum Disk {
    Direct(direct::Direct),
    Inline(inline::Inline),
    Mapped(mapped::Mapped),
}

impl Disk {
    fn open(file: DiskFile, kind: EngineKind) -> Disk {
        match kind {
            EngineKind::Direct => Disk::Direct(direct::Direct { file }),
            EngineKind::Inline => Disk::Inline(inline::Inline { file }),
            EngineKind::Auto if !file.in_memory() => Disk::Direct(direct::Direct { file }),
            EngineKind::Auto => match mapped::Mapped::new(file) {
                Ok(mapped) => Disk::Mapped(mapped),
                Err(file) => Disk::Inline(inline::Inline { file }),
            },
        }
    }
}

/// Forwards every [`Engine`] method to the disk's engine.
macro_rules! dispatch {
    ($disk:expr, $engine:ident => $call:expr) => {
        match $disk {
            Disk::Direct($engine) => $call,
            Disk::Inline($engine) => $call,
            Disk::Mapped($engine) => $call,
        }
    };
}

impl Engine for Disk {
    fn file(&self) -> &DiskFile {
        dispatch!(self, engine => engine.file())
    }

    async fn read(&self, piece: Piece, part: BufPart) -> Result<()> {
        dispatch!(self, engine => engine.read(piece, part).await)
    }

    async fn write(&self, piece: Piece, part: BufPart) -> Result<()> {
        dispatch!(self, engine => engine.write(piece, part).await)
    }

    async fn release(&self, range: DiskRange) -> io::Result<()> {
        dispatch!(self, engine => engine.release(range).await)
    }

    async fn zero(&self, range: DiskRange) -> io::Result<()> {
        dispatch!(self, engine => engine.zero(range).await)
    }

    fn view(&self, piece: Piece) -> Option<MappedSlice> {
        dispatch!(self, engine => engine.view(piece))
    }
}

/// A write's payload as admission received it.
#[derive(Debug)]
pub enum Payload {
    /// In a buffer's data area, to be written to the disks.
    Buffer(AlignedBuf),
    /// Already in the disks' mappings (received into [`DiskSet::mapped_targets`]).
    InPlace,
}

/// A block request, admitted and planned.
#[derive(Debug)]
pub enum Command {
    /// Read the planned pieces.
    Read {
        /// The pieces.
        plan: Plan,
    },
    /// Write the payload to the planned pieces.
    Write {
        /// The pieces.
        plan: Plan,
        /// Where the payload is.
        payload: Payload,
        /// Make it durable before answering.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Release the planned pieces.
    Discard {
        /// The pieces.
        plan: Plan,
    },
    /// Make the planned pieces read back as zeroes.
    WriteZeroes {
        /// The pieces.
        plan: Plan,
    },
}

/// What a command produced.
#[derive(Debug)]
pub enum Done {
    /// Nothing to send but the status.
    Nothing,
    /// Read data in the buffer's data area.
    Data(AlignedBuf),
    /// Read data as views of the disks' mappings, in order.
    Mapped(Vec<MappedSlice>),
}

/// The member disks as one thread's runtime sees them.
#[derive(Debug)]
pub struct DiskSet {
    disks: Vec<Disk>,
    stripes: StripeMap,
}

impl DiskSet {
    /// Duplicates the array's data handles onto the calling thread's tokio-uring runtime,
    /// each disk with the engine that fits it.
    pub fn new(array: &Array) -> Result<DiskSet> {
        DiskSet::with_engine(array, EngineKind::Auto)
    }

    /// As [`DiskSet::new`], with every disk on the engine `kind`.
    pub fn with_engine(array: &Array, kind: EngineKind) -> Result<DiskSet> {
        let disks = array
            .disks()
            .iter()
            .map(|member| Ok(Disk::open(DiskFile::open(member)?, kind)))
            .collect::<Result<Vec<_>>>()?;
        Ok(DiskSet {
            disks,
            stripes: array.stripes(),
        })
    }

    fn disk(&self, index: u32) -> &Disk {
        &self.disks[index as usize]
    }

    /// The pieces of the partition range `offset..offset + len` of `grant`.
    pub fn plan(&self, grant: &LaneGrant, offset: u64, len: u64) -> Plan {
        grant.map(&self.stripes, offset, len)
    }

    /// Where a write planned as `plan` can receive its payload straight into the disks'
    /// pages: writable views of the mappings, in order, when every piece is on a mapped
    /// disk. The command then carries [`Payload::InPlace`].
    pub fn mapped_targets(&self, plan: &[MappedPiece]) -> Option<Vec<MappedTarget>> {
        let views = self.mapped_views(plan)?;
        Some(views.into_iter().map(MappedTarget::new).collect())
    }

    /// The planned bytes as views of the disks' mappings, when every piece is on a mapped
    /// disk and they are few enough to send in one `writev`.
    ///
    /// The views keep their mapping alive. Their bytes are read when the reply is sent; a
    /// write to the same range that the host issues before this read's reply arrives may
    /// show in it, which is what a read concurrent with an overlapping write may return on
    /// any block device.
    fn mapped_views(&self, plan: &[MappedPiece]) -> Option<Vec<MappedSlice>> {
        if plan.len() > MAX_MAPPED_PIECES {
            return None;
        }
        plan.iter()
            .map(|mapped| self.disk(mapped.piece.disk).view(mapped.piece))
            .collect()
    }

    /// Finishes `command` on the spot when it needs no waiting: a read whose pieces are
    /// all mapped (its reply is sent from the views), or a write without FUA whose payload
    /// was received in place (the bytes are already in the disks' pages). Anything else is
    /// handed back for [`DiskSet::run`].
    ///
    /// The caller skips a task, its allocation and a turn of the executor for each such
    /// request: on RAM-backed arrays that is every read and most writes.
    pub fn run_now(&self, command: Command) -> std::result::Result<Done, Command> {
        match command {
            Command::Read { plan } => match self.mapped_views(&plan) {
                Some(views) => Ok(Done::Mapped(views)),
                None => Err(Command::Read { plan }),
            },
            Command::Write {
                payload: Payload::InPlace,
                fua: false,
                ..
            } => Ok(Done::Nothing),
            command => Err(command),
        }
    }

    /// Runs `command`.
    pub async fn run(&self, command: Command) -> Result<Done> {
        match command {
            Command::Read { plan } => self.read(&plan).await,
            Command::Write { plan, payload, fua } => {
                if let Payload::Buffer(buffer) = payload {
                    self.write(&plan, buffer).await?;
                }
                if fua {
                    self.sync_touched(&plan).await?;
                }
                Ok(Done::Nothing)
            }
            Command::Flush => {
                let all: Vec<u32> = (0..self.disks.len() as u32).collect();
                self.sync(&all).await.map(|()| Done::Nothing)
            }
            Command::Discard { plan } => self.discard(&plan).await.map(|()| Done::Nothing),
            Command::WriteZeroes { plan } => self.write_zeroes(&plan).await.map(|()| Done::Nothing),
        }
    }

    async fn read(&self, plan: &[MappedPiece]) -> Result<Done> {
        if let Some(views) = self.mapped_views(plan) {
            return Ok(Done::Mapped(views));
        }
        let len = plan.iter().map(|mapped| mapped.piece.len).sum::<u64>();
        let owner = Rc::new(AlignedBuf::for_data(len as usize));
        let reads = plan.iter().map(|mapped| {
            let part = part_of(&owner, mapped);
            self.disk(mapped.piece.disk).read(mapped.piece, part)
        });
        let results = join_all(reads).await;
        let buffer = buffer::reclaim(owner)?;
        results.into_iter().collect::<Result<()>>()?;
        Ok(Done::Data(buffer))
    }

    async fn write(&self, plan: &[MappedPiece], buffer: AlignedBuf) -> Result<()> {
        let owner = Rc::new(buffer);
        let writes = plan.iter().map(|mapped| {
            let part = part_of(&owner, mapped);
            self.disk(mapped.piece.disk).write(mapped.piece, part)
        });
        let results = join_all(writes).await;
        drop(buffer::reclaim(owner)?);
        results.into_iter().collect()
    }

    async fn sync_touched(&self, plan: &[MappedPiece]) -> Result<()> {
        let mut touched: Vec<u32> = plan.iter().map(|m| m.piece.disk).collect();
        touched.sort_unstable();
        touched.dedup();
        self.sync(&touched).await
    }

    /// `fdatasync` on `disks`. The sync is per inode, so it covers writes completed on any
    /// lane and any thread.
    async fn sync(&self, disks: &[u32]) -> Result<()> {
        let syncs = disks.iter().map(|&index| self.disk(index).file().sync());
        join_all(syncs).await.into_iter().collect()
    }

    /// Releases the range; where the disk cannot, the range is zeroed instead.
    async fn discard(&self, plan: &[MappedPiece]) -> Result<()> {
        let ranges = disk_ranges(plan);
        let discards = ranges.iter().map(|&range| async move {
            let disk = self.disk(range.disk);
            match disk.release(range).await {
                Err(error) if unsupported(&error) => {
                    disk.file().fill_zeroes(range, DiskOp::Discard).await
                }
                other => other.map_err(|e| disk.file().error(DiskOp::Discard, range.offset, e)),
            }
        });
        join_all(discards).await.into_iter().collect()
    }

    /// Makes the range read back as zeroes.
    async fn write_zeroes(&self, plan: &[MappedPiece]) -> Result<()> {
        let ranges = disk_ranges(plan);
        let zeroings = ranges.iter().map(|&range| async move {
            let disk = self.disk(range.disk);
            match disk.zero(range).await {
                Err(error) if unsupported(&error) => {
                    disk.file().fill_zeroes(range, DiskOp::WriteZeroes).await
                }
                other => other.map_err(|e| disk.file().error(DiskOp::WriteZeroes, range.offset, e)),
            }
        });
        join_all(zeroings).await.into_iter().collect()
    }
}

fn part_of(owner: &Rc<AlignedBuf>, mapped: &MappedPiece) -> BufPart {
    let start = DATA_OFFSET + mapped.buffer_offset as usize;
    BufPart::new(owner.clone(), start, mapped.piece.len as usize)
}

/// The plan's pieces merged into contiguous ranges per disk (consecutive chunks of one
/// disk are adjacent on it), so large discards are few system calls.
fn disk_ranges(plan: &[MappedPiece]) -> Vec<DiskRange> {
    let mut ranges: Vec<DiskRange> = plan
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

fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOTTY)
    )
}
