//! The operator's mutations as pure functions: each validates everything against the
//! current metadata and returns the next metadata, or an error and no change at all.

use wire::handshake::{valid_name, SECRET_LEN};
use wire::Access;

use super::metadata::{ArrayMetadata, AssignmentRecord, HostRecord, PartitionRecord};
use super::space;
use crate::error::{Error, Result};

/// The geometry mutations need: how big the logical space is and its allocation unit.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    /// Logical bytes in the array.
    pub capacity: u64,
    /// Allocation unit: one full stripe.
    pub stripe: u64,
}

impl Space {
    /// `size` rounded up to whole stripes.
    pub fn round_up(&self, size: u64) -> Result<u64> {
        size.checked_next_multiple_of(self.stripe)
            .ok_or(Error::NoSpace {
                needed: size,
                free: 0,
            })
    }
}

/// Whether `name` may name a new host or partition: the wire's rule (1 to 64 of
/// `[A-Za-z0-9._-]`), and not `.`, `..` or a name starting with `-`, which paths, URLs and
/// command lines (the page, `ctl`, a secret file named after the host) cannot carry as
/// plain names.
pub fn acceptable_name(name: &str) -> bool {
    valid_name(name) && name != "." && name != ".." && !name.starts_with('-')
}

fn check_name(name: &str) -> Result<()> {
    if acceptable_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

/// Finds a partition by name.
pub fn partition<'a>(metadata: &'a ArrayMetadata, name: &str) -> Result<&'a PartitionRecord> {
    metadata
        .partitions
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::PartitionNotFound(name.to_owned()))
}

/// Finds a host by name.
pub fn host<'a>(metadata: &'a ArrayMetadata, name: &str) -> Result<&'a HostRecord> {
    metadata
        .hosts
        .iter()
        .find(|h| h.name == name)
        .ok_or_else(|| Error::HostNotFound(name.to_owned()))
}

/// Adds a partition of at least `size` bytes (rounded up to whole stripes).
pub fn create_partition(
    current: &ArrayMetadata,
    space: Space,
    name: &str,
    size: u64,
    shared: bool,
) -> Result<(ArrayMetadata, u32)> {
    check_name(name)?;
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    if current.partitions.iter().any(|p| p.name == name) {
        return Err(Error::PartitionExists(name.to_owned()));
    }
    let size = space.round_up(size)?;
    let free = space::free_extents(current, space.capacity);
    let extents = space::allocate(&free, size).ok_or_else(|| Error::NoSpace {
        needed: size,
        free: free.iter().map(|e| e.len).sum(),
    })?;
    let mut next = current.clone();
    let id = next.next_partition_id;
    next.next_partition_id += 1;
    next.partitions.push(PartitionRecord {
        id,
        name: name.to_owned(),
        size,
        shared,
        extents,
    });
    Ok((next, id))
}

/// Grows a partition to at least `size` bytes; new space follows the last extent if it can.
pub fn grow_partition(
    current: &ArrayMetadata,
    space: Space,
    name: &str,
    size: u64,
) -> Result<ArrayMetadata> {
    let existing = partition(current, name)?;
    let size = space.round_up(size)?;
    if size < existing.size {
        return Err(Error::CannotShrink {
            partition: name.to_owned(),
            current: existing.size,
            requested: size,
        });
    }
    let more = size - existing.size;
    let mut next = current.clone();
    if more == 0 {
        return Ok(next);
    }
    let free = space::free_extents(current, space.capacity);
    let extents =
        space::allocate_after(&free, existing.extents.last().copied(), more).ok_or_else(|| {
            Error::NoSpace {
                needed: more,
                free: free.iter().map(|e| e.len).sum(),
            }
        })?;
    let record = next
        .partitions
        .iter_mut()
        .find(|p| p.name == name)
        .expect("found above");
    space::append_extents(&mut record.extents, extents);
    record.size = size;
    Ok(next)
}

/// Removes a partition that no host is assigned.
pub fn delete_partition(current: &ArrayMetadata, name: &str) -> Result<ArrayMetadata> {
    let id = partition(current, name)?.id;
    let holders = current
        .assignments
        .iter()
        .filter(|a| a.partition == id)
        .map(|a| a.host.as_str());
    refuse_if_assigned("partition", name, holders)?;
    let mut next = current.clone();
    next.partitions.retain(|p| p.id != id);
    Ok(next)
}

/// Adds a host with `secret`.
pub fn create_host(
    current: &ArrayMetadata,
    name: &str,
    secret: [u8; SECRET_LEN],
) -> Result<ArrayMetadata> {
    check_name(name)?;
    if current.hosts.iter().any(|h| h.name == name) {
        return Err(Error::HostExists(name.to_owned()));
    }
    let mut next = current.clone();
    next.hosts.push(HostRecord {
        name: name.to_owned(),
        secret,
    });
    Ok(next)
}

/// Removes a host that has no assignment.
pub fn delete_host(current: &ArrayMetadata, name: &str) -> Result<ArrayMetadata> {
    host(current, name)?;
    let held = current
        .assignments
        .iter()
        .filter(|a| a.host == name)
        .filter_map(|a| current.partitions.iter().find(|p| p.id == a.partition))
        .map(|p| p.name.as_str());
    refuse_if_assigned("host", name, held)?;
    let mut next = current.clone();
    next.hosts.retain(|h| h.name != name);
    Ok(next)
}

/// `StillAssigned` for the `what` called `name` when `others` (the hosts holding a
/// partition, or the partitions a host holds) is not empty.
fn refuse_if_assigned<'a>(
    what: &'static str,
    name: &str,
    others: impl Iterator<Item = &'a str>,
) -> Result<()> {
    let others: Vec<&str> = others.collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::StillAssigned {
        what,
        name: name.to_owned(),
        others: others.join(", "),
    })
}

/// Replaces a host's secret.
pub fn rotate_secret(
    current: &ArrayMetadata,
    name: &str,
    secret: [u8; SECRET_LEN],
) -> Result<ArrayMetadata> {
    host(current, name)?;
    let mut next = current.clone();
    let record = next
        .hosts
        .iter_mut()
        .find(|h| h.name == name)
        .expect("found above");
    record.secret = secret;
    Ok(next)
}

/// Gives `host` the partition with `access`; a private partition takes one host only.
pub fn assign(
    current: &ArrayMetadata,
    host_name: &str,
    partition_name: &str,
    access: Access,
) -> Result<ArrayMetadata> {
    host(current, host_name)?;
    let target = partition(current, partition_name)?;
    let mut holders = current
        .assignments
        .iter()
        .filter(|a| a.partition == target.id);
    if let Some(existing) = holders.clone().find(|a| a.host == host_name) {
        debug_assert_eq!(existing.partition, target.id);
        return Err(Error::AlreadyAssigned {
            host: host_name.to_owned(),
            partition: partition_name.to_owned(),
        });
    }
    if let Some(holder) = holders.next().filter(|_| !target.shared) {
        return Err(Error::PrivatePartitionTaken {
            partition: partition_name.to_owned(),
            holder: holder.host.clone(),
        });
    }
    let mut next = current.clone();
    next.assignments.push(AssignmentRecord {
        host: host_name.to_owned(),
        partition: target.id,
        access,
    });
    Ok(next)
}

/// Withdraws `host`'s right to the partition.
pub fn unassign(
    current: &ArrayMetadata,
    host_name: &str,
    partition_name: &str,
) -> Result<ArrayMetadata> {
    host(current, host_name)?;
    let id = partition(current, partition_name)?.id;
    let position = current
        .assignments
        .iter()
        .position(|a| a.host == host_name && a.partition == id)
        .ok_or_else(|| Error::NotAssigned {
            host: host_name.to_owned(),
            partition: partition_name.to_owned(),
        })?;
    let mut next = current.clone();
    next.assignments.remove(position);
    Ok(next)
}

/// Changes the access of an existing assignment (discovery pushes the new right).
pub fn set_access(
    current: &ArrayMetadata,
    host_name: &str,
    partition_name: &str,
    access: Access,
) -> Result<ArrayMetadata> {
    host(current, host_name)?;
    let id = partition(current, partition_name)?.id;
    let mut next = current.clone();
    let record = next
        .assignments
        .iter_mut()
        .find(|a| a.host == host_name && a.partition == id)
        .ok_or_else(|| Error::NotAssigned {
            host: host_name.to_owned(),
            partition: partition_name.to_owned(),
        })?;
    record.access = access;
    Ok(next)
}

/// Removes a partition and every assignment of it at once (a forced delete).
pub fn purge_partition(current: &ArrayMetadata, name: &str) -> Result<ArrayMetadata> {
    let id = partition(current, name)?.id;
    let mut next = current.clone();
    next.assignments.retain(|a| a.partition != id);
    delete_partition(&next, name)
}

/// Removes a host and every assignment it has at once (a forced delete).
pub fn purge_host(current: &ArrayMetadata, name: &str) -> Result<ArrayMetadata> {
    host(current, name)?;
    let mut next = current.clone();
    next.assignments.retain(|a| a.host != name);
    delete_host(&next, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: Space = Space {
        capacity: 10 * 4096,
        stripe: 4096,
    };

    #[test]
    fn sizes_round_up_to_stripes_and_space_runs_out() {
        let (meta, id) = create_partition(&ArrayMetadata::default(), SPACE, "a", 1, false).unwrap();
        assert_eq!(id, 0);
        assert_eq!(meta.partitions[0].size, 4096);
        assert!(matches!(
            create_partition(&meta, SPACE, "b", 10 * 4096, false),
            Err(Error::NoSpace { .. })
        ));
        assert!(matches!(
            create_partition(&meta, SPACE, "a", 1, false),
            Err(Error::PartitionExists(_))
        ));
        assert!(matches!(
            create_partition(&meta, SPACE, "bad name", 1, false),
            Err(Error::InvalidName(_))
        ));
        for bad in [".", "..", "-x", "--force", "-"] {
            assert!(matches!(
                create_partition(&meta, SPACE, bad, 1, false),
                Err(Error::InvalidName(_))
            ));
            assert!(matches!(
                create_host(&meta, bad, [0; SECRET_LEN]),
                Err(Error::InvalidName(_))
            ));
        }
        for good in ["a.b", ".hidden", "x-", "a..b", "_"] {
            assert!(acceptable_name(good), "{good}");
        }
        assert!(matches!(
            create_partition(&meta, SPACE, "bad name", 1, false),
            Err(Error::InvalidName(_))
        ));
    }

    #[test]
    fn grow_adds_an_extent_elsewhere_when_blocked() {
        let empty = ArrayMetadata::default();
        let (meta, _) = create_partition(&empty, SPACE, "a", 4096, false).unwrap();
        let (meta, _) = create_partition(&meta, SPACE, "b", 4096, false).unwrap();
        let meta = grow_partition(&meta, SPACE, "a", 3 * 4096).unwrap();
        let a = partition(&meta, "a").unwrap();
        assert_eq!(a.size, 3 * 4096);
        assert_eq!(a.extents.len(), 2);
        assert_eq!(a.extents.iter().map(|e| e.len).sum::<u64>(), a.size);
        assert!(matches!(
            grow_partition(&meta, SPACE, "a", 4096),
            Err(Error::CannotShrink { .. })
        ));
    }

    #[test]
    fn private_partitions_take_one_host_and_shared_many() {
        let mut meta = ArrayMetadata::default();
        meta = create_host(&meta, "h1", [1; 32]).unwrap();
        meta = create_host(&meta, "h2", [2; 32]).unwrap();
        meta = create_partition(&meta, SPACE, "p", 4096, false).unwrap().0;
        meta = create_partition(&meta, SPACE, "s", 4096, true).unwrap().0;
        meta = assign(&meta, "h1", "p", Access::ReadWrite).unwrap();
        assert!(matches!(
            assign(&meta, "h2", "p", Access::ReadWrite),
            Err(Error::PrivatePartitionTaken { .. })
        ));
        assert!(matches!(
            assign(&meta, "h1", "p", Access::ReadOnly),
            Err(Error::AlreadyAssigned { .. })
        ));
        meta = assign(&meta, "h1", "s", Access::ReadWrite).unwrap();
        meta = assign(&meta, "h2", "s", Access::ReadOnly).unwrap();
        assert!(matches!(
            delete_partition(&meta, "s"),
            Err(Error::StillAssigned { .. })
        ));
        assert!(matches!(
            delete_host(&meta, "h2"),
            Err(Error::StillAssigned { .. })
        ));
        meta = unassign(&meta, "h2", "s").unwrap();
        meta = delete_host(&meta, "h2").unwrap();
        assert!(matches!(
            unassign(&meta, "h2", "s"),
            Err(Error::HostNotFound(_))
        ));
    }

    #[test]
    fn access_changes_and_forced_deletes_drop_assignments() {
        let mut meta = ArrayMetadata::default();
        meta = create_host(&meta, "h1", [1; 32]).unwrap();
        meta = create_partition(&meta, SPACE, "p", 4096, false).unwrap().0;
        assert!(matches!(
            set_access(&meta, "h1", "p", Access::ReadOnly),
            Err(Error::NotAssigned { .. })
        ));
        meta = assign(&meta, "h1", "p", Access::ReadWrite).unwrap();
        meta = set_access(&meta, "h1", "p", Access::ReadOnly).unwrap();
        assert_eq!(meta.assignments[0].access, Access::ReadOnly);
        let without_partition = purge_partition(&meta, "p").unwrap();
        assert!(
            without_partition.partitions.is_empty() && without_partition.assignments.is_empty()
        );
        let without_host = purge_host(&meta, "h1").unwrap();
        assert!(without_host.hosts.is_empty() && without_host.assignments.is_empty());
        assert_eq!(without_host.partitions.len(), 1);
    }
}
