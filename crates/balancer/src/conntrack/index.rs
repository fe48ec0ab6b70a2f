//! The key index: 64-byte buckets of eight 16-bit signatures and eight `u32` entry numbers, sized at
//! construction to stay at most half full, probed linearly bucket by bucket.
//!
//! A key's home bucket comes from the high bits of its hash (multiply-shift range reduction, so the bucket count
//! need not be a power of two and memory follows capacity closely), its signature from the low 16 bits with the
//! lowest set (so never the empty slot's zero). A lookup compares the eight signatures of the home bucket at once
//! and the full key only in the candidate entries.
//!
//! When a bucket is full an insert moves on to the next one, and counts itself in the `overflow` of every full
//! bucket it passes. A lookup moves on past a bucket only while that count is non-zero, and a removal decrements
//! the counts along the same path, so deletion leaves no tombstones and lookups never degrade with churn. At half
//! load with eight slots a bucket overflows rarely (about 2% of buckets at uniform hashing), so almost every
//! lookup reads one bucket line.

use super::memory::boxed_slice;

/// Slots per bucket.
pub(super) const SLOTS: usize = 8;
/// The signature of an empty slot; real signatures are never zero.
const EMPTY: u16 = 0;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(super) struct Bucket {
    sigs: [u16; SLOTS],
    entries: [u32; SLOTS],
    /// How many keys stored beyond this bucket passed it (full) on their way from a home at or before it.
    overflow: u32,
    /// Changes whenever a slot of this bucket is filled or emptied, so that the slots a staged lookup read ahead
    /// ([`super::Candidates`]) are known to be still true; an insert or removal elsewhere leaves them valid.
    version: u32,
    _reserved: [u32; 2],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

impl Bucket {
    const EMPTY: Bucket = Bucket {
        sigs: [EMPTY; SLOTS],
        entries: [0; SLOTS],
        overflow: 0,
        version: 0,
        _reserved: [0; 2],
    };

    /// One bit per slot whose signature is `sig`: the eight signatures compared in one SSE2 instruction, the
    /// lanes narrowed to bytes (all ones or zero) and their top bits gathered into the mask (`pcmpeqw`,
    /// `packsswb`, `pmovmskb`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn matching(&self, sig: u16) -> u32 {
        use safe_arch::{
            cmp_eq_mask_i16_m128i, m128i, move_mask_i8_m128i, pack_i16_to_i8_m128i,
            set_splat_i16_m128i, zeroed_m128i,
        };
        let equal = cmp_eq_mask_i16_m128i(m128i::from(self.sigs), set_splat_i16_m128i(sig as i16));
        (move_mask_i8_m128i(pack_i16_to_i8_m128i(equal, zeroed_m128i())) as u32) & 0xff
    }

    /// One bit per slot whose signature is `sig`. Four 16-bit lanes per 64-bit word are compared at once
    /// (SWAR): a lane equal to `sig` is zero after the XOR, and the exact zero-lane test (no borrow crosses lanes)
    /// sets only its top bit.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    pub fn matching(&self, sig: u16) -> u32 {
        const LOW15: u64 = 0x7fff_7fff_7fff_7fff;
        let pattern = u64::from(sig) * 0x0001_0001_0001_0001;
        let lanes = |words: [u16; 4]| {
            let word = u64::from(words[0])
                | u64::from(words[1]) << 16
                | u64::from(words[2]) << 32
                | u64::from(words[3]) << 48;
            let x = word ^ pattern;
            let zero = !(((x & LOW15) + LOW15) | x | LOW15);
            // Gather the four lane flags (bits 15, 31, 47, 63) into bits 60..64, then down to 0..4.
            (zero.wrapping_mul(0x0000_2000_4000_8001) >> 60) as u32
        };
        let [a, b, c, d, e, f, g, h] = self.sigs;
        lanes([a, b, c, d]) | lanes([e, f, g, h]) << 4
    }

    /// The first slot whose signature is `sig` and whose entry `is_key` accepts: the eight signatures compared at
    /// once, then the entry numbers of the (almost always one) matching slots. A slot-by-slot search would
    /// mispredict its exit at a random slot.
    #[inline(always)]
    pub fn slot_of(&self, sig: u16, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut candidates = self.matching(sig);
        while candidates != 0 {
            let slot = candidates.trailing_zeros();
            if is_key(self.entry(slot)) {
                return Some(slot);
            }
            candidates &= candidates - 1;
        }
        None
    }

    #[inline(always)]
    pub fn entry(&self, slot: u32) -> u32 {
        self.entries[slot as usize]
    }

    #[inline(always)]
    pub fn overflowed(&self) -> bool {
        self.overflow != 0
    }

    #[inline(always)]
    pub fn version(&self) -> u32 {
        self.version
    }
}

/// Where a hash leads: its home bucket and its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Probe {
    pub bucket: usize,
    pub sig: u16,
}

pub(super) struct Index {
    buckets: Box<[Bucket]>,
    len: usize,
    /// Tests narrow every hash with this mask to force bucket and signature collisions.
    #[cfg(test)]
    pub hash_mask: u32,
}

impl Index {
    /// An index for at most `keys` keys, never more than half full.
    pub fn new(keys: usize, advise: Option<fn(*mut u8, usize)>) -> Index {
        let buckets = (2 * keys).div_ceil(SLOTS).max(1);
        Index {
            buckets: boxed_slice(buckets, advise, |_| Bucket::EMPTY),
            len: 0,
            #[cfg(test)]
            hash_mask: u32::MAX,
        }
    }

    #[inline(always)]
    pub fn probe(&self, hash: u32) -> Probe {
        #[cfg(test)]
        let hash = hash & self.hash_mask;
        let bucket = ((u64::from(hash) * self.buckets.len() as u64) >> 32) as usize;
        Probe {
            bucket,
            // Never EMPTY: the low bit set, in one instruction. Fifteen bits of signature match falsely once in
            // 32,768 occupied slots instead of once in 65,536, which costs less than testing every hash.
            sig: hash as u16 | 1,
        }
    }

    #[inline(always)]
    pub fn bucket(&self, bucket: usize) -> &Bucket {
        &self.buckets[bucket]
    }

    #[inline(always)]
    pub fn next(&self, bucket: usize) -> usize {
        if bucket + 1 == self.buckets.len() {
            0
        } else {
            bucket + 1
        }
    }

    /// The entry holding the key of `hash`, as told by `is_key(entry)`, searching from bucket `from` (the home
    /// bucket, or one past it when the caller already searched the home).
    #[inline]
    pub fn find_from(
        &self,
        mut bucket: usize,
        sig: u16,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        loop {
            let b = &self.buckets[bucket];
            if let Some(slot) = b.slot_of(sig, &mut is_key) {
                return Some(b.entry(slot));
            }
            if !b.overflowed() {
                return None;
            }
            bucket = self.next(bucket);
        }
    }

    #[inline]
    pub fn find(&self, hash: u32, is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let probe = self.probe(hash);
        self.find_from(probe.bucket, probe.sig, is_key)
    }

    /// Adds `entry` under `hash`. The caller never adds more keys than the index was sized for, so a free slot
    /// exists and the walk ends.
    pub fn insert(&mut self, hash: u32, entry: u32) {
        debug_assert!(self.len < self.buckets.len() * SLOTS);
        let probe = self.probe(hash);
        let mut bucket = probe.bucket;
        loop {
            let b = &mut self.buckets[bucket];
            if let Some(slot) = b.sigs.iter().position(|&s| s == EMPTY) {
                b.sigs[slot] = probe.sig;
                b.entries[slot] = entry;
                b.version = b.version.wrapping_add(1);
                self.len += 1;
                return;
            }
            b.overflow += 1;
            bucket = self.next(bucket);
        }
    }

    /// Removes `entry`, added under `hash`; false if it is not there (then nothing changed).
    pub fn remove(&mut self, hash: u32, entry: u32) -> bool {
        let probe = self.probe(hash);
        // Find it first, so the overflow counts are only touched when the entry is really there.
        let mut bucket = probe.bucket;
        let mut passed = 0usize;
        let slot = loop {
            let b = &self.buckets[bucket];
            if let Some(slot) = b.slot_of(probe.sig, |indexed| indexed == entry) {
                break slot as usize;
            }
            if !b.overflowed() {
                return false;
            }
            passed += 1;
            bucket = self.next(bucket);
        };
        let emptied = &mut self.buckets[bucket];
        emptied.sigs[slot] = EMPTY;
        emptied.version = emptied.version.wrapping_add(1);
        let mut walk = probe.bucket;
        for _ in 0..passed {
            self.buckets[walk].overflow -= 1;
            walk = self.next(walk);
        }
        self.len -= 1;
        true
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots in all buckets (constant for the index's life).
    pub fn slots(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    pub fn bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The lane-parallel compare flags exactly the slots a plain loop finds.
        #[test]
        fn matching_flags_exactly_the_equal_signatures(
            sigs in proptest::array::uniform8(prop_oneof![Just(0u16), Just(1), Just(2), Just(0x8000), Just(0xffff), any::<u16>()]),
            sig in prop_oneof![Just(1u16), Just(2), Just(0x8000), Just(0xffff), any::<u16>()],
        ) {
            let mut bucket = Bucket::EMPTY;
            bucket.sigs = sigs;
            let expected = sigs
                .iter()
                .enumerate()
                .fold(0u32, |mask, (i, &s)| mask | u32::from(s == sig) << i);
            prop_assert_eq!(bucket.matching(sig), expected);
        }
    }

    use super::*;

    #[test]
    fn overflow_chains_are_found_and_unwound() {
        let mut index = Index::new(16, None);
        index.hash_mask = 0; // every key: bucket 0, signature 1
        let buckets = index.buckets.len();
        assert_eq!(buckets, 4);
        for entry in 0..20 {
            index.insert(0, entry);
        }
        assert_eq!(index.buckets[0].overflow, 12);
        assert_eq!(index.buckets[1].overflow, 4);
        for entry in 0..20 {
            assert_eq!(index.find(0, |e| e == entry), Some(entry));
        }
        assert_eq!(index.find(0, |_| false), None);
        for entry in (0..20).rev() {
            assert!(index.remove(0, entry));
            assert!(!index.remove(0, entry));
        }
        assert_eq!(index.len(), 0);
        assert!(index.buckets.iter().all(|b| b.overflow == 0));
    }

    #[test]
    fn probing_wraps_around_the_last_bucket() {
        let mut index = Index::new(8, None);
        index.hash_mask = u32::MAX;
        let last = u32::MAX; // home is the last bucket
        assert_eq!(index.probe(last).bucket, index.buckets.len() - 1);
        for entry in 0..12 {
            index.insert(last, entry);
        }
        for entry in 0..12 {
            assert_eq!(index.find(last, |e| e == entry), Some(entry));
        }
        assert!(index.remove(last, 3));
        assert_eq!(index.find(last, |e| e == 3), None);
        assert_eq!(index.find(last, |e| e == 11), Some(11));
    }
}
