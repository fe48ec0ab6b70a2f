//! The table: entries, index and side arrays put together, with the policies of insertion, eviction, expiry and
//! FULLNAT port ownership, and the single-key and burst lookups.

use std::hash::BuildHasher;
use std::hint::cold_path;

use packet::flow::ip_protocol;
use packet::{FlowKey, PlainFrame};
use thiserror::Error;

use super::conn::{
    conn_of, endpoints_of, is_active, is_evictable, ClientEndpoints, ClientHit, Conn, ConnId,
    Endpoint, Forwarding, Hit, Inserted, RemovedConn, ReplyPath, Target, Transition, WireEndpoints,
};
use super::entry::{Entry, Kind, NIL};
use super::index::{Index, Probe};
use super::key::{ipv4_bits, ConnKey};
use super::lists::{ListId, Lists, Occupancy};
use super::memory::{boxed_slice, EdgeHooks};
use super::prefetch::prefetch;
use super::tcp_state::{Direction, TcpState, TcpTimeoutTable, Timeouts, TrackedPath};
use crate::port_alloc::{LocalEndpoint, PortAllocator, PortError};
use crate::service::{BackendId, ForwardingMode};

/// A table that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum TableConfigError {
    #[error("a connection table needs a capacity of at least one")]
    ZeroCapacity,
    #[error("capacity {0} exceeds the largest supported ({max})", max = ConnTable::MAX_CAPACITY)]
    CapacityTooLarge(usize),
}

/// Why a connection was not inserted. Each is a counted drop in the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum InsertError {
    #[error("a live connection already has this key")]
    Exists(ConnId),
    #[error("the reply key is held by another live connection (one not yet finished, if TCP)")]
    ReplyKeyInUse(ConnId),
    #[error("the reply key equals the client's key (backend and client share address and port)")]
    ReplyIsClientKey,
    #[error("table full of established connections")]
    TableFull,
    #[error("FULLNAT needs local addresses and this table has none")]
    NoLocalAddresses,
    #[error("FULLNAT local port: {0}")]
    LocalPort(#[from] PortError),
    #[error("NAT between address families: client and backend must both be IPv4 or both IPv6")]
    FamilyMismatch,
}

/// Cumulative counts of what the table removed and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub inserted: u64,
    pub expired: u64,
    pub evicted: u64,
    /// Dead entries removed because a new insert needed their key.
    pub displaced: u64,
    pub removed: u64,
}

/// Keys staged per round of [`ConnTable::lookup_burst`]: enough to cover a receive burst, small enough for the
/// staging arrays to live on the stack.
const BURST: usize = 64;

/// How far down the eviction order an insert looks for a connection holding a secondary entry when those run
/// out (tables built with fewer two-entry connections than connections only).
const SECONDARY_VICTIM_SEARCH: usize = 32;

/// The entries of a key's home bucket whose signatures match, read in the second stage of a staged lookup
/// ([`ConnTable::prefetch_candidates_with`]), with the bucket's version they were read at: an insert or removal in
/// that bucket in between (an earlier frame of the same burst opening a connection there) makes the lookup match
/// the signatures afresh, and one anywhere else leaves them valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidates {
    slots: u32,
    version: u32,
}

impl Candidates {
    /// No entry in the home bucket has the key's signature: unless the bucket overflowed, the key is not in the
    /// table.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }
}

/// Two-entry connections whose lines a core's own cache (L2) holds, about: see
/// [`ConnTable::linked_outgrow_cache`].
const LINKED_IN_CACHE: usize = 16 * 1024;

/// Entry lines (64 bytes each) that a core's own cache (L2) holds beside the rest of a worker's working set,
/// about: see [`ConnTable::entries_outgrow_cache`].
const ENTRIES_IN_CACHE: usize = 8 * 1024;

/// One worker's connection table. See the module documentation for the layout and policies.
pub struct ConnTable {
    /// Primaries `0..capacity`, then the secondaries.
    entries: Box<[Entry]>,
    index: Index,
    lists: Lists,
    occupied: Occupancy,
    capacity: usize,
    /// Free-entry stacks, chained through [`Entry::link`]: the most recently freed line is reused first, while
    /// it may still be cached.
    free_primary: u32,
    free_secondary: u32,
    seed: u64,
    /// The edge's prefetch instruction, if it lent one.
    prefetcher: Option<fn(*const u8)>,
    len: usize,
    /// Connections whose client's packets read a second entry (FULLNAT; DR, TUN and NAT to IPv6 backends):
    /// those with a second entry and no inline backend.
    linked: usize,
    /// The next primary entry the expiry clock hand examines.
    hand: usize,
    timeouts: Timeouts,
    /// `timeouts` for TCP as a table by state, kept with it.
    tcp_timeouts: TcpTimeoutTable,
    ports: Option<PortAllocator>,
    stats: TableStats,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("two_entry_capacity", &self.two_entry_capacity())
            .field("stats", &self.stats)
            .finish()
    }
}

impl ConnTable {
    /// The largest capacity: with as many secondary entries, every entry number stays below `u32::MAX`, which marks "no entry".
    pub const MAX_CAPACITY: usize = (u32::MAX >> 1) as usize;

    /// Bytes of one entry (one cache line).
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

    /// A table of `capacity` connections without FULLNAT support, any of which may take two entries.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Result<Self, TableConfigError> {
        Self::with_two_entry_limit(capacity, capacity, timeouts, None)
    }

    /// A table of `capacity` connections, any of which may take two entries, that hands FULLNAT flows local ports
    /// from `ports`.
    pub fn with_local_ports(
        capacity: usize,
        timeouts: Timeouts,
        ports: PortAllocator,
    ) -> Result<Self, TableConfigError> {
        Self::with_two_entry_limit(capacity, capacity, timeouts, Some(ports))
    }

    /// A table of `capacity` connections of which at most `two_entry` (clamped to `capacity`) hold a second
    /// entry: NAT and FULLNAT connections (their reply key) and DR or TUN connections to an IPv6 backend (its
    /// address). A table for DR and TUN to IPv4 backends needs none, and then costs 88 bytes per connection
    /// instead of 168. When the second entries run out, an insert that needs one evicts the oldest sacrificable
    /// connection holding one (looking a short way down the eviction order) or fails with
    /// [`InsertError::TableFull`].
    pub fn with_two_entry_limit(
        capacity: usize,
        two_entry: usize,
        timeouts: Timeouts,
        ports: Option<PortAllocator>,
    ) -> Result<Self, TableConfigError> {
        Self::with_hooks(capacity, two_entry, timeouts, ports, EdgeHooks::default())
    }

    /// [`ConnTable::with_two_entry_limit`] with the I/O edge's hooks for memory advice and prefetching.
    pub fn with_hooks(
        capacity: usize,
        two_entry: usize,
        timeouts: Timeouts,
        ports: Option<PortAllocator>,
        hooks: EdgeHooks,
    ) -> Result<Self, TableConfigError> {
        if capacity == 0 {
            return Err(TableConfigError::ZeroCapacity);
        }
        if capacity > Self::MAX_CAPACITY {
            return Err(TableConfigError::CapacityTooLarge(capacity));
        }
        let secondary = two_entry.min(capacity);
        let total = capacity + secondary;
        // Two free stacks, each in ascending order.
        let entries = boxed_slice(total, hooks.advise_memory, |i| {
            let next = i + 1;
            Entry::free(if next == capacity || next == total {
                NIL
            } else {
                next as u32
            })
        });
        Ok(ConnTable {
            entries,
            // Every primary and every secondary may be indexed (spills are not, so this is an upper bound).
            index: Index::new(total, hooks.advise_memory),
            lists: Lists::new(capacity, hooks.advise_memory),
            occupied: Occupancy::new(capacity),
            capacity,
            free_primary: 0,
            free_secondary: if secondary > 0 { capacity as u32 } else { NIL },
            seed: std::collections::hash_map::RandomState::new().hash_one(0x736c_7569_6365_u64),
            prefetcher: hooks.prefetch,
            len: 0,
            linked: 0,
            hand: 0,
            tcp_timeouts: TcpTimeoutTable::new(&timeouts),
            timeouts,
            ports,
            stats: TableStats::default(),
        })
    }

    /// Live and not yet removed connections (dead ones count until removed).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many connections may hold a second entry at once.
    pub fn two_entry_capacity(&self) -> usize {
        self.entries.len() - self.capacity
    }

    /// How many keys the index can hold at most half full (stays the same for the table's life).
    pub fn index_capacity_reserved(&self) -> usize {
        self.index.slots()
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Idle timeouts from now on (ipvsadm --set): each connection takes the new one at its next packet; until then
    /// it keeps the expiry it has.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.tcp_timeouts = TcpTimeoutTable::new(&timeouts);
        self.timeouts = timeouts;
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// The FULLNAT port allocator, if the table has one.
    pub fn ports(&self) -> Option<&PortAllocator> {
        self.ports.as_ref()
    }

    /// Memory this table holds, in bytes: entries, index buckets, list links and the occupancy bitmap.
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * Self::ENTRY_BYTES
            + self.index.bytes()
            + self.lists.bytes()
            + self.occupied.bytes()
    }

    /// The hash of `key` in this table (seeded per table), for callers that stage keys for
    /// [`ConnTable::lookup_burst`] or [`ConnTable::lookup_key`].
    #[inline]
    pub fn hash(&self, key: &ConnKey) -> u32 {
        key.hash_with(self.seed)
    }

    /// The key of a plain frame (see [`packet::parse_plain`]), read from its bytes, and the key's hash; `None`
    /// when `frame` is not the one `plain` describes.
    #[inline(always)]
    pub fn plain_key(&self, frame: &[u8], plain: &PlainFrame) -> Option<(ConnKey, u32)> {
        ConnKey::of_plain_hashed(frame, plain, self.seed)
    }

    /// Starts loading the index bucket of `hash`, ahead of a lookup of its key.
    #[inline]
    pub fn prefetch(&self, hash: u32) {
        prefetch(
            self.prefetcher,
            self.index.bucket(self.index.probe(hash).bucket),
        );
    }

    /// [`ConnTable::prefetch`] through the caller's own prefetch (statically dispatched, so it inlines).
    #[inline(always)]
    pub fn prefetch_with(&self, hash: u32, prefetch: impl Fn(*const u8)) {
        let bucket: *const _ = self.index.bucket(self.index.probe(hash).bucket);
        prefetch(bucket.cast());
    }

    /// Starts loading, through the caller's own prefetch, the entries whose signatures match `hash` in its home
    /// bucket: the second stage of a staged lookup, once the bucket is on its way. Returns those candidates, so
    /// that the lookup itself need not compare the signatures again.
    #[inline(always)]
    pub fn prefetch_candidates_with(&self, hash: u32, prefetch: impl Fn(*const u8)) -> Candidates {
        let probe = self.index.probe(hash);
        let bucket = self.index.bucket(probe.bucket);
        let slots = bucket.matching(probe.sig);
        let mut pending = slots;
        while pending != 0 {
            let entry: *const _ = &self.entries[bucket.entry(pending.trailing_zeros()) as usize];
            prefetch(entry.cast());
            pending &= pending - 1;
        }
        Candidates {
            slots,
            version: bucket.version(),
        }
    }

    /// Whether [`ConnTable::prefetch_candidates_with`] is worth a pass over a burst: when the entries outgrow a
    /// core's own cache (8K lines: 512 KB). Below that every entry is found in cache, and the pass (a second
    /// probe of each key's bucket, its candidates kept for the lookup) only costs time: the lookup compares the
    /// signatures itself.
    #[inline]
    pub fn entries_outgrow_cache(&self) -> bool {
        self.len + self.linked >= ENTRIES_IN_CACHE
    }

    /// Whether [`ConnTable::prefetch_linked_with`] is worth a pass over a burst: when so many connections read a
    /// second entry on their client's packets that their lines outgrow a core's own cache (16K connections of
    /// two 64-byte lines: 2 MB). Below that the second entry is found in cache, and the pass only cost time
    /// (FULLNAT 4 % slower at 1K flows); NAT connections to IPv4 backends, whose backend is inline, do not count
    /// (the pass cost NAT 5 % at 100K flows of client packets).
    #[inline]
    pub fn linked_outgrow_cache(&self) -> bool {
        self.linked >= LINKED_IN_CACHE
    }

    /// The third stage of a staged lookup, once the candidate entries are on their way: when the key's first
    /// candidate is one half of a two-entry connection and a packet on it reads the other half (a reply entry's
    /// primary; a primary's second entry, unless the backend is inline), starts loading that other half, through
    /// the caller's own prefetch. Otherwise the packet would wait for that line after its first, one at a time.
    #[inline(always)]
    pub fn prefetch_linked_with(
        &self,
        hash: u32,
        candidates: Candidates,
        prefetch: impl Fn(*const u8),
    ) {
        if candidates.is_empty() {
            return;
        }
        let bucket = self.index.bucket(self.index.probe(hash).bucket);
        if candidates.version != bucket.version() {
            return;
        }
        let entry = &self.entries[bucket.entry(candidates.slots.trailing_zeros()) as usize];
        if entry.link != NIL && !entry.backend_inline {
            if let Some(other) = self.entries.get(entry.link as usize) {
                prefetch(std::ptr::from_ref(other).cast());
            }
        }
    }

    /// [`ConnTable::find`] starting from the home bucket's `candidates`, when they are still true.
    #[inline(always)]
    fn find_staged(&self, key: &ConnKey, hash: u32, candidates: Option<Candidates>) -> Option<u32> {
        let Some(candidates) = candidates else {
            return self.find(key, hash);
        };
        let probe = self.index.probe(hash);
        let bucket = self.index.bucket(probe.bucket);
        let mut pending = if candidates.version == bucket.version() {
            candidates.slots
        } else {
            bucket.matching(probe.sig)
        };
        while pending != 0 {
            let entry = bucket.entry(pending.trailing_zeros());
            if self.entries[entry as usize].matches(key) {
                return Some(entry);
            }
            pending &= pending - 1;
        }
        if !bucket.overflowed() {
            return None;
        }
        self.index
            .find_from(self.index.next(probe.bucket), probe.sig, |entry| {
                self.entries[entry as usize].matches(key)
            })
    }

    #[inline]
    fn find(&self, key: &ConnKey, hash: u32) -> Option<u32> {
        self.index
            .find(hash, |entry| self.entries[entry as usize].matches(key))
    }

    /// The connection an indexed entry belongs to.
    #[inline]
    fn owner(&self, entry: u32) -> u32 {
        let e = &self.entries[entry as usize];
        if e.is(Kind::Reply) {
            e.link
        } else {
            entry
        }
    }

    /// When the connection of an indexed entry dies. Only a connection's primary entry keeps the expiry: a reply
    /// entry defers to it, so that a client's packet writes one line, not two (a reply's lookup reads the primary
    /// entry to forward anyway).
    #[inline(always)]
    fn expiry_of(&self, entry: &Entry) -> u64 {
        if entry.is(Kind::Reply) {
            self.entries[entry.link as usize].expires_at
        } else {
            entry.expires_at
        }
    }

    /// The hit an indexed entry stands for, if its connection is alive at `now`. Dead entries are invisible.
    #[inline(always)]
    fn hit(&self, entry: u32, now: u64) -> Option<Hit> {
        let e = &self.entries[entry as usize];
        if self.expiry_of(e) <= now {
            return None;
        }
        Some(if e.is(Kind::Reply) {
            Hit {
                id: ConnId(e.link),
                direction: Direction::Reply,
            }
        } else {
            Hit {
                id: ConnId(entry),
                direction: Direction::Original,
            }
        })
    }

    /// The live connection `key` belongs to, in either direction.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u64) -> Option<Hit> {
        let key = ConnKey::from_flow(key);
        self.lookup_key(&key, self.hash(&key), now)
    }

    /// [`ConnTable::lookup`] of a staged key and its [`ConnTable::hash`].
    #[inline]
    pub fn lookup_key(&self, key: &ConnKey, hash: u32, now: u64) -> Option<Hit> {
        self.hit(self.find(key, hash)?, now)
    }

    /// The lookup of a client's packet with TCP `flags` (ignored for other protocols) under a staged `key` and
    /// `hash` (and the `candidates` its second stage read, if any), with the common accounting folded in: when the packet leaves the connection's state as it was, its
    /// expiry is pushed out here, on the line the lookup just read, and nothing else is left to do. Equivalent to
    /// [`ConnTable::lookup_key`] followed by [`ConnTable::touch`] for those packets.
    #[inline(always)]
    pub fn client_hit(
        &mut self,
        key: &ConnKey,
        hash: u32,
        candidates: Option<Candidates>,
        now: u64,
        flags: u8,
    ) -> ClientHit {
        let Some(index) = self.find_staged(key, hash, candidates) else {
            cold_path();
            return ClientHit::Absent;
        };
        let found = &self.entries[index as usize];
        if !found.is(Kind::Original) {
            cold_path();
            if self.expiry_of(found) <= now {
                return ClientHit::Missed;
            }
            return ClientHit::Reply(Hit {
                id: ConnId(found.link),
                direction: Direction::Reply,
            });
        }
        let entry = &self.entries[index as usize];
        if entry.expires_at <= now {
            cold_path();
            return ClientHit::Missed;
        }
        let (id, backend, mode) = (ConnId(index), BackendId(entry.backend), entry.mode());
        if self.refresh_entry(index, Direction::Original, flags, now) {
            ClientHit::Refreshed { id, backend, mode }
        } else {
            cold_path();
            ClientHit::Changing { id, backend, mode }
        }
    }

    /// Pushes out the expiry of connection `id` for a packet travelling in `direction` with TCP `flags` that
    /// leaves its state as it is, and says so; `false`, with nothing changed, when the packet changes the state
    /// (the caller then takes [`ConnTable::touch`]) or no connection is at `id`. Equivalent to `touch` for those
    /// packets.
    #[inline(always)]
    pub fn refresh(&mut self, id: ConnId, direction: Direction, flags: u8, now: u64) -> bool {
        self.primary(id).is_some() && self.refresh_entry(id.0, direction, flags, now)
    }

    /// [`ConnTable::refresh`] of the primary entry at `index`.
    #[inline(always)]
    fn refresh_entry(&mut self, index: u32, direction: Direction, flags: u8, now: u64) -> bool {
        let entry = &mut self.entries[index as usize];
        let protocol = entry.protocol();
        let timeout = if protocol != ip_protocol::TCP {
            self.timeouts.for_protocol(protocol, entry.state())
        } else if entry.kept_by(direction, flags) {
            // A plain ACK in a state it keeps (ESTABLISHED, or CLOSE for a flow picked up mid-stream): the bulk of
            // all traffic, decided by one bit test of the stored state.
            self.tcp_timeouts.of_byte(entry.state_byte())
        } else {
            cold_path();
            let state = entry.state();
            let path = TrackedPath::of(entry.mode(), direction);
            if state.next(path, flags) != state {
                return false;
            }
            self.tcp_timeouts.of(state)
        };
        entry.expires_at = now.saturating_add(timeout);
        true
    }

    /// Looks up every `keys[i]` (with `hashes[i]` from [`ConnTable::hash`]) into `out[i]`, exactly as
    /// [`ConnTable::lookup_key`] would, but in stages so the cache misses of different keys overlap, in the shape
    /// of `rte_hash_lookup_bulk`: prefetch every key's bucket, then compare signatures and prefetch the candidate
    /// entries, then compare full keys and expiry.
    ///
    /// # Panics
    /// When `hashes` is not as long as `keys` or `out` is shorter.
    pub fn lookup_burst(
        &self,
        keys: &[ConnKey],
        hashes: &[u32],
        now: u64,
        out: &mut [Option<Hit>],
    ) {
        assert_eq!(keys.len(), hashes.len(), "one hash per key");
        assert!(out.len() >= keys.len(), "one output per key");
        for ((keys, hashes), out) in keys
            .chunks(BURST)
            .zip(hashes.chunks(BURST))
            .zip(out.chunks_mut(BURST))
        {
            let mut probes = [Probe { bucket: 0, sig: 0 }; BURST];
            for (probe, &hash) in probes.iter_mut().zip(hashes) {
                *probe = self.index.probe(hash);
                prefetch(self.prefetcher, self.index.bucket(probe.bucket));
            }
            let mut candidates = [0u32; BURST];
            for (mask, probe) in candidates.iter_mut().zip(&probes[..keys.len()]) {
                let bucket = self.index.bucket(probe.bucket);
                *mask = bucket.matching(probe.sig);
                let mut pending = *mask;
                while pending != 0 {
                    prefetch(
                        self.prefetcher,
                        &self.entries[bucket.entry(pending.trailing_zeros()) as usize],
                    );
                    pending &= pending - 1;
                }
            }
            for (i, (key, out)) in keys.iter().zip(out.iter_mut()).enumerate() {
                let probe = probes[i];
                let bucket = self.index.bucket(probe.bucket);
                let mut pending = candidates[i];
                let mut found = None;
                while pending != 0 {
                    let entry = bucket.entry(pending.trailing_zeros());
                    if self.entries[entry as usize].matches(key) {
                        found = Some(entry);
                        break;
                    }
                    pending &= pending - 1;
                }
                if found.is_none() && bucket.overflowed() {
                    // Rare: the key may live past a full home bucket.
                    found =
                        self.index
                            .find_from(self.index.next(probe.bucket), probe.sig, |entry| {
                                self.entries[entry as usize].matches(key)
                            });
                }
                *out = found.and_then(|entry| self.hit(entry, now));
            }
        }
    }

    /// The primary entry of `id`, if a connection holds it.
    #[inline(always)]
    fn primary(&self, id: ConnId) -> Option<&Entry> {
        // Only the primary slots (below `capacity`) ever hold an original entry, so its kind alone places it.
        self.entries
            .get(id.index())
            .filter(|entry| entry.is(Kind::Original))
    }

    /// The connection at `id` (dead or alive), rebuilt from its entries.
    #[inline]
    pub fn get(&self, id: ConnId) -> Option<Conn> {
        self.primary(id).map(|entry| self.conn_of(entry))
    }

    /// The backend and mode of connection `id`: all a DR connection needs to forward, read from the primary entry
    /// alone.
    #[inline(always)]
    pub fn backend_and_mode(&self, id: ConnId) -> Option<(BackendId, ForwardingMode)> {
        let entry = self.primary(id)?;
        Some((BackendId(entry.backend), entry.mode()))
    }

    /// Whether IPVS counts connection `id` as active (TCP in ESTABLISHED, any other protocol always).
    #[inline]
    pub fn is_active(&self, id: ConnId) -> Option<bool> {
        let entry = self.primary(id)?;
        Some(is_active(entry.protocol(), entry.state()))
    }

    /// What forwarding the client's packets of connection `id` needs, without the client key.
    #[inline(always)]
    pub fn forwarding(&self, id: ConnId) -> Option<Forwarding> {
        let entry = self.primary(id)?;
        let (backend_endpoint, local) = self.endpoints_of(entry);
        Some(Forwarding {
            backend: BackendId(entry.backend),
            mode: entry.mode(),
            backend_endpoint,
            local,
        })
    }

    /// What sending a backend's reply of connection `id` back to its client needs, from the primary entry alone.
    #[inline(always)]
    pub fn reply_path(&self, id: ConnId) -> Option<ReplyPath> {
        let entry = self.primary(id)?;
        Some(ReplyPath {
            client: entry.key(),
            backend: BackendId(entry.backend),
            mode: entry.mode(),
        })
    }

    /// [`ConnTable::forwarding`]'s endpoints in the form the rewrites take (see [`WireEndpoints`]).
    #[inline(always)]
    pub fn wire_endpoints(&self, id: ConnId) -> Option<WireEndpoints> {
        self.client_endpoints(id).map(WireEndpoints::from)
    }

    /// [`ConnTable::wire_endpoints`] as the entry holds them: a backend held inline as it is, so that the NAT of
    /// a client's frame to an IPv4 backend takes the address as one word.
    #[inline(always)]
    pub fn client_endpoints(&self, id: ConnId) -> Option<ClientEndpoints> {
        let entry = self.primary(id)?;
        Some(if entry.backend_inline {
            ClientEndpoints::InlineV4 {
                backend: u32::from_ne_bytes(entry.backend_v4.to_be_bytes()),
                port: entry.backend_port,
            }
        } else {
            // The second entry's key runs from the backend (to the local endpoint, for FULLNAT).
            let second = &self.entries[entry.link as usize].key();
            ClientEndpoints::Linked(WireEndpoints {
                backend: second.src_wire(),
                backend_port: second.src_port(),
                local: (entry.mode() == ForwardingMode::FullNat)
                    .then(|| (second.dst_wire(), second.dst_port())),
            })
        })
    }

    /// The backend endpoint and (FULLNAT) local endpoint of a connection's primary entry.
    #[inline(always)]
    fn endpoints_of(&self, entry: &Entry) -> (Endpoint, Option<Endpoint>) {
        endpoints_of(entry, || self.entries[entry.link as usize].key())
    }

    fn conn_of(&self, entry: &Entry) -> Conn {
        conn_of(entry, || self.entries[entry.link as usize].key())
    }

    /// Accounts one packet of connection `id` travelling in `direction` with TCP `flags` (ignored for other
    /// protocols): advances the TCP state and pushes the expiry out by the new state's timeout. `None` when no
    /// connection is at `id`.
    #[inline]
    pub fn touch(
        &mut self,
        id: ConnId,
        direction: Direction,
        flags: u8,
        now: u64,
    ) -> Option<Transition> {
        self.primary(id)?;
        let timeouts = self.timeouts;
        let entry = &mut self.entries[id.index()];
        let protocol = entry.protocol();
        let from = entry.state();
        let to = if protocol == ip_protocol::TCP {
            from.next(TrackedPath::of(entry.mode(), direction), flags)
        } else {
            from
        };
        let expires_at = now.saturating_add(timeouts.for_protocol(protocol, to));
        entry.set_state(to);
        entry.expires_at = expires_at;
        let was_evictable = is_evictable(protocol, from);
        if is_evictable(protocol, to) != was_evictable {
            let (old, new) = if was_evictable {
                (ListId::Evictable, ListId::Protected)
            } else {
                (ListId::Protected, ListId::Evictable)
            };
            self.lists.unlink(old, id.0);
            self.lists.push_back(new, id.0);
        }
        Some(Transition {
            from,
            to,
            was_active: is_active(protocol, from),
            is_active: is_active(protocol, to),
        })
    }

    /// Tracks a new connection from its first packet (`client` key, TCP `flags`) to `target`. For FULLNAT the
    /// table allocates the local port. Dead connections holding either key, and one evicted connection when the
    /// table is full, are removed first and passed to `on_removed`.
    pub fn insert(
        &mut self,
        now: u64,
        client: FlowKey,
        target: Target,
        flags: u8,
        on_removed: impl FnMut(&RemovedConn<'_>),
    ) -> Result<ConnId, InsertError> {
        let client_key = ConnKey::from_flow(&client);
        let client_hash = self.hash(&client_key);
        self.insert_keyed(
            now,
            client,
            &client_key,
            client_hash,
            false,
            target,
            flags,
            on_removed,
        )
        .map(|inserted| inserted.id)
    }

    /// [`ConnTable::insert`] of a client key already built and hashed ([`ConnTable::hash`]) for its lookup;
    /// `known_absent` when that lookup found no entry at all holding it ([`ClientHit::Absent`]), so that no dead
    /// connection needs to be looked for.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_keyed(
        &mut self,
        now: u64,
        client: FlowKey,
        client_key: &ConnKey,
        client_hash: u32,
        known_absent: bool,
        target: Target,
        flags: u8,
        mut on_removed: impl FnMut(&RemovedConn<'_>),
    ) -> Result<Inserted, InsertError> {
        if target.mode == ForwardingMode::Nat && client.src_addr.is_ipv4() != target.addr.is_ipv4()
        {
            return Err(InsertError::FamilyMismatch);
        }
        if let Some(entry) = (!known_absent)
            .then(|| self.find(client_key, client_hash))
            .flatten()
        {
            let owner = self.owner(entry);
            if self.expiry_of(&self.entries[entry as usize]) > now {
                return Err(InsertError::Exists(ConnId(owner)));
            }
            self.remove_conn(owner, &mut on_removed);
            self.stats.displaced += 1;
        }

        let local = if target.mode == ForwardingMode::FullNat {
            let ports = self.ports.as_mut().ok_or(InsertError::NoLocalAddresses)?;
            let endpoint = ports.allocate(&target.addr)?;
            if let Some(slot) = ports.next_draw() {
                prefetch(self.prefetcher, slot);
            }
            Some(Endpoint {
                addr: endpoint.addr,
                port: endpoint.port,
            })
        } else {
            None
        };
        let tcp_state = if client.protocol == ip_protocol::TCP {
            TcpState::None.next(TrackedPath::of(target.mode, Direction::Original), flags)
        } else {
            TcpState::None
        };
        let conn = Conn {
            client,
            backend_endpoint: Endpoint {
                addr: target.addr,
                port: target.port,
            },
            local,
            expires_at: now.saturating_add(self.timeouts.for_protocol(client.protocol, tcp_state)),
            backend: target.backend,
            mode: target.mode,
            tcp_state,
        };

        let reply = conn.reply_key().map(|flow| {
            let key = ConnKey::from_flow(&flow);
            (flow, key, self.hash(&key))
        });
        if let Some((reply_flow, reply_key, reply_hash)) = reply {
            if reply_flow == client {
                self.release_local(local);
                return Err(InsertError::ReplyIsClientKey);
            }
            if let Some(entry) = self.find(&reply_key, reply_hash) {
                let owner = self.owner(entry);
                let holder = &self.entries[owner as usize];
                // A client that reused its port for another service of the same backend: the earlier TCP
                // connection is finished (TIME_WAIT or CLOSE, kept only to absorb stray segments) and gives way.
                // Refusing would black-hole the new one until the old expired (two minutes in TIME_WAIT).
                let gives_way = client.protocol == ip_protocol::TCP && holder.state().is_finished();
                if holder.expires_at > now && !gives_way {
                    self.release_local(local);
                    return Err(InsertError::ReplyKeyInUse(ConnId(owner)));
                }
                self.remove_conn(owner, &mut on_removed);
                self.stats.displaced += 1;
            }
        }

        // DR and TUN to an IPv4 backend need one entry; anything else a second one too.
        let one_entry = matches!(target.mode, ForwardingMode::Dr | ForwardingMode::Tun)
            && target.addr.is_ipv4();
        // Second entries first: evicting a connection that holds one frees a primary too. With as many second
        // entries as connections they run out only when every primary is taken by a two-entry connection, and
        // then this is the same victim as below.
        if !one_entry && self.free_secondary == NIL {
            let Some(victim) = self.victim_with_secondary() else {
                self.release_local(local);
                return Err(InsertError::TableFull);
            };
            self.remove_conn(victim, &mut on_removed);
            self.stats.evicted += 1;
        }
        if self.free_primary == NIL {
            let Some(victim) = self.lists.head(ListId::Evictable) else {
                self.release_local(local);
                return Err(InsertError::TableFull);
            };
            self.remove_conn(victim, &mut on_removed);
            self.stats.evicted += 1;
        }

        let id = self.free_primary;
        self.free_primary = self.entries[id as usize].link;
        let mut primary = Entry::new(Kind::Original, client_key, target.mode, tcp_state);
        primary.expires_at = conn.expires_at;
        primary.backend = target.backend.0;
        // Every mode but FULLNAT keeps an IPv4 backend inline: a NAT connection's beside its reply entry, so that
        // forwarding the client's packets reads one line, not two (FULLNAT's local endpoint has no room there).
        if let Some(v4) = ipv4_bits(target.addr).filter(|_| target.mode != ForwardingMode::FullNat)
        {
            primary.backend_v4 = v4;
            primary.backend_port = target.port;
            primary.backend_inline = true;
        }
        if !one_entry {
            let second_id = self.free_secondary;
            self.free_secondary = self.entries[second_id as usize].link;
            self.linked += usize::from(!primary.backend_inline);
            let (kind, key) = match reply {
                Some((_, key, _)) => (Kind::Reply, key),
                // An IPv6 backend of DR or TUN, as the source of a key that is never indexed.
                None => (
                    Kind::Spill,
                    ConnKey::new(target.addr, target.addr, target.port, 0, client.protocol),
                ),
            };
            let mut second = Entry::new(kind, &key, target.mode, tcp_state);
            second.backend = target.backend.0;
            second.link = id;
            self.entries[second_id as usize] = second;
            primary.link = second_id;
            if let Some((_, _, reply_hash)) = reply {
                self.index.insert(reply_hash, second_id);
            }
        }
        self.entries[id as usize] = primary;
        self.index.insert(client_hash, id);
        self.lists
            .push_back(list_of(client.protocol, tcp_state), id);
        self.occupied.set(id, true);
        self.len += 1;
        self.stats.inserted += 1;
        if self.free_primary == NIL {
            self.prefetch_next_victims();
        }
        Ok(Inserted {
            id: ConnId(id),
            local,
            active: is_active(client.protocol, tcp_state),
        })
    }

    /// In a full table every insert evicts the oldest sacrificable connection, whose entries, index buckets, list
    /// link and occupancy word are long out of the cache. Starts loading them ahead, along the eviction order, each
    /// one or two inserts before it is needed (the index bucket two: asked for one insert ahead, it still missed on
    /// the new-connection replay): for the next victim its reply key's bucket (its second entry was asked for one
    /// insert before) and its occupancy word; for the victim after it its bucket (its key gives the bucket: its
    /// entry was asked for one insert before) and its second entry; for the one after that its primary entry and
    /// link.
    fn prefetch_next_victims(&self) {
        let Some(first) = self.lists.head(ListId::Evictable) else {
            return;
        };
        let link = self.entries[first as usize].link;
        if link != NIL {
            let second = &self.entries[link as usize];
            if second.is(Kind::Reply) {
                self.prefetch(self.hash(&second.key()));
            }
        }
        if let Some(word) = self.occupied.word_address(first) {
            prefetch(self.prefetcher, word);
        }
        let Some(second) = self.lists.next(first) else {
            return;
        };
        let entry = &self.entries[second as usize];
        self.prefetch(self.hash(&entry.key()));
        if entry.link != NIL {
            prefetch(self.prefetcher, &self.entries[entry.link as usize]);
        }
        let Some(third) = self.lists.next(second) else {
            return;
        };
        prefetch(self.prefetcher, &self.entries[third as usize]);
        if let Some(link) = self.lists.link_address(third) {
            prefetch(self.prefetcher, link);
        }
    }

    /// The oldest sacrificable connection holding a second entry, within a short walk of the eviction order.
    fn victim_with_secondary(&self) -> Option<u32> {
        let mut at = self.lists.head(ListId::Evictable);
        for _ in 0..SECONDARY_VICTIM_SEARCH {
            let id = at?;
            if self.entries[id as usize].link != NIL {
                return Some(id);
            }
            at = self.lists.next(id);
        }
        None
    }

    /// Removes connection `id` now (for instance when its backend is removed with flushing), freeing its local
    /// port. Returns what was removed.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        self.primary(id)?;
        self.stats.removed += 1;
        let mut conn = None;
        self.remove_conn(id.0, |removed| conn = Some(removed.conn()));
        conn
    }

    /// Advances the expiry clock hand over at most `budget` primary entries, removing the dead connections it
    /// passes and handing each to `on_removed`. Returns how many were removed. A full sweep takes
    /// `capacity / budget` calls; free entries are skipped a bitmap word at a time without reading them, and an
    /// empty table returns at once.
    pub fn expire(
        &mut self,
        now: u64,
        budget: usize,
        mut on_removed: impl FnMut(&RemovedConn<'_>),
    ) -> usize {
        let capacity = self.capacity;
        let mut left = budget.min(capacity);
        let mut removed = 0;
        while left > 0 && self.len > 0 {
            let slot = self.hand;
            let free = self.occupied.free_run(slot).min(capacity - slot);
            let step = if free == 0 { 1 } else { free.min(left) };
            left -= step;
            self.hand = if slot + step == capacity {
                0
            } else {
                slot + step
            };
            if free == 0 && self.entries[slot].expires_at <= now {
                self.remove_conn(slot as u32, &mut on_removed);
                self.stats.expired += 1;
                removed += 1;
            }
        }
        removed
    }

    /// Every connection in the table, dead or alive, in entry order (for the control plane; not for the hot
    /// path).
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, Conn)> + '_ {
        self.entries[..self.capacity]
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.is(Kind::Original))
            .map(|(i, entry)| (ConnId(i as u32), self.conn_of(entry)))
    }

    /// The connections in primary slots `start..start + slots` (clamped to the capacity): a walk of the table in
    /// pieces, so that a scan between bursts never holds the worker for more than its budget.
    pub fn iter_slots(
        &self,
        start: usize,
        slots: usize,
    ) -> impl Iterator<Item = (ConnId, Conn)> + '_ {
        let end = start.saturating_add(slots).min(self.capacity);
        let start = start.min(end);
        self.entries[start..end]
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.is(Kind::Original))
            .map(move |(i, entry)| (ConnId((start + i) as u32), self.conn_of(entry)))
    }

    fn release_local(&mut self, local: Option<Endpoint>) {
        if let (Some(local), Some(ports)) = (local, self.ports.as_mut()) {
            // The port came from this allocator a moment ago or with the connection, so it is allocated.
            let _ = ports.release(LocalEndpoint {
                addr: local.addr,
                port: local.port,
            });
        }
    }

    /// Unindexes and frees connection `id` and its second entry, releasing its local port, then hands what it
    /// held to `on_removed`.
    fn remove_conn(&mut self, id: u32, on_removed: impl FnOnce(&RemovedConn<'_>)) {
        let primary = self.entries[id as usize];
        let removed = self.index.remove(self.hash(&primary.key()), id);
        debug_assert!(removed, "a connection's client key is indexed");
        let second_id = primary.link;
        let second = (second_id != NIL).then(|| self.entries[second_id as usize]);
        if let Some(second) = &second {
            if second.is(Kind::Reply) {
                let removed = self.index.remove(self.hash(&second.key()), second_id);
                debug_assert!(removed, "a reply key is indexed");
            }
            if primary.mode() == ForwardingMode::FullNat {
                let (_, local) = endpoints_of(&primary, || second.key());
                self.release_local(local);
            }
            self.entries[second_id as usize] = Entry::free(self.free_secondary);
            self.free_secondary = second_id;
            self.linked -= usize::from(!primary.backend_inline);
        }
        self.lists
            .unlink(list_of(primary.protocol(), primary.state()), id);
        self.entries[id as usize] = Entry::free(self.free_primary);
        self.free_primary = id;
        self.occupied.set(id, false);
        self.len -= 1;
        on_removed(&RemovedConn {
            primary: &primary,
            second: second.as_ref(),
        });
    }

    /// Keys in the index.
    #[cfg(test)]
    pub(super) fn indexed_keys(&self) -> usize {
        self.index.len()
    }

    /// Narrows every hash to `mask` to force collisions; only on an empty table.
    #[cfg(test)]
    pub(super) fn set_hash_mask(&mut self, mask: u32) {
        assert!(self.is_empty());
        self.index.hash_mask = mask;
    }
}

fn list_of(protocol: u8, state: TcpState) -> ListId {
    if is_evictable(protocol, state) {
        ListId::Evictable
    } else {
        ListId::Protected
    }
}
