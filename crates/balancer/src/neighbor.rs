//! The neighbour table: which MAC each next hop has, per port and family, shared by all workers without locks on
//! the read side; only an honest neighbour can change it.
//!
//! An entry exists only for a next hop sluice itself resolves (a backend or gateway it forwards to, or an on-link
//! destination it has to reach): it is created when a worker sends an ARP request or neighbour solicitation for it
//! ([`NeighborTable::expect`]), so ARP replies and advertisements for anything else find no entry and change
//! nothing; the table cannot be filled from outside. The decision accepts an update only from the port and subnet
//! where the neighbour lives (and IPv6 advertisements only with hop limit 255); see `decision::arp`.
//!
//! Entries age as the kernel's neighbour unreachability detection does: reachable for [`NeighborTiming`]'s
//! `reachable_ms` after the last answer, then stale (still used, while the worker asks again) for `stale_ms`, then
//! gone; an entry still waiting for its first answer is given up after `incomplete_ms`. A gone entry's slot is
//! taken again by the next one that needs it. Entries set by configuration ([`NeighborTable::set_static`]) never
//! age and answers do not change them.
//!
//! Fixed capacity, allocated once. Writers (rare: a new entry, a changed MAC) take a mutex; readers take none and
//! read a slot under its sequence number (even: stable; odd: being written), retrying never: a slot caught
//! mid-write reads as unresolved, which only delays a frame.

use std::net::IpAddr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// Slots examined from an address's home slot before giving up.
const PROBES: usize = 16;
const MAC_VALID: u64 = 1 << 48;

/// `Slot::meta`: the port in the low 16 bits, then the family, whether the slot was ever used, and whether the
/// entry is static.
const META_V6: u64 = 1 << 16;
const META_USED: u64 = 1 << 17;
const META_STATIC: u64 = 1 << 18;
const META_KEY: u64 = 0xffff | META_V6 | META_USED;

struct Slot {
    sequence: AtomicU32,
    meta: AtomicU64,
    addr_high: AtomicU64,
    addr_low: AtomicU64,
    mac: AtomicU64,
    /// When the neighbour last answered (when the request was sent, while it has not).
    confirmed_ms: AtomicU64,
}

/// A neighbour could not be stored: every slot around its home holds a live entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("neighbour table full")]
pub struct NeighborTableFull;

/// How long entries live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborTiming {
    /// After an answer, how long the MAC is used without asking again.
    pub reachable_ms: u64,
    /// After that, how long it is still used while the worker asks again.
    pub stale_ms: u64,
    /// How long an entry waits for its first answer.
    pub incomplete_ms: u64,
}

impl Default for NeighborTiming {
    /// The kernel's defaults, about: 30 s reachable, then a probe; 3 s for a first answer.
    fn default() -> Self {
        NeighborTiming {
            reachable_ms: 30_000,
            stale_ms: 30_000,
            incomplete_ms: 3_000,
        }
    }
}

/// What the table knows of a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbor {
    /// Answered recently.
    Reachable([u8; 6]),
    /// Answered a while ago: use the MAC, and ask again.
    Stale([u8; 6]),
    /// Not known (or no longer): resolve it.
    Unresolved,
}

/// Shared IP-to-MAC table (`Arc<NeighborTable>` in every worker).
pub struct NeighborTable {
    slots: Box<[Slot]>,
    mask: usize,
    timing: NeighborTiming,
    writer: Mutex<()>,
}

impl std::fmt::Debug for NeighborTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighborTable")
            .field("capacity", &self.slots.len())
            .field("timing", &self.timing)
            .finish()
    }
}

/// The key words of (port, address): meta, high, low.
fn key(port: u16, addr: IpAddr) -> (u64, u64, u64) {
    match addr {
        IpAddr::V4(v4) => (u64::from(port) | META_USED, 0, u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (
                u64::from(port) | META_USED | META_V6,
                (bits >> 64) as u64,
                bits as u64,
            )
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

/// One slot as read under its sequence number.
#[derive(Clone, Copy)]
struct Entry {
    index: usize,
    meta: u64,
    mac: u64,
    confirmed_ms: u64,
}

impl NeighborTable {
    /// A table of at least `capacity` slots (rounded up to a power of two) with the kernel's timing.
    pub fn new(capacity: usize) -> NeighborTable {
        NeighborTable::with_timing(capacity, NeighborTiming::default())
    }

    pub fn with_timing(capacity: usize, timing: NeighborTiming) -> NeighborTable {
        let size = capacity.max(PROBES).next_power_of_two();
        let slots = (0..size)
            .map(|_| Slot {
                sequence: AtomicU32::new(0),
                meta: AtomicU64::new(0),
                addr_high: AtomicU64::new(0),
                addr_low: AtomicU64::new(0),
                mac: AtomicU64::new(0),
                confirmed_ms: AtomicU64::new(0),
            })
            .collect();
        NeighborTable {
            slots,
            mask: size - 1,
            timing,
            writer: Mutex::new(()),
        }
    }

    fn home(&self, high: u64, low: u64) -> usize {
        let mixed = (high ^ low.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> 32) as usize & self.mask
    }

    /// The entry of (port, address), read consistently; `None` when there is none (or it is being written).
    #[inline]
    fn find(&self, port: u16, addr: IpAddr) -> Option<Entry> {
        let (meta_key, high, low) = key(port, addr);
        let home = self.home(high, low);
        for probe in 0..PROBES {
            let index = (home + probe) & self.mask;
            let slot = &self.slots[index];
            let sequence = slot.sequence.load(Ordering::Acquire);
            let meta = slot.meta.load(Ordering::Relaxed);
            if meta == 0 && sequence & 1 == 0 {
                // Slots are never emptied again: nothing lies past a never-used one.
                return None;
            }
            if meta & META_KEY != meta_key
                || slot.addr_high.load(Ordering::Relaxed) != high
                || slot.addr_low.load(Ordering::Relaxed) != low
            {
                continue;
            }
            let mac = slot.mac.load(Ordering::Relaxed);
            let confirmed_ms = slot.confirmed_ms.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if sequence & 1 != 0 || slot.sequence.load(Ordering::Relaxed) != sequence {
                return None;
            }
            return Some(Entry {
                index,
                meta,
                mac,
                confirmed_ms,
            });
        }
        None
    }

    /// What is known of the next hop `addr` on `port` at `now_ms`.
    #[inline]
    pub fn lookup(&self, port: u16, addr: IpAddr, now_ms: u64) -> Neighbor {
        let Some(entry) = self.find(port, addr) else {
            return Neighbor::Unresolved;
        };
        let Some(mac) = unpack(entry.mac) else {
            return Neighbor::Unresolved;
        };
        if entry.meta & META_STATIC != 0 {
            return Neighbor::Reachable(mac);
        }
        let age = now_ms.saturating_sub(entry.confirmed_ms);
        if age <= self.timing.reachable_ms {
            Neighbor::Reachable(mac)
        } else if age <= self.timing.reachable_ms + self.timing.stale_ms {
            Neighbor::Stale(mac)
        } else {
            Neighbor::Unresolved
        }
    }

    /// Whether an entry is gone by `now_ms`, its slot free for another.
    fn gone(&self, entry: &Entry, now_ms: u64) -> bool {
        if entry.meta & META_STATIC != 0 {
            return false;
        }
        let age = now_ms.saturating_sub(entry.confirmed_ms);
        if entry.mac & MAC_VALID == 0 {
            age > self.timing.incomplete_ms
        } else {
            age > self.timing.reachable_ms + self.timing.stale_ms
        }
    }

    /// Writes slot `index` under its sequence number. The caller holds the writer lock.
    fn write(&self, index: usize, meta: u64, addr: (u64, u64), mac: u64, confirmed_ms: u64) {
        let slot = &self.slots[index];
        let sequence = slot.sequence.load(Ordering::Relaxed);
        slot.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        slot.meta.store(meta, Ordering::Relaxed);
        slot.addr_high.store(addr.0, Ordering::Relaxed);
        slot.addr_low.store(addr.1, Ordering::Relaxed);
        slot.mac.store(mac, Ordering::Relaxed);
        slot.confirmed_ms.store(confirmed_ms, Ordering::Relaxed);
        slot.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// Stores an entry for (port, address) in a free slot (never used, or holding a gone entry).
    fn insert(
        &self,
        port: u16,
        addr: IpAddr,
        mac: u64,
        flags: u64,
        now_ms: u64,
    ) -> Result<(), NeighborTableFull> {
        let (meta, high, low) = key(port, addr);
        let home = self.home(high, low);
        for probe in 0..PROBES {
            let index = (home + probe) & self.mask;
            let slot = &self.slots[index];
            let free = slot.meta.load(Ordering::Relaxed) == 0 || {
                let entry = Entry {
                    index,
                    meta: slot.meta.load(Ordering::Relaxed),
                    mac: slot.mac.load(Ordering::Relaxed),
                    confirmed_ms: slot.confirmed_ms.load(Ordering::Relaxed),
                };
                self.gone(&entry, now_ms)
            };
            if free {
                self.write(index, meta | flags, (high, low), mac, now_ms);
                return Ok(());
            }
        }
        Err(NeighborTableFull)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // Nothing a writer does can leave the table inconsistent: a poisoned lock is still good.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes room for the answer about `addr` on `port`, which a worker is about to ask for: an entry waiting for
    /// its first answer, unless there is one already.
    pub fn expect(&self, port: u16, addr: IpAddr, now_ms: u64) -> Result<(), NeighborTableFull> {
        if self
            .find(port, addr)
            .is_some_and(|entry| !self.gone(&entry, now_ms))
        {
            return Ok(());
        }
        let _writer = self.lock();
        match self.find(port, addr) {
            Some(entry) if !self.gone(&entry, now_ms) => Ok(()),
            // A gone entry of the same neighbour starts over in its own slot.
            Some(entry) => {
                let (meta, high, low) = key(port, addr);
                self.write(entry.index, meta, (high, low), 0, now_ms);
                Ok(())
            }
            None => self.insert(port, addr, 0, 0, now_ms),
        }
    }

    /// `addr` on `port` said it is at `mac` (an answer, or an update the caller found acceptable): recorded if the
    /// table has an entry for it, which is then reachable again; returns whether it had one. Static entries keep
    /// their MAC.
    pub fn confirm(&self, port: u16, addr: IpAddr, mac: [u8; 6], now_ms: u64) -> bool {
        let Some(entry) = self.find(port, addr) else {
            return false;
        };
        if entry.meta & META_STATIC != 0 {
            return true;
        }
        let packed = pack(mac);
        if entry.mac == packed {
            // The same MAC: only the time moves, without the lock.
            self.slots[entry.index]
                .confirmed_ms
                .store(now_ms, Ordering::Relaxed);
            return true;
        }
        let _writer = self.lock();
        let Some(entry) = self.find(port, addr) else {
            return false;
        };
        let (meta, high, low) = key(port, addr);
        self.write(entry.index, meta, (high, low), packed, now_ms);
        true
    }

    /// Sets `addr` on `port` to `mac` for good (configuration, tests): never aged, never changed by answers.
    pub fn set_static(
        &self,
        port: u16,
        addr: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NeighborTableFull> {
        let _writer = self.lock();
        let (meta, high, low) = key(port, addr);
        match self.find(port, addr) {
            Some(entry) => {
                self.write(entry.index, meta | META_STATIC, (high, low), pack(mac), 0);
                Ok(())
            }
            None => self.insert(port, addr, pack(mac), META_STATIC, 0),
        }
    }

    /// How many neighbours have a MAC (static, reachable or stale) at `now_ms`.
    pub fn resolved(&self, now_ms: u64) -> usize {
        self.entries(now_ms).len()
    }

    /// Every neighbour with a MAC at `now_ms`: port, address, MAC (for the control plane and tests).
    pub fn entries(&self, now_ms: u64) -> Vec<(u16, IpAddr, [u8; 6])> {
        (0..self.slots.len())
            .filter_map(|index| {
                let slot = &self.slots[index];
                let meta = slot.meta.load(Ordering::Relaxed);
                if meta == 0 {
                    return None;
                }
                let high = slot.addr_high.load(Ordering::Relaxed);
                let low = slot.addr_low.load(Ordering::Relaxed);
                let addr = if meta & META_V6 != 0 {
                    IpAddr::V6(((u128::from(high) << 64) | u128::from(low)).into())
                } else {
                    IpAddr::V4((low as u32).into())
                };
                let port = (meta & 0xffff) as u16;
                match self.lookup(port, addr, now_ms) {
                    Neighbor::Reachable(mac) | Neighbor::Stale(mac) => Some((port, addr, mac)),
                    Neighbor::Unresolved => None,
                }
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
        let (_, high, low) = key(0, addr);
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

    const TIMING: NeighborTiming = NeighborTiming {
        reachable_ms: 1000,
        stale_ms: 1000,
        incomplete_ms: 100,
    };

    fn learned(table: &NeighborTable, port: u16, addr: IpAddr, mac: [u8; 6], now_ms: u64) {
        table.expect(port, addr, now_ms).unwrap();
        assert!(table.confirm(port, addr, mac, now_ms));
    }

    #[test]
    fn only_an_expected_neighbour_is_learned_per_port_and_family() {
        let table = NeighborTable::with_timing(64, TIMING);
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::a00:1".parse().unwrap();
        // Nobody asked: an answer changes nothing.
        assert!(!table.confirm(0, v4, [6; 6], 10));
        assert_eq!(table.lookup(0, v4, 10), Neighbor::Unresolved);
        table.expect(0, v4, 10).unwrap();
        assert_eq!(table.lookup(0, v4, 10), Neighbor::Unresolved);
        assert!(table.confirm(0, v4, [1, 2, 3, 4, 5, 6], 20));
        assert_eq!(
            table.lookup(0, v4, 20),
            Neighbor::Reachable([1, 2, 3, 4, 5, 6])
        );
        // Another port and the other family are other neighbours.
        assert_eq!(table.lookup(1, v4, 20), Neighbor::Unresolved);
        assert!(!table.confirm(1, v4, [9; 6], 20));
        assert_eq!(table.lookup(0, mapped, 20), Neighbor::Unresolved);
        assert!(table.confirm(0, v4, [9; 6], 30));
        assert_eq!(table.lookup(0, v4, 30), Neighbor::Reachable([9; 6]));
        assert_eq!(table.resolved(30), 1);
    }

    #[test]
    fn entries_go_stale_then_away_and_an_answer_brings_them_back() {
        let table = NeighborTable::with_timing(64, TIMING);
        let addr: IpAddr = "10.1.0.11".parse().unwrap();
        learned(&table, 1, addr, [7; 6], 0);
        assert_eq!(table.lookup(1, addr, 1000), Neighbor::Reachable([7; 6]));
        assert_eq!(table.lookup(1, addr, 1500), Neighbor::Stale([7; 6]));
        assert!(table.confirm(1, addr, [7; 6], 1600));
        assert_eq!(table.lookup(1, addr, 2500), Neighbor::Reachable([7; 6]));
        assert_eq!(table.lookup(1, addr, 3601), Neighbor::Unresolved);
        // Gone: an answer no longer finds it until it is asked for again.
        table.expect(1, addr, 5000).unwrap();
        assert_eq!(table.lookup(1, addr, 5000), Neighbor::Unresolved);
        assert!(table.confirm(1, addr, [8; 6], 5010));
        assert_eq!(table.lookup(1, addr, 5010), Neighbor::Reachable([8; 6]));
    }

    #[test]
    fn static_entries_never_age_nor_change() {
        let table = NeighborTable::with_timing(64, TIMING);
        let addr: IpAddr = "10.0.0.2".parse().unwrap();
        table.set_static(0, addr, [1; 6]).unwrap();
        assert!(table.confirm(0, addr, [2; 6], 5));
        assert_eq!(
            table.lookup(0, addr, 1_000_000),
            Neighbor::Reachable([1; 6])
        );
    }

    #[test]
    fn a_full_neighbourhood_takes_the_slots_of_gone_entries() {
        let table = NeighborTable::with_timing(16, TIMING);
        let addr = |i: u32| IpAddr::V4((0x0a00_0000 + i).into());
        let mut stored = 0;
        for i in 0..64u32 {
            if table.expect(0, addr(i), 0).is_ok() {
                stored += 1;
            }
        }
        assert_eq!(stored, 16);
        // Unanswered requests are given up after incomplete_ms: their slots serve new ones.
        let again = (100..116u32)
            .filter(|&i| table.expect(0, addr(i), 200).is_ok())
            .count();
        assert_eq!(again, 16);
    }

    #[test]
    fn concurrent_writers_and_readers_agree() {
        let table = Arc::new(NeighborTable::new(4096));
        for i in 0..1000u32 {
            table
                .expect(0, IpAddr::V4((0x0a00_0000 + i).into()), 1)
                .unwrap();
        }
        let writers: Vec<_> = (0..2u32)
            .map(|writer| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in 0..1000u32 {
                        let addr = IpAddr::V4((0x0a00_0000 + i).into());
                        assert!(table.confirm(0, addr, [writer as u8, 0, 0, 0, 0, 1], 2));
                    }
                })
            })
            .collect();
        for i in 0..1000u32 {
            if let Neighbor::Reachable(mac) =
                table.lookup(0, IpAddr::V4((0x0a00_0000 + i).into()), 2)
            {
                assert!(mac[0] < 2 && mac[5] == 1);
            }
        }
        for writer in writers {
            writer.join().unwrap();
        }
        for i in 0..1000u32 {
            let Neighbor::Reachable(mac) = table.lookup(0, IpAddr::V4((0x0a00_0000 + i).into()), 3)
            else {
                panic!("neighbour {i} lost");
            };
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
        fn every_expected_and_answered_neighbour_is_found(addrs in proptest::collection::hash_set(any::<u128>(), 1..200)) {
            let table = NeighborTable::new(1024);
            let mut stored = 0;
            for (i, bits) in addrs.iter().enumerate() {
                let addr = IpAddr::V6((*bits).into());
                if table.expect(3, addr, 1).is_ok() {
                    prop_assert!(table.confirm(3, addr, [i as u8, 1, 2, 3, 4, 5], 1));
                    prop_assert_eq!(table.lookup(3, addr, 1), Neighbor::Reachable([i as u8, 1, 2, 3, 4, 5]));
                    stored += 1;
                }
            }
            prop_assert_eq!(table.resolved(1), stored);
        }
    }
}
