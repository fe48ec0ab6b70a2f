//! The Linux IPVS schedulers (rr, wrr, lc, wlc, sed, nq, lblc, lblcr, dh, sh) over a service's backends, and
//! the connection counts they read. Maglev (mh) is in [`crate::maglev`].
//!
//! Semantics follow net/netfilter/ipvs/ip_vs_*.c: a backend of weight 0 takes no new connections; lc and wlc weigh
//! a backend by `active * 256 + inactive`; sed and nq by active connections; wrr steps through the weights by their
//! greatest common divisor so that weights 4, 3, 2 give `a a b a b c a b c`.
//!
//! Deviations forced by per-core state, each documented where it applies:
//! - IPVS counts connections per backend globally; sluice counts them per worker ([`LoadTable`]), so lc, wlc, sed,
//!   nq, lblc and lblcr balance each worker's share. With RSS spreading flows evenly over workers the sum behaves
//!   as IPVS does.
//! - rr and wrr positions, and the lblc/lblcr locality tables, are per worker and start afresh when a new
//!   configuration is published.
//! - lblc/lblcr tables have a fixed number of slots chosen at construction; two destinations hashing to one slot
//!   share it (the newer replaces the older), where IPVS would grow its table.
//! - sh falls back to the next bucket's server when the chosen one is unavailable (IPVS's `sh-fallback` flag,
//!   which sluice always sets); dh does not fall back, as IPVS.

use std::net::IpAddr;

use packet::FlowKey;
use thiserror::Error;

use crate::service::{Backend, BackendId, SchedulerKind};

/// Active and inactive connection counts per backend, indexed by [`BackendId`], for one worker.
#[derive(Clone, Debug)]
pub struct LoadTable {
    counts: Vec<(u32, u32)>,
}

impl LoadTable {
    /// A table for backend ids below `capacity`; counts of larger ids are not kept (they read as zero).
    pub fn new(capacity: usize) -> LoadTable {
        LoadTable {
            counts: vec![(0, 0); capacity],
        }
    }

    pub fn capacity(&self) -> usize {
        self.counts.len()
    }

    #[inline]
    fn slot(&mut self, id: BackendId) -> Option<&mut (u32, u32)> {
        self.counts.get_mut(id.0 as usize)
    }

    #[inline]
    pub fn connection_opened(&mut self, id: BackendId, active: bool) {
        if let Some((a, i)) = self.slot(id) {
            if active {
                *a = a.saturating_add(1);
            } else {
                *i = i.saturating_add(1);
            }
        }
    }

    #[inline]
    pub fn connection_closed(&mut self, id: BackendId, active: bool) {
        if let Some((a, i)) = self.slot(id) {
            if active {
                *a = a.saturating_sub(1);
            } else {
                *i = i.saturating_sub(1);
            }
        }
    }

    #[inline]
    pub fn became_active(&mut self, id: BackendId) {
        if let Some((a, i)) = self.slot(id) {
            *i = i.saturating_sub(1);
            *a = a.saturating_add(1);
        }
    }

    #[inline]
    pub fn became_inactive(&mut self, id: BackendId) {
        if let Some((a, i)) = self.slot(id) {
            *a = a.saturating_sub(1);
            *i = i.saturating_add(1);
        }
    }

    #[inline]
    pub fn active(&self, id: BackendId) -> u32 {
        self.counts.get(id.0 as usize).map_or(0, |&(a, _)| a)
    }

    #[inline]
    pub fn inactive(&self, id: BackendId) -> u32 {
        self.counts.get(id.0 as usize).map_or(0, |&(_, i)| i)
    }

    /// IPVS's connection overhead: `active * 256 + inactive`.
    #[inline]
    pub fn overhead(&self, id: BackendId) -> u64 {
        (u64::from(self.active(id)) << 8) + u64::from(self.inactive(id))
    }
}

/// A scheduler that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SchedulerError {
    #[error("mh is Maglev: build a MaglevTable for it (crate::maglev)")]
    Maglev,
}

/// Buckets of the dh and sh tables (IPVS's default).
const HASH_BUCKETS: usize = 256;
/// Slots of the lblc and lblcr locality tables.
pub const LOCALITY_SLOTS: usize = 4096;
/// Servers remembered per destination by lblcr.
const LBLCR_SET: usize = 4;
/// lblc/lblcr entries unused this long are forgotten (IPVS's `lblc_expiration` default, 24 hours).
pub const LOCALITY_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;
/// lblcr drops the most loaded server of a set unchanged this long (IPVS's `lblcr_expiration` default, 24 hours;
/// the 6-minute `ENTRY_TIMEOUT` there only reclaims whole entries when its table overflows).
pub const LBLCR_SHRINK_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Clone, Copy, Debug)]
struct LocalitySlot {
    destination: IpAddr,
    /// Backend ids (not indices: the set must survive reordering); `None` marks an empty member.
    members: [Option<BackendId>; LBLCR_SET],
    last_used_ms: u64,
    last_modified_ms: u64,
}

/// One worker's scheduler state for one service.
#[derive(Clone, Debug)]
pub struct IpvsScheduler {
    kind: SchedulerKind,
    /// rr / wrr position.
    position: usize,
    /// wrr current weight, maximum weight and gcd step.
    current_weight: i64,
    max_weight: i64,
    weight_step: i64,
    /// dh / sh: bucket -> backend index.
    buckets: Vec<Option<u32>>,
    /// lblc / lblcr.
    locality: Vec<Option<LocalitySlot>>,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[inline]
fn address_bucket(addr: IpAddr) -> usize {
    let folded = match addr {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u32) ^ ((bits >> 32) as u32) ^ ((bits >> 64) as u32) ^ ((bits >> 96) as u32)
        }
    };
    // IPVS's hash_32: multiplicative hashing by the golden ratio, top bits.
    (folded.wrapping_mul(0x9e37_79b9) >> 24) as usize % HASH_BUCKETS
}

#[inline]
fn available(backend: &Backend) -> bool {
    backend.weight > 0
}

impl IpvsScheduler {
    /// Scheduler state for `backends` (built off the data path: it allocates).
    pub fn new(kind: SchedulerKind, backends: &[Backend]) -> Result<IpvsScheduler, SchedulerError> {
        let mut scheduler = IpvsScheduler {
            kind,
            position: backends.len().saturating_sub(1),
            current_weight: 0,
            max_weight: 0,
            weight_step: 1,
            buckets: Vec::new(),
            locality: Vec::new(),
        };
        match kind {
            SchedulerKind::Mh => return Err(SchedulerError::Maglev),
            SchedulerKind::Wrr => {
                let weights = backends.iter().map(|b| u64::from(b.weight));
                scheduler.max_weight = weights.clone().max().unwrap_or(0) as i64;
                scheduler.weight_step = weights.filter(|&w| w > 0).fold(0, gcd).max(1) as i64;
            }
            SchedulerKind::Dh => {
                // IPVS dh: buckets assigned to the servers in turn, whatever their weight.
                scheduler.buckets = (0..HASH_BUCKETS)
                    .map(|bucket| (!backends.is_empty()).then(|| (bucket % backends.len()) as u32))
                    .collect();
            }
            SchedulerKind::Sh => {
                // IPVS sh: each available server takes as many consecutive turns as its weight.
                let mut turns = backends
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| available(b))
                    .flat_map(|(i, b)| {
                        std::iter::repeat_n(i as u32, b.weight.min(HASH_BUCKETS as u32) as usize)
                    })
                    .cycle();
                scheduler.buckets = (0..HASH_BUCKETS).map(|_| turns.next()).collect();
            }
            SchedulerKind::Lblc | SchedulerKind::Lblcr => {
                scheduler.locality = vec![None; LOCALITY_SLOTS];
            }
            _ => {}
        }
        Ok(scheduler)
    }

    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// The backend (index into `backends`) for a new connection of `flow`, or `None` when none is available.
    pub fn pick(
        &mut self,
        backends: &[Backend],
        load: &LoadTable,
        flow: &FlowKey,
        now_ms: u64,
    ) -> Option<usize> {
        match self.kind {
            SchedulerKind::Rr => self.round_robin(backends),
            SchedulerKind::Wrr => self.weighted_round_robin(backends),
            SchedulerKind::Lc => least_connection(backends, load),
            SchedulerKind::Wlc => weighted_least_connection(backends, load),
            SchedulerKind::Sed => shortest_expected_delay(backends, load),
            SchedulerKind::Nq => never_queue(backends, load),
            SchedulerKind::Dh => self.hashed(backends, flow.dst_addr, false),
            SchedulerKind::Sh => self.hashed(backends, flow.src_addr, true),
            SchedulerKind::Lblc => self.locality_based(backends, load, flow.dst_addr, now_ms),
            SchedulerKind::Lblcr => {
                self.locality_based_replicated(backends, load, flow.dst_addr, now_ms)
            }
            SchedulerKind::Mh => None,
        }
    }

    fn round_robin(&mut self, backends: &[Backend]) -> Option<usize> {
        let n = backends.len();
        for step in 1..=n {
            let candidate = (self.position + step) % n;
            if available(&backends[candidate]) {
                self.position = candidate;
                return Some(candidate);
            }
        }
        None
    }

    fn weighted_round_robin(&mut self, backends: &[Backend]) -> Option<usize> {
        let n = backends.len();
        if n == 0 || self.max_weight == 0 {
            return None;
        }
        // At most one full cycle of weights over all backends.
        let bound = n * (self.max_weight / self.weight_step + 1) as usize;
        for _ in 0..bound {
            self.position = (self.position + 1) % n;
            if self.position == 0 {
                self.current_weight -= self.weight_step;
                if self.current_weight <= 0 {
                    self.current_weight = self.max_weight;
                }
            }
            let backend = &backends[self.position];
            if available(backend) && i64::from(backend.weight) >= self.current_weight {
                return Some(self.position);
            }
        }
        None
    }

    fn hashed(&self, backends: &[Backend], addr: IpAddr, fallback: bool) -> Option<usize> {
        let bucket = address_bucket(addr);
        let tries = if fallback { HASH_BUCKETS } else { 1 };
        for offset in 0..tries {
            let Some(Some(index)) = self.buckets.get((bucket + offset) % HASH_BUCKETS) else {
                continue;
            };
            let index = *index as usize;
            if backends.get(index).is_some_and(available) {
                return Some(index);
            }
        }
        None
    }

    fn locality_slot(&mut self, destination: IpAddr, now_ms: u64) -> &mut Option<LocalitySlot> {
        let index = address_bucket_wide(destination) % LOCALITY_SLOTS;
        let slot = &mut self.locality[index];
        let stale = slot.is_some_and(|entry| {
            entry.destination != destination
                || now_ms.saturating_sub(entry.last_used_ms) >= LOCALITY_EXPIRY_MS
        });
        if stale {
            *slot = None;
        }
        slot
    }

    /// lblc: a destination stays on its server until that server is overloaded (more active connections than its
    /// weight while another server is under half its weight); then it moves to the least loaded (wlc).
    fn locality_based(
        &mut self,
        backends: &[Backend],
        load: &LoadTable,
        destination: IpAddr,
        now_ms: u64,
    ) -> Option<usize> {
        let slot = self.locality_slot(destination, now_ms);
        if let Some(entry) = slot {
            if let Some(index) = entry.members[0].and_then(|id| position_of(backends, id)) {
                let backend = &backends[index];
                if available(backend) && !is_overloaded(backend, backends, load) {
                    entry.last_used_ms = now_ms;
                    return Some(index);
                }
            }
        }
        let chosen = weighted_least_connection(backends, load)?;
        *slot = Some(LocalitySlot {
            destination,
            members: [Some(backends[chosen].id), None, None, None],
            last_used_ms: now_ms,
            last_modified_ms: now_ms,
        });
        Some(chosen)
    }

    /// lblcr: a destination has a set of servers; the least loaded member serves it; when that one is overloaded the
    /// least loaded server overall joins the set; a set unchanged for a while sheds its most loaded member.
    fn locality_based_replicated(
        &mut self,
        backends: &[Backend],
        load: &LoadTable,
        destination: IpAddr,
        now_ms: u64,
    ) -> Option<usize> {
        let slot = self.locality_slot(destination, now_ms);
        let entry = slot.get_or_insert(LocalitySlot {
            destination,
            members: [None; LBLCR_SET],
            last_used_ms: now_ms,
            last_modified_ms: now_ms,
        });
        entry.last_used_ms = now_ms;
        // Forget members that are gone or drained.
        for member in entry.members.iter_mut() {
            if member.is_some_and(|id| {
                position_of(backends, id).is_none_or(|i| !available(&backends[i]))
            }) {
                *member = None;
            }
        }
        let least_member = entry
            .members
            .iter()
            .flatten()
            .filter_map(|&id| position_of(backends, id))
            .min_by(|&a, &b| compare_weighted(backends, load, a, b));
        let serve = match least_member {
            Some(index) if !is_overloaded(&backends[index], backends, load) => index,
            _ => {
                let chosen = weighted_least_connection(backends, load)?;
                let id = backends[chosen].id;
                if !entry.members.contains(&Some(id)) {
                    // Take a free member place, or replace the most loaded member.
                    let place = entry
                        .members
                        .iter()
                        .position(Option::is_none)
                        .unwrap_or_else(|| {
                            most_loaded_member(&entry.members, backends, load).unwrap_or(0)
                        });
                    entry.members[place] = Some(id);
                    entry.last_modified_ms = now_ms;
                }
                chosen
            }
        };
        let members = entry.members.iter().flatten().count();
        if members > 1 && now_ms.saturating_sub(entry.last_modified_ms) >= LBLCR_SHRINK_MS {
            if let Some(place) = most_loaded_member(&entry.members, backends, load) {
                if entry.members[place] != Some(backends[serve].id) {
                    entry.members[place] = None;
                    entry.last_modified_ms = now_ms;
                }
            }
        }
        Some(serve)
    }
}

fn address_bucket_wide(addr: IpAddr) -> usize {
    let folded = match addr {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize
}

fn position_of(backends: &[Backend], id: BackendId) -> Option<usize> {
    backends.iter().position(|backend| backend.id == id)
}

fn most_loaded_member(
    members: &[Option<BackendId>; LBLCR_SET],
    backends: &[Backend],
    load: &LoadTable,
) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .filter_map(|(place, id)| Some((place, position_of(backends, (*id)?)?)))
        .max_by(|&(_, a), &(_, b)| compare_weighted(backends, load, a, b))
        .map(|(place, _)| place)
}

/// IPVS's overload test for lblc/lblcr: more active connections than weight, while some server is under half of
/// its weight.
fn is_overloaded(backend: &Backend, backends: &[Backend], load: &LoadTable) -> bool {
    if u64::from(load.active(backend.id)) <= u64::from(backend.weight) {
        return false;
    }
    backends.iter().any(|other| {
        available(other) && u64::from(load.active(other.id)) * 2 < u64::from(other.weight)
    })
}

/// Orders backends `a` and `b` by overhead per weight (cross-multiplied, as IPVS, to stay in integers).
fn compare_weighted(
    backends: &[Backend],
    load: &LoadTable,
    a: usize,
    b: usize,
) -> std::cmp::Ordering {
    let (a, b) = (&backends[a], &backends[b]);
    let left = u128::from(load.overhead(a.id)) * u128::from(b.weight.max(1));
    let right = u128::from(load.overhead(b.id)) * u128::from(a.weight.max(1));
    left.cmp(&right)
}

/// lc: the available backend with the least `active * 256 + inactive`; the first one on ties.
fn least_connection(backends: &[Backend], load: &LoadTable) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (index, backend) in backends.iter().enumerate() {
        if !available(backend) {
            continue;
        }
        let overhead = load.overhead(backend.id);
        if best.is_none_or(|(_, least)| overhead < least) {
            best = Some((index, overhead));
        }
    }
    best.map(|(index, _)| index)
}

/// Picks the available backend minimising `cost(backend) / weight`, comparing `cost_a * weight_b` with
/// `cost_b * weight_a` as IPVS does; the first one on ties.
fn least_by_weight(backends: &[Backend], cost: impl Fn(&Backend) -> u64) -> Option<usize> {
    let mut best: Option<(usize, u64, u32)> = None;
    for (index, backend) in backends.iter().enumerate() {
        if !available(backend) {
            continue;
        }
        let mine = cost(backend);
        let better = match best {
            None => true,
            Some((_, least, least_weight)) => {
                u128::from(mine) * u128::from(least_weight)
                    < u128::from(least) * u128::from(backend.weight)
            }
        };
        if better {
            best = Some((index, mine, backend.weight));
        }
    }
    best.map(|(index, _, _)| index)
}

/// wlc: least `(active * 256 + inactive) / weight`.
fn weighted_least_connection(backends: &[Backend], load: &LoadTable) -> Option<usize> {
    least_by_weight(backends, |backend| load.overhead(backend.id))
}

/// sed: least `(active + 1) / weight`.
fn shortest_expected_delay(backends: &[Backend], load: &LoadTable) -> Option<usize> {
    least_by_weight(backends, |backend| u64::from(load.active(backend.id)) + 1)
}

/// nq: an idle server (no active connections) if there is one, else sed.
fn never_queue(backends: &[Backend], load: &LoadTable) -> Option<usize> {
    backends
        .iter()
        .position(|backend| available(backend) && load.active(backend.id) == 0)
        .or_else(|| shortest_expected_delay(backends, load))
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::flow::ip_protocol::TCP;
    use proptest::prelude::*;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend {
                id: BackendId(i as u32),
                addr: IpAddr::V4([10, 1, 0, 11 + i as u8].into()),
                port: 80,
                weight,
                mac: None,
            })
            .collect()
    }

    fn flow(src: u32, dst: u32) -> FlowKey {
        FlowKey {
            src_addr: IpAddr::V4(src.into()),
            dst_addr: IpAddr::V4(dst.into()),
            src_port: 1000,
            dst_port: 80,
            protocol: TCP,
        }
    }

    fn sequence(kind: SchedulerKind, weights: &[u32], n: usize) -> String {
        let backends = backends(weights);
        let load = LoadTable::new(16);
        let mut scheduler = IpvsScheduler::new(kind, &backends).unwrap();
        (0..n)
            .map(|_| {
                scheduler
                    .pick(&backends, &load, &flow(1, 2), 0)
                    .map_or('-', |i| (b'a' + i as u8) as char)
            })
            .collect()
    }

    #[test]
    fn wrr_interleaves_as_ipvs() {
        assert_eq!(sequence(SchedulerKind::Wrr, &[4, 3, 2], 9), "aababcabc");
        assert_eq!(
            sequence(SchedulerKind::Wrr, &[4, 3, 2], 18),
            "aababcabcaababcabc"
        );
        // gcd stepping: 4, 2 behave as 2, 1.
        assert_eq!(sequence(SchedulerKind::Wrr, &[4, 2], 6), "aabaab");
        assert_eq!(sequence(SchedulerKind::Wrr, &[0, 1, 0], 3), "bbb");
        assert_eq!(sequence(SchedulerKind::Wrr, &[0, 0], 2), "--");
    }

    #[test]
    fn rr_cycles_and_skips_drained() {
        assert_eq!(sequence(SchedulerKind::Rr, &[1, 5, 1], 6), "abcabc");
        assert_eq!(sequence(SchedulerKind::Rr, &[1, 0, 1], 4), "acac");
        assert_eq!(sequence(SchedulerKind::Rr, &[], 1), "-");
    }

    #[test]
    fn least_connection_family_on_worked_loads() {
        let backends = backends(&[1, 2, 3]);
        let mut load = LoadTable::new(8);
        // a: 1 active, b: 2 active, c: 3 active (active * 256 each); inactive adds 1 per connection.
        for (id, active) in [(0, 1), (1, 2), (2, 3)] {
            for _ in 0..active {
                load.connection_opened(BackendId(id), true);
            }
        }
        let f = flow(1, 2);
        let pick = |kind| {
            IpvsScheduler::new(kind, &backends)
                .unwrap()
                .pick(&backends, &load, &f, 0)
        };
        // lc ignores weights: a has the least.
        assert_eq!(pick(SchedulerKind::Lc), Some(0));
        // wlc: overheads 256/1, 512/2, 768/3 tie; the first wins.
        assert_eq!(pick(SchedulerKind::Wlc), Some(0));
        // sed: (1+1)/1 = 2, (2+1)/2 = 1.5, (3+1)/3 = 1.33: c.
        assert_eq!(pick(SchedulerKind::Sed), Some(2));
        // nq: nobody idle, so sed's answer.
        assert_eq!(pick(SchedulerKind::Nq), Some(2));
        // An idle server wins nq outright even with the smallest weight; sed still prefers the expected delay.
        let mut with_idle = backends.clone();
        with_idle.push(Backend {
            id: BackendId(3),
            weight: 1,
            ..with_idle[0].clone()
        });
        let mut nq = IpvsScheduler::new(SchedulerKind::Nq, &with_idle).unwrap();
        assert_eq!(nq.pick(&with_idle, &load, &f, 0), Some(3));
        // wlc counts inactive connections at 1/256 of an active one.
        let mut load = LoadTable::new(8);
        load.connection_opened(BackendId(0), false);
        load.connection_opened(BackendId(0), false);
        load.connection_opened(BackendId(1), true);
        let equal = super::tests::backends(&[1, 1]);
        let mut wlc = IpvsScheduler::new(SchedulerKind::Wlc, &equal).unwrap();
        assert_eq!(wlc.pick(&equal, &load, &f, 0), Some(0));
        load.became_active(BackendId(0));
        load.became_active(BackendId(0));
        assert_eq!(wlc.pick(&equal, &load, &f, 0), Some(1));
    }

    #[test]
    fn dh_and_sh_are_stable_per_address_and_handle_drains() {
        let mut backends = backends(&[1, 1, 1]);
        let load = LoadTable::new(8);
        let mut dh = IpvsScheduler::new(SchedulerKind::Dh, &backends).unwrap();
        let mut sh = IpvsScheduler::new(SchedulerKind::Sh, &backends).unwrap();
        for host in 0..50u32 {
            let f = flow(0xc000_0200 + host, 0x0a00_0000 + host);
            let d = dh.pick(&backends, &load, &f, 0);
            let s = sh.pick(&backends, &load, &f, 0);
            for _ in 0..3 {
                assert_eq!(dh.pick(&backends, &load, &f, 0), d);
                assert_eq!(sh.pick(&backends, &load, &f, 0), s);
            }
        }
        // Drain the first: dh refuses its destinations, sh falls back to another server.
        backends[0].weight = 0;
        let mut refused = 0;
        for host in 0..200u32 {
            let f = flow(0xc000_0200 + host, 0x0a00_0000 + host);
            match dh.pick(&backends, &load, &f, 0) {
                None => refused += 1,
                Some(i) => assert_ne!(i, 0),
            }
            assert_ne!(sh.pick(&backends, &load, &f, 0), Some(0));
            assert!(sh.pick(&backends, &load, &f, 0).is_some());
        }
        assert!(refused > 20);
    }

    #[test]
    fn sh_buckets_follow_weights() {
        let backends = backends(&[3, 1]);
        let load = LoadTable::new(8);
        let mut sh = IpvsScheduler::new(SchedulerKind::Sh, &backends).unwrap();
        let mut counts = [0; 2];
        for host in 0..4000u32 {
            let f = flow(host.wrapping_mul(2_654_435_761), 1);
            counts[sh.pick(&backends, &load, &f, 0).unwrap()] += 1;
        }
        assert!(counts[0] > counts[1] * 2, "{counts:?}");
    }

    #[test]
    fn lblc_keeps_a_destination_until_its_server_is_overloaded() {
        let backends = backends(&[2, 2]);
        let mut load = LoadTable::new(8);
        let mut lblc = IpvsScheduler::new(SchedulerKind::Lblc, &backends).unwrap();
        let f = flow(1, 0x0a00_0001);
        let first = lblc.pick(&backends, &load, &f, 0).unwrap();
        // Load the chosen server up to its weight: still the same server.
        load.connection_opened(backends[first].id, true);
        load.connection_opened(backends[first].id, true);
        load.connection_opened(backends[1 - first].id, true);
        assert_eq!(lblc.pick(&backends, &load, &f, 10), Some(first));
        // Over its weight while the other is under half of its: it moves.
        load.connection_opened(backends[first].id, true);
        load.connection_closed(backends[1 - first].id, true);
        assert_eq!(lblc.pick(&backends, &load, &f, 20), Some(1 - first));
        // And stays there.
        assert_eq!(lblc.pick(&backends, &load, &f, 30), Some(1 - first));
        // An entry unused for the expiry time is forgotten: wlc decides again.
        assert!(lblc
            .pick(&backends, &load, &f, 30 + LOCALITY_EXPIRY_MS)
            .is_some());
    }

    #[test]
    fn lblcr_grows_its_set_under_load_and_sheds_later() {
        let backends = backends(&[1, 1, 1]);
        let mut load = LoadTable::new(8);
        let mut lblcr = IpvsScheduler::new(SchedulerKind::Lblcr, &backends).unwrap();
        let f = flow(1, 0x0a00_0002);
        let first = lblcr.pick(&backends, &load, &f, 0).unwrap();
        for _ in 0..2 {
            load.connection_opened(backends[first].id, true);
        }
        let second = lblcr.pick(&backends, &load, &f, 1).unwrap();
        assert_ne!(second, first, "an overloaded member makes the set grow");
        load.connection_opened(backends[second].id, true);
        // Within the set, the least loaded member serves.
        load.connection_closed(backends[first].id, true);
        load.connection_closed(backends[first].id, true);
        assert_eq!(lblcr.pick(&backends, &load, &f, 2), Some(first));
        // After the shrink interval the most loaded member leaves; the served one stays.
        let later = lblcr
            .pick(&backends, &load, &f, 2 + LBLCR_SHRINK_MS)
            .unwrap();
        assert_eq!(later, first);
    }

    #[test]
    fn mh_is_not_built_here() {
        assert_eq!(
            IpvsScheduler::new(SchedulerKind::Mh, &backends(&[1])).unwrap_err(),
            SchedulerError::Maglev
        );
    }

    fn kinds() -> impl Strategy<Value = SchedulerKind> {
        prop::sample::select(vec![
            SchedulerKind::Rr,
            SchedulerKind::Wrr,
            SchedulerKind::Lc,
            SchedulerKind::Wlc,
            SchedulerKind::Sed,
            SchedulerKind::Nq,
            SchedulerKind::Lblc,
            SchedulerKind::Lblcr,
            SchedulerKind::Dh,
            SchedulerKind::Sh,
        ])
    }

    proptest! {
        #[test]
        fn never_picks_a_drained_backend(
            kind in kinds(),
            weights in proptest::collection::vec(0u32..5, 1..8),
            loads in proptest::collection::vec((0u32..20, 0u32..20), 8),
            hosts in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let backends = backends(&weights);
            let mut load = LoadTable::new(8);
            for (id, &(active, inactive)) in loads.iter().enumerate() {
                for _ in 0..active { load.connection_opened(BackendId(id as u32), true); }
                for _ in 0..inactive { load.connection_opened(BackendId(id as u32), false); }
            }
            let mut scheduler = IpvsScheduler::new(kind, &backends).unwrap();
            for (t, host) in hosts.iter().enumerate() {
                let picked = scheduler.pick(&backends, &load, &flow(*host, host.rotate_left(7)), t as u64);
                if let Some(index) = picked {
                    prop_assert!(backends[index].weight > 0);
                }
                if weights.iter().all(|&w| w == 0) {
                    prop_assert_eq!(picked, None);
                } else if !matches!(kind, SchedulerKind::Dh) {
                    prop_assert!(picked.is_some());
                }
            }
        }

        #[test]
        fn wrr_is_proportional_over_a_cycle(weights in proptest::collection::vec(0u32..6, 1..6)) {
            let backends = backends(&weights);
            let load = LoadTable::new(8);
            let mut wrr = IpvsScheduler::new(SchedulerKind::Wrr, &backends).unwrap();
            let step = weights.iter().filter(|&&w| w > 0).fold(0u64, |g, &w| gcd(g, u64::from(w))).max(1);
            let cycle: u64 = weights.iter().map(|&w| u64::from(w) / step).sum();
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..cycle * 3 {
                counts[wrr.pick(&backends, &load, &flow(1, 2), 0).unwrap()] += 1;
            }
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(counts[i], 3 * u64::from(w) / step);
            }
        }

        #[test]
        fn rr_is_even(weights in proptest::collection::vec(1u32..4, 1..8), rounds in 1usize..5) {
            let backends = backends(&weights);
            let load = LoadTable::new(8);
            let mut rr = IpvsScheduler::new(SchedulerKind::Rr, &backends).unwrap();
            let mut counts = vec![0usize; weights.len()];
            for _ in 0..rounds * weights.len() {
                counts[rr.pick(&backends, &load, &flow(1, 2), 0).unwrap()] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c == rounds));
        }

        #[test]
        fn lc_picks_a_minimum(loads in proptest::collection::vec((0u32..10, 0u32..10), 1..8)) {
            let backends = backends(&vec![1; loads.len()]);
            let mut load = LoadTable::new(8);
            for (id, &(active, inactive)) in loads.iter().enumerate() {
                for _ in 0..active { load.connection_opened(BackendId(id as u32), true); }
                for _ in 0..inactive { load.connection_opened(BackendId(id as u32), false); }
            }
            let mut lc = IpvsScheduler::new(SchedulerKind::Lc, &backends).unwrap();
            let picked = lc.pick(&backends, &load, &flow(1, 2), 0).unwrap();
            let least = backends.iter().map(|b| load.overhead(b.id)).min().unwrap();
            prop_assert_eq!(load.overhead(backends[picked].id), least);
        }
    }
}
