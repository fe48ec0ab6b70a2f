//! The forwarding decision: from a parsed frame, the current snapshot and one worker's state to exactly one
//! [`Action`]. Pure apart from the worker's own state (connection table, scheduler positions, connection counts,
//! persistence, and the shared neighbour table learned from ARP/ND); the data plane carries the action out.
//!
//! Which worker owns a flow: requests belong to the worker whose RSS queue the symmetric Toeplitz hash of the
//! client<->VIP 4-tuple selects (what a NIC programmed with [`rss::SYMMETRIC_KEY`] does by itself); NAT replies to
//! the same worker (the hash is taken over VIP and client, as the request's); FULLNAT replies to the worker that
//! owns the local port (see [`PortPartition`](crate::port_alloc::PortPartition)). A frame that reached another
//! worker is handed over.
//!
//! Fragments: a first fragment carries the ports and is decided here like a whole datagram; the fate of the later
//! ones, which carry no ports, comes from the fragment table ([`WorkerState::decide_fragment`], `fragment`), so a
//! later fragment decided without it is dropped.
//!
//! What a router would not forward is dropped by reason before anything else is decided: tagged frames (the ports
//! are untagged) and source-routed IPv4 for every destination; a TTL of 0 or 1 on the way to a backend (never on
//! the way to the kernel: the established path pays one compare for it); martian sources when a frame would open
//! a connection (a probe of the owned addresses that established connections never pay).

mod arp;
mod fast;
mod fragment;
mod fragment_table;
mod icmp;
mod reply;
mod request;
mod verdict;

use std::hint::cold_path;
use std::net::IpAddr;
use std::sync::Arc;

use packet::{FlowKey, Fragment, FrameLayout, IcmpKind, IpHeaders, PlainFrame, Translation, L3};

use crate::conntrack::{
    reply_flow, tcp_flags, Candidates, ClientEndpoints, ConnId, ConnKey, ConnTable, Direction,
    Endpoint, Hit, WireEndpoints,
};
use crate::maglev::flow_hash;
use crate::neighbor::NeighborTable;
use crate::persistence::PersistenceTable;
use crate::rss;
use crate::scheduler::{IpvsScheduler, LoadTable};
use crate::service::{BackendId, ForwardingMode, SchedulerKind};
use crate::snapshot::{Route, Service, Snapshot};

pub use fast::{EntryRewrite, Established, FastForward};
pub use fragment::FragmentAction;
pub use fragment_table::{DatagramFate, DatagramKey, FragmentTable};
pub use verdict::{Action, DropReason, Forward, Rewrite};

/// Tables published with each snapshot, one set per worker: the snapshot and the per-service scheduler state
/// (round-robin positions and locality sets start afresh with each publication).
#[derive(Debug)]
pub struct WorkerTables {
    pub snapshot: Arc<Snapshot>,
    schedulers: Vec<Option<IpvsScheduler>>,
}

impl WorkerTables {
    /// Builds the scheduler state of every non-Maglev service of `snapshot`. Allocates: call it off the data path.
    pub fn new(snapshot: Arc<Snapshot>) -> WorkerTables {
        let schedulers = snapshot
            .services()
            .iter()
            .map(|service| match service.scheduler {
                SchedulerKind::Mh => None,
                kind => IpvsScheduler::new(kind, &service.backends).ok(),
            })
            .collect();
        WorkerTables {
            snapshot,
            schedulers,
        }
    }
}

/// A frame's connection key and its hash, computed ahead of the decision when the worker stages a burst (the
/// index bucket is prefetched then, so that the decision's lookup finds it in cache). Valid for the decision of
/// its own frame with the snapshot it was staged with (it may name one of that snapshot's services).
#[derive(Clone, Copy, Debug)]
pub struct StagedKey {
    key: ConnKey,
    hash: u32,
    /// The home bucket's matching slots, once the second stage read them.
    candidates: Option<Candidates>,
    /// The table was searched for this key during this frame's decision and holds no live connection for it:
    /// the later steps of the same decision need not search again.
    missed: bool,
    /// ...and no entry holds the key at all, live or dead: opening the connection need not look for a dead one.
    absent: bool,
    /// The Maglev flow hash, when staging found no entry that could hold the key (so the frame likely opens a
    /// connection) and the service's table slot was prefetched with it; 0 when not computed (a true hash of 0 is
    /// simply computed again).
    flow_hash: u64,
    /// When staging found no entry that could hold the key and looked up the flow's service: its index in the
    /// snapshot, so that neither the reply stage nor the decision looks it up again; else [`NO_SERVICE`].
    service: u32,
}

/// [`StagedKey::service`] when staging did not look the service up, or found none.
const NO_SERVICE: u32 = u32::MAX;

impl StagedKey {
    /// The Maglev hash of `flow`, the frame's own, taken from staging when it computed it.
    #[inline]
    pub(crate) fn flow_hash_of(staged: Option<&StagedKey>, flow: &FlowKey) -> u64 {
        match staged {
            Some(staged) if staged.flow_hash != 0 => staged.flow_hash,
            _ => flow_hash(flow),
        }
    }
}

/// Who a worker is among its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerPlace {
    pub index: u16,
    pub workers: u16,
    /// Requests must be steered in software: the devices do not spread them with the symmetric key.
    pub software_steering: bool,
}

/// One worker's own balancing state.
#[derive(Debug)]
pub struct WorkerState {
    pub place: WorkerPlace,
    pub conns: ConnTable,
    pub load: LoadTable,
    pub persistence: PersistenceTable,
    pub neighbors: Arc<NeighborTable>,
    /// What the cluster's other nodes said about flows whose backend the current table no longer gives
    /// (`crate::exceptions`); consulted only for a frame that is not a SYN and finds no connection.
    pub exceptions: crate::exceptions::ExceptionTable,
}

impl WorkerState {
    /// Removes dead connections (at most `budget` slots examined) and expired persistence entries, keeping the
    /// connection counts right. The persistence table is swept only while it holds entries.
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> usize {
        if budget == 0 {
            return 0;
        }
        let load = &mut self.load;
        let removed = self.conns.expire(now_ms, budget, |conn| {
            load.connection_closed(conn.backend(), conn.is_active())
        });
        if !self.persistence.is_empty() {
            self.persistence.expire(now_ms, budget);
        }
        removed
    }

    /// Stages the connection lookup of a frame with `flow`: its key and hash, and a prefetch of its index
    /// bucket. Pass the result to [`WorkerState::decide`] for the same frame.
    #[inline]
    pub fn stage(&self, flow: &FlowKey) -> StagedKey {
        // The table's own prefetch (the edge's hook, or a read) instead of the caller's instruction.
        let staged = self.stage_with(flow, |_| {});
        self.conns.prefetch(staged.hash);
        staged
    }

    /// [`WorkerState::stage`] with the caller's prefetch instruction (the data plane's, inlined).
    #[inline(always)]
    pub fn stage_with(&self, flow: &FlowKey, prefetch: impl Fn(*const u8)) -> StagedKey {
        self.stage_key_with(ConnKey::from_flow(flow), prefetch)
    }

    /// [`WorkerState::stage_with`] for a plain frame (see [`packet::parse_plain`]): its key read from the frame's
    /// bytes. `None` when `frame` is not the one `plain` describes.
    #[inline(always)]
    pub fn stage_plain_with(
        &self,
        frame: &[u8],
        plain: &PlainFrame,
        prefetch: impl Fn(*const u8),
    ) -> Option<StagedKey> {
        let (key, hash) = self.conns.plain_key(frame, plain)?;
        Some(self.stage_hashed_key_with(key, hash, prefetch))
    }

    #[inline(always)]
    fn stage_key_with(&self, key: ConnKey, prefetch: impl Fn(*const u8)) -> StagedKey {
        self.stage_hashed_key_with(key, self.conns.hash(&key), prefetch)
    }

    #[inline(always)]
    fn stage_hashed_key_with(
        &self,
        key: ConnKey,
        hash: u32,
        prefetch: impl Fn(*const u8),
    ) -> StagedKey {
        self.conns.prefetch_with(hash, prefetch);
        StagedKey {
            key,
            hash,
            candidates: None,
            missed: false,
            absent: false,
            flow_hash: 0,
            service: NO_SERVICE,
        }
    }

    /// The second stage of a staged lookup: prefetches, with the caller's instruction, the connection entries the
    /// key's bucket points at, and keeps which they are for the lookup. Returns whether no entry can hold the key:
    /// the frame likely opens a connection, and [`WorkerState::stage_new_flow_with`] is worth calling for it.
    #[inline(always)]
    pub fn stage_entries_with(&self, staged: &mut StagedKey, prefetch: impl Fn(*const u8)) -> bool {
        let candidates = self.conns.prefetch_candidates_with(staged.hash, prefetch);
        staged.candidates = Some(candidates);
        candidates.is_empty()
    }

    /// Whether [`WorkerState::stage_entries_with`] is worth a pass: the connection entries are likely out of
    /// cache. Without it the lookup compares the bucket's signatures itself, and no frame is staged as new.
    #[inline]
    pub fn stages_entries(&self) -> bool {
        self.conns.entries_outgrow_cache()
    }

    /// Whether [`WorkerState::stage_linked_with`] is worth a pass: enough connections have two entries that the
    /// second ones are likely out of cache.
    #[inline]
    pub fn stages_linked_entries(&self) -> bool {
        self.conns.linked_outgrow_cache()
    }

    /// A stage for keys an entry may hold, after [`WorkerState::stage_entries_with`]: prefetches the other entry
    /// of a two-entry connection that the decision will read (a FULLNAT connection's second entry, a reply
    /// entry's primary).
    #[inline(always)]
    pub fn stage_linked_with(&self, staged: &StagedKey, prefetch: impl Fn(*const u8)) {
        if let Some(candidates) = staged.candidates {
            self.conns
                .prefetch_linked_with(staged.hash, candidates, prefetch);
        }
    }

    /// The third stage, for a key no entry can hold in a frame that opens connections (a SYN, or not TCP): the
    /// Maglev hash of its flow, kept for the decision, and a prefetch of the slot its service's table gives it, so
    /// that a burst of new flows does not wait on the Maglev table's cache misses one by one. (A stage of its own:
    /// done while reading the buckets, it made the bucket reads wait longer.) Other segments without a connection
    /// (a flood of ACKs, mostly dropped) are left to the decision, which pays for them only if it schedules them.
    #[inline(always)]
    pub fn stage_new_flow_with(
        &self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: &mut StagedKey,
        prefetch: impl Fn(*const u8),
    ) {
        let opens = layout.protocol != packet::flow::ip_protocol::TCP
            || layout.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST)
                == tcp_flags::SYN;
        if opens && staged.no_entry_holds_it() {
            stage_new_flow(snapshot, &layout.flow, staged, prefetch);
        }
    }

    /// The fifth stage, after [`WorkerState::stage_new_flow_with`] for the whole burst: for a new NAT flow, a
    /// prefetch of the index bucket of its reply key ([`WorkerState::staged_reply_key`]), which opening the
    /// connection searches. (FULLNAT's reply key holds a local port drawn only then.)
    #[inline(always)]
    pub fn stage_reply_with(
        &self,
        snapshot: &Snapshot,
        flow: &FlowKey,
        staged: &StagedKey,
        prefetch: impl Fn(*const u8),
    ) {
        if let Some(reply) = self.staged_reply_key(snapshot, flow, staged) {
            let key = ConnKey::from_flow(&reply);
            self.conns.prefetch_with(self.conns.hash(&key), prefetch);
        }
    }

    /// The reply key staging expects the connection `flow` opens to have: for a new flow to a NAT service whose
    /// Maglev hash staging computed, with the backend its table gives.
    #[inline(always)]
    pub fn staged_reply_key(
        &self,
        snapshot: &Snapshot,
        flow: &FlowKey,
        staged: &StagedKey,
    ) -> Option<FlowKey> {
        if staged.service == NO_SERVICE {
            return None;
        }
        let service = snapshot.service(staged.service)?;
        if service.mode != ForwardingMode::Nat
            || service.scheduler != SchedulerKind::Mh
            || service.persistence.is_some()
        {
            return None;
        }
        new_nat_reply(service, flow, staged.flow_hash)
    }

    /// The live connection of the frame's own flow, through its staged key when there is one.
    #[inline]
    fn lookup_frame(&self, flow: &FlowKey, staged: Option<&StagedKey>, now_ms: u64) -> Option<Hit> {
        match staged {
            Some(staged) if staged.missed => None,
            Some(staged) => self.conns.lookup_key(&staged.key, staged.hash, now_ms),
            None => self.conns.lookup(flow, now_ms),
        }
    }

    /// The forwarding decision for a frame that arrived on port `ingress`, parsed as `layout`. `staged` is what
    /// [`WorkerState::stage`] returned for `layout.flow`, if the worker staged it. `handed_off` marks a frame
    /// another worker passed on: it is never passed on again. `ingress` is read only for replies and ICMP
    /// errors, which must arrive on the side they come from.
    #[inline]
    pub fn decide(
        &mut self,
        tables: &mut WorkerTables,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let mut verdict = Action::Consumed;
        self.decide_into(
            tables,
            layout,
            staged,
            ingress,
            handed_off,
            now_ms,
            &mut verdict,
        );
        if let Action::Forward(forward) = &mut verdict {
            match self.concrete_rewrite(&tables.snapshot, forward.rewrite) {
                Some(rewrite) => forward.rewrite = rewrite,
                None => verdict = Action::Drop(DropReason::ConnectionRejected),
            }
        }
        verdict
    }

    /// `rewrite` with a [`Rewrite::Connection`] or [`Rewrite::Tunnel`] replaced by the rewrite it stands for,
    /// while the connection lives and `snapshot` has the tunnel (`None` once they are gone); any other rewrite as
    /// it is. For a verdict kept beyond its frame's decision.
    pub fn concrete_rewrite(&self, snapshot: &Snapshot, rewrite: Rewrite) -> Option<Rewrite> {
        Some(match rewrite {
            Rewrite::Connection(id) => {
                client_translation_to(&self.conns.wire_endpoints(id)?).into()
            }
            Rewrite::Reply(id) => self.reply_translation(id)?.into(),
            Rewrite::Tunnel(backend) => {
                let (outer_src, outer_dst) = snapshot.tunnel(backend)?.header.endpoints();
                Rewrite::Encapsulate {
                    outer_src,
                    outer_dst,
                }
            }
            _ => rewrite,
        })
    }

    /// What [`Rewrite::Reply`] does to a backend's frame of connection `id`: the source becomes the VIP the client
    /// asked, and for FULLNAT the destination the client.
    #[inline(always)]
    fn reply_translation(&self, id: ConnId) -> Option<Translation> {
        let reply = self.conns.reply_path(id)?;
        let client = &reply.client;
        Some(Translation {
            src: Some((client.dst_wire(), client.dst_port())),
            dst: (reply.mode == ForwardingMode::FullNat)
                .then(|| (client.src_wire(), client.src_port())),
        })
    }

    /// Rewrites a client's `frame` (parsed as `layout`) of connection `id` in place as [`Rewrite::Connection`]
    /// says.
    #[inline(always)]
    pub fn rewrite_client(
        &self,
        id: ConnId,
        frame: &mut [u8],
        layout: &impl IpHeaders,
    ) -> Result<(), packet::ParseError> {
        match self.conns.client_endpoints(id) {
            Some(ClientEndpoints::InlineV4 { backend, port }) => {
                packet::rewrite_destination_v4(frame, layout, backend, port)
            }
            Some(ClientEndpoints::Linked(endpoints)) => {
                client_translation_to(&endpoints).apply(frame, layout)
            }
            None => {
                cold_path();
                Err(packet::ParseError::Unsupported("connection gone"))
            }
        }
    }

    /// Rewrites a backend's `frame` (parsed as `layout`) of connection `id` in place as [`Rewrite::Reply`] says.
    #[inline(always)]
    pub fn rewrite_reply(
        &self,
        id: ConnId,
        frame: &mut [u8],
        layout: &impl IpHeaders,
    ) -> Result<(), packet::ParseError> {
        let Some(translation) = self.reply_translation(id) else {
            cold_path();
            return Err(packet::ParseError::Unsupported("connection gone"));
        };
        translation.apply(frame, layout)
    }

    /// [`WorkerState::decide`] into the caller's `verdict`: the data plane keeps one and reads the verdict where
    /// the decision wrote it (moving an 80-byte verdict out through two returns cost more than the decision).
    /// [`WorkerState::decide_established`], then [`WorkerState::decide_rest_into`], which the data plane takes
    /// one by one (acting on a [`FastForward`] itself).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn decide_into(
        &mut self,
        tables: &mut WorkerTables,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        let mut after_miss = None;
        if let Some(key) = staged {
            // Not asked to hand a FastForward back: Fast never comes.
            match self.decide_established(
                &tables.snapshot,
                layout,
                key,
                ingress,
                now_ms,
                false,
                verdict,
            ) {
                Established::Forwarded | Established::Fast(_) => return,
                Established::Missed { absent } => after_miss = Some(key.after_miss(absent)),
                Established::Other => {}
            }
        }
        let staged = after_miss.as_ref().or(staged);
        self.decide_rest_into(tables, layout, staged, ingress, handed_off, now_ms, verdict);
    }

    /// What [`WorkerState::decide_into`] decides of a frame that [`WorkerState::decide_established`] did not
    /// forward (`staged` marked [`StagedKey::after_miss`] when its lookup missed): everything but a plain frame of
    /// an established connection. Inlined so that the common verdict is written in place; the rare kinds of
    /// frames are decided out of line.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn decide_rest_into(
        &mut self,
        tables: &mut WorkerTables,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
        verdict: &mut Action,
    ) {
        // Split the borrow: the snapshot is read, the schedulers advance. No reference count is touched per frame.
        let WorkerTables {
            snapshot,
            schedulers,
        } = tables;
        let snapshot: &Snapshot = snapshot;
        // Two compares on facts the parser already wrote; the reasons are told apart out of line.
        if layout.vlan_tags != 0 || layout.source_routed {
            cold_path();
            *verdict = refused_whatever_its_destination(layout);
            return;
        }
        *verdict = match layout.l3 {
            L3::Arp => {
                cold_path();
                self.arp(snapshot, layout, ingress, now_ms)
            }
            L3::Ipv4 | L3::Ipv6 => self.ip(
                snapshot, schedulers, layout, staged, ingress, handed_off, now_ms,
            ),
            L3::Other(_) => not_ours(snapshot),
        };
    }

    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn ip(
        &mut self,
        snapshot: &Snapshot,
        schedulers: &mut [Option<IpvsScheduler>],
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let flow = &layout.flow;
        match layout.icmp {
            IcmpKind::None => {}
            IcmpKind::Error { inner, .. } => {
                if layout.ttl <= 1 {
                    return Action::Drop(DropReason::TtlExpired);
                }
                return self.icmp_error(snapshot, flow, &inner, ingress, handed_off, now_ms);
            }
            IcmpKind::EchoRequest => {
                return match snapshot.owned(flow.dst_addr) {
                    // Answered in place only whole: a first fragment holds part of the message its checksum
                    // covers, and sluice does not reassemble (the kernel, when there is an exception path, does).
                    Some(_) if layout.fragment != Fragment::None => {
                        if snapshot.kernel_exception_path() {
                            Action::ToKernel
                        } else {
                            Action::Drop(DropReason::FragmentUnsupported)
                        }
                    }
                    Some(_) => Action::AnswerEcho,
                    None => not_ours(snapshot),
                };
            }
            IcmpKind::NeighborSolicitation { target } => {
                return match snapshot.owned(IpAddr::V6(target)) {
                    // Neighbour discovery that crossed a router is refused (RFC 4861 section 7.1.1).
                    Some(_) if layout.ttl != 255 => Action::Drop(DropReason::NeighborRouted),
                    Some(_) => Action::AnswerNeighborSolicitation,
                    None => Action::Drop(DropReason::NeighborNotForUs),
                };
            }
            IcmpKind::NeighborAdvertisement { target, target_mac } => {
                return self
                    .neighbor_advertisement(snapshot, layout, target, target_mac, ingress, now_ms);
            }
            IcmpKind::EchoReply | IcmpKind::Other => {
                return match snapshot.owned(flow.dst_addr) {
                    // The kernel's own pings and the ICMP it needs (errors about its sessions come as errors).
                    Some(_) if snapshot.kernel_exception_path() => Action::ToKernel,
                    Some(_) => Action::Drop(DropReason::IcmpUnsupported),
                    None => not_ours(snapshot),
                };
            }
        }

        if let Fragment::Later { .. } = layout.fragment {
            // No ports: only the fragment table knows where its datagram goes.
            return Action::Drop(DropReason::FragmentUnsupported);
        }
        // The common case first: a whole datagram (or a first fragment) to a service, found with one probe (a
        // service's address is always an owned VIP), or none when staging found it.
        let staged_service = staged
            .filter(|staged| staged.service != NO_SERVICE)
            .and_then(|staged| Some((staged.service, snapshot.service(staged.service)?)));
        if let Some((index, service)) = staged_service
            .or_else(|| snapshot.service_for(flow.dst_addr, flow.dst_port, flow.protocol))
        {
            if layout.ttl <= 1 {
                return Action::Drop(DropReason::TtlExpired);
            }
            return self.request_to(
                snapshot, schedulers, layout, staged, index, service, handed_off, now_ms,
            );
        }
        if let Some(owned) = snapshot.owned(flow.dst_addr) {
            if owned.vip {
                if let Some(action) = self.request(snapshot, schedulers, layout, handed_off, now_ms)
                {
                    return action;
                }
            }
            if owned.local_address {
                if layout.ttl <= 1 {
                    return Action::Drop(DropReason::TtlExpired);
                }
                return self.fullnat_reply(snapshot, layout, staged, ingress, handed_off, now_ms);
            }
            return if snapshot.kernel_exception_path() {
                Action::ToKernel
            } else {
                Action::Drop(DropReason::NoService)
            };
        }
        if let Some(service) =
            snapshot.nat_service_of_backend(flow.src_addr, flow.src_port, flow.protocol)
        {
            if layout.ttl <= 1 {
                return Action::Drop(DropReason::TtlExpired);
            }
            let (vip, vport) = (service.key.vip, service.key.port);
            return self.nat_reply(
                snapshot, layout, staged, vip, vport, ingress, handed_off, now_ms,
            );
        }
        if let Some(services) =
            snapshot.nat_services_of_shared_backend(flow.src_addr, flow.src_port, flow.protocol)
        {
            if layout.ttl <= 1 {
                return Action::Drop(DropReason::TtlExpired);
            }
            return self.shared_nat_reply(
                snapshot, layout, staged, services, ingress, handed_off, now_ms,
            );
        }
        if snapshot.withheld(flow.dst_addr) {
            // A VIP another node owns now: the kernel must not see it (it may hold the address and reset).
            return Action::Drop(DropReason::NotOurs);
        }
        not_ours(snapshot)
    }

    /// Advances the connection's state and moves its backend between the active and inactive counts.
    fn account(
        &mut self,
        id: crate::conntrack::ConnId,
        direction: Direction,
        flags: u8,
        now_ms: u64,
    ) {
        let Some(transition) = self.conns.touch(id, direction, flags, now_ms) else {
            return;
        };
        if transition.was_active != transition.is_active {
            if let Some(conn) = self.conns.get(id) {
                if transition.is_active {
                    self.load.became_active(conn.backend);
                } else {
                    self.load.became_inactive(conn.backend);
                }
            }
        }
    }

    fn request_owner(&self, flow: &FlowKey) -> u16 {
        self.owner_of_tuple(flow.src_addr, flow.dst_addr, flow.src_port, flow.dst_port)
    }

    /// Where a frame about a connection to a backend that several NAT services share goes next: the connection
    /// lives on the worker that owns the client's flow to its service's VIP, which the frame does not name, so
    /// the owners of the candidate services are tried in increasing order. A frame that was not handed off goes
    /// to the lowest owner; at an owner that does not hold the connection it goes on to the next higher one
    /// (each hop goes up: no loop).
    #[cold]
    fn shared_backend_hop(
        &self,
        snapshot: &Snapshot,
        services: &[u32],
        client: IpAddr,
        client_port: u16,
        handed_off: bool,
    ) -> SharedBackendHop {
        let me = self.place.index;
        let (mut lowest, mut next) = (u16::MAX, None::<u16>);
        for service in services.iter().filter_map(|index| snapshot.service(*index)) {
            let owner = self.owner_of_tuple(service.key.vip, client, service.key.port, client_port);
            lowest = lowest.min(owner);
            if owner > me {
                next = Some(next.map_or(owner, |next| next.min(owner)));
            }
        }
        if !handed_off && lowest != me && lowest != u16::MAX {
            return SharedBackendHop::Handoff(lowest);
        }
        SharedBackendHop::Here { next }
    }

    fn owner_of_tuple(&self, src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> u16 {
        if self.place.workers <= 1 {
            return 0;
        }
        let hash = rss::SYMMETRIC_TABLE.tuple_hash(src, dst, src_port, dst_port, true);
        rss::queue_of(hash, u32::from(self.place.workers)) as u16
    }
}

/// See [`WorkerState::shared_backend_hop`].
enum SharedBackendHop {
    Handoff(u16),
    /// Look here; on a miss hand the frame to `next`, if any.
    Here {
        next: Option<u16>,
    },
}

/// Why a frame is dropped whatever it is addressed to (the caller saw a VLAN tag or a source route).
#[cold]
#[inline(never)]
fn refused_whatever_its_destination(layout: &FrameLayout) -> Action {
    if layout.vlan_tags != 0 {
        Action::Drop(DropReason::VlanTagged)
    } else {
        Action::Drop(DropReason::SourceRouted)
    }
}

/// The reply key of the connection a new flow to NAT `service` opens (one whose Maglev table alone
/// picks the backend): read from the slot staging prefetched for `flow_hash`.
#[inline(never)]
fn new_nat_reply(service: &Service, flow: &FlowKey, flow_hash: u64) -> Option<FlowKey> {
    let backend = service
        .maglev
        .lookup(flow_hash)
        .and_then(|index| service.backends.get(index))?;
    let backend = Endpoint {
        addr: backend.addr,
        port: backend.port,
    };
    reply_flow(ForwardingMode::Nat, flow, backend, None)
}

/// Staging of a frame that likely opens a connection: the Maglev hash of its flow, kept for the decision, and a
/// prefetch of the slot its service's table gives it.
#[inline(never)]
fn stage_new_flow(
    snapshot: &Snapshot,
    flow: &FlowKey,
    staged: &mut StagedKey,
    prefetch: impl Fn(*const u8),
) {
    let Some((index, service)) = snapshot.service_for(flow.dst_addr, flow.dst_port, flow.protocol)
    else {
        return;
    };
    staged.service = index;
    if service.scheduler == SchedulerKind::Mh {
        staged.flow_hash = flow_hash(flow);
        service
            .maglev
            .prefetch_slot_with(staged.flow_hash, prefetch);
    }
}

/// Whether `source` is one no client has: unspecified, loopback, multicast, broadcast, or one of our own
/// addresses (a spoofed flow that would make us talk to ourselves or answer to a group). Asked only when a frame
/// would open a connection (and for every fragment, which opens none): it costs a probe of the owned addresses,
/// which frames of established connections must not pay.
pub(super) fn martian_source(snapshot: &Snapshot, source: IpAddr) -> bool {
    source.is_unspecified()
        || source.is_loopback()
        || source.is_multicast()
        || matches!(source, IpAddr::V4(v4) if v4.is_broadcast())
        || snapshot.owned(source).is_some()
}

pub(super) fn not_ours(snapshot: &Snapshot) -> Action {
    if snapshot.kernel_exception_path() {
        Action::ToKernel
    } else {
        Action::Drop(DropReason::NotOurs)
    }
}

#[inline(always)]
pub(super) fn forward(
    route: &Route,
    rewrite: Rewrite,
    backend: Option<BackendId>,
    untracked: bool,
    reply: bool,
) -> Action {
    Action::Forward(Forward {
        port: route.port,
        next_hop: route.next_hop,
        next_hop_mac: route.mac,
        rewrite,
        backend,
        untracked,
        reply,
        opened: false,
    })
}

/// `action` marked as the first frame of a new connection.
pub(super) fn opened(action: Action) -> Action {
    match action {
        Action::Forward(forward) => Action::Forward(Forward {
            opened: true,
            ..forward
        }),
        other => other,
    }
}

/// The translation of a client's frame to a connection's `endpoints`: the destination becomes the backend, and
/// for FULLNAT the source the local endpoint.
#[inline(always)]
fn client_translation_to(endpoints: &WireEndpoints) -> Translation {
    Translation {
        src: endpoints.local,
        dst: Some((endpoints.backend, endpoints.backend_port)),
    }
}
