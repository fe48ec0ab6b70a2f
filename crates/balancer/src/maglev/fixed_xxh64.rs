//! XXH64 of exactly 37 bytes (the flow hash's input), written out in a straight line: the same value as the
//! general `xxh64` of those bytes, without its length dispatch, loops and byte buffer. Every node must compute
//! the same flow hash (the cluster contract), so this is checked against the general function, never changed.

const PRIME_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME_5: u64 = 0x27D4_EB2F_1656_67C5;

/// The input's length.
const LEN: u64 = 37;

#[inline(always)]
fn round(accumulator: u64, lane: u64) -> u64 {
    accumulator
        .wrapping_add(lane.wrapping_mul(PRIME_2))
        .rotate_left(31)
        .wrapping_mul(PRIME_1)
}

#[inline(always)]
fn merge(hash: u64, accumulator: u64) -> u64 {
    (hash ^ round(0, accumulator))
        .wrapping_mul(PRIME_1)
        .wrapping_add(PRIME_4)
}

/// XXH64 with `seed` of the 37 bytes made of `lanes` (bytes 0..32, each read little-endian as XXH64 reads them),
/// `quad` (bytes 32..36, little-endian) and `last` (byte 36).
#[inline(always)]
pub(super) fn xxh64_37(lanes: [u64; 4], quad: u32, last: u8, seed: u64) -> u64 {
    // One 32-byte stripe through the four accumulators.
    let v1 = round(seed.wrapping_add(PRIME_1).wrapping_add(PRIME_2), lanes[0]);
    let v2 = round(seed.wrapping_add(PRIME_2), lanes[1]);
    let v3 = round(seed, lanes[2]);
    let v4 = round(seed.wrapping_sub(PRIME_1), lanes[3]);
    let mut hash = v1
        .rotate_left(1)
        .wrapping_add(v2.rotate_left(7))
        .wrapping_add(v3.rotate_left(12))
        .wrapping_add(v4.rotate_left(18));
    hash = merge(hash, v1);
    hash = merge(hash, v2);
    hash = merge(hash, v3);
    hash = merge(hash, v4);
    hash = hash.wrapping_add(LEN);
    // The five bytes left: one four-byte word, one byte.
    hash ^= u64::from(quad).wrapping_mul(PRIME_1);
    hash = hash
        .rotate_left(23)
        .wrapping_mul(PRIME_2)
        .wrapping_add(PRIME_3);
    hash ^= u64::from(last).wrapping_mul(PRIME_5);
    hash = hash.rotate_left(11).wrapping_mul(PRIME_1);
    // Avalanche.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(PRIME_2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(PRIME_3);
    hash ^ (hash >> 32)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use xxhash_rust::xxh64::xxh64;

    use super::*;

    proptest! {
        /// Equal to the general XXH64 on any 37 bytes and any seed.
        #[test]
        fn equals_the_general_xxh64(bytes in proptest::collection::vec(any::<u8>(), 37), seed in any::<u64>()) {
            let lane = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            let quad = u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes"));
            prop_assert_eq!(
                xxh64_37([lane(0), lane(8), lane(16), lane(24)], quad, bytes[36], seed),
                xxh64(&bytes, seed)
            );
        }
    }
}
