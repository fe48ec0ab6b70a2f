//! FULLNAT local ports: how the port space of each local address is split between workers, and one worker's
//! allocator over its share.
//!
//! Worker `k` of `n` owns the ports `p` of `[low, high]` with `p % n == k` (interleaved rather than contiguous
//! ranges, so every worker gets a share of the same size whatever the range and `n`). A reply to `LIP:lport` is
//! steered to worker `lport % n` in O(1) by [`PortPartition::owner_of`], without consulting any state.
//!
//! Ports are drawn unpredictably, so that nobody can guess the `LIP:lport` of a flow and forge its backend's
//! replies: each allocator starts from a random order of its ports, and each allocation takes a port at random
//! among the older half of the free queue. A released port goes to the back of the queue, so at least half the
//! free ports are handed out before the same `LIP:lport` is used again, which keeps a new flow clear of a backend
//! still holding the old one in TIME_WAIT. Both are O(1) and allocation-free.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use thiserror::Error;

/// Number of bits in one word of the in-use bitmap.
const WORD_BITS: usize = 64;
/// Words needed to hold one bit per 16-bit port.
const BITMAP_WORDS: usize = (u16::MAX as usize + 1) / WORD_BITS;

/// How the local port range is shared between the workers: the part of the configuration every worker and the
/// reply steering must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPartition {
    low: u16,
    high: u16,
    workers: u16,
}

/// A port partition or allocator that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PortConfigError {
    #[error("empty local port range {low}..={high}")]
    EmptyRange { low: u16, high: u16 },
    #[error("port 0 cannot be used as a local port")]
    ZeroPort,
    #[error("at least one worker is needed")]
    NoWorkers,
    #[error("worker {worker} is out of range for {workers} workers")]
    WorkerOutOfRange { worker: u16, workers: u16 },
    #[error("worker {worker} owns no port of {low}..={high} with {workers} workers")]
    NoPortsForWorker {
        worker: u16,
        workers: u16,
        low: u16,
        high: u16,
    },
    #[error("no local address given")]
    NoLocalAddress,
    #[error("local address {0} given twice")]
    DuplicateAddress(IpAddr),
}

/// Why a port could not be allocated or released. Each is a counted drop in the data plane, never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PortError {
    #[error("all local ports of this worker are in use for the address family")]
    Exhausted,
    #[error("{0} is not a local address of this allocator")]
    UnknownAddress(IpAddr),
    #[error("port {0} does not belong to this worker")]
    NotOwned(u16),
    #[error("port {0} is not allocated")]
    NotAllocated(u16),
}

impl PortPartition {
    /// Splits `[low, high]` (inclusive) between `workers` workers.
    pub fn new(low: u16, high: u16, workers: u16) -> Result<Self, PortConfigError> {
        if low == 0 {
            return Err(PortConfigError::ZeroPort);
        }
        if low > high {
            return Err(PortConfigError::EmptyRange { low, high });
        }
        if workers == 0 {
            return Err(PortConfigError::NoWorkers);
        }
        Ok(PortPartition { low, high, workers })
    }

    /// The worker that owns `port`, or `None` when the port lies outside the local range (not a FULLNAT reply).
    #[inline]
    pub fn owner_of(&self, port: u16) -> Option<u16> {
        if port < self.low || port > self.high {
            return None;
        }
        Some(port % self.workers)
    }

    /// The ports of `worker`, ascending.
    pub fn ports_of(&self, worker: u16) -> impl Iterator<Item = u16> + '_ {
        let workers = self.workers;
        (self.low..=self.high).filter(move |port| port % workers == worker)
    }

    /// How many ports `worker` owns.
    pub fn count_for(&self, worker: u16) -> usize {
        if worker >= self.workers {
            return 0;
        }
        // Ports p in [low, high] with p ≡ worker (mod workers): count of such residues below a bound, by arithmetic.
        let below = |bound: u32| -> u32 {
            // Number of p in [0, bound) with p % workers == worker.
            let workers = u32::from(self.workers);
            let worker = u32::from(worker);
            bound / workers + u32::from(bound % workers > worker)
        };
        (below(u32::from(self.high) + 1) - below(u32::from(self.low))) as usize
    }

    pub fn low(&self) -> u16 {
        self.low
    }

    pub fn high(&self) -> u16 {
        self.high
    }

    pub fn workers(&self) -> u16 {
        self.workers
    }
}

/// A local address and port handed to a FULLNAT flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalEndpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// The free ports of one local address: a FIFO ring of the worker's ports plus an in-use bitmap that catches a
/// double release.
struct AddressPool {
    addr: IpAddr,
    ring: Box<[u16]>,
    head: usize,
    free: usize,
    in_use: Box<[u64; BITMAP_WORDS]>,
}

impl AddressPool {
    fn is_in_use(&self, port: u16) -> bool {
        let port = usize::from(port);
        self.in_use[port / WORD_BITS] & (1 << (port % WORD_BITS)) != 0
    }

    fn set_in_use(&mut self, port: u16, in_use: bool) {
        let port = usize::from(port);
        let bit = 1u64 << (port % WORD_BITS);
        if in_use {
            self.in_use[port / WORD_BITS] |= bit;
        } else {
            self.in_use[port / WORD_BITS] &= !bit;
        }
    }

    /// `position` (below twice the ring's length) as a place in the ring.
    #[inline]
    fn wrap(&self, position: usize) -> usize {
        if position >= self.ring.len() {
            position - self.ring.len()
        } else {
            position
        }
    }

    /// Where in the ring a draw of `random` takes its port from (the free queue must not be empty).
    #[inline]
    fn drawn(&self, random: u64) -> usize {
        let older_half = self.free.div_ceil(2) as u64;
        // The draw's upper half scaled to the older half (a multiply and a shift: no division on a new
        // connection's path), and ring positions wrapped by one compare (both sums stay below twice the ring).
        let offset = (((random >> 32) * older_half) >> 32) as usize;
        self.wrap(self.head + offset)
    }

    /// A free port drawn at random (from `random`) among the older half of the free queue.
    fn take(&mut self, random: u64) -> Option<u16> {
        if self.free == 0 {
            return None;
        }
        let drawn = self.drawn(random);
        self.ring.swap(self.head, drawn);
        let port = self.ring[self.head];
        self.head = self.wrap(self.head + 1);
        self.free -= 1;
        self.set_in_use(port, true);
        Some(port)
    }

    fn give_back(&mut self, port: u16) {
        // The bitmap guarantees at most ring.len() ports are out, so the tail slot is free.
        let tail = self.wrap(self.head + self.free);
        self.ring[tail] = port;
        self.free += 1;
        self.set_in_use(port, false);
    }
}

/// One worker's FULLNAT local ports over every local address. All memory is allocated at construction;
/// allocation and release are O(1) per address tried.
pub struct PortAllocator {
    partition: PortPartition,
    worker: u16,
    pools: Vec<AddressPool>,
    /// Where the next allocation starts looking, so flows spread over the local addresses.
    next_pool: usize,
    /// xorshift64* state, seeded from the OS's randomness: which free port an allocation takes.
    random: u64,
}

/// The next number of the xorshift64* generator at `state` (Vigna, 2016): a few cycles, good enough to make
/// ports unguessable from outside (only the backend sees them).
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A seed from the OS's randomness (the standard library keys its hash maps with it), never zero.
fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1
}

impl std::fmt::Debug for PortAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortAllocator")
            .field("partition", &self.partition)
            .field("worker", &self.worker)
            .field(
                "addresses",
                &self.pools.iter().map(|p| p.addr).collect::<Vec<_>>(),
            )
            .field("available", &self.available())
            .finish()
    }
}

impl PortAllocator {
    /// The allocator of `worker` under `partition`, over `local_addrs`, drawing from the OS's randomness.
    pub fn new(
        partition: PortPartition,
        worker: u16,
        local_addrs: &[IpAddr],
    ) -> Result<Self, PortConfigError> {
        Self::with_seed(partition, worker, local_addrs, random_seed())
    }

    /// [`PortAllocator::new`] drawing from `seed`: the same seed hands out the same ports in the same order (for
    /// tests that compare two tables; sluice itself always uses [`PortAllocator::new`]).
    pub fn with_seed(
        partition: PortPartition,
        worker: u16,
        local_addrs: &[IpAddr],
        seed: u64,
    ) -> Result<Self, PortConfigError> {
        if worker >= partition.workers {
            return Err(PortConfigError::WorkerOutOfRange {
                worker,
                workers: partition.workers,
            });
        }
        if local_addrs.is_empty() {
            return Err(PortConfigError::NoLocalAddress);
        }
        // xorshift never leaves zero: keep the seed odd.
        let mut random = seed | 1;
        let mut ports: Box<[u16]> = partition.ports_of(worker).collect();
        if ports.is_empty() {
            return Err(PortConfigError::NoPortsForWorker {
                worker,
                workers: partition.workers,
                low: partition.low,
                high: partition.high,
            });
        }
        let mut pools: Vec<AddressPool> = Vec::with_capacity(local_addrs.len());
        for &addr in local_addrs {
            // Each address starts from its own random order (Fisher-Yates).
            for index in (1..ports.len()).rev() {
                let other = (next_random(&mut random) % (index as u64 + 1)) as usize;
                ports.swap(index, other);
            }
            if pools.iter().any(|pool| pool.addr == addr) {
                return Err(PortConfigError::DuplicateAddress(addr));
            }
            pools.push(AddressPool {
                addr,
                ring: ports.clone(),
                head: 0,
                free: ports.len(),
                in_use: Box::new([0; BITMAP_WORDS]),
            });
        }
        Ok(PortAllocator {
            partition,
            worker,
            pools,
            next_pool: 0,
            random,
        })
    }

    /// A free local endpoint of the same address family as `peer` (the backend it will talk to).
    pub fn allocate(&mut self, peer: &IpAddr) -> Result<LocalEndpoint, PortError> {
        let pools = self.pools.len();
        for step in 0..pools {
            // next_pool < pools: one compare wraps the sum.
            let index = match self.next_pool + step {
                index if index >= pools => index - pools,
                index => index,
            };
            let pool = &mut self.pools[index];
            if pool.addr.is_ipv4() != peer.is_ipv4() {
                continue;
            }
            if let Some(port) = pool.take(next_random(&mut self.random)) {
                self.next_pool = if index + 1 == pools { 0 } else { index + 1 };
                return Ok(LocalEndpoint {
                    addr: pool.addr,
                    port,
                });
            }
        }
        Err(PortError::Exhausted)
    }

    /// The ring slot the next allocation will read, if it goes to the address next in turn and nothing is released
    /// before it: a random place in a ring far larger than the cache, worth loading ahead.
    pub fn next_draw(&self) -> Option<&u16> {
        let pool = self.pools.get(self.next_pool)?;
        if pool.free == 0 {
            return None;
        }
        let mut state = self.random;
        pool.ring.get(pool.drawn(next_random(&mut state)))
    }

    /// Returns `endpoint` to the back of its address's queue.
    pub fn release(&mut self, endpoint: LocalEndpoint) -> Result<(), PortError> {
        let pool = self
            .pools
            .iter_mut()
            .find(|pool| pool.addr == endpoint.addr)
            .ok_or(PortError::UnknownAddress(endpoint.addr))?;
        if self.partition.owner_of(endpoint.port) != Some(self.worker) {
            return Err(PortError::NotOwned(endpoint.port));
        }
        if !pool.is_in_use(endpoint.port) {
            return Err(PortError::NotAllocated(endpoint.port));
        }
        pool.give_back(endpoint.port);
        Ok(())
    }

    /// Whether `endpoint` is currently handed out by this allocator.
    pub fn is_allocated(&self, endpoint: LocalEndpoint) -> bool {
        self.pools
            .iter()
            .any(|pool| pool.addr == endpoint.addr && pool.is_in_use(endpoint.port))
    }

    /// Free ports over all local addresses.
    pub fn available(&self) -> usize {
        self.pools.iter().map(|pool| pool.free).sum()
    }

    /// Free ports of one local address (0 for an unknown address).
    pub fn available_for(&self, addr: &IpAddr) -> usize {
        self.pools
            .iter()
            .find(|pool| pool.addr == *addr)
            .map_or(0, |pool| pool.free)
    }

    /// Ports this worker owns per local address.
    pub fn ports_per_address(&self) -> usize {
        self.pools.first().map_or(0, |pool| pool.ring.len())
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    pub fn partition(&self) -> PortPartition {
        self.partition
    }

    pub fn local_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.pools.iter().map(|pool| pool.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
    }

    /// The slot the allocator names ahead holds the port the next allocation hands out, over a long run of
    /// allocations and releases that rotates through the addresses.
    #[test]
    fn the_slot_named_ahead_is_the_next_allocation() {
        let partition = PortPartition::new(1024, 65535, 2).unwrap();
        let mut ports = PortAllocator::with_seed(partition, 1, &[v4(1), v4(2), v4(3)], 7).unwrap();
        let mut held = Vec::new();
        for round in 0..5000 {
            let ahead = *ports.next_draw().unwrap();
            let endpoint = ports.allocate(&v4(9)).unwrap();
            assert_eq!(endpoint.port, ahead, "allocation {round}");
            held.push(endpoint);
            if round % 3 == 0 {
                ports.release(held.swap_remove(round % held.len())).unwrap();
            }
        }
    }

    #[test]
    fn partition_rejects_bad_configuration() {
        assert_eq!(PortPartition::new(0, 10, 1), Err(PortConfigError::ZeroPort));
        assert_eq!(
            PortPartition::new(20, 10, 1),
            Err(PortConfigError::EmptyRange { low: 20, high: 10 })
        );
        assert_eq!(
            PortPartition::new(1, 10, 0),
            Err(PortConfigError::NoWorkers)
        );
        let partition = PortPartition::new(10, 11, 4).unwrap();
        assert!(matches!(
            PortAllocator::new(partition, 4, &[v4(1)]),
            Err(PortConfigError::WorkerOutOfRange { .. })
        ));
        assert!(matches!(
            PortAllocator::new(partition, 0, &[v4(1)]),
            Err(PortConfigError::NoPortsForWorker { .. })
        ));
        assert!(matches!(
            PortAllocator::new(partition, 2, &[]),
            Err(PortConfigError::NoLocalAddress)
        ));
        assert_eq!(
            PortAllocator::new(partition, 2, &[v4(1), v4(1)]).unwrap_err(),
            PortConfigError::DuplicateAddress(v4(1))
        );
    }

    #[test]
    fn owner_outside_range_is_none() {
        let partition = PortPartition::new(1024, 2047, 3).unwrap();
        assert_eq!(partition.owner_of(1023), None);
        assert_eq!(partition.owner_of(2048), None);
        assert_eq!(partition.owner_of(1024), Some(1024 % 3));
    }

    #[test]
    fn exhaustion_is_a_typed_error_and_release_refills() {
        let partition = PortPartition::new(5000, 5009, 2).unwrap();
        let mut ports = PortAllocator::new(partition, 1, &[v4(1)]).unwrap();
        assert_eq!(ports.available(), 5);
        let taken: Vec<_> = (0..5).map(|_| ports.allocate(&v4(9)).unwrap()).collect();
        let mut drawn: Vec<_> = taken.iter().map(|e| e.port).collect();
        drawn.sort_unstable();
        assert_eq!(drawn, vec![5001, 5003, 5005, 5007, 5009]);
        assert_eq!(ports.allocate(&v4(9)), Err(PortError::Exhausted));
        ports.release(taken[2]).unwrap();
        assert_eq!(ports.allocate(&v4(9)).unwrap(), taken[2]);
    }

    #[test]
    fn release_rejects_foreign_and_double_release() {
        let partition = PortPartition::new(5000, 5009, 2).unwrap();
        let mut ports = PortAllocator::new(partition, 0, &[v4(1)]).unwrap();
        let endpoint = ports.allocate(&v4(9)).unwrap();
        assert_eq!(
            ports.release(LocalEndpoint {
                addr: v4(2),
                port: endpoint.port
            }),
            Err(PortError::UnknownAddress(v4(2)))
        );
        assert_eq!(
            ports.release(LocalEndpoint {
                addr: v4(1),
                port: 5001
            }),
            Err(PortError::NotOwned(5001))
        );
        assert_eq!(
            ports.release(LocalEndpoint {
                addr: v4(1),
                port: 4000
            }),
            Err(PortError::NotOwned(4000))
        );
        ports.release(endpoint).unwrap();
        assert_eq!(
            ports.release(endpoint),
            Err(PortError::NotAllocated(endpoint.port))
        );
    }

    #[test]
    fn a_released_port_waits_for_half_the_free_ports() {
        let partition = PortPartition::new(100, 199, 1).unwrap();
        for _ in 0..20 {
            let mut ports = PortAllocator::new(partition, 0, &[v4(1)]).unwrap();
            let first = ports.allocate(&v4(9)).unwrap();
            ports.release(first).unwrap();
            // 100 free, the released one last: the next 50 draws come from the older half.
            for _ in 0..50 {
                assert_ne!(ports.allocate(&v4(9)).unwrap(), first);
            }
        }
    }

    #[test]
    fn ports_are_drawn_unpredictably() {
        let partition = PortPartition::new(1024, 65535, 1).unwrap();
        let draw = || {
            let mut ports = PortAllocator::new(partition, 0, &[v4(1)]).unwrap();
            (0..16)
                .map(|_| ports.allocate(&v4(9)).unwrap().port)
                .collect::<Vec<_>>()
        };
        let (one, other) = (draw(), draw());
        // Two allocators (two starts of sluice) draw different sequences, and neither counts up from the bottom.
        assert_ne!(one, other);
        assert_ne!(one, (1024..1040).collect::<Vec<u16>>());
        let ascending = one.windows(2).filter(|pair| pair[1] == pair[0] + 1).count();
        assert!(ascending < 4, "{one:?}");
    }

    #[test]
    fn address_family_follows_the_backend_and_addresses_take_turns() {
        let partition = PortPartition::new(100, 101, 1).unwrap();
        let mut ports = PortAllocator::new(partition, 0, &[v4(1), v6(1), v4(2)]).unwrap();
        let a = ports.allocate(&v4(9)).unwrap();
        let b = ports.allocate(&v4(9)).unwrap();
        assert_eq!((a.addr, b.addr), (v4(1), v4(2)));
        assert_eq!(ports.allocate(&v6(9)).unwrap().addr, v6(1));
        assert_eq!(ports.allocate(&v6(9)).unwrap().addr, v6(1));
        assert_eq!(ports.allocate(&v6(9)), Err(PortError::Exhausted));
        assert_eq!(ports.available(), 2);
        assert_eq!(ports.available_for(&v6(1)), 0);
    }

    proptest! {
        #[test]
        fn workers_partition_the_range(low in 1u16..=65535, len in 0u16..3000, workers in 1u16..=64) {
            let high = low.saturating_add(len);
            let partition = PortPartition::new(low, high, workers).unwrap();
            let mut seen = 0usize;
            for worker in 0..workers {
                let mine: Vec<u16> = partition.ports_of(worker).collect();
                prop_assert_eq!(mine.len(), partition.count_for(worker));
                for port in mine {
                    prop_assert_eq!(partition.owner_of(port), Some(worker));
                }
                seen += partition.count_for(worker);
            }
            prop_assert_eq!(seen, usize::from(high - low) + 1);
            // Shares differ by at most one port.
            let counts: Vec<usize> = (0..workers).map(|w| partition.count_for(w)).collect();
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        }

        #[test]
        fn never_hands_out_a_port_twice(ops in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..400)) {
            let partition = PortPartition::new(2000, 2100, 3).unwrap();
            let mut ports = PortAllocator::new(partition, 1, &[v4(1), v4(2)]).unwrap();
            let total = ports.available();
            let mut held: Vec<LocalEndpoint> = Vec::new();
            let mut held_set: HashSet<LocalEndpoint> = HashSet::new();
            for (allocate, pick) in ops {
                if allocate || held.is_empty() {
                    match ports.allocate(&v4(9)) {
                        Ok(endpoint) => {
                            prop_assert!(held_set.insert(endpoint), "port handed out twice: {:?}", endpoint);
                            prop_assert_eq!(partition.owner_of(endpoint.port), Some(1));
                            held.push(endpoint);
                        }
                        Err(error) => {
                            prop_assert_eq!(error, PortError::Exhausted);
                            prop_assert_eq!(held.len(), total);
                        }
                    }
                } else {
                    let endpoint = held.swap_remove(pick.index(held.len()));
                    held_set.remove(&endpoint);
                    prop_assert_eq!(ports.release(endpoint), Ok(()));
                }
                prop_assert_eq!(ports.available() + held.len(), total);
            }
        }
    }
}
