//! Verifiable block contents: every 512-byte sector starts with its own byte offset and
//! the write's seed, and the rest is a stream derived from both, so a block read back
//! from the wrong place, a stale write or a torn transfer is caught.

const SECTOR: usize = 512;
const WORD: usize = std::mem::size_of::<u64>();

/// Fills `buf` (a whole block at byte `offset`) with the pattern of `seed`.
pub fn fill(buf: &mut [u8], offset: u64, seed: u64) {
    for (index, sector) in buf.chunks_mut(SECTOR).enumerate() {
        let sector_offset = offset + (index * SECTOR) as u64;
        let mut state = mix(sector_offset ^ seed.rotate_left(17));
        for (word_index, word) in sector.chunks_mut(WORD).enumerate() {
            let value = match word_index {
                0 => sector_offset,
                1 => seed,
                _ => {
                    state = mix(state);
                    state
                }
            };
            word.copy_from_slice(&value.to_le_bytes()[..word.len()]);
        }
    }
}

/// Whether `buf` holds exactly the pattern `fill(buf, offset, seed)` wrote.
pub fn matches(buf: &[u8], offset: u64, seed: u64) -> bool {
    let mut expected = vec![0u8; buf.len()];
    fill(&mut expected, offset, seed);
    expected == buf
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_matches_only_itself() {
        let mut block = vec![0u8; 4096];
        fill(&mut block, 8192, 42);
        assert!(matches(&block, 8192, 42));
        assert!(!matches(&block, 4096, 42));
        assert!(!matches(&block, 8192, 43));
        block[4000] ^= 1;
        assert!(!matches(&block, 8192, 42));
    }
}
