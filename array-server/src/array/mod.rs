//! The array: member disks, the stripe map, on-disk metadata, and the management API
//! ([`Array`]) that the CLI, the network server and the admin layer all call.

pub mod catalog;
#[cfg(test)]
pub(crate) mod commit_tests;
pub mod disk;
pub mod gate;
pub mod grant;
#[cfg(test)]
mod health_tests;
pub mod io;
pub mod metadata;
pub mod scan;
pub mod space;
pub mod stripe;
mod views;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use uuid::Uuid;
use wire::handshake::SECRET_LEN;
use wire::{Access, Features, PartitionInfo, Secret};

use crate::error::{Error, Result};
use catalog::Space;
use disk::{MemberDisk, SECTOR_SIZE};
use gate::{GateGuard, LaneGates};
use grant::LaneGrant;
use metadata::{ArrayMetadata, CommittedSlots, Extent, Slot};
use stripe::{StripeMap, METADATA_AREA};
pub use views::{
    ArrayInfo, AssignmentView, HostPartition, HostView, NewSecret, PartitionHolder, PartitionView,
};

/// Smallest stripe chunk accepted.
pub const MIN_CHUNK: u64 = 4 << 10;
/// Largest stripe chunk accepted.
pub const MAX_CHUNK: u64 = 64 << 20;
/// Generation of a freshly formatted array.
const FIRST_GENERATION: u64 = 1;
/// Slot `format` writes the first generation into.
const FORMAT_SLOT: u64 = 0;

/// How to format a new array.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// Stripe chunk in bytes: a power of two in [`MIN_CHUNK`]..=[`MAX_CHUNK`].
    pub chunk: u64,
    /// Overwrite disks that already carry an array.
    pub force: bool,
    /// Create missing member files with this size.
    pub create_size: Option<u64>,
}

/// What [`Array::format_with_progress`] is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatPhase {
    /// Opening the disks and checking they are free to format.
    Checking,
    /// Writing the new array's metadata (each slot synced).
    Writing,
}

/// How far a format got: `done` of `total` disks in `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatProgress {
    /// The step.
    pub phase: FormatPhase,
    /// Disks through this step.
    pub done: usize,
    /// Disks in all.
    pub total: usize,
}

#[derive(Debug)]
struct Committed {
    /// Generation of `metadata`, the last one written everywhere.
    generation: u64,
    /// The generation the next commit writes: above every generation attempted or seen.
    next_generation: u64,
    metadata: ArrayMetadata,
    /// Where each disk holds `generation`; the next commit writes the other slots.
    slots: CommittedSlots,
}

/// A handle on an open array; `Send + Sync`, shared as `Arc<Array>`.
///
/// Every mutation validates fully, then writes the next metadata generation to every
/// member disk (fdatasync'd) before it returns; on any error nothing changed. The data
/// path never locks: it compares [`Array::generation`] with its [`LaneGrant`].
#[derive(Debug)]
pub struct Array {
    disks: Vec<MemberDisk>,
    array_id: Uuid,
    stripes: StripeMap,
    capacity: u64,
    block_size: u32,
    state: Mutex<Committed>,
    generation: AtomicU64,
    changes: watch::Sender<u64>,
    /// Data lanes' revocation gates (see [`gate`]).
    gates: Arc<LaneGates>,
}

impl Array {
    /// Creates a new, empty array on `paths` (in stripe order).
    pub fn format(paths: &[PathBuf], options: &FormatOptions) -> Result<Arc<Array>> {
        Array::format_with_progress(paths, options, &mut |_| {})
    }

    /// [`Array::format`], calling `progress` after each step (a disk checked, a disk
    /// written) so a terminal can show how far a big array got.
    pub fn format_with_progress(
        paths: &[PathBuf],
        options: &FormatOptions,
        progress: &mut dyn FnMut(FormatProgress),
    ) -> Result<Arc<Array>> {
        let chunk = options.chunk;
        if !chunk.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) {
            return Err(Error::BadChunkSize(chunk));
        }
        if paths.is_empty() {
            return Err(Error::NoDisks);
        }
        if let Some(size) = options.create_size {
            for path in paths {
                if disk::create_file_if_missing(path, size)? {
                    log::info!("created {} ({size} bytes)", path.display());
                }
            }
        }
        let disks = paths
            .iter()
            .map(|path| MemberDisk::open(path))
            .collect::<Result<Vec<_>>>()?;
        let total = disks.len();
        for (index, member) in disks.iter().enumerate() {
            progress(FormatProgress {
                phase: FormatPhase::Checking,
                done: index,
                total,
            });
            let min = METADATA_AREA + chunk;
            if member.size() < min {
                return Err(Error::DiskTooSmall {
                    path: member.path().to_owned(),
                    size: member.size(),
                    min,
                });
            }
            let slots = metadata::read_slots(member.control_file(), member.path())?;
            if let Some(existing) = slots.iter().flatten().next() {
                if !options.force {
                    return Err(Error::AlreadyFormatted {
                        path: member.path().to_owned(),
                        array_id: existing.array_id,
                    });
                }
            }
        }
        let slot = Slot {
            array_id: Uuid::new_v4(),
            disk_index: 0,
            disk_count: disks.len() as u32,
            chunk,
            generation: FIRST_GENERATION,
            metadata: ArrayMetadata::default(),
        };
        for (index, member) in disks.iter().enumerate() {
            progress(FormatProgress {
                phase: FormatPhase::Writing,
                done: index,
                total,
            });
            metadata::wipe_slots(member.control_file(), member.path())?;
            let mine = Slot {
                disk_index: index as u32,
                ..slot.clone()
            };
            metadata::write_slot(member.control_file(), member.path(), FORMAT_SLOT, &mine)?;
        }
        progress(FormatProgress {
            phase: FormatPhase::Writing,
            done: total,
            total,
        });
        let slots = CommittedSlots::all(disks.len(), FORMAT_SLOT);
        Ok(Array::assemble(disks, &slot, slots, FIRST_GENERATION + 1))
    }

    /// Opens the array on `paths` (any order): the highest generation valid on every
    /// disk wins ([`metadata::choose`]); a commit that reached only some disks is
    /// discarded, by committing the winner again at a fresh generation everywhere.
    pub fn open(paths: &[PathBuf]) -> Result<Arc<Array>> {
        if paths.is_empty() {
            return Err(Error::NoDisks);
        }
        let mut found = Vec::new();
        for path in paths {
            let member = MemberDisk::open(path)?;
            let slots = metadata::read_slots(member.control_file(), member.path())?;
            let newest = slots
                .iter()
                .flatten()
                .max_by_key(|slot| slot.generation)
                .ok_or_else(|| Error::NotFormatted { path: path.clone() })?
                .clone();
            found.push((member, newest, slots));
        }
        check_disk_set(&found)?;
        found.sort_by_key(|(_, newest, _)| newest.disk_index);
        let pairs: Vec<_> = found.iter().map(|(_, _, slots)| slots.clone()).collect();
        let chosen = metadata::choose(&pairs).ok_or_else(|| {
            Error::DiskSetMismatch("the member disks share no committed metadata generation".into())
        })?;
        let disks = found.into_iter().map(|(member, _, _)| member).collect();
        let unfinished = chosen.highest_seen > chosen.slot.generation;
        let array = Array::assemble(
            disks,
            &chosen.slot,
            chosen.slots.into(),
            chosen.highest_seen + 1,
        );
        if unfinished {
            log::warn!(
                "discarding generation {} found on some member disks only (an unfinished \
                 commit); generation {} stays, written again everywhere",
                chosen.highest_seen,
                chosen.slot.generation
            );
            array.commit(|current| Ok((current.clone(), ())))?;
        }
        Ok(array)
    }

    fn assemble(
        disks: Vec<MemberDisk>,
        committed: &Slot,
        slots: CommittedSlots,
        next_generation: u64,
    ) -> Arc<Array> {
        let generation = committed.generation;
        let stripes = StripeMap::new(committed.chunk, disks.len() as u32);
        let smallest = disks.iter().map(MemberDisk::size).min().unwrap_or(0);
        let block_size = disks
            .iter()
            .map(MemberDisk::logical_block)
            .max()
            .unwrap_or(SECTOR_SIZE);
        let (changes, _) = watch::channel(generation);
        Arc::new(Array {
            capacity: stripes.capacity(smallest),
            disks,
            array_id: committed.array_id,
            stripes,
            block_size,
            state: Mutex::new(Committed {
                generation,
                next_generation,
                metadata: committed.metadata.clone(),
                slots,
            }),
            generation: AtomicU64::new(generation),
            changes,
            gates: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Committed> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn space(&self) -> Space {
        Space {
            capacity: self.capacity,
            stripe: self.stripes.stripe(),
        }
    }

    /// Applies `change` to the metadata and commits the result as the next generation on
    /// every disk ([`CommittedSlots::commit`]); returns what `change` returned. On any
    /// error nothing changes, in memory or (as [`Array::open`] sees it) on the disks. Data
    /// lanes the change takes rights from are closed, and their disk work drained, before
    /// this returns (see [`gate`]).
    fn commit<T>(
        &self,
        change: impl FnOnce(&ArrayMetadata) -> Result<(ArrayMetadata, T)>,
    ) -> Result<T> {
        let mut state = self.lock();
        let (next, out) = change(&state.metadata)?;
        let generation = state.next_generation;
        // A failed write may have reached some disks: never reuse its generation number.
        state.next_generation += 1;
        let slot = Slot {
            array_id: self.array_id,
            disk_index: 0,
            disk_count: self.disks.len() as u32,
            chunk: self.stripes.chunk(),
            generation,
            metadata: next,
        };
        state.slots.commit(&self.disks, |disk_index| Slot {
            disk_index,
            ..slot.clone()
        })?;
        state.generation = generation;
        state.metadata = slot.metadata;
        self.generation.store(generation, Ordering::Release);
        self.changes.send_replace(generation);
        let revoked = self.gates.revoke_for(&state.metadata);
        drop(state);
        LaneGates::drain(&revoked);
        Ok(out)
    }

    /// Registers a data lane working with `grant` on socket `socket` for revocation (see
    /// [`gate`]); `None` if the grant was already withdrawn or narrowed, in which case the
    /// lane must close without touching the disks.
    pub fn register_lane(
        &self,
        host: &str,
        grant: &LaneGrant,
        socket: std::os::fd::RawFd,
    ) -> Option<GateGuard> {
        let info = &grant.info;
        let guard = self.gates.register(host, info.id, info.access, socket);
        // A commit that ran before the registration did not see the gate: check its result.
        if self.generation() != grant.generation && !guard.gate.still_allowed(&self.lock().metadata)
        {
            return None;
        }
        Some(guard)
    }

    /// The array's UUID.
    pub fn id(&self) -> Uuid {
        self.array_id
    }

    /// The stripe geometry.
    pub fn stripes(&self) -> StripeMap {
        self.stripes
    }

    /// The member disks, in stripe order.
    pub fn disks(&self) -> &[MemberDisk] {
        &self.disks
    }

    /// Counts a failed data I/O on the member disk at `path` (for `/metrics` and the
    /// admin page's disk health).
    pub fn note_disk_error(&self, path: &std::path::Path) {
        if let Some(member) = self.disks.iter().find(|d| d.path() == path) {
            member.note_io_error("a data I/O failed (details in the server log)");
        }
    }

    /// Counts a failed data I/O with its description, when `error` is a member disk's
    /// ([`Error::Disk`]); other errors are not the disk's and are ignored.
    pub fn note_disk_failure(&self, error: &Error) {
        if let Error::Disk { path, .. } = error {
            if let Some(member) = self.disks.iter().find(|d| d.path() == path) {
                member.note_io_error(&error.to_string());
            }
        }
    }

    /// The logical block size partitions are offered with.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The current metadata generation: one relaxed-cost atomic load, for the data path.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A receiver that sees every new metadata generation (control and data sessions, the
    /// admin layer's live views).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Capacity, free space, disks and counts.
    pub fn info(&self) -> ArrayInfo {
        let state = self.lock();
        let free = space::free_bytes(&state.metadata, self.capacity);
        ArrayInfo {
            array_id: self.array_id.to_string(),
            generation: state.generation,
            chunk_size: self.stripes.chunk(),
            stripe_disks: self.stripes.disks(),
            block_size: self.block_size,
            capacity: self.capacity,
            used: self.capacity - free,
            free,
            partitions: state.metadata.partitions.len(),
            hosts: state.metadata.hosts.len(),
            disks: self.disks.iter().map(MemberDisk::view).collect(),
        }
    }

    /// Every partition, by id.
    pub fn partitions(&self) -> Vec<PartitionView> {
        let state = self.lock();
        let mut out: Vec<_> = state
            .metadata
            .partitions
            .iter()
            .map(|record| PartitionView::new(record, &state.metadata))
            .collect();
        out.sort_by_key(|view| view.id);
        out
    }

    /// One partition by name.
    pub fn partition(&self, name: &str) -> Result<PartitionView> {
        let state = self.lock();
        let record = catalog::partition(&state.metadata, name)?;
        Ok(PartitionView::new(record, &state.metadata))
    }

    /// Creates a partition of at least `size` bytes (rounded up to a full stripe);
    /// `shared` partitions may be assigned to several hosts, private ones to one.
    pub fn create_partition(&self, name: &str, size: u64, shared: bool) -> Result<PartitionView> {
        let space = self.space();
        self.commit(|current| {
            let (next, out) = catalog::create_partition(current, space, name, size, shared)?;
            self.zero_new_extents(current, &next, name)?;
            Ok((next, out))
        })?;
        self.partition(name)
    }

    /// Grows a partition to at least `size` bytes; it never shrinks.
    pub fn grow_partition(&self, name: &str, size: u64) -> Result<PartitionView> {
        let space = self.space();
        self.commit(|current| {
            let next = catalog::grow_partition(current, space, name, size)?;
            self.zero_new_extents(current, &next, name)?;
            Ok((next, ()))
        })?;
        self.partition(name)
    }

    /// Zeroes, on every member disk, the extents partition `name` has in `next` and not
    /// in `current`, before `next` is committed: free space still holds what a deleted
    /// partition left there, and a new owner must read zeroes, never another tenant's
    /// data. Metadata changes wait meanwhile (the state lock is held); the data path does not.
    fn zero_new_extents(
        &self,
        current: &ArrayMetadata,
        next: &ArrayMetadata,
        name: &str,
    ) -> Result<()> {
        let extents_of = |metadata: &ArrayMetadata| -> Vec<Extent> {
            catalog::partition(metadata, name)
                .map(|p| p.extents.clone())
                .unwrap_or_default()
        };
        for extent in space::gained(&extents_of(current), &extents_of(next)) {
            for range in self.stripes.disk_ranges(extent.start, extent.len) {
                self.disks[range.disk as usize].zero_durably(range.offset, range.len)?;
            }
        }
        Ok(())
    }

    /// Deletes a partition no host is assigned.
    pub fn delete_partition(&self, name: &str) -> Result<()> {
        self.commit(|current| Ok((catalog::delete_partition(current, name)?, ())))
    }

    /// Every host, by name.
    pub fn hosts(&self) -> Vec<HostView> {
        let state = self.lock();
        let mut out: Vec<_> = state
            .metadata
            .hosts
            .iter()
            .map(|host| HostView::new(&host.name, &state.metadata))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Creates a host with a fresh random secret, returned once.
    pub fn create_host(&self, name: &str) -> Result<NewSecret> {
        let secret = random_secret()?;
        self.commit(|current| Ok((catalog::create_host(current, name, secret.0)?, ())))?;
        Ok(NewSecret::new(name, &secret))
    }

    /// Deletes a host that has no assignment.
    pub fn delete_host(&self, name: &str) -> Result<()> {
        self.commit(|current| Ok((catalog::delete_host(current, name)?, ())))
    }

    /// Gives a host a fresh random secret, returned once; live sessions stay up.
    pub fn rotate_secret(&self, name: &str) -> Result<NewSecret> {
        let secret = random_secret()?;
        self.commit(|current| Ok((catalog::rotate_secret(current, name, secret.0)?, ())))?;
        Ok(NewSecret::new(name, &secret))
    }

    /// Every assignment.
    pub fn assignments(&self) -> Vec<AssignmentView> {
        let state = self.lock();
        state
            .metadata
            .assignments
            .iter()
            .filter_map(|record| AssignmentView::new(record, &state.metadata))
            .collect()
    }

    /// Assigns a partition to a host.
    pub fn assign(&self, host: &str, partition: &str, access: Access) -> Result<AssignmentView> {
        self.commit(|current| {
            let next = catalog::assign(current, host, partition, access)?;
            let record = next.assignments.last().expect("assign appends").clone();
            let view = AssignmentView::new(&record, &next).expect("assignment names exist");
            Ok((next, view))
        })
    }

    /// Withdraws a host's assignment; its open lanes fail their next request with
    /// `EACCES` and close, and its control sessions get the new list.
    pub fn unassign(&self, host: &str, partition: &str) -> Result<()> {
        self.commit(|current| Ok((catalog::unassign(current, host, partition)?, ())))
    }

    /// Changes the access of an existing assignment; control sessions get the new list
    /// and the host's open lanes pick up the new right on their next request.
    pub fn set_access(
        &self,
        host: &str,
        partition: &str,
        access: Access,
    ) -> Result<AssignmentView> {
        self.commit(|current| {
            let next = catalog::set_access(current, host, partition, access)?;
            let view = next
                .assignments
                .iter()
                .filter_map(|record| AssignmentView::new(record, &next))
                .find(|view| view.host == host && view.partition == partition)
                .expect("the assignment exists");
            Ok((next, view))
        })
    }

    /// Deletes a partition and every assignment of it in one commit; lanes on it fail
    /// their next request with `EACCES` and close.
    pub fn delete_partition_forced(&self, name: &str) -> Result<()> {
        self.commit(|current| Ok((catalog::purge_partition(current, name)?, ())))
    }

    /// Deletes a host and every assignment it has in one commit.
    pub fn delete_host_forced(&self, name: &str) -> Result<()> {
        self.commit(|current| Ok((catalog::purge_host(current, name)?, ())))
    }

    /// The secret of `host`, if it exists (for the handshake).
    pub fn host_secret(&self, host: &str) -> Option<Secret> {
        let state = self.lock();
        catalog::host(&state.metadata, host)
            .ok()
            .map(|record| Secret(record.secret))
    }

    /// The partitions `host` may use, as discovery reports them, with the generation.
    pub fn host_partitions(&self, host: &str) -> Option<(u64, Vec<PartitionInfo>)> {
        let state = self.lock();
        catalog::host(&state.metadata, host).ok()?;
        let mut out: Vec<PartitionInfo> = state
            .metadata
            .assignments
            .iter()
            .filter(|a| a.host == host)
            .filter_map(|a| self.partition_info(&state.metadata, a.partition, a.access))
            .collect();
        out.sort_by_key(|info| info.id);
        Some((state.generation, out))
    }

    /// The grant a data lane of `host` on partition `id` works with, or `None` if the
    /// partition is not (or no longer) assigned to it.
    pub fn lane_grant(&self, host: &str, id: u32) -> Option<Arc<LaneGrant>> {
        let state = self.lock();
        let assignment = state
            .metadata
            .assignments
            .iter()
            .find(|a| a.host == host && a.partition == id)?;
        let info = self.partition_info(&state.metadata, id, assignment.access)?;
        let record = state.metadata.partitions.iter().find(|p| p.id == id)?;
        Some(Arc::new(LaneGrant {
            generation: state.generation,
            info,
            extents: record.extents.clone(),
        }))
    }

    fn partition_info(
        &self,
        metadata: &ArrayMetadata,
        id: u32,
        access: Access,
    ) -> Option<PartitionInfo> {
        let record = metadata.partitions.iter().find(|p| p.id == id)?;
        Some(PartitionInfo {
            id,
            name: record.name.clone(),
            size: record.size,
            block_size: self.block_size,
            chunk_size: self.stripes.chunk() as u32,
            stripe_disks: self.stripes.disks(),
            access,
            shared: record.shared,
            features: Features::ALL,
        })
    }
}

fn random_secret() -> Result<Secret> {
    let mut bytes = [0u8; SECRET_LEN];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        Error::io(
            "drawing a random secret",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(Secret(bytes))
}

/// Checks that the disks (each with its newest valid slot) form exactly one complete array.
fn check_disk_set(found: &[(MemberDisk, Slot, [Option<Slot>; 2])]) -> Result<()> {
    let (_, first, _) = &found[0];
    let mut seen = vec![false; found.len()];
    for (member, slot, _) in found {
        let path = member.path().display();
        if slot.array_id != first.array_id {
            return Err(Error::DiskSetMismatch(format!(
                "{path} belongs to array {}, not {}",
                slot.array_id, first.array_id
            )));
        }
        if slot.disk_count as usize != found.len() || slot.chunk != first.chunk {
            return Err(Error::DiskSetMismatch(format!(
                "{path} says the array has {} disks (chunk {}); {} were given",
                slot.disk_count,
                slot.chunk,
                found.len()
            )));
        }
        let index = slot.disk_index as usize;
        if index >= seen.len() || std::mem::replace(&mut seen[index], true) {
            return Err(Error::DiskSetMismatch(format!(
                "{path} is disk {index}, which is out of range or given twice"
            )));
        }
    }
    Ok(())
}
