//! Cutting a request into the parts that travel on the queue's lanes.
//!
//! A request no longer than the split threshold (or any request, with threshold 0) is one
//! part, unless it exceeds the server's `max_io`. A longer one is cut at stripe-chunk
//! boundaries into parts of at most the threshold (at least one chunk), so each part lies
//! on as few member disks as possible. Parts are dealt to lanes in contiguous runs starting
//! at a rotating lane, so every lane gets a contiguous share of the request.

/// One constituent operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    /// Byte offset in the partition.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
    /// Where the part's data starts in the request's buffer.
    pub buf_offset: usize,
    /// Index of the lane it travels on.
    pub lane: usize,
}

/// The geometry and limits a split obeys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitRules {
    /// Stripe chunk in bytes; partitions start on a stripe boundary, so a partition
    /// offset's position in its chunk is `offset % chunk`.
    pub chunk: u32,
    /// Split threshold in bytes; 0 never splits by size.
    pub threshold: u32,
    /// Largest part the server accepts.
    pub max_part: u32,
    /// Logical block size; every part is a multiple of it.
    pub block: u32,
    /// Lanes of the queue.
    pub lanes: usize,
}

/// The request `[offset, offset + len)` as its one part, on lane `first_lane`, when it needs
/// no cut: what [`plan`] returns for it, without allocating (the common case, on every
/// request's path).
pub(crate) fn single(rules: SplitRules, offset: u64, len: u32, first_lane: usize) -> Option<Part> {
    (u64::from(len) <= part_limit(rules, len)).then_some(Part {
        offset,
        len,
        buf_offset: 0,
        lane: first_lane % rules.lanes.max(1),
    })
}

/// The longest part a request of `len` bytes is cut into (a multiple of the block size).
fn part_limit(rules: SplitRules, len: u32) -> u64 {
    let splitting = rules.threshold != 0 && len > rules.threshold;
    let limit = if splitting {
        rules.threshold.max(rules.chunk).min(rules.max_part)
    } else {
        rules.max_part
    };
    u64::from((limit / rules.block).max(1) * rules.block)
}

/// Cuts `[offset, offset + len)` into parts, the first one going to lane `first_lane`.
pub(crate) fn plan(rules: SplitRules, offset: u64, len: u32, first_lane: usize) -> Vec<Part> {
    let limit = part_limit(rules, len);
    let chunk = u64::from(rules.chunk.max(1));
    let stop = offset + u64::from(len);
    let mut cuts = Vec::new();
    let mut pos = offset;
    while pos < stop {
        let mut end = pos + limit;
        if end < stop {
            let aligned = end / chunk * chunk;
            if aligned > pos {
                end = aligned;
            }
        }
        let end = end.min(stop);
        cuts.push((pos, end));
        pos = end;
    }
    let count = cuts.len();
    let groups = rules.lanes.clamp(1, count.max(1));
    cuts.into_iter()
        .enumerate()
        .map(|(i, (start, end))| Part {
            offset: start,
            len: (end - start) as u32,
            buf_offset: (start - offset) as usize,
            lane: (first_lane + i * groups / count) % rules.lanes.max(1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u32 = 1024;

    fn rules(threshold: u32, lanes: usize) -> SplitRules {
        SplitRules {
            chunk: 64 * K,
            threshold,
            max_part: 1024 * K,
            block: 512,
            lanes,
        }
    }

    fn check_cover(parts: &[Part], offset: u64, len: u32) {
        let mut pos = offset;
        for part in parts {
            assert_eq!(part.offset, pos);
            assert_eq!(part.buf_offset as u64, pos - offset);
            assert!(part.len > 0);
            pos += u64::from(part.len);
        }
        assert_eq!(pos, offset + u64::from(len));
    }

    #[test]
    fn small_request_is_one_part() {
        let parts = plan(rules(128 * K, 4), 4096, 8192, 2);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].lane, 2);
    }

    #[test]
    fn no_threshold_cuts_only_at_max_io() {
        let parts = plan(rules(0, 2), 0, 3 * 1024 * K, 0);
        assert_eq!(parts.len(), 3);
        check_cover(&parts, 0, 3 * 1024 * K);
    }

    #[test]
    fn large_request_cut_at_chunks_and_spread() {
        let offset = 16 * K as u64; // mid-chunk start
        let parts = plan(rules(64 * K, 4), offset, 512 * K, 1);
        check_cover(&parts, offset, 512 * K);
        for part in &parts[..parts.len() - 1] {
            assert_eq!((part.offset + u64::from(part.len)) % u64::from(64 * K), 0);
        }
        let lanes: std::collections::BTreeSet<usize> = parts.iter().map(|p| p.lane).collect();
        assert_eq!(lanes.len(), 4);
        // contiguous runs: the lane changes at most lanes-1 times
        let changes = parts.windows(2).filter(|w| w[0].lane != w[1].lane).count();
        assert_eq!(changes, 3);
        assert_eq!(parts[0].lane, 1);
    }

    /// `single` is `plan`'s answer whenever that is one part, and `None` otherwise.
    #[test]
    fn single_agrees_with_plan() {
        for threshold in [0, 4 * K, 64 * K, 128 * K] {
            for lanes in [1, 2, 4] {
                for len in [512, 4 * K, 64 * K, 128 * K, 132 * K, 1024 * K, 3 * 1024 * K] {
                    for (offset, first) in [(0, 0), (16 * K as u64, 3), (4096, 5)] {
                        let rules = rules(threshold, lanes);
                        let parts = plan(rules, offset, len, first);
                        let one = (parts.len() == 1).then(|| parts[0]);
                        assert_eq!(
                            single(rules, offset, len, first),
                            one,
                            "{threshold} {lanes} {len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn threshold_below_chunk_cuts_at_chunks() {
        let parts = plan(rules(4 * K, 2), 0, 256 * K, 0);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.len == 64 * K));
    }
}
