//! The neighbour table: IP address to MAC, learned from ARP and neighbour advertisements, shared by all workers
//! without locks.
//!
//! Fixed capacity, allocated once: a slot is claimed with a compare-and-swap, its address written, then published
//! with a release store; readers acquire the state before reading the address. Entries are never removed (a
//! neighbour's MAC is overwritten when it changes); when every probe slot is taken a new neighbour is refused and
//! counted by the caller.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const EMPTY: u32 = 0;
const CLAIMED: u32 = 1;
const READY_V4: u32 = 2;
const READY_V6: u32 = 3;
/// Slots examined from an address's home slot before giving up.
const PROBES: usize = 16;
const MAC_VALID: u64 = 1 << 48;

struct Slot {
    state: AtomicU32,
    addr_high: AtomicU64,
    addr_low: AtomicU64,
    mac: AtomicU64,
}

/// A neighbour could not be stored: the table is full around its home slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("neighbour table full")]
pub struct NeighborTableFull;

/// Shared IP-to-MAC table (`Arc<NeighborTable>` in every worker).
pub struct NeighborTable {
    slots: Box<[Slot]>,
    mask: usize,
}

impl std::fmt::Debug for NeighborTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighborTable")
            .field("capacity", &self.slots.len())
            .field("len", &self.len())
            .finish()
    }
}

fn words(addr: IpAddr) -> (u32, u64, u64) {
    match addr {
        IpAddr::V4(v4) => (READY_V4, 0, u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (READY_V6, (bits >> 64) as u64, bits as u64)
        }
    }
}

fn pack(mac: [u8; 6]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..6].copy_from_slice(&mac);
    u64::from_le_bytes(bytes) | MAC_VALID
}

fn unpack(word: u64) -> Option<[u8; 6]> {
    if word & MAC_VALID == 0 {
        return None;
    }
    let bytes = word.to_le_bytes();
    Some([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]])
}

impl NeighborTable {
    /// A table of at least `capacity` slots (rounded up to a power of two).
    pub fn new(capacity: usize) -> NeighborTable {
        let size = capacity.max(PROBES).next_power_of_two();
        let slots = (0..size)
            .map(|_| Slot {
                state: AtomicU32::new(EMPTY),
                addr_high: AtomicU64::new(0),
                addr_low: AtomicU64::new(0),
                mac: AtomicU64::new(0),
            })
            .collect();
        NeighborTable {
            slots,
            mask: size - 1,
        }
    }

    fn home(&self, high: u64, low: u64) -> usize {
        let mixed = (high ^ low.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> 32) as usize & self.mask
    }

    /// The MAC of `addr`, when it has been learned.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<[u8; 6]> {
        let (family, high, low) = words(addr);
        let home = self.home(high, low);
        for probe in 0..PROBES {
            let slot = &self.slots[(home + probe) & self.mask];
            match slot.state.load(Ordering::Acquire) {
                EMPTY => return None,
                state
                    if state == family
                        && slot.addr_high.load(Ordering::Relaxed) == high
                        && slot.addr_low.load(Ordering::Relaxed) == low =>
                {
                    return unpack(slot.mac.load(Ordering::Relaxed));
                }
                _ => {}
            }
        }
        None
    }

    /// Records that `addr` is at `mac`.
    pub fn learn(&self, addr: IpAddr, mac: [u8; 6]) -> Result<(), NeighborTableFull> {
        let (family, high, low) = words(addr);
        let home = self.home(high, low);
        let packed = pack(mac);
        for probe in 0..PROBES {
            let slot = &self.slots[(home + probe) & self.mask];
            let mut state = slot.state.load(Ordering::Acquire);
            if state == EMPTY {
                match slot.state.compare_exchange(
                    EMPTY,
                    CLAIMED,
                    Ordering::Acquire,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        slot.addr_high.store(high, Ordering::Relaxed);
                        slot.addr_low.store(low, Ordering::Relaxed);
                        slot.mac.store(packed, Ordering::Relaxed);
                        slot.state.store(family, Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => state = current,
                }
            }
            if state == family
                && slot.addr_high.load(Ordering::Relaxed) == high
                && slot.addr_low.load(Ordering::Relaxed) == low
            {
                if slot.mac.load(Ordering::Relaxed) != packed {
                    slot.mac.store(packed, Ordering::Relaxed);
                }
                return Ok(());
            }
            // A slot being claimed by another writer may hold this address; a duplicate is harmless because
            // lookups and updates both take the first match in probe order.
        }
        Err(NeighborTableFull)
    }

    /// How many neighbours are stored.
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.state.load(Ordering::Relaxed) >= READY_V4)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every learned neighbour (for the control plane).
    pub fn entries(&self) -> Vec<(IpAddr, [u8; 6])> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let state = slot.state.load(Ordering::Acquire);
                let high = slot.addr_high.load(Ordering::Relaxed);
                let low = slot.addr_low.load(Ordering::Relaxed);
                let addr = match state {
                    READY_V4 => IpAddr::V4((low as u32).into()),
                    READY_V6 => IpAddr::V6(((u128::from(high) << 64) | u128::from(low)).into()),
                    _ => return None,
                };
                Some((addr, unpack(slot.mac.load(Ordering::Relaxed))?))
            })
            .collect()
    }
}

/// Per-worker limit on how often the same address is resolved: one request per address per interval.
#[derive(Debug)]
pub struct ResolutionThrottle {
    last_request_ms: Box<[u64]>,
    interval_ms: u64,
}

impl ResolutionThrottle {
    pub fn new(slots: usize, interval_ms: u64) -> ResolutionThrottle {
        ResolutionThrottle {
            last_request_ms: vec![0; slots.max(1).next_power_of_two()].into_boxed_slice(),
            interval_ms,
        }
    }

    /// Whether a request for `addr` may go out at `now_ms`; records it when it may. Addresses that share a slot
    /// share the limit, which only delays a request.
    pub fn allow(&mut self, addr: IpAddr, now_ms: u64) -> bool {
        let (_, high, low) = words(addr);
        let mixed = (high ^ low.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = (mixed >> 40) as usize & (self.last_request_ms.len() - 1);
        let last = &mut self.last_request_ms[slot];
        if *last != 0 && now_ms.saturating_sub(*last) < self.interval_ms {
            return false;
        }
        *last = now_ms.max(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn learns_updates_and_separates_families() {
        let table = NeighborTable::new(64);
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::a00:1".parse().unwrap();
        assert_eq!(table.lookup(v4), None);
        table.learn(v4, [1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(table.lookup(v4), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(table.lookup(mapped), None);
        table.learn(v4, [9, 9, 9, 9, 9, 9]).unwrap();
        assert_eq!(table.lookup(v4), Some([9, 9, 9, 9, 9, 9]));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_full_table_refuses_new_neighbours_and_keeps_old_ones() {
        let table = NeighborTable::new(16);
        let mut stored = Vec::new();
        for i in 0..64u32 {
            let addr = IpAddr::V4((0x0a00_0000 + i).into());
            if table.learn(addr, [0, 0, 0, 0, 0, i as u8]).is_ok() {
                stored.push((addr, i as u8));
            }
        }
        assert_eq!(stored.len(), 16);
        for (addr, last) in stored {
            assert_eq!(table.lookup(addr), Some([0, 0, 0, 0, 0, last]));
        }
    }

    #[test]
    fn concurrent_writers_and_readers_agree() {
        let table = Arc::new(NeighborTable::new(4096));
        let writers: Vec<_> = (0..2u32)
            .map(|writer| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in 0..1000u32 {
                        let addr = IpAddr::V4((0x0a00_0000 + i).into());
                        table.learn(addr, [writer as u8, 0, 0, 0, 0, 1]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        for i in 0..1000u32 {
            let mac = table.lookup(IpAddr::V4((0x0a00_0000 + i).into())).unwrap();
            assert!(mac[0] < 2 && mac[5] == 1);
        }
    }

    #[test]
    fn throttle_allows_one_request_per_interval() {
        let mut throttle = ResolutionThrottle::new(64, 1000);
        let addr: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(throttle.allow(addr, 5));
        assert!(!throttle.allow(addr, 500));
        assert!(throttle.allow(addr, 1005));
    }

    proptest! {
        #[test]
        fn every_learned_neighbour_is_found(addrs in proptest::collection::hash_set(any::<u128>(), 1..200)) {
            let table = NeighborTable::new(1024);
            for (i, bits) in addrs.iter().enumerate() {
                let addr = IpAddr::V6((*bits).into());
                if table.learn(addr, [i as u8, 1, 2, 3, 4, 5]).is_ok() {
                    prop_assert_eq!(table.lookup(addr), Some([i as u8, 1, 2, 3, 4, 5]));
                }
            }
            prop_assert_eq!(table.entries().len(), table.len());
        }
    }
}
