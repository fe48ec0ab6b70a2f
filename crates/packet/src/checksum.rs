//! Internet checksums: full sums for headers we build, and RFC 1624 incremental updates for rewrites.

use std::net::IpAddr;

/// The ones'-complement sum of `bytes` as 16-bit big-endian words (an odd last byte is padded with zero),
/// not yet folded.
///
/// Summed as 32-bit big-endian words: 2^16 is 1 modulo 0xffff, so a 32-bit word adds what its two 16-bit halves
/// add once folded, and an IPv4 header is five loads and adds.
#[inline]
pub fn sum(bytes: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut quads = bytes.chunks_exact(4);
    for quad in &mut quads {
        total += u64::from(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]]));
    }
    let mut pairs = quads.remainder().chunks_exact(2);
    for pair in &mut pairs {
        total += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        total += u64::from(*last) << 8;
    }
    total
}

/// [`sum`] of the first 20 bytes of an IPv4 header (its fixed part): five 32-bit words, no loop.
#[inline(always)]
pub fn sum_ipv4_fixed(header: &[u8; 20]) -> u64 {
    let word = |at: usize| {
        u64::from(u32::from_be_bytes([
            header[at],
            header[at + 1],
            header[at + 2],
            header[at + 3],
        ]))
    };
    word(0) + word(4) + word(8) + word(12) + word(16)
}

/// Whether a 20-byte IPv4 header's checksum is right (its words sum to 0xffff), checked on every received frame.
///
/// The ones'-complement sum of 16-bit words is their sum modulo 0xffff, with 0xffff standing for a nonzero
/// multiple of it; and since 2^16 is 1 modulo 0xffff, a 32-bit word counts as the sum of its two halves, in either
/// byte order (swapping a word's bytes multiplies it by 2^8, which is prime to 0xffff, so the zero stays zero). So
/// the header is summed as five native-endian 32-bit words, with no byte swaps and no folds, and the checksum is
/// right when the sum is a nonzero multiple of 0xffff: one multiply (see [`multiple_of_ffff`]).
#[inline(always)]
pub fn ipv4_fixed_header_checksum_ok(header: &[u8; 20]) -> bool {
    let word = |at: usize| {
        u64::from(u32::from_ne_bytes([
            header[at],
            header[at + 1],
            header[at + 2],
            header[at + 3],
        ]))
    };
    // Five 32-bit words: below 2^35.
    let total = word(0) + word(4) + word(8) + word(12) + word(16);
    total != 0 && multiple_of_ffff(total)
}

/// The inverse of 0xffff modulo 2^64 (Newton's iteration: each step doubles the bits that are right).
const FFFF_INVERSE: u64 = {
    let mut inverse: u64 = 0xffff;
    let mut step = 0;
    while step < 5 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(0xffff_u64.wrapping_mul(inverse)));
        step += 1;
    }
    inverse
};
const _: () = assert!(FFFF_INVERSE.wrapping_mul(0xffff) == 1);

/// Whether `value` is a multiple of 0xffff. Multiplying by the odd divisor's inverse maps its multiples, and only
/// them, onto 0 ..= u64::MAX / 0xffff: a multiply and a compare where `%` takes a wide multiply and a subtraction.
#[inline(always)]
fn multiple_of_ffff(value: u64) -> bool {
    value.wrapping_mul(FFFF_INVERSE) <= u64::MAX / 0xffff
}

/// Folds a sum to 16 bits (not complemented).
#[inline(always)]
pub fn fold(total: u64) -> u16 {
    // Two end-around-carry additions, halving the width each time, with no loop: a carry out of an addition
    // leaves its low half below the maximum, so adding the carry back cannot carry again. Zero only for zero.
    let (low, carry) = (total as u32).overflowing_add((total >> 32) as u32);
    let total = low + u32::from(carry);
    let (low, carry) = (total as u16).overflowing_add((total >> 16) as u16);
    low + u16::from(carry)
}

/// The checksum field value for data whose sum is `total`.
#[inline]
pub fn finish(total: u64) -> u16 {
    !fold(total)
}

/// The sum of an address's bytes.
#[inline]
pub fn address_sum(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(v4) => sum(&v4.octets()),
        IpAddr::V6(v6) => sum(&v6.octets()),
    }
}

/// The sum of an IPv4 or IPv6 pseudo-header.
#[inline]
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, length: u32) -> u64 {
    address_sum(src)
        + address_sum(dst)
        + u64::from(protocol)
        + u64::from(length >> 16)
        + u64::from(length & 0xffff)
}

/// RFC 1624 (eqn. 3): the checksum after the data summed to `old_sum` now sums to `new_sum`:
/// HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn update(checksum: u16, old_sum: u64, new_sum: u64) -> u16 {
    // ~m is -m modulo 0xffff, and so is K - m for a multiple K of 0xffff above m: the old sum is taken away
    // unfolded, and the whole is folded once instead of three times.
    // A rewrite takes away a few header words; a longer sum is folded first.
    let old_sum = if old_sum < UPDATE_BIAS {
        old_sum
    } else {
        u64::from(fold(old_sum))
    };
    !fold(u64::from(!checksum) + new_sum + (UPDATE_BIAS - old_sum))
}

/// A multiple of 0xffff above the sums a rewrite takes away in [`update`] (a few header words sum below 2^36).
const UPDATE_BIAS: u64 = 0xffff << 24;

/// [`update`] for a change of the bytes `old` into `new` (equal, even lengths).
#[inline]
pub fn update_bytes(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    update(checksum, sum(old), sum(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
    }

    proptest! {
        #[test]
        fn multiple_of_ffff_is_the_remainder_test(value in any::<u64>(), multiple in 0u64..=u64::MAX / 0xffff) {
            prop_assert_eq!(multiple_of_ffff(value), value % 0xffff == 0);
            prop_assert!(multiple_of_ffff(multiple * 0xffff));
        }
    }

    /// The header check at the ends of the sum: all zeros sums to zero (not ones' complement zero, 0xffff); all
    /// ones sums to a multiple of 0xffff; a word sum just under 0xffff is not one; one bit off a right header is
    /// wrong.
    #[test]
    fn header_check_at_the_ends_of_the_sum() {
        assert!(!ipv4_fixed_header_checksum_ok(&[0; 20]));
        assert!(ipv4_fixed_header_checksum_ok(&[0xff; 20]));
        let mut small = [0; 20];
        small[..2].copy_from_slice(&0xfffe_u16.to_ne_bytes());
        assert!(!ipv4_fixed_header_checksum_ok(&small));
        let mut header = [0; 20];
        header[0] = 0x45;
        let field = finish(sum(&header));
        header[10..12].copy_from_slice(&field.to_be_bytes());
        assert!(ipv4_fixed_header_checksum_ok(&header));
        header[11] ^= 1;
        assert!(!ipv4_fixed_header_checksum_ok(&header));
    }

    /// Folding 16 bits at a time until the sum fits: the definition the loop-free [`fold`] must meet.
    fn fold_by_repeated_addition(mut total: u64) -> u16 {
        while total > 0xffff {
            total = (total & 0xffff) + (total >> 16);
        }
        total as u16
    }

    #[test]
    fn fold_at_the_carry_edges() {
        for total in [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0x1_ffff,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(fold(total), fold_by_repeated_addition(total), "{total:#x}");
        }
    }

    proptest! {
        /// Summing 32-bit words folds to what summing the 16-bit words (the RFC 1071 definition) folds to.
        #[test]
        fn wide_words_fold_like_16_bit_words(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut reference = 0u64;
            for pair in data.chunks(2) {
                let high = u64::from(pair[0]) << 8;
                reference += high | pair.get(1).map_or(0, |&low| u64::from(low));
            }
            prop_assert_eq!(fold(sum(&data)), fold(reference));
        }

        #[test]
        fn fold_equals_folding_by_repeated_addition(total in any::<u64>(), width in 0u32..64) {
            let total = total >> width;
            prop_assert_eq!(fold(total), fold_by_repeated_addition(total));
        }

        #[test]
        fn native_order_header_check_agrees_with_the_folded_sum(
            header in proptest::array::uniform20(any::<u8>()),
            fix_checksum in any::<bool>(),
        ) {
            let mut header = header;
            if fix_checksum {
                header[10..12].fill(0);
                let field = finish(sum(&header));
                header[10..12].copy_from_slice(&field.to_be_bytes());
            }
            prop_assert_eq!(ipv4_fixed_header_checksum_ok(&header), fold(sum(&header)) == 0xffff);
        }

        /// The single-fold update gives the checksum RFC 1624's equation 3 gives (0x0000 and 0xffff being the
        /// same number).
        #[test]
        fn update_equals_rfc1624_equation_3(checksum in any::<u16>(), old_sum in 0u64..1 << 44, new_sum in 0u64..1 << 44) {
            let reference = !fold(u64::from(!checksum) + u64::from(!fold(old_sum)) + u64::from(fold(new_sum)));
            let updated = update(checksum, old_sum, new_sum);
            prop_assert!(updated == reference || (updated | reference) == 0xffff && (updated & reference) == 0,
                "update {:04x} reference {:04x}", updated, reference);
        }

        #[test]
        fn fixed_ipv4_sum_equals_the_general_sum(header in proptest::array::uniform20(any::<u8>())) {
            prop_assert_eq!(sum_ipv4_fixed(&header), sum(&header));
        }

        #[test]
        fn incremental_equals_full(mut data in proptest::collection::vec(any::<u8>(), 2..200), at in any::<usize>(), new in any::<[u8; 4]>()) {
            if data.len() % 2 == 1 { data.push(0); }
            let before = finish(sum(&data));
            let start = (at % (data.len() / 2)) * 2;
            let end = (start + 4).min(data.len());
            let old = data[start..end].to_vec();
            data[start..end].copy_from_slice(&new[..end - start]);
            let incremental = update_bytes(before, &old, &data[start..end]);
            let full = finish(sum(&data));
            // 0x0000 and 0xffff are the same number in ones' complement.
            prop_assert!(incremental == full || (incremental | full) == 0xffff && (incremental & full) == 0,
                "incremental {:04x} full {:04x}", incremental, full);
        }

        #[test]
        fn odd_lengths_pad_with_zero(data in proptest::collection::vec(any::<u8>(), 1..100)) {
            let mut padded = data.clone();
            if padded.len() % 2 == 1 { padded.push(0); }
            prop_assert_eq!(fold(sum(&data)), fold(sum(&padded)));
        }
    }
}
