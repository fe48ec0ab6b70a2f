//! Connection exceptions: the flows whose backend is no longer the one the current Maglev table gives them, shared
//! between the nodes of a cluster so that a flow a router moves to another node keeps its backend even when the
//! backend set changed since it began.
//!
//! Three parts, none of them on the per-frame path except one probe:
//! - [`ExceptionScan`] walks one worker's connection table in pieces (a slot budget per turn, between bursts) after
//!   a service's table changed, and reports each connection whose backend differs from the new table's choice;
//! - [`ExceptionTable`] is the bounded side table a worker keeps of what its peers reported, consulted only when a
//!   frame that is not a SYN finds no connection (the caller turns a match into a normal connection entry);
//! - [`owner_worker`] says which worker of a node owns a flow, so that a received exception goes to that worker.
//!
//! Without peers, optionally (off by default), the side table also remembers the previous snapshot for a grace
//! period after a Maglev table changed: a non-SYN frame without a connection whose slot changed hands goes to the
//! previous table's backend. Its cost: a flow that began elsewhere *after* the change (by the new table) and that
//! a router moves here during the grace period is sent to the old backend, and breaks.

use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashMap;
use packet::FlowKey;

use crate::conntrack::ConnTable;
use crate::maglev::flow_hash;
use crate::rss;
use crate::service::SchedulerKind;
use crate::snapshot::{Service, Snapshot};

/// A connection whose backend differs from what the current table gives its flow. The service is the one the flow's
/// destination (VIP, port, protocol) names, as the data path finds it; the backend is named by address and port,
/// which every node agrees on (backend ids are local to a node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnException {
    /// The client's direction of the flow (client -> VIP).
    pub flow: FlowKey,
    pub backend_addr: IpAddr,
    pub backend_port: u16,
    /// The sender's snapshot generation when it found the exception (for diagnosis; generations are per node).
    pub generation: u64,
    /// Milliseconds the connection had left when the exception was found or last sent.
    pub lifetime_ms: u32,
}

/// Whether any Maglev service's table differs between `old` and `new` (by service key; a service that appeared or
/// went away counts): only then do connections need checking. Compares whole tables without allocating: a worker
/// calls it once per new snapshot, between bursts.
pub fn maglev_tables_differ(old: &Snapshot, new: &Snapshot) -> bool {
    fn maglev(snapshot: &Snapshot) -> impl Iterator<Item = &Service> + '_ {
        snapshot
            .services()
            .iter()
            .filter(|service| service.scheduler == SchedulerKind::Mh)
    }
    maglev(old).count() != maglev(new).count()
        || maglev(new).any(|service| {
            maglev(old)
                .find(|before| before.key == service.key)
                .is_none_or(|before| before.maglev != service.maglev)
        })
}

/// The worker of `workers` that owns requests of `flow` (the symmetric RSS hash of the 4-tuple, as the decision
/// steers them).
pub fn owner_worker(flow: &FlowKey, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    let hash = rss::SYMMETRIC_TABLE.tuple_hash(
        flow.src_addr,
        flow.dst_addr,
        flow.src_port,
        flow.dst_port,
        true,
    );
    rss::queue_of(hash, u32::from(workers)) as u16
}

/// A walk of one worker's connection table for exceptions, in pieces.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExceptionScan {
    /// The next primary slot to examine; `None` when no scan is under way.
    next_slot: Option<usize>,
    /// Exceptions reported by the scan under way.
    found: u64,
}

/// How far a [`ExceptionScan::step`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanProgress {
    Idle,
    /// The walk goes on at the next step.
    Running,
    /// The walk reached the end of the table in this step, having reported this many exceptions in all.
    Finished {
        found: u64,
    },
}

impl ExceptionScan {
    /// Starts the walk again from the first slot: a newer table supersedes whatever was under way.
    pub fn restart(&mut self) {
        self.next_slot = Some(0);
        self.found = 0;
    }

    pub fn is_running(&self) -> bool {
        self.next_slot.is_some()
    }

    /// Examines at most `budget` slots of `conns` and calls `report` for each live connection, of a Maglev service
    /// of `snapshot`, whose backend is still in the snapshot but is not the one the service's table gives its flow.
    /// When `report` refuses one (its queue is full), the walk stops there and resumes with it next time.
    pub fn step(
        &mut self,
        conns: &ConnTable,
        snapshot: &Snapshot,
        now_ms: u64,
        budget: usize,
        mut report: impl FnMut(ConnException) -> bool,
    ) -> ScanProgress {
        let Some(start) = self.next_slot else {
            return ScanProgress::Idle;
        };
        let mut resume = start.saturating_add(budget).min(conns.capacity());
        for (id, conn) in conns.iter_slots(start, budget) {
            if conn.is_expired(now_ms) {
                continue;
            }
            let Some(exception) = exception_of(
                snapshot,
                &conn.client,
                conn.backend,
                conn.expires_at,
                now_ms,
            ) else {
                continue;
            };
            if !report(exception) {
                resume = id.index();
                break;
            }
            self.found += 1;
        }
        if resume >= conns.capacity() {
            self.next_slot = None;
            ScanProgress::Finished { found: self.found }
        } else {
            self.next_slot = Some(resume);
            ScanProgress::Running
        }
    }
}

/// The exception of a connection of `flow` to `backend`, if the snapshot's table now gives the flow another
/// backend while this one is still in the service.
fn exception_of(
    snapshot: &Snapshot,
    flow: &FlowKey,
    backend: crate::service::BackendId,
    expires_at: u64,
    now_ms: u64,
) -> Option<ConnException> {
    let (service, record, _) = snapshot.backend(backend)?;
    if service.scheduler != SchedulerKind::Mh {
        return None;
    }
    let chosen = service.maglev.lookup_id(flow_hash(flow))?;
    if chosen == backend {
        return None;
    }
    Some(ConnException {
        flow: *flow,
        backend_addr: record.addr,
        backend_port: record.port,
        generation: snapshot.generation,
        lifetime_ms: expires_at.saturating_sub(now_ms).min(u64::from(u32::MAX)) as u32,
    })
}

/// What a peer said about one flow: its backend, until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Remembered {
    backend_addr: IpAddr,
    backend_port: u16,
    expires_at: u64,
}

/// Counters of a side table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionTableStats {
    /// Exceptions stored (new or refreshed).
    pub stored: u64,
    /// Exceptions refused because the table was full of live ones.
    pub refused_full: u64,
    /// Frames that found no connection but an exception, and became a connection to its backend.
    pub used: u64,
    /// Frames that found neither, and went to the remembered previous table's backend (the grace period).
    pub used_previous: u64,
}

/// One worker's bounded side table of its peers' exceptions. Allocated once at its capacity: storing never
/// allocates, a full table refuses (and counts) what does not fit once the expired entries are gone.
#[derive(Debug)]
pub struct ExceptionTable {
    entries: HashMap<FlowKey, Remembered>,
    capacity: usize,
    /// When a full table was last swept of expired entries: at most once per [`FULL_SWEEP_INTERVAL_MS`], so that
    /// a table full of live entries refuses in constant time rather than walking itself for each refusal.
    last_full_sweep_ms: Option<u64>,
    /// The snapshot before the last Maglev change, and until when it is consulted (the grace period).
    previous: Option<(Arc<Snapshot>, u64)>,
    stats: ExceptionTableStats,
}

/// How often a full side table may be swept of expired entries.
pub const FULL_SWEEP_INTERVAL_MS: u64 = 1000;

impl ExceptionTable {
    /// A table for at most `capacity` exceptions; 0 makes a table that stores nothing (exceptions off).
    pub fn new(capacity: usize) -> ExceptionTable {
        ExceptionTable {
            entries: HashMap::with_capacity(capacity),
            capacity,
            last_full_sweep_ms: None,
            previous: None,
            stats: ExceptionTableStats::default(),
        }
    }

    /// A table that stores nothing and never allocates.
    pub fn disabled() -> ExceptionTable {
        ExceptionTable::new(0)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> ExceptionTableStats {
        self.stats
    }

    /// Stores (or refreshes) `exception`, received at `now_ms`. Between bursts only: a full table is swept of
    /// expired entries (which walks it) at most once a second; between sweeps it refuses.
    pub fn store(&mut self, exception: &ConnException, now_ms: u64) -> bool {
        if exception.lifetime_ms == 0 {
            return false;
        }
        let remembered = Remembered {
            backend_addr: exception.backend_addr,
            backend_port: exception.backend_port,
            expires_at: now_ms.saturating_add(u64::from(exception.lifetime_ms)),
        };
        if let Some(entry) = self.entries.get_mut(&exception.flow) {
            *entry = remembered;
            self.stats.stored += 1;
            return true;
        }
        if self.entries.len() >= self.capacity {
            let sweep_due = self
                .last_full_sweep_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= FULL_SWEEP_INTERVAL_MS);
            if sweep_due {
                self.last_full_sweep_ms = Some(now_ms);
                self.entries.retain(|_, entry| entry.expires_at > now_ms);
            }
            if self.entries.len() >= self.capacity {
                self.stats.refused_full += 1;
                return false;
            }
        }
        self.entries.insert(exception.flow, remembered);
        self.stats.stored += 1;
        true
    }

    /// Consults `previous` for non-SYN misses until `until_ms` (the grace period). The caller keeps its own
    /// reference and releases it off the data path after [`ExceptionTable::forget_previous`].
    pub fn remember_previous(&mut self, previous: Arc<Snapshot>, until_ms: u64) {
        self.previous = Some((previous, until_ms));
    }

    /// Drops the remembered snapshot once its grace period is over (or at once with `now_ms` = `u64::MAX`);
    /// returns whether there was one to drop.
    pub fn forget_previous(&mut self, now_ms: u64) -> bool {
        match &self.previous {
            Some((_, until)) if now_ms >= *until => {
                self.previous = None;
                true
            }
            _ => false,
        }
    }

    pub fn remembers_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// For a frame of `flow` to `service` that is not a SYN and found no connection: the index in
    /// `service.backends` of the backend a peer said the flow has, if it is still there (the entry is taken out:
    /// the caller makes a connection of it); else, within a grace period, the backend the previous table gave the
    /// flow, when its slot changed hands and that backend is still in the service.
    #[inline]
    pub fn take(&mut self, flow: &FlowKey, service: &Service, now_ms: u64) -> Option<usize> {
        if !self.entries.is_empty() {
            if let Some(remembered) = self.entries.remove(flow) {
                if remembered.expires_at > now_ms {
                    let index = service.backends.iter().position(|backend| {
                        backend.addr == remembered.backend_addr
                            && backend.port == remembered.backend_port
                    });
                    if index.is_some() {
                        self.stats.used += 1;
                        return index;
                    }
                }
            }
        }
        let (previous, until) = self.previous.as_ref()?;
        if now_ms >= *until {
            return None;
        }
        let (_, before) = previous.service_for(flow.dst_addr, flow.dst_port, flow.protocol)?;
        if before.scheduler != SchedulerKind::Mh {
            return None;
        }
        let hash = flow_hash(flow);
        let old = before.backends.get(before.maglev.lookup(hash)?)?;
        let now = service.backends.get(service.maglev.lookup(hash)?)?;
        if (old.addr, old.port) == (now.addr, now.port) {
            return None;
        }
        let index = service
            .backends
            .iter()
            .position(|backend| backend.addr == old.addr && backend.port == old.port)?;
        self.stats.used_previous += 1;
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn flow(client: u32, port: u16) -> FlowKey {
        FlowKey {
            src_addr: IpAddr::V4(Ipv4Addr::from(client)),
            dst_addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)),
            src_port: port,
            dst_port: 80,
            protocol: 6,
        }
    }

    fn exception(flow: FlowKey, backend: u8, lifetime_ms: u32) -> ConnException {
        ConnException {
            flow,
            backend_addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, backend)),
            backend_port: 80,
            generation: 1,
            lifetime_ms,
        }
    }

    #[test]
    fn a_disabled_table_stores_nothing() {
        let mut table = ExceptionTable::disabled();
        assert!(!table.store(&exception(flow(1, 1), 1, 1000), 0));
        assert_eq!(table.stats().refused_full, 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_makes_room_from_expired_entries_only() {
        let mut table = ExceptionTable::new(2);
        assert!(table.store(&exception(flow(1, 1), 1, 100), 0));
        assert!(table.store(&exception(flow(2, 1), 1, 5000), 0));
        assert!(!table.store(&exception(flow(3, 1), 1, 1000), 50));
        // The first entry has expired, but the last sweep was less than a second ago.
        assert!(!table.store(&exception(flow(3, 1), 1, 1000), 500));
        assert!(table.store(&exception(flow(3, 1), 1, 1000), 1050));
        assert_eq!(table.len(), 2);
        assert_eq!(table.stats().refused_full, 2);
        // Refreshing a present entry needs no room.
        assert!(table.store(&exception(flow(2, 1), 2, 1000), 1100));
    }

    proptest! {
        /// Whatever is stored, the table never holds more than its capacity, and never more than was stored.
        #[test]
        fn the_table_stays_within_its_capacity(
            capacity in 0usize..16,
            stores in proptest::collection::vec((0u32..32, 1u16..4, 0u32..200, 0u64..400), 0..200),
        ) {
            let mut table = ExceptionTable::new(capacity);
            let mut now = 0;
            for (client, port, lifetime, advance) in stores {
                now += advance;
                table.store(&exception(flow(client, port), 1, lifetime), now);
                prop_assert!(table.len() <= capacity);
            }
        }
    }
}
