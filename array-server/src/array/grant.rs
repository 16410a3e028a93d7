//! What a data lane may touch: a snapshot of one partition's extents and the host's
//! access, taken at one metadata generation, and the partition → disk mapping over it.

use wire::{Access, PartitionInfo};

use super::metadata::Extent;
use super::stripe::{Piece, StripeMap};

/// One host's right to one partition at one metadata generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneGrant {
    /// The metadata generation the snapshot was taken at.
    pub generation: u64,
    /// The partition as the host sees it.
    pub info: PartitionInfo,
    /// Where the partition lives in the logical space, in partition order.
    pub extents: Vec<Extent>,
}

/// One disk I/O of a request: a [`Piece`] and where its bytes sit in the request buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedPiece {
    /// The disk range.
    pub piece: Piece,
    /// Offset of the piece's first byte from the start of the request's data.
    pub buffer_offset: u64,
}

impl LaneGrant {
    /// Whether the host may only read.
    pub fn read_only(&self) -> bool {
        self.info.access == Access::ReadOnly
    }

    /// Maps the partition range `offset..offset + len` to disk pieces (split at extent and
    /// chunk boundaries), in buffer order. The caller has checked the range is inside.
    pub fn map(&self, stripes: &StripeMap, offset: u64, len: u64) -> Vec<MappedPiece> {
        let mut out = Vec::new();
        let mut extent_start = 0u64;
        let end = offset + len;
        for extent in &self.extents {
            let extent_end = extent_start + extent.len;
            let from = offset.max(extent_start);
            let to = end.min(extent_end);
            if from < to {
                let logical = extent.start + (from - extent_start);
                out.extend(stripes.pieces(logical, to - from).map(|piece| MappedPiece {
                    buffer_offset: from - offset + (piece.logical - logical),
                    piece,
                }));
            }
            extent_start = extent_end;
            if extent_start >= end {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Features;

    #[test]
    fn maps_across_extents_in_buffer_order() {
        let grant = LaneGrant {
            generation: 1,
            info: PartitionInfo {
                id: 0,
                name: "p".into(),
                size: 3 * 8192,
                block_size: 512,
                chunk_size: 4096,
                stripe_disks: 2,
                access: Access::ReadWrite,
                shared: false,
                features: Features::ALL,
            },
            extents: vec![
                Extent {
                    start: 8192,
                    len: 8192,
                },
                Extent {
                    start: 32768,
                    len: 16384,
                },
            ],
        };
        let map = StripeMap::new(4096, 2);
        let pieces = grant.map(&map, 4096, 8192);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].piece.logical, 12288);
        assert_eq!(pieces[0].buffer_offset, 0);
        assert_eq!(pieces[1].piece.logical, 32768);
        assert_eq!(pieces[1].buffer_offset, 4096);
        let total: u64 = grant
            .map(&map, 0, 3 * 8192)
            .iter()
            .map(|p| p.piece.len)
            .sum();
        assert_eq!(total, 3 * 8192);
    }
}
