//! Free-space accounting in the logical space, in whole stripes.

use super::metadata::{ArrayMetadata, Extent};

/// The free ranges of a `capacity`-byte logical space, in address order.
pub fn free_extents(metadata: &ArrayMetadata, capacity: u64) -> Vec<Extent> {
    let mut used: Vec<Extent> = metadata
        .partitions
        .iter()
        .flat_map(|partition| partition.extents.iter().copied())
        .collect();
    used.sort_by_key(|extent| extent.start);
    let mut free = Vec::new();
    let mut at = 0;
    for extent in used {
        if extent.start > at {
            free.push(Extent {
                start: at,
                len: extent.start - at,
            });
        }
        at = at.max(extent.end());
    }
    if capacity > at {
        free.push(Extent {
            start: at,
            len: capacity - at,
        });
    }
    free
}

/// Total free bytes.
pub fn free_bytes(metadata: &ArrayMetadata, capacity: u64) -> u64 {
    free_extents(metadata, capacity).iter().map(|e| e.len).sum()
}

/// Picks `len` bytes of free space: one run if any fits (first fit), else the free runs in
/// address order. `None` if there is not enough. `len` and every extent are whole stripes.
pub fn allocate(free: &[Extent], len: u64) -> Option<Vec<Extent>> {
    if let Some(run) = free.iter().find(|extent| extent.len >= len) {
        return Some(vec![Extent {
            start: run.start,
            len,
        }]);
    }
    let mut out = Vec::new();
    let mut missing = len;
    for run in free {
        let take = run.len.min(missing);
        out.push(Extent {
            start: run.start,
            len: take,
        });
        missing -= take;
        if missing == 0 {
            return Some(out);
        }
    }
    None
}

/// Appends `more` to `extents`, merging with the last extent where they touch.
pub fn append_extents(extents: &mut Vec<Extent>, more: Vec<Extent>) {
    for extent in more {
        match extents.last_mut() {
            Some(last) if last.end() == extent.start => last.len += extent.len,
            _ => extents.push(extent),
        }
    }
}

/// Where growing a partition whose last extent is `last` should take its space: right
/// after `last` if that much is free there, else anywhere.
pub fn allocate_after(free: &[Extent], last: Option<Extent>, len: u64) -> Option<Vec<Extent>> {
    if let Some(last) = last {
        let adjacent = free.iter().find(|run| run.start == last.end());
        if let Some(run) = adjacent.filter(|run| run.len >= len) {
            return Some(vec![Extent {
                start: run.start,
                len,
            }]);
        }
    }
    allocate(free, len)
}

/// The parts of `next`'s extents that none of `before`'s covers: what a partition gains
/// when it grows (an extent grown in place gains its tail only).
pub fn gained(before: &[Extent], next: &[Extent]) -> Vec<Extent> {
    let mut gained = Vec::new();
    for extent in next {
        let mut pieces = vec![*extent];
        for old in before {
            pieces = pieces
                .into_iter()
                .flat_map(|piece| without(piece, *old))
                .collect();
        }
        gained.extend(pieces);
    }
    gained
}

/// `piece` less the bytes `old` covers: none, one or two extents.
fn without(piece: Extent, old: Extent) -> Vec<Extent> {
    if old.end() <= piece.start || piece.end() <= old.start {
        return vec![piece];
    }
    let mut left = Vec::with_capacity(2);
    if piece.start < old.start {
        left.push(Extent {
            start: piece.start,
            len: old.start - piece.start,
        });
    }
    if old.end() < piece.end() {
        left.push(Extent {
            start: old.end(),
            len: piece.end() - old.end(),
        });
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_then_scattered() {
        let free = vec![Extent { start: 0, len: 10 }, Extent { start: 20, len: 30 }];
        assert_eq!(
            allocate(&free, 25),
            Some(vec![Extent { start: 20, len: 25 }])
        );
        assert_eq!(
            allocate(&free, 35),
            Some(vec![
                Extent { start: 0, len: 10 },
                Extent { start: 20, len: 25 }
            ])
        );
        assert_eq!(allocate(&free, 41), None);
    }

    #[test]
    fn appending_merges_adjacent() {
        let mut extents = vec![Extent { start: 0, len: 10 }];
        append_extents(
            &mut extents,
            vec![Extent { start: 10, len: 5 }, Extent { start: 30, len: 5 }],
        );
        assert_eq!(
            extents,
            vec![Extent { start: 0, len: 15 }, Extent { start: 30, len: 5 }]
        );
    }

    #[test]
    fn gained_is_what_no_old_extent_covers() {
        let e = |start, len| Extent { start, len };
        assert_eq!(gained(&[], &[e(0, 10)]), vec![e(0, 10)]);
        // Grown in place: only the tail is new.
        assert_eq!(gained(&[e(0, 10)], &[e(0, 25)]), vec![e(10, 15)]);
        // A new extent elsewhere, the old one unchanged.
        assert_eq!(gained(&[e(0, 10)], &[e(0, 10), e(40, 5)]), vec![e(40, 5)]);
        // Old extents inside and at both ends of a new one.
        assert_eq!(
            gained(&[e(0, 5), e(8, 2), e(18, 4)], &[e(0, 20)]),
            vec![e(5, 3), e(10, 8)]
        );
        assert_eq!(gained(&[e(0, 10)], &[e(0, 10)]), vec![]);
    }
}
