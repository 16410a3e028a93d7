//! On-disk metadata: two slots in each member disk's first [`METADATA_AREA`] bytes.
//!
//! A slot is `header || postcard(ArrayMetadata) || crc32c(header || body)`, all integers
//! little-endian.
//!
//! # Commits are atomic for the operator
//!
//! A change is either reported done, or it never reappears, whatever fails or crashes
//! in the middle:
//!
//! - Each disk keeps the last committed generation `L` in one slot ([`CommittedSlots`]).
//!   A commit writes generation `G` into the *other* slot of every disk, each write
//!   synced, so `L` stays intact on every disk until `G` is everywhere. It is done (and
//!   only then reported done, and applied in memory) when every disk has `G`.
//! - A commit that fails on one disk leaves memory at `L`; the slots it already wrote on
//!   other disks are zeroed again (best effort, see below). Generation numbers are never
//!   reused: the next commit takes one above every generation attempted or seen on a disk.
//! - [`choose`] at open takes the highest generation that is valid, with the same
//!   contents, on *every* member disk, not on any: a commit that reached only some disks
//!   (a failure, or a crash between disks) is not chosen, and `L` is always there.
//!
//! The one case the zeroing exists for: the last disk's data lands but its sync reports
//! an error, so `G` is on every disk yet was reported failed. Zeroing `G` on any one disk
//! is enough to keep it from being chosen; only if every zeroing fails too (every disk
//! dying at once) can it come back.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wire::Access;

use super::disk::MemberDisk;
use super::stripe::METADATA_AREA;
use crate::error::{DiskOp, Error, Result};

/// First bytes of every slot.
pub const SLOT_MAGIC: [u8; 8] = *b"MLNARRAY";
/// Layout version of a slot.
pub const SLOT_VERSION: u32 = 1;
/// Bytes per slot: half the metadata area.
pub const SLOT_SIZE: usize = (METADATA_AREA / 2) as usize;
/// Bytes of the fixed header: magic, version, uuid, index, count, chunk, generation, body length.
const HEADER_LEN: usize = 8 + 4 + 16 + 4 + 4 + 8 + 8 + 4;
/// Bytes of the trailing checksum.
const CRC_LEN: usize = 4;
/// Largest encoded body a slot holds.
pub const MAX_BODY: usize = SLOT_SIZE - HEADER_LEN - CRC_LEN;

/// A contiguous range of the array's logical space, aligned to whole stripes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// First logical byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Extent {
    /// One past the last logical byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A partition as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Stable id, never reused.
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// Size in bytes: the sum of the extents.
    pub size: u64,
    /// Whether several hosts may be assigned it.
    pub shared: bool,
    /// Where it lives in the logical space, in partition order.
    pub extents: Vec<Extent>,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Unique name.
    pub name: String,
    /// The shared HMAC secret.
    pub secret: [u8; wire::handshake::SECRET_LEN],
}

/// One host's right to one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// Host name.
    pub host: String,
    /// Partition id.
    pub partition: u32,
    /// What the host may do.
    pub access: Access,
}

/// Everything an operator defines: partitions, hosts, assignments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayMetadata {
    /// All partitions.
    pub partitions: Vec<PartitionRecord>,
    /// All hosts.
    pub hosts: Vec<HostRecord>,
    /// All assignments.
    pub assignments: Vec<AssignmentRecord>,
    /// The id the next partition gets.
    pub next_partition_id: u32,
}

/// The contents of one slot on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The array this disk belongs to.
    pub array_id: Uuid,
    /// This disk's position in the stripe.
    pub disk_index: u32,
    /// Number of member disks.
    pub disk_count: u32,
    /// Stripe chunk in bytes.
    pub chunk: u64,
    /// Grows by one with every committed change.
    pub generation: u64,
    /// The array's metadata at that generation.
    pub metadata: ArrayMetadata,
}

impl Slot {
    /// The slot as bytes, checksum included.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = postcard::to_stdvec(&self.metadata)
            .map_err(|e| Error::io("encoding metadata", std::io::Error::other(e.to_string())))?;
        if body.len() > MAX_BODY {
            return Err(Error::MetadataTooLarge {
                len: body.len(),
                max: MAX_BODY,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN);
        out.extend_from_slice(&SLOT_MAGIC);
        out.extend_from_slice(&SLOT_VERSION.to_le_bytes());
        out.extend_from_slice(self.array_id.as_bytes());
        out.extend_from_slice(&self.disk_index.to_le_bytes());
        out.extend_from_slice(&self.disk_count.to_le_bytes());
        out.extend_from_slice(&self.chunk.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Reads a slot; `None` if it is blank, torn, corrupt or of another layout.
    pub fn decode(bytes: &[u8]) -> Option<Slot> {
        let mut reader = ByteReader { bytes, at: 0 };
        if reader.take(SLOT_MAGIC.len())? != SLOT_MAGIC || reader.u32()? != SLOT_VERSION {
            return None;
        }
        let array_id = Uuid::from_slice(reader.take(16)?).ok()?;
        let disk_index = reader.u32()?;
        let disk_count = reader.u32()?;
        let chunk = reader.u64()?;
        let generation = reader.u64()?;
        let body_len = reader.u32()? as usize;
        if body_len > MAX_BODY {
            return None;
        }
        let body = reader.take(body_len)?;
        let checked = reader.at;
        let crc = reader.u32()?;
        if crc32c::crc32c(&bytes[..checked]) != crc {
            return None;
        }
        let metadata = postcard::from_bytes(body).ok()?;
        Some(Slot {
            array_id,
            disk_index,
            disk_count,
            chunk,
            generation,
            metadata,
        })
    }
}

struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn slot_offset(index: u64) -> u64 {
    index * SLOT_SIZE as u64
}

/// Reads both slots of a disk; invalid ones are `None`.
pub fn read_slots(file: &File, path: &Path) -> Result<[Option<Slot>; 2]> {
    let mut buffer = vec![0u8; SLOT_SIZE];
    let mut read_one = |index: u64| -> Result<Option<Slot>> {
        file.read_exact_at(&mut buffer, slot_offset(index))
            .map_err(|source| Error::Disk {
                path: path.to_owned(),
                offset: slot_offset(index),
                op: DiskOp::ReadMetadata,
                source,
            })?;
        Ok(Slot::decode(&buffer))
    };
    Ok([read_one(0)?, read_one(1)?])
}

/// Writes `bytes` (an encoded slot) into slot `index` and syncs it.
pub fn write_slot_bytes(file: &File, path: &Path, index: u64, bytes: &[u8]) -> Result<()> {
    let offset = slot_offset(index);
    let fail = |source| Error::Disk {
        path: path.to_owned(),
        offset,
        op: DiskOp::WriteMetadata,
        source,
    };
    file.write_all_at(bytes, offset).map_err(fail)?;
    file.sync_data().map_err(fail)
}

/// Encodes `slot` and writes it into slot `index` (0 or 1), synced.
pub fn write_slot(file: &File, path: &Path, index: u64, slot: &Slot) -> Result<()> {
    let bytes = slot.encode()?;
    write_slot_bytes(file, path, index, &bytes)
}

/// Overwrites both slots with zeroes (used by `format --force` before the new array).
pub fn wipe_slots(file: &File, path: &Path) -> Result<()> {
    let zeroes = vec![0u8; SLOT_SIZE];
    write_slot_bytes(file, path, 0, &zeroes)?;
    write_slot_bytes(file, path, 1, &zeroes)
}

/// The slot (0 or 1) other than `index`.
pub fn other_slot(index: u64) -> u64 {
    1 - index
}

/// Which slot of each member disk (in stripe order) holds the last committed generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedSlots(Vec<u64>);

impl From<Vec<u64>> for CommittedSlots {
    fn from(slots: Vec<u64>) -> CommittedSlots {
        CommittedSlots(slots)
    }
}

impl CommittedSlots {
    /// Every disk holds the committed generation in slot `index` (right after `format`).
    pub fn all(disks: usize, index: u64) -> CommittedSlots {
        CommittedSlots(vec![index; disks])
    }

    /// The slot of disk `disk`.
    pub fn of(&self, disk: usize) -> u64 {
        self.0[disk]
    }

    /// Commits one generation: `slot_for(disk)` is written into the slot of each disk that
    /// does not hold the last committed generation, synced. On success every disk holds
    /// the new generation and `self` points at it. On failure `self` is unchanged, the
    /// slots written so far are zeroed again (best effort: failures are logged) and the
    /// first error is returned.
    pub fn commit(&mut self, disks: &[MemberDisk], slot_for: impl Fn(u32) -> Slot) -> Result<()> {
        for (index, member) in disks.iter().enumerate() {
            let target = other_slot(self.0[index]);
            let written = slot_for(index as u32)
                .encode()
                .and_then(|bytes| member.write_metadata_slot(target, &bytes));
            if let Err(error) = written {
                self.undo(&disks[..=index]);
                return Err(error);
            }
        }
        for index in &mut self.0 {
            *index = other_slot(*index);
        }
        Ok(())
    }

    /// Zeroes the uncommitted slot of `disks` (the first disks of the array).
    fn undo(&self, disks: &[MemberDisk]) {
        let zeroes = vec![0u8; SLOT_SIZE];
        for (index, member) in disks.iter().enumerate() {
            let target = other_slot(self.0[index]);
            if let Err(error) = member.write_metadata_slot(target, &zeroes) {
                log::error!(
                    "{}: cannot zero the failed metadata commit again: {error}",
                    member.path().display()
                );
            }
        }
    }
}

/// What [`choose`] found on the member disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The committed state: the highest generation valid and identical on every disk.
    pub slot: Slot,
    /// Where each disk (in the order given) holds it.
    pub slots: Vec<u64>,
    /// The highest generation valid on any disk (an unfinished commit's, when above
    /// `slot.generation`): the next commit must use a higher one.
    pub highest_seen: u64,
}

/// Picks the committed state from each disk's two slots (disks in any order): the highest
/// generation present, valid and with the same metadata, on every disk. `None` if the
/// disks share no generation.
pub fn choose(disks: &[[Option<Slot>; 2]]) -> Option<Chosen> {
    let valid = || disks.iter().flatten().flatten();
    let highest_seen = valid().map(|slot| slot.generation).max()?;
    let mut candidates: Vec<&Slot> = disks.first()?.iter().flatten().collect();
    candidates.sort_by_key(|slot| std::cmp::Reverse(slot.generation));
    candidates.into_iter().find_map(|candidate| {
        let slots = disks
            .iter()
            .map(|pair| {
                (0..2u64).find(|&index| {
                    pair[index as usize].as_ref().is_some_and(|slot| {
                        slot.generation == candidate.generation
                            && slot.metadata == candidate.metadata
                    })
                })
            })
            .collect::<Option<Vec<u64>>>()?;
        Some(Chosen {
            slot: candidate.clone(),
            slots,
            highest_seen,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Slot {
        Slot {
            array_id: Uuid::from_bytes([7; 16]),
            disk_index: 1,
            disk_count: 3,
            chunk: 65536,
            generation: 42,
            metadata: ArrayMetadata {
                partitions: vec![PartitionRecord {
                    id: 0,
                    name: "vm1".into(),
                    size: 1 << 20,
                    shared: false,
                    extents: vec![Extent {
                        start: 0,
                        len: 1 << 20,
                    }],
                }],
                hosts: vec![HostRecord {
                    name: "h".into(),
                    secret: [1; 32],
                }],
                assignments: vec![AssignmentRecord {
                    host: "h".into(),
                    partition: 0,
                    access: Access::ReadOnly,
                }],
                next_partition_id: 1,
            },
        }
    }

    #[test]
    fn round_trips() {
        let slot = sample();
        assert_eq!(Slot::decode(&slot.encode().unwrap()), Some(slot));
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let bytes = sample().encode().unwrap();
        for at in (0..bytes.len()).step_by(3) {
            let mut corrupt = bytes.clone();
            corrupt[at] ^= 0x40;
            assert_eq!(Slot::decode(&corrupt), None, "flip at {at}");
        }
        assert_eq!(Slot::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Slot::decode(&[0u8; 64]), None);
    }

    fn at(generation: u64, next_partition_id: u32) -> Option<Slot> {
        let mut slot = sample();
        slot.generation = generation;
        slot.metadata.next_partition_id = next_partition_id;
        Some(slot)
    }

    #[test]
    fn the_highest_generation_on_every_disk_is_chosen() {
        // Generation 5 reached disk 0 only; 4 is everywhere (in either slot).
        let disks = [[at(4, 0), at(5, 0)], [at(3, 0), at(4, 0)], [at(4, 0), None]];
        let chosen = choose(&disks).unwrap();
        assert_eq!(chosen.slot.generation, 4);
        assert_eq!(chosen.slots, [0, 1, 0]);
        assert_eq!(chosen.highest_seen, 5);
        // The same number with other contents is not the same generation.
        let disks = [[at(4, 0), at(3, 0)], [at(4, 1), at(3, 0)]];
        assert_eq!(choose(&disks).unwrap().slot.generation, 3);
        // Nothing in common: no committed state.
        assert_eq!(choose(&[[at(4, 0), None], [at(5, 0), None]]), None);
    }
}
