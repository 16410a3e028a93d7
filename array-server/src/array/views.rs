//! Serialisable views of the array for the CLI and the admin (JSON) layer.

use serde::Serialize;
use wire::{Access, Secret};

use super::disk::DiskView;
use super::metadata::{ArrayMetadata, AssignmentRecord, Extent, PartitionRecord};

/// The array as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct ArrayInfo {
    /// UUID, hyphenated.
    pub array_id: String,
    /// Current metadata generation.
    pub generation: u64,
    /// Stripe chunk in bytes.
    pub chunk_size: u64,
    /// Number of member disks.
    pub stripe_disks: u32,
    /// Logical block size offered to hosts.
    pub block_size: u32,
    /// Logical bytes in the array.
    pub capacity: u64,
    /// Bytes given to partitions.
    pub used: u64,
    /// Bytes free.
    pub free: u64,
    /// Number of partitions.
    pub partitions: usize,
    /// Number of hosts.
    pub hosts: usize,
    /// Member disks in stripe order.
    pub disks: Vec<DiskView>,
}

/// A host holding a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionHolder {
    /// Host name.
    pub host: String,
    /// Its rights.
    pub access: Access,
}

/// A partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    /// Stable id (what data lanes name).
    pub id: u32,
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Shared (several hosts) or private (one host).
    pub shared: bool,
    /// Where it lives in the logical space.
    pub extents: Vec<Extent>,
    /// Hosts assigned to it.
    pub holders: Vec<PartitionHolder>,
}

impl PartitionView {
    pub(super) fn new(record: &PartitionRecord, metadata: &ArrayMetadata) -> PartitionView {
        PartitionView {
            id: record.id,
            name: record.name.clone(),
            size: record.size,
            shared: record.shared,
            extents: record.extents.clone(),
            holders: metadata
                .assignments
                .iter()
                .filter(|a| a.partition == record.id)
                .map(|a| PartitionHolder {
                    host: a.host.clone(),
                    access: a.access,
                })
                .collect(),
        }
    }
}

/// A partition a host holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPartition {
    /// Partition name.
    pub partition: String,
    /// Partition id.
    pub partition_id: u32,
    /// The host's rights.
    pub access: Access,
}

/// A host (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostView {
    /// Name.
    pub name: String,
    /// Its partitions.
    pub partitions: Vec<HostPartition>,
}

impl HostView {
    pub(super) fn new(name: &str, metadata: &ArrayMetadata) -> HostView {
        HostView {
            name: name.to_owned(),
            partitions: metadata
                .assignments
                .iter()
                .filter(|a| a.host == name)
                .filter_map(|a| {
                    let partition = metadata.partitions.iter().find(|p| p.id == a.partition)?;
                    Some(HostPartition {
                        partition: partition.name.clone(),
                        partition_id: partition.id,
                        access: a.access,
                    })
                })
                .collect(),
        }
    }
}

/// One assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssignmentView {
    /// Host name.
    pub host: String,
    /// Partition name.
    pub partition: String,
    /// Partition id.
    pub partition_id: u32,
    /// The host's rights.
    pub access: Access,
}

impl AssignmentView {
    pub(super) fn new(
        record: &AssignmentRecord,
        metadata: &ArrayMetadata,
    ) -> Option<AssignmentView> {
        let partition = metadata
            .partitions
            .iter()
            .find(|p| p.id == record.partition)?;
        Some(AssignmentView {
            host: record.host.clone(),
            partition: partition.name.clone(),
            partition_id: partition.id,
            access: record.access,
        })
    }
}

/// A freshly made host secret, shown once. `Debug` hides it; `Serialize` shows it.
#[derive(Clone, Serialize)]
pub struct NewSecret {
    /// The host.
    pub host: String,
    /// The secret as 64 hex digits ([`Secret::to_hex`]).
    pub secret: String,
}

impl NewSecret {
    pub(super) fn new(host: &str, secret: &Secret) -> NewSecret {
        NewSecret {
            host: host.to_owned(),
            secret: secret.to_hex(),
        }
    }
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("host", &self.host)
            .field("secret", &"..")
            .finish()
    }
}
