//! The RAID-0 stripe map: logical byte `L` is in chunk `c = L / chunk`, on disk `c % N`,
//! at `METADATA_AREA + (c / N) * chunk + L % chunk`.

use serde::{Deserialize, Serialize};

/// Bytes reserved at the start of every member disk for the two metadata slots.
pub const METADATA_AREA: u64 = 1 << 20;

/// Where one logical byte lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPosition {
    /// Index of the member disk.
    pub disk: u32,
    /// Byte offset on that disk.
    pub offset: u64,
}

/// A contiguous run of bytes inside one chunk: one disk I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index of the member disk.
    pub disk: u32,
    /// Byte offset on that disk.
    pub disk_offset: u64,
    /// Logical byte offset in the array.
    pub logical: u64,
    /// Bytes in the piece (never crosses a chunk boundary).
    pub len: u64,
}

/// A contiguous range on one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRange {
    /// Member disk index.
    pub disk: u32,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// The stripe geometry of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeMap {
    chunk: u64,
    disks: u32,
}

impl StripeMap {
    /// A map over `disks` member disks with `chunk`-byte chunks.
    ///
    /// # Panics
    /// If `chunk` or `disks` is zero.
    pub fn new(chunk: u64, disks: u32) -> StripeMap {
        assert!(chunk > 0 && disks > 0, "a stripe needs a chunk and a disk");
        StripeMap { chunk, disks }
    }

    /// Bytes per chunk.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// Number of member disks.
    pub fn disks(&self) -> u32 {
        self.disks
    }

    /// Bytes in one full stripe: one chunk on every disk.
    pub fn stripe(&self) -> u64 {
        self.chunk * u64::from(self.disks)
    }

    /// Where logical byte `logical` lives.
    pub fn locate(&self, logical: u64) -> DiskPosition {
        let chunk_index = logical / self.chunk;
        let disks = u64::from(self.disks);
        DiskPosition {
            disk: (chunk_index % disks) as u32,
            offset: METADATA_AREA + (chunk_index / disks) * self.chunk + logical % self.chunk,
        }
    }

    /// Splits the logical range `logical..logical + len` at chunk boundaries.
    pub fn pieces(&self, logical: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let end = logical + len;
        let mut at = logical;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let chunk_end = (at / self.chunk + 1) * self.chunk;
            let piece_len = chunk_end.min(end) - at;
            let position = self.locate(at);
            let piece = Piece {
                disk: position.disk,
                disk_offset: position.offset,
                logical: at,
                len: piece_len,
            };
            at += piece_len;
            Some(piece)
        })
    }

    /// The logical range `logical..logical + len` as contiguous ranges on the disks
    /// (consecutive chunks of one disk are adjacent on it): one range per disk for a
    /// range of whole stripes.
    pub fn disk_ranges(&self, logical: u64, len: u64) -> Vec<DiskRange> {
        let mut ranges: Vec<DiskRange> = Vec::new();
        for piece in self.pieces(logical, len) {
            let adjacent = ranges
                .iter_mut()
                .rev()
                .take(self.disks as usize)
                .find(|r| r.disk == piece.disk && r.offset + r.len == piece.disk_offset);
            match adjacent {
                Some(range) => range.len += piece.len,
                None => ranges.push(DiskRange {
                    disk: piece.disk,
                    offset: piece.disk_offset,
                    len: piece.len,
                }),
            }
        }
        ranges
    }

    /// Logical bytes an array of member disks of `smallest_disk` bytes offers: whole
    /// stripes only.
    pub fn capacity(&self, smallest_disk: u64) -> u64 {
        let chunks_per_disk = smallest_disk.saturating_sub(METADATA_AREA) / self.chunk;
        chunks_per_disk * self.stripe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn disk_ranges_cover_a_range_with_one_run_per_disk_and_stripe_run() {
        let map = StripeMap::new(4096, 3);
        // Two whole stripes from the second: one range of two chunks on each disk.
        let ranges = map.disk_ranges(3 * 4096, 6 * 4096);
        assert_eq!(ranges.len(), 3);
        for range in &ranges {
            assert_eq!(range.offset, METADATA_AREA + 4096);
            assert_eq!(range.len, 2 * 4096);
        }
        // Every byte of a ragged range is in exactly one range, with the formula's place.
        let (start, len) = (4096 + 100, 5 * 4096);
        let ranges = map.disk_ranges(start, len);
        assert_eq!(ranges.iter().map(|r| r.len).sum::<u64>(), len);
        for logical in (start..start + len).step_by(97) {
            let at = map.locate(logical);
            let hits = ranges
                .iter()
                .filter(|r| r.disk == at.disk && (r.offset..r.offset + r.len).contains(&at.offset))
                .count();
            assert_eq!(hits, 1, "logical {logical}");
        }
    }

    #[test]
    fn follows_the_documented_formula() {
        let map = StripeMap::new(4096, 3);
        assert_eq!(
            map.locate(0),
            DiskPosition {
                disk: 0,
                offset: METADATA_AREA
            }
        );
        assert_eq!(
            map.locate(4096),
            DiskPosition {
                disk: 1,
                offset: METADATA_AREA
            }
        );
        assert_eq!(
            map.locate(2 * 4096 + 7),
            DiskPosition {
                disk: 2,
                offset: METADATA_AREA + 7
            }
        );
        assert_eq!(
            map.locate(3 * 4096),
            DiskPosition {
                disk: 0,
                offset: METADATA_AREA + 4096
            }
        );
    }

    #[test]
    fn pieces_split_at_chunk_boundaries() {
        let map = StripeMap::new(4096, 2);
        let pieces: Vec<_> = map.pieces(4000, 5000).collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].len, 96);
        assert_eq!(pieces[1].len, 4096);
        assert_eq!(pieces[2].len, 5000 - 96 - 4096);
        assert_eq!(pieces[1].disk, 1);
        assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), 5000);
    }

    #[test]
    fn capacity_counts_whole_stripes() {
        let map = StripeMap::new(65536, 2);
        assert_eq!(map.capacity(METADATA_AREA + 3 * 65536 + 100), 6 * 65536);
        assert_eq!(map.capacity(100), 0);
    }

    proptest! {
        #[test]
        fn mapping_is_a_bijection(chunk_shift in 9u32..14, disks in 1u32..6, stripes in 1u64..8) {
            let map = StripeMap::new(1 << chunk_shift, disks);
            let total = map.stripe() * stripes;
            let step = 512;
            let mut seen = HashSet::new();
            for logical in (0..total).step_by(step) {
                let position = map.locate(logical);
                prop_assert!(position.disk < disks);
                prop_assert!(position.offset >= METADATA_AREA);
                prop_assert!(position.offset < METADATA_AREA + stripes * map.chunk());
                prop_assert!(seen.insert((position.disk, position.offset)));
            }
            prop_assert_eq!(seen.len() as u64, total / step as u64);
        }

        #[test]
        fn pieces_cover_every_byte_once(chunk_shift in 9u32..14, disks in 1u32..5,
                                        start in 0u64..100_000, len in 1u64..100_000) {
            let map = StripeMap::new(1 << chunk_shift, disks);
            let mut next = start;
            for piece in map.pieces(start, len) {
                prop_assert_eq!(piece.logical, next);
                prop_assert!(piece.len > 0 && piece.len <= map.chunk());
                prop_assert_eq!(map.locate(piece.logical), DiskPosition { disk: piece.disk, offset: piece.disk_offset });
                let last = map.locate(piece.logical + piece.len - 1);
                prop_assert_eq!(last.disk, piece.disk);
                prop_assert_eq!(last.offset, piece.disk_offset + piece.len - 1);
                next += piece.len;
            }
            prop_assert_eq!(next, start + len);
        }
    }
}
