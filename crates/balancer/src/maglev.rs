//! Weighted Maglev consistent hashing (NSDI 2016, section 3.4): the lookup table that maps a flow hash to a
//! backend, and the flow hashes that feed it.
//!
//! # Stable contract
//!
//! ECMP may send any packet of a flow to any balancer node, so every node must pick the same backend for the same
//! flow. Everything below is therefore part of the wire contract between nodes: **changing any of these moves
//! flows between nodes of different versions.** Golden vectors in `tests/maglev_contract.rs` pin them.
//!
//! * Hash function: xxHash64 (XXH64), as published by Yann Collet, over the byte layouts below.
//! * Canonical address: 16 bytes; IPv6 as is, IPv4 as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
//! * Backend identity (18 bytes): canonical address of the backend, then its port big-endian. It depends on the
//!   configured address and port only, never on the order of the list or on the [`BackendId`].
//! * Permutation of a backend: `offset = XXH64(identity, OFFSET_SEED) mod M` and
//!   `skip = XXH64(identity, SKIP_SEED) mod (M - 1) + 1`; its preference list is `(offset + j * skip) mod M`.
//! * Population: backends with non-zero weight, sorted by identity (bytewise), take turns in that order. On
//!   each turn a backend adds its weight to its running sum; when the sum reaches the largest weight, it
//!   subtracts the largest weight and takes the next still-empty slot of its preference list (the cumulative
//!   scheme of Katran's `MaglevHashV2`). Every running sum starts at 0. Population stops when all M slots are
//!   taken. Integer arithmetic only.
//! * Flow hash (37 bytes): source address, destination address (canonical, 16 bytes each), source port,
//!   destination port (big-endian, 2 bytes each), IP protocol (1 byte), hashed with `XXH64(bytes, FLOW_SEED)`.
//! * Address hash, for fragments (33 bytes): source address, destination address, IP protocol, hashed with
//!   `XXH64(bytes, FLOW_SEED)`. Non-first fragments carry no ports, so a node that hashes fragments must hash
//!   every fragment of a datagram, the first included, this way. (sluice itself no longer does: it sends a
//!   datagram's fragments where its first went, through its flow's connection; the hash stays in the contract.)
//! * Lookup: slot `hash mod M`.
//!
//! # Balance
//!
//! With equal weights every backend owns `floor(M/N)` or `ceil(M/N)` slots. With weights `w_i` summing to `W`
//! over `N` backends of non-zero weight, backend `i` owns `c_i` slots with
//! `M * w_i / W - 2 < c_i < (M + N) * w_i / W + 1`. A backend of weight 0 owns no slot.
//!
//! # Cost
//!
//! Building allocates the table (4 bytes per slot) and a few words per backend, and runs in about
//! `M * ln M` probes plus `M * max_weight / mean_weight` turns; lookup is one division and one load.

use std::net::IpAddr;

use packet::FlowKey;
use xxhash_rust::xxh64::{xxh64, Xxh64};

use crate::service::{Backend, BackendId};

mod fixed_xxh64;

/// Seed of the hash that places the start of a backend's preference list.
pub const OFFSET_SEED: u64 = 0x736c_7569_6365_6f66; // "sluiceof"
/// Seed of the hash that sets the stride of a backend's preference list.
pub const SKIP_SEED: u64 = 0x736c_7569_6365_736b; // "sluicesk"
/// Seed of the flow and address hashes.
pub const FLOW_SEED: u64 = 0x736c_7569_6365_666c; // "sluicefl"
/// Seed of [`MaglevTable::digest`]; the digest is for comparing tables, not part of the flow contract.
pub const DIGEST_SEED: u64 = 0;

/// The table size the paper evaluates and sluice defaults to.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Smaller tables cannot spread even a handful of backends evenly.
pub const MIN_TABLE_SIZE: u32 = 251;
/// Largest accepted table size: 2^24 slots, 64 MiB of table.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// Length of a backend identity: canonical address and big-endian port.
pub const IDENTITY_LEN: usize = 18;

/// The canonical bytes that name a backend across nodes: see the module documentation.
pub type BackendIdentity = [u8; IDENTITY_LEN];

/// Why a Maglev table could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not prime: use a prime such as 65537 or 655373")]
    NotPrime(u32),
    #[error(
        "Maglev table size {0} is below the minimum of {MIN_TABLE_SIZE}: use a prime such as 65537"
    )]
    TooSmall(u32),
    #[error("Maglev table size {0} is above the maximum of {MAX_TABLE_SIZE}: use a prime such as 1000003")]
    TooLarge(u32),
    #[error("backend {addr} port {port} is listed twice in the same service: remove one of them")]
    DuplicateBackend { addr: IpAddr, port: u16 },
    #[error(
        "{active} backends with non-zero weight cannot share a Maglev table of {size} slots: \
         use a prime table size at least 100 times the number of backends"
    )]
    TooManyBackends { active: usize, size: u32 },
}

/// A validated Maglev table size: a prime between [`MIN_TABLE_SIZE`] and [`MAX_TABLE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableSize(u32);

impl TableSize {
    pub fn new(size: u32) -> Result<TableSize, MaglevError> {
        if size < MIN_TABLE_SIZE {
            return Err(MaglevError::TooSmall(size));
        }
        if size > MAX_TABLE_SIZE {
            return Err(MaglevError::TooLarge(size));
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        Ok(TableSize(size))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for TableSize {
    fn default() -> TableSize {
        TableSize(DEFAULT_TABLE_SIZE)
    }
}

/// Trial division: sizes are at most 2^24, so at most 2^11 divisions, once per build.
fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut divisor = 3u32;
    while divisor.saturating_mul(divisor) <= n {
        if n.is_multiple_of(divisor) {
            return false;
        }
        divisor += 2;
    }
    true
}

/// Marks a slot no backend owns; only seen while building, or in a table without active backends (kept empty).
const EMPTY_SLOT: u32 = u32::MAX;

/// The 16-byte canonical form of an address: IPv4 becomes IPv4-mapped IPv6.
#[inline]
pub fn canonical_address(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The identity of a backend: canonical address then port, big-endian.
#[inline]
pub fn backend_identity(addr: IpAddr, port: u16) -> BackendIdentity {
    let mut identity = [0u8; IDENTITY_LEN];
    identity[..16].copy_from_slice(&canonical_address(addr));
    identity[16..].copy_from_slice(&port.to_be_bytes());
    identity
}

/// The hash that places a flow in the table; see the module documentation for the byte layout.
#[inline]
pub fn flow_hash(key: &FlowKey) -> u64 {
    // The 37 bytes of the module documentation taken as XXH64 reads them: four little-endian words, a little-endian
    // quad, one byte.
    let [s0, s1] = address_lanes(key.src_addr);
    let [d0, d1] = address_lanes(key.dst_addr);
    let [sp0, sp1] = key.src_port.to_be_bytes();
    let [dp0, dp1] = key.dst_port.to_be_bytes();
    fixed_xxh64::xxh64_37(
        [s0, s1, d0, d1],
        u32::from_le_bytes([sp0, sp1, dp0, dp1]),
        key.protocol,
        FLOW_SEED,
    )
}

/// The canonical address of `addr` (IPv4 v4-mapped) as XXH64 reads its 16 bytes: two little-endian words.
#[inline(always)]
fn address_lanes(addr: IpAddr) -> [u64; 2] {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            [0, u64::from_le_bytes([0, 0, 0xff, 0xff, a, b, c, d])]
        }
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            [
                ((bits >> 64) as u64).swap_bytes(),
                (bits as u64).swap_bytes(),
            ]
        }
    }
}

/// The hash of a fragment's flow, on addresses and protocol only: non-first fragments carry no ports.
#[inline]
pub fn address_hash(src: IpAddr, dst: IpAddr, protocol: u8) -> u64 {
    let mut bytes = [0u8; 33];
    bytes[..16].copy_from_slice(&canonical_address(src));
    bytes[16..32].copy_from_slice(&canonical_address(dst));
    bytes[32] = protocol;
    xxh64(&bytes, FLOW_SEED)
}

/// Where a backend's preference list starts and how far it strides, in a table of `size` slots.
#[inline]
pub fn permutation(identity: &BackendIdentity, size: TableSize) -> (u32, u32) {
    let m = u64::from(size.get());
    let offset = xxh64(identity, OFFSET_SEED) % m;
    let skip = xxh64(identity, SKIP_SEED) % (m - 1) + 1;
    // Both are below m, which fits in u32.
    (offset as u32, skip as u32)
}

/// A populated Maglev lookup table for one service.
///
/// Slots hold indexes into the backend slice given to [`MaglevTable::build`], in the order it was given, so the
/// data plane goes from a slot to its backend with `backends[index]`. The table must be rebuilt whenever that
/// slice changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    size: TableSize,
    /// Empty when no backend has a non-zero weight; otherwise `size` entries, each below `ids.len()`.
    slots: Box<[u32]>,
    /// Id and identity of each backend, in the order given to `build`.
    ids: Box<[BackendId]>,
    identities: Box<[BackendIdentity]>,
}

/// Per-backend population state.
struct Turn {
    index: u32,
    weight: u64,
    /// Running sum of weight, kept below the largest weight between turns.
    credit: u64,
    /// Next slot of this backend's preference list to try.
    position: u32,
    skip: u32,
}

impl MaglevTable {
    /// Builds the table for `backends` (in any order: the result only depends on their addresses, ports and
    /// weights). Allocates; call it off the data path.
    pub fn build(backends: &[Backend], size: TableSize) -> Result<MaglevTable, MaglevError> {
        let m = size.get();
        let identities: Box<[BackendIdentity]> = backends
            .iter()
            .map(|b| backend_identity(b.addr, b.port))
            .collect();
        let ids: Box<[BackendId]> = backends.iter().map(|b| b.id).collect();

        // Population order is by identity, so it does not depend on the order of the configuration.
        let mut order: Vec<u32> = (0..backends.len() as u32).collect();
        order.sort_unstable_by_key(|&i| identities[i as usize]);
        for pair in order.windows(2) {
            if identities[pair[0] as usize] == identities[pair[1] as usize] {
                let duplicate = &backends[pair[1] as usize];
                return Err(MaglevError::DuplicateBackend {
                    addr: duplicate.addr,
                    port: duplicate.port,
                });
            }
        }

        let mut turns: Vec<Turn> = order
            .iter()
            .filter(|&&i| backends[i as usize].weight > 0)
            .map(|&i| {
                let (offset, skip) = permutation(&identities[i as usize], size);
                Turn {
                    index: i,
                    weight: u64::from(backends[i as usize].weight),
                    credit: 0,
                    position: offset,
                    skip,
                }
            })
            .collect();
        if turns.len() > m as usize {
            return Err(MaglevError::TooManyBackends {
                active: turns.len(),
                size: m,
            });
        }
        if turns.is_empty() {
            return Ok(MaglevTable {
                size,
                slots: Box::new([]),
                ids,
                identities,
            });
        }

        let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1);
        let mut slots = vec![EMPTY_SLOT; m as usize].into_boxed_slice();
        let mut filled: u32 = 0;
        'population: loop {
            for turn in turns.iter_mut() {
                turn.credit += turn.weight;
                if turn.credit < max_weight {
                    continue;
                }
                turn.credit -= max_weight;
                // The preference list is a permutation of all slots (m is prime) and the table is not full, so
                // this finds an empty slot within m steps.
                while slots[turn.position as usize] != EMPTY_SLOT {
                    turn.position = advance(turn.position, turn.skip, m);
                }
                slots[turn.position as usize] = turn.index;
                turn.position = advance(turn.position, turn.skip, m);
                filled += 1;
                if filled == m {
                    break 'population;
                }
            }
        }
        Ok(MaglevTable {
            size,
            slots,
            ids,
            identities,
        })
    }

    /// The index, in the slice given to `build`, of the backend that owns `hash`; `None` if no backend has a
    /// non-zero weight.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        self.slots
            .get(self.slot_of(hash))
            .map(|&index| index as usize)
    }

    #[inline(always)]
    fn slot_of(&self, hash: u64) -> usize {
        (hash % u64::from(self.size.get())) as usize
    }

    /// Starts loading, with the caller's instruction, the slot [`MaglevTable::lookup`] reads for `hash`.
    #[inline(always)]
    pub fn prefetch_slot_with(&self, hash: u64, prefetch: impl Fn(*const u8)) {
        if let Some(entry) = self.slots.get(self.slot_of(hash)) {
            prefetch(std::ptr::from_ref(entry).cast());
        }
    }

    /// The id of the backend that owns `hash`.
    #[inline]
    pub fn lookup_id(&self, hash: u64) -> Option<BackendId> {
        self.lookup(hash)
            .and_then(|index| self.ids.get(index).copied())
    }

    pub fn size(&self) -> TableSize {
        self.size
    }

    /// False when no backend has a non-zero weight: every lookup returns `None`.
    pub fn is_populated(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Number of backends the table was built from, drained ones included.
    pub fn backend_count(&self) -> usize {
        self.ids.len()
    }

    /// The owner of every slot in slot order, as indexes into the slice given to `build`.
    pub fn slots(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.slots.iter().map(|&index| index as usize)
    }

    /// How many slots each backend owns, in the order given to `build`.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.ids.len()];
        for &index in self.slots.iter() {
            counts[index as usize] += 1;
        }
        counts
    }

    /// A fingerprint of which backend identity owns each slot: equal on every node that built the same table,
    /// whatever order the backends were listed in.
    pub fn digest(&self) -> u64 {
        let mut hasher = Xxh64::new(DIGEST_SEED);
        hasher.update(&self.size.get().to_be_bytes());
        for &index in self.slots.iter() {
            hasher.update(&self.identities[index as usize]);
        }
        hasher.digest()
    }
}

/// `(position + skip) mod m` without a division; both operands are below `m <= 2^24`.
#[inline]
fn advance(position: u32, skip: u32, m: u32) -> u32 {
    let next = position + skip;
    if next >= m {
        next - m
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The bytes [`flow_hash`] hashes, laid out byte by byte: canonical source and destination addresses,
    /// big-endian ports, protocol.
    fn flow_hash_bytes(key: &FlowKey) -> [u8; 37] {
        let mut bytes = [0u8; 37];
        bytes[..16].copy_from_slice(&canonical_address(key.src_addr));
        bytes[16..32].copy_from_slice(&canonical_address(key.dst_addr));
        bytes[32..34].copy_from_slice(&key.src_port.to_be_bytes());
        bytes[34..36].copy_from_slice(&key.dst_port.to_be_bytes());
        bytes[36] = key.protocol;
        bytes
    }

    proptest! {
        /// The straight-line flow hash is XXH64 of the documented 37 bytes, for both families.
        #[test]
        fn flow_hash_is_xxh64_of_the_flow_bytes(
            v6 in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            src_port in any::<u16>(),
            dst_port in any::<u16>(),
            protocol in any::<u8>(),
        ) {
            let address = |octets: [u8; 16]| if v6 {
                IpAddr::V6(Ipv6Addr::from(octets))
            } else {
                IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
            };
            let key = FlowKey { src_addr: address(src), dst_addr: address(dst), src_port, dst_port, protocol };
            prop_assert_eq!(flow_hash(&key), xxh64(&flow_hash_bytes(&key), FLOW_SEED));
        }
    }

    fn backend(id: u32, addr: IpAddr, port: u16, weight: u32) -> Backend {
        Backend {
            id: BackendId(id),
            addr,
            port,
            weight,
            mac: None,
        }
    }

    #[test]
    fn table_size_validation() {
        assert_eq!(TableSize::new(65_537).map(TableSize::get), Ok(65_537));
        assert_eq!(TableSize::new(655_373).map(TableSize::get), Ok(655_373));
        assert_eq!(TableSize::new(1_000_003).map(TableSize::get), Ok(1_000_003));
        assert_eq!(
            TableSize::new(MIN_TABLE_SIZE).map(TableSize::get),
            Ok(MIN_TABLE_SIZE)
        );
        assert_eq!(TableSize::new(65_536), Err(MaglevError::NotPrime(65_536)));
        assert_eq!(
            TableSize::new(1_000_001),
            Err(MaglevError::NotPrime(1_000_001))
        );
        assert_eq!(TableSize::new(65_535), Err(MaglevError::NotPrime(65_535)));
        assert_eq!(TableSize::new(0), Err(MaglevError::TooSmall(0)));
        assert_eq!(TableSize::new(241), Err(MaglevError::TooSmall(241)));
        assert_eq!(
            TableSize::new(16_777_259),
            Err(MaglevError::TooLarge(16_777_259))
        );
        assert_eq!(TableSize::default().get(), DEFAULT_TABLE_SIZE);
    }

    #[test]
    fn primality_matches_a_sieve() {
        let limit = 20_000usize;
        let mut composite = vec![false; limit];
        for n in 2..limit {
            if !composite[n] {
                for multiple in (n * n..limit).step_by(n) {
                    composite[multiple] = true;
                }
            }
        }
        for (n, &is_composite) in composite.iter().enumerate() {
            assert_eq!(is_prime(n as u32), n >= 2 && !is_composite, "{n}");
        }
        // Squares of primes near the top of the accepted range.
        assert!(!is_prime(4093 * 4093));
        assert!(is_prime(16_777_213));
    }

    #[test]
    fn identity_layout() {
        let v4 = backend_identity(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 0x1f90);
        assert_eq!(
            v4,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1, 0x1f, 0x90]
        );
        let mapped = backend_identity(
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
            0x1f90,
        );
        assert_eq!(v4, mapped);
        let v6 = backend_identity(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
        assert_eq!(v6, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
    }

    #[test]
    fn skip_is_never_zero_and_offset_in_range() {
        let size = TableSize::new(MIN_TABLE_SIZE).unwrap();
        for port in 0..2000u16 {
            let (offset, skip) = permutation(
                &backend_identity(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                size,
            );
            assert!(offset < size.get());
            assert!((1..size.get()).contains(&skip));
        }
    }

    #[test]
    fn advance_wraps() {
        assert_eq!(advance(5, 3, 7), 1);
        assert_eq!(advance(3, 3, 7), 6);
        assert_eq!(advance(6, 6, 7), 5);
    }

    #[test]
    fn ipv4_and_its_mapped_form_are_the_same_backend() {
        let a = Ipv4Addr::new(192, 0, 2, 1);
        let backends = [
            backend(1, IpAddr::V4(a), 80, 1),
            backend(2, IpAddr::V6(a.to_ipv6_mapped()), 80, 0),
        ];
        assert_eq!(
            MaglevTable::build(&backends, TableSize::default()),
            Err(MaglevError::DuplicateBackend {
                addr: IpAddr::V6(a.to_ipv6_mapped()),
                port: 80
            })
        );
    }

    #[test]
    fn too_many_active_backends() {
        let size = TableSize::new(MIN_TABLE_SIZE).unwrap();
        let backends: Vec<Backend> = (0..MIN_TABLE_SIZE + 1)
            .map(|i| backend(i, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 80, 1))
            .collect();
        assert_eq!(
            MaglevTable::build(&backends, size),
            Err(MaglevError::TooManyBackends {
                active: MIN_TABLE_SIZE as usize + 1,
                size: MIN_TABLE_SIZE
            })
        );
        // Drained backends do not count.
        let mut drained = backends.clone();
        drained[0].weight = 0;
        assert!(MaglevTable::build(&drained, size).unwrap().is_populated());
    }
}
