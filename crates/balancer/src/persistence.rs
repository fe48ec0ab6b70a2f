//! Client-address affinity with a timeout (keepalived's `persistence_timeout`, ipvsadm `-p` and `-M`): one worker's
//! table of (client address, service) -> backend.
//!
//! The caller masks the client address with the service's netmask and sets the expiry: IPVS keeps a persistence
//! template alive while it has connections; sluice refreshes the entry at every new connection of the client,
//! which keeps an active client on its backend for as long as it opens connections within the timeout.
//!
//! A backend that is removed, or drained to weight 0, is skipped for new connections by the caller (IPVS would keep
//! sending persistent clients to a weight-0 server; in sluice a drain drains). The table has a fixed capacity
//! allocated at construction; expiry is a clock hand advanced a bounded number of slots per call; when the table
//! is full a new client simply gets no affinity until entries expire.

use std::net::IpAddr;

use hashbrown::HashMap;
use thiserror::Error;

use crate::service::{BackendId, ServiceKey};

/// The table is full of live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("persistence table full")]
pub struct PersistenceFull;

#[derive(Clone, Copy, Debug)]
struct Entry {
    client: IpAddr,
    service: ServiceKey,
    backend: BackendId,
    expires_at_ms: u64,
}

/// One worker's persistence entries.
#[derive(Debug)]
pub struct PersistenceTable {
    index: HashMap<(IpAddr, ServiceKey), u32>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    hand: usize,
}

impl PersistenceTable {
    /// A table of `capacity` entries (at least one), allocated now.
    pub fn new(capacity: usize) -> PersistenceTable {
        let capacity = capacity.max(1);
        PersistenceTable {
            // Twice the entries: hashbrown then always rehashes in place over tombstones instead of growing, so
            // no insert allocates.
            index: HashMap::with_capacity(capacity * 2),
            slots: vec![None; capacity],
            free: (0..capacity as u32).rev().collect(),
            hand: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The backend `client` (already masked) is bound to for `service`, if the binding is alive at `now_ms`.
    #[inline]
    pub fn lookup(
        &mut self,
        client: IpAddr,
        service: ServiceKey,
        now_ms: u64,
    ) -> Option<BackendId> {
        let slot = *self.index.get(&(client, service))?;
        let entry = self.slots[slot as usize]?;
        (entry.expires_at_ms > now_ms).then_some(entry.backend)
    }

    /// Binds `client` to `backend` for `service` until `expires_at_ms`, replacing an existing binding.
    pub fn record(
        &mut self,
        client: IpAddr,
        service: ServiceKey,
        backend: BackendId,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), PersistenceFull> {
        if let Some(&slot) = self.index.get(&(client, service)) {
            if let Some(entry) = self.slots[slot as usize].as_mut() {
                entry.backend = backend;
                entry.expires_at_ms = expires_at_ms;
                return Ok(());
            }
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                // Reclaim a dead entry near the hand before refusing.
                self.expire(now_ms, 8);
                self.free.pop().ok_or(PersistenceFull)?
            }
        };
        self.slots[slot as usize] = Some(Entry {
            client,
            service,
            backend,
            expires_at_ms,
        });
        self.index.insert((client, service), slot);
        Ok(())
    }

    /// Examines at most `budget` slots from the clock hand, removing expired entries; returns how many it removed.
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> usize {
        let capacity = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(capacity) {
            let slot = self.hand;
            self.hand = (self.hand + 1) % capacity;
            if let Some(entry) = self.slots[slot] {
                if entry.expires_at_ms <= now_ms {
                    self.slots[slot] = None;
                    self.index.remove(&(entry.client, entry.service));
                    self.free.push(slot as u32);
                    removed += 1;
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::flow::ip_protocol::TCP;
    use proptest::prelude::*;

    fn service(port: u16) -> ServiceKey {
        ServiceKey {
            vip: IpAddr::V4([10, 0, 0, 100].into()),
            port,
            protocol: TCP,
        }
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::V4(i.into())
    }

    #[test]
    fn binds_until_expiry_and_per_service() {
        let mut table = PersistenceTable::new(8);
        table
            .record(client(1), service(80), BackendId(3), 1000, 0)
            .unwrap();
        assert_eq!(
            table.lookup(client(1), service(80), 999),
            Some(BackendId(3))
        );
        assert_eq!(table.lookup(client(1), service(80), 1000), None);
        assert_eq!(table.lookup(client(1), service(443), 10), None);
        assert_eq!(table.lookup(client(2), service(80), 10), None);
        // A refresh moves the expiry and may rebind.
        table
            .record(client(1), service(80), BackendId(4), 5000, 900)
            .unwrap();
        assert_eq!(
            table.lookup(client(1), service(80), 4000),
            Some(BackendId(4))
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn capacity_is_a_hard_bound_and_expiry_frees_room() {
        let mut table = PersistenceTable::new(4);
        for i in 0..4 {
            table
                .record(client(i), service(80), BackendId(i), 100, 0)
                .unwrap();
        }
        assert_eq!(
            table.record(client(9), service(80), BackendId(9), 200, 50),
            Err(PersistenceFull)
        );
        assert_eq!(table.len(), 4);
        // Once they are dead, recording reclaims room by itself.
        table
            .record(client(9), service(80), BackendId(9), 300, 150)
            .unwrap();
        assert_eq!(
            table.lookup(client(9), service(80), 200),
            Some(BackendId(9))
        );
    }

    #[test]
    fn expiry_is_budgeted() {
        let mut table = PersistenceTable::new(100);
        for i in 0..100 {
            table
                .record(client(i), service(80), BackendId(0), 10, 0)
                .unwrap();
        }
        assert_eq!(table.expire(20, 30), 30);
        assert_eq!(table.len(), 70);
        let mut sweeps = 0;
        while !table.is_empty() {
            table.expire(20, 30);
            sweeps += 1;
        }
        assert_eq!(sweeps, 3);
    }

    proptest! {
        #[test]
        fn live_entries_are_always_found(ops in proptest::collection::vec((0u32..20, 0u64..100, 1u64..50), 1..200)) {
            let mut table = PersistenceTable::new(16);
            let mut model: std::collections::HashMap<u32, (BackendId, u64)> = Default::default();
            for (step, (who, backend, ttl)) in ops.into_iter().enumerate() {
                let now = step as u64;
                table.expire(now, 4);
                model.retain(|_, (_, expires)| *expires > now);
                if table.record(client(who), service(80), BackendId(backend as u32), now + ttl, now).is_ok() {
                    model.insert(who, (BackendId(backend as u32), now + ttl));
                }
                prop_assert!(table.len() <= 16);
                for (&c, &(b, _)) in &model {
                    prop_assert_eq!(table.lookup(client(c), service(80), now), Some(b));
                }
            }
        }
    }
}
