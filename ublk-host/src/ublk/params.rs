//! The ublk device parameters a partition calls for.

use libublk::sys;
use wire::{Access, Features, PartitionInfo};

/// log2 of the kernel's sector (512 bytes), the unit of ublk sizes and offsets.
pub const SECTOR_SHIFT: u32 = 9;
/// log2 of the physical block size the device reports (4096 bytes).
pub const PHYSICAL_BLOCK_SHIFT: u8 = 12;
/// Largest buffer per ublk tag, whatever the server allows: the kernel splits longer
/// requests, and each tag of each queue owns one such buffer.
pub const MAX_DEVICE_IO: u32 = 1 << 20;
/// The kernel takes at most one range per discard request from us.
const DISCARD_SEGMENTS: u16 = 1;

/// The size of each tag's I/O buffer: the server's `max_io`, at most [`MAX_DEVICE_IO`],
/// in whole logical blocks.
pub fn io_buf_bytes(partition: &PartitionInfo, server_max_io: u32) -> u32 {
    let block = partition.block_size.max(1 << SECTOR_SHIFT);
    (server_max_io.min(MAX_DEVICE_IO) / block * block).max(block)
}

/// Basic limits, cache attributes (volatile cache with FUA when the server honours
/// FLUSH/FUA), read-only, and discard / write-zeroes limits when the partition has them.
pub fn device_params(partition: &PartitionInfo, io_buf_bytes: u32) -> sys::ublk_params {
    let logical_shift = partition.block_size.max(1 << SECTOR_SHIFT).trailing_zeros() as u8;
    let mut attrs = 0;
    if partition.features.contains(Features::FLUSH_FUA) {
        attrs |= sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
    }
    if partition.access == Access::ReadOnly {
        attrs |= sys::UBLK_ATTR_READ_ONLY;
    }
    let io_opt_shift = if partition.chunk_size.is_power_of_two() {
        partition.chunk_size.trailing_zeros() as u8
    } else {
        PHYSICAL_BLOCK_SHIFT
    };
    let mut params = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            attrs,
            logical_bs_shift: logical_shift,
            physical_bs_shift: PHYSICAL_BLOCK_SHIFT.max(logical_shift),
            io_opt_shift: io_opt_shift.max(logical_shift),
            io_min_shift: logical_shift,
            max_sectors: io_buf_bytes >> SECTOR_SHIFT,
            dev_sectors: partition.size >> SECTOR_SHIFT,
            ..Default::default()
        },
        ..Default::default()
    };
    let discard = partition.features.contains(Features::DISCARD);
    let zeroes = partition.features.contains(Features::WRITE_ZEROES);
    if discard || zeroes {
        let max_sectors = io_buf_bytes >> SECTOR_SHIFT;
        params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        params.discard = sys::ublk_param_discard {
            discard_granularity: 1 << params.basic.physical_bs_shift,
            max_discard_sectors: if discard { max_sectors } else { 0 },
            max_write_zeroes_sectors: if zeroes { max_sectors } else { 0 },
            max_discard_segments: DISCARD_SEGMENTS,
            ..Default::default()
        };
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(access: Access, features: Features) -> PartitionInfo {
        PartitionInfo {
            id: 1,
            name: "p".into(),
            size: 1 << 30,
            block_size: 4096,
            chunk_size: 128 << 10,
            stripe_disks: 2,
            access,
            shared: false,
            features,
        }
    }

    #[test]
    fn read_write_with_everything() {
        let p = partition(Access::ReadWrite, Features::ALL);
        let params = device_params(&p, io_buf_bytes(&p, 4 << 20));
        let want = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
        assert_eq!(params.basic.attrs, want);
        assert_eq!(params.basic.logical_bs_shift, 12);
        assert_eq!(params.basic.max_sectors, MAX_DEVICE_IO >> SECTOR_SHIFT);
        assert_eq!(params.basic.dev_sectors, (1 << 30) >> SECTOR_SHIFT);
        assert_ne!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert!(params.discard.max_write_zeroes_sectors > 0);
    }

    #[test]
    fn read_only_without_discard() {
        let p = partition(Access::ReadOnly, Features::FLUSH_FUA);
        let params = device_params(&p, io_buf_bytes(&p, 256 << 10));
        assert_ne!(params.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
        assert_eq!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(params.basic.max_sectors, (256 << 10) >> SECTOR_SHIFT);
    }
}
