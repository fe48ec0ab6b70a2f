//! The fragment table: what was decided for each fragmented datagram's first fragment, so that the datagram's
//! later fragments, which carry no ports, get the same fate (the approach of the Maglev paper and of IPVS's
//! defragmentation, without reassembling).
//!
//! Bounded and preallocated: a fixed number of buckets of a few records each, found by a keyed hash (a sender
//! cannot aim many datagrams at one bucket), the oldest record of a full bucket replaced. Records live a few
//! seconds: long enough for a datagram's fragments, short enough that a reused IPv4 identifier does not meet a
//! stale record (the first fragment of a new datagram replaces the record in any case).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

use packet::{Fragment, FrameLayout, L3};

use super::{Action, DropReason, Forward};

/// Which datagram a fragment belongs to: RFC 791's (source, destination, protocol, identification) for IPv4,
/// RFC 8200's (source, destination, identification) for IPv6 (protocol 0: a later IPv6 fragment does not say it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatagramKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub protocol: u8,
}

impl DatagramKey {
    /// The datagram of a fragment; `None` for a whole datagram.
    pub fn of(layout: &FrameLayout) -> Option<DatagramKey> {
        let id = match layout.fragment {
            Fragment::None => return None,
            Fragment::First { id } | Fragment::Later { id } => id,
        };
        Some(DatagramKey {
            src: layout.flow.src_addr,
            dst: layout.flow.dst_addr,
            id,
            protocol: if layout.l3 == L3::Ipv4 {
                layout.protocol
            } else {
                0
            },
        })
    }
}

/// What becomes of a datagram's later fragments, taken from the decision about its first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramFate {
    /// Forwarded as the first fragment was (the same next hop and rewrite; a later fragment has no transport
    /// header, so only its IP header is rewritten).
    Forward(Forward),
    /// Handed to the worker the first fragment went to.
    Handoff {
        worker: u16,
    },
    ToKernel,
    Drop(DropReason),
}

impl DatagramFate {
    /// The fate a first fragment's action gives the rest of its datagram.
    pub fn of(action: &Action) -> DatagramFate {
        match *action {
            Action::Forward(forward) => DatagramFate::Forward(Forward {
                opened: false,
                ..forward
            }),
            Action::Handoff { worker } => DatagramFate::Handoff { worker },
            Action::ToKernel => DatagramFate::ToKernel,
            Action::Drop(reason) => DatagramFate::Drop(reason),
            Action::TooBig { .. } => DatagramFate::Drop(DropReason::TooBig),
            // An answered or consumed first fragment: the rest has no use.
            Action::AnswerArp
            | Action::AnswerEcho
            | Action::AnswerNeighborSolicitation
            | Action::Consumed => DatagramFate::Drop(DropReason::FragmentUnsupported),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Record {
    key: DatagramKey,
    fate: DatagramFate,
    expires_ms: u64,
}

/// Records per bucket.
const WAYS: usize = 4;

/// A bounded map from datagrams to their fate.
#[derive(Debug)]
pub struct FragmentTable {
    slots: Box<[Option<Record>]>,
    bucket_mask: usize,
    hasher: RandomState,
    lifetime_ms: u64,
    replaced: u64,
}

impl FragmentTable {
    /// Room for at least `capacity` datagrams, each remembered for `lifetime_ms`. Allocates: call it off the data
    /// path.
    pub fn new(capacity: usize, lifetime_ms: u64) -> FragmentTable {
        let buckets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        FragmentTable {
            slots: vec![None; buckets * WAYS].into_boxed_slice(),
            bucket_mask: buckets - 1,
            hasher: RandomState::new(),
            lifetime_ms,
            replaced: 0,
        }
    }

    fn bucket(&self, key: &DatagramKey) -> std::ops::Range<usize> {
        let start = (self.hasher.hash_one(key) as usize & self.bucket_mask) * WAYS;
        start..start + WAYS
    }

    /// Remembers `fate` for `key` until `now_ms` + the lifetime, replacing what was known of it; a full bucket
    /// gives up its oldest record.
    pub fn record(&mut self, key: DatagramKey, fate: DatagramFate, now_ms: u64) {
        let bucket = self.bucket(&key);
        let slots = &mut self.slots[bucket];
        let record = Record {
            key,
            fate,
            expires_ms: now_ms.saturating_add(self.lifetime_ms),
        };
        let place = slots
            .iter()
            .position(|slot| matches!(slot, Some(old) if old.key == key))
            .or_else(|| {
                slots
                    .iter()
                    .position(|slot| !matches!(slot, Some(old) if old.expires_ms > now_ms))
            });
        let place = match place {
            Some(place) => place,
            None => {
                self.replaced += 1;
                slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, slot)| slot.map_or(0, |old| old.expires_ms))
                    .map_or(0, |(place, _)| place)
            }
        };
        slots[place] = Some(record);
    }

    /// The fate of `key`'s datagram, if its first fragment was decided less than a lifetime ago.
    pub fn fate(&self, key: &DatagramKey, now_ms: u64) -> Option<DatagramFate> {
        self.slots[self.bucket(key)]
            .iter()
            .flatten()
            .find(|record| record.key == *key && record.expires_ms > now_ms)
            .map(|record| record.fate)
    }

    /// Live records given up for newer ones since the table was made (a sign it is too small).
    pub fn replaced(&self) -> u64 {
        self.replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> DatagramKey {
        DatagramKey {
            src: IpAddr::from([198, 51, 100, 1]),
            dst: IpAddr::from([10, 0, 0, 100]),
            id,
            protocol: 17,
        }
    }

    #[test]
    fn a_recorded_fate_is_found_until_it_expires() {
        let mut table = FragmentTable::new(64, 1000);
        table.record(key(1), DatagramFate::Handoff { worker: 1 }, 10);
        assert_eq!(
            table.fate(&key(1), 500),
            Some(DatagramFate::Handoff { worker: 1 })
        );
        assert_eq!(table.fate(&key(2), 500), None);
        assert_eq!(table.fate(&key(1), 1010), None);
        // A new first fragment of the same datagram replaces the record.
        table.record(key(1), DatagramFate::ToKernel, 20);
        assert_eq!(table.fate(&key(1), 30), Some(DatagramFate::ToKernel));
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_newest() {
        let mut table = FragmentTable::new(16, 60_000);
        for id in 0..10_000 {
            table.record(key(id), DatagramFate::ToKernel, u64::from(id));
        }
        assert_eq!(table.slots.len(), 16);
        let known = (0..10_000)
            .filter(|&id| table.fate(&key(id), 10_000).is_some())
            .count();
        assert_eq!(known, 16);
        assert!(table.replaced() >= 10_000 - 16);
        assert!(table.fate(&key(9_999), 10_000).is_some());
    }
}
