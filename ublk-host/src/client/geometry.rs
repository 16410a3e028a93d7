//! Checking the partition geometry a server announces (in discovery's list and in a data
//! connection's `Welcome`) before anything divides by it or sizes a device with it.
//!
//! A real server never announces a bad one: its block size is the largest logical block
//! of its member disks (at least [`wire::SECTOR_SIZE`], a power of two, as the kernel
//! reports it), its stripe chunk a power of two, its partitions whole stripes. A server
//! that does (broken, or hostile) is refused with [`HostError::BadPartition`] where the
//! host receives the description, so no user of it has to clamp.

use wire::PartitionInfo;

use crate::error::{HostError, Result};

/// Smallest logical block: the sector every block device has.
pub const MIN_BLOCK_SIZE: u32 = wire::SECTOR_SIZE;
/// Largest logical block: Linux's own limit (`BLK_MAX_BLOCK_SIZE`, 64 KiB since the large
/// block sizes of 6.15); no disk the server can stand on reports more.
pub const MAX_BLOCK_SIZE: u32 = 64 << 10;

/// Checks that `partition` describes something a server can serve: a power-of-two block
/// size in [`MIN_BLOCK_SIZE`]..=[`MAX_BLOCK_SIZE`], a size of whole blocks, a
/// power-of-two stripe chunk and at least one disk.
pub fn check_partition(partition: &PartitionInfo) -> Result<()> {
    let reason = geometry_fault(partition);
    match reason {
        None => Ok(()),
        Some(reason) => Err(HostError::BadPartition {
            name: partition.name.clone(),
            id: partition.id,
            reason,
        }),
    }
}

/// What is impossible about `partition`'s geometry, if anything.
fn geometry_fault(partition: &PartitionInfo) -> Option<String> {
    let block = partition.block_size;
    if !block.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block) {
        return Some(format!(
            "block size {block} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        ));
    }
    if partition.size % u64::from(block) != 0 {
        return Some(format!(
            "size {} is not a whole number of {block}-byte blocks",
            partition.size
        ));
    }
    if !partition.chunk_size.is_power_of_two() {
        return Some(format!(
            "stripe chunk {} is not a power of two",
            partition.chunk_size
        ));
    }
    if partition.stripe_disks == 0 {
        return Some("it is striped over no disk".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Access, Features};

    fn good() -> PartitionInfo {
        PartitionInfo {
            id: 1,
            name: "p".into(),
            size: 1 << 30,
            block_size: 4096,
            chunk_size: 64 << 10,
            stripe_disks: 3,
            access: Access::ReadWrite,
            shared: false,
            features: Features::ALL,
        }
    }

    #[test]
    fn what_a_server_announces_passes() {
        assert!(check_partition(&good()).is_ok());
        for block in [512, 4096, 64 << 10] {
            let partition = PartitionInfo {
                block_size: block,
                ..good()
            };
            assert!(check_partition(&partition).is_ok(), "{block}");
        }
    }

    #[test]
    fn impossible_geometries_are_refused_with_the_reason() {
        let cases = [
            (
                PartitionInfo {
                    block_size: 0,
                    ..good()
                },
                "block size 0",
            ),
            (
                PartitionInfo {
                    block_size: 1 << 31,
                    ..good()
                },
                "block size",
            ),
            (
                PartitionInfo {
                    block_size: 1536,
                    ..good()
                },
                "block size",
            ),
            (
                PartitionInfo {
                    size: 4097,
                    ..good()
                },
                "whole number",
            ),
            (
                PartitionInfo {
                    chunk_size: 0,
                    ..good()
                },
                "chunk",
            ),
            (
                PartitionInfo {
                    stripe_disks: 0,
                    ..good()
                },
                "no disk",
            ),
        ];
        for (partition, why) in cases {
            let error = check_partition(&partition).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
            assert!(error.contains("\"p\""), "names the partition: {error}");
        }
    }
}
