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
//! Fragments: every fragment of a datagram goes to the backend the service's Maglev table gives for the hash of
//! source address, destination address and protocol (Maglev's own rule), without connection tracking, so that
//! later fragments, which carry no ports, follow the first. Fragmented FULLNAT traffic and later fragments of NAT
//! replies cannot be mapped without reassembly: they are dropped and counted.

use std::net::IpAddr;
use std::sync::Arc;

use packet::{FlowKey, Fragment, FrameLayout, IcmpKind, L3};

use crate::conntrack::{tcp_flags, Conn, ConnTable, Direction, Endpoint, InsertError, Target};
use crate::maglev::{address_hash, flow_hash};
use crate::neighbor::NeighborTable;
use crate::persistence::PersistenceTable;
use crate::rss;
use crate::scheduler::{IpvsScheduler, LoadTable};
use crate::service::{BackendId, ForwardingMode, SchedulerKind};
use crate::snapshot::{mask_address, Route, Service, Snapshot};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// Why a frame was dropped. Every drop is counted under one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Not addressed to any of our addresses, and no kernel exception path.
    NotOurs,
    /// Addressed to us, but no service matches the port and protocol.
    NoService,
    /// The service has no backend available for a new flow.
    NoBackend,
    /// A TCP segment other than SYN with no connection (non-mh schedulers), or a reply with no connection.
    NoConnection,
    /// The connection table is full of established flows.
    TableFull,
    /// FULLNAT ran out of local ports for this backend.
    LocalPortsExhausted,
    /// No route (connected subnet or gateway) to the destination.
    NoRoute,
    /// An ICMP error quoting a flow we do not track.
    IcmpErrorUnknownFlow,
    /// ICMP other than echo requests to us and errors about our flows.
    IcmpUnsupported,
    /// A fragment that cannot be forwarded without reassembly.
    FragmentUnsupported,
    /// ARP or neighbour discovery not for us.
    NeighborNotForUs,
    /// The neighbour table is full.
    NeighborTableFull,
    /// A connection could not be tracked for another reason (see the connection table's errors).
    ConnectionRejected,
    /// Frames the parser rejected (counted by the data plane).
    Malformed,
    /// The next hop's MAC is not known yet; a resolution request was sent (counted by the data plane).
    NeighborUnresolved,
    /// The encapsulated frame would exceed the MTU and could not be answered (counted by the data plane).
    TooBig,
    /// The owner worker's handoff ring was full (counted by the data plane).
    HandoffFull,
    /// Transmit queue full after the bounded retries (counted by the data plane).
    TxFull,
    /// An answer or rewrite could not be applied (counted by the data plane).
    RewriteFailed,
}

impl DropReason {
    pub const COUNT: usize = 19;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::NotOurs,
        DropReason::NoService,
        DropReason::NoBackend,
        DropReason::NoConnection,
        DropReason::TableFull,
        DropReason::LocalPortsExhausted,
        DropReason::NoRoute,
        DropReason::IcmpErrorUnknownFlow,
        DropReason::IcmpUnsupported,
        DropReason::FragmentUnsupported,
        DropReason::NeighborNotForUs,
        DropReason::NeighborTableFull,
        DropReason::ConnectionRejected,
        DropReason::Malformed,
        DropReason::NeighborUnresolved,
        DropReason::TooBig,
        DropReason::HandoffFull,
        DropReason::TxFull,
        DropReason::RewriteFailed,
    ];

    /// Index into a per-reason counter array.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name for statistics and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NotOurs => "not_ours",
            DropReason::NoService => "no_service",
            DropReason::NoBackend => "no_backend",
            DropReason::NoConnection => "no_connection",
            DropReason::TableFull => "table_full",
            DropReason::LocalPortsExhausted => "local_ports_exhausted",
            DropReason::NoRoute => "no_route",
            DropReason::IcmpErrorUnknownFlow => "icmp_error_unknown_flow",
            DropReason::IcmpUnsupported => "icmp_unsupported",
            DropReason::FragmentUnsupported => "fragment_unsupported",
            DropReason::NeighborNotForUs => "neighbor_not_for_us",
            DropReason::NeighborTableFull => "neighbor_table_full",
            DropReason::ConnectionRejected => "connection_rejected",
            DropReason::Malformed => "malformed",
            DropReason::NeighborUnresolved => "neighbor_unresolved",
            DropReason::TooBig => "too_big",
            DropReason::HandoffFull => "handoff_full",
            DropReason::TxFull => "tx_full",
            DropReason::RewriteFailed => "rewrite_failed",
        }
    }
}

/// The in-place change a forwarded frame needs besides its MAC addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// DR: the MACs only.
    MacsOnly,
    /// NAT request: destination becomes the backend.
    Destination { addr: IpAddr, port: u16 },
    /// NAT reply: source becomes the VIP.
    Source { addr: IpAddr, port: u16 },
    /// FULLNAT, both directions.
    SourceAndDestination {
        src: IpAddr,
        src_port: u16,
        dst: IpAddr,
        dst_port: u16,
    },
    /// TUN: IPv4-in-IPv4 or IPv6-in-IPv6 from `outer_src` to `outer_dst`.
    Encapsulate {
        outer_src: IpAddr,
        outer_dst: IpAddr,
    },
    /// An ICMP error mapped like the flow it quotes: `destination` rewrites the outer destination and the quoted
    /// source (address, port); `source` the outer source and the quoted destination.
    IcmpError {
        destination: Option<(IpAddr, IpAddr, u16)>,
        source: Option<(IpAddr, IpAddr, u16)>,
    },
}

/// A frame to send on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Egress port index.
    pub port: u16,
    /// Whose MAC the frame goes to: the destination on a connected subnet, else the gateway.
    pub next_hop: IpAddr,
    /// The next hop's MAC when configured; otherwise the neighbour table has it (or it must be resolved).
    pub mac: Option<[u8; 6]>,
    pub rewrite: Rewrite,
    /// The backend the frame belongs to, for per-backend statistics.
    pub backend: Option<BackendId>,
    /// Forwarded without a connection entry (connection table full, DR/TUN): counted.
    pub untracked: bool,
    /// A backend's reply on its way to the client (NAT, FULLNAT), rather than a client's request.
    pub reply: bool,
    /// The first frame of a connection this frame opened.
    pub opened: bool,
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward(Forward),
    /// Answer this ARP request for one of our addresses, out of the port it came in on.
    AnswerArp,
    /// Answer this ICMP/ICMPv6 echo request, out of the port it came in on.
    AnswerEcho,
    /// Answer this neighbour solicitation for one of our addresses, out of the port it came in on.
    AnswerNeighborSolicitation,
    /// Answer the sender with ICMP fragmentation-needed / packet-too-big from `from`, with next-hop MTU `mtu`.
    TooBig {
        from: IpAddr,
        mtu: u16,
    },
    /// Not ours: hand it to the kernel's exception interface.
    ToKernel,
    /// Another worker owns this flow.
    Handoff {
        worker: u16,
    },
    /// Used up by the decision itself (a learned ARP reply or neighbour advertisement).
    Consumed,
    Drop(DropReason),
}

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
}

impl WorkerState {
    /// Removes dead connections (at most `budget` slots examined) and expired persistence entries, keeping the
    /// connection counts right. Call once per burst.
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> usize {
        let load = &mut self.load;
        let removed = self.conns.expire(now_ms, budget, |conn| {
            load.connection_closed(conn.backend, conn.is_active())
        });
        self.persistence.expire(now_ms, budget);
        removed
    }

    /// The forwarding decision for a frame that arrived on port `ingress`, parsed as `layout`. `handed_off` marks
    /// a frame another worker passed on: it is never passed on again.
    pub fn decide(
        &mut self,
        tables: &mut WorkerTables,
        layout: &FrameLayout,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        // Split the borrow: the snapshot is read, the schedulers advance. No reference count is touched per frame.
        let WorkerTables {
            snapshot,
            schedulers,
        } = tables;
        let snapshot: &Snapshot = snapshot;
        match layout.l3 {
            L3::Arp => self.arp(snapshot, layout),
            L3::Ipv4 | L3::Ipv6 => self.ip(snapshot, schedulers, layout, handed_off, now_ms),
            L3::Other(_) => not_ours(snapshot),
        }
    }

    fn arp(&self, snapshot: &Snapshot, layout: &FrameLayout) -> Action {
        let Some(arp) = layout.arp else {
            return Action::Drop(DropReason::NeighborNotForUs);
        };
        let for_us = snapshot.owned(IpAddr::V4(arp.target_ip)).is_some();
        let learned = if !arp.sender_ip.is_unspecified() && (for_us || arp.operation == ARP_REPLY) {
            self.neighbors
                .learn(IpAddr::V4(arp.sender_ip), arp.sender_mac)
        } else {
            Ok(())
        };
        match arp.operation {
            ARP_REQUEST if for_us => Action::AnswerArp,
            ARP_REPLY if learned.is_err() => Action::Drop(DropReason::NeighborTableFull),
            ARP_REPLY => Action::Consumed,
            _ => Action::Drop(DropReason::NeighborNotForUs),
        }
    }

    fn ip(
        &mut self,
        snapshot: &Snapshot,
        schedulers: &mut [Option<IpvsScheduler>],
        layout: &FrameLayout,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let flow = layout.flow;
        match layout.icmp {
            IcmpKind::None => {}
            IcmpKind::Error { inner, .. } => {
                return self.icmp_error(snapshot, &flow, &inner, handed_off, now_ms)
            }
            IcmpKind::EchoRequest => {
                return match snapshot.owned(flow.dst_addr) {
                    Some(_) => Action::AnswerEcho,
                    None => not_ours(snapshot),
                }
            }
            IcmpKind::NeighborSolicitation { target } => {
                return match snapshot.owned(IpAddr::V6(target)) {
                    Some(_) => Action::AnswerNeighborSolicitation,
                    None => Action::Drop(DropReason::NeighborNotForUs),
                }
            }
            IcmpKind::NeighborAdvertisement { target, target_mac } => {
                return match target_mac {
                    Some(mac) => match self.neighbors.learn(IpAddr::V6(target), mac) {
                        Ok(()) => Action::Consumed,
                        Err(_) => Action::Drop(DropReason::NeighborTableFull),
                    },
                    None => Action::Drop(DropReason::NeighborNotForUs),
                }
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

        if let Some(owned) = snapshot.owned(flow.dst_addr) {
            if owned.vip {
                if let Some(action) = self.request(snapshot, schedulers, layout, handed_off, now_ms)
                {
                    return action;
                }
            }
            if owned.local_address {
                return self.fullnat_reply(snapshot, layout, handed_off, now_ms);
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
            let (vip, vport) = (service.key.vip, service.key.port);
            return self.nat_reply(snapshot, layout, vip, vport, handed_off, now_ms);
        }
        not_ours(snapshot)
    }

    /// A frame to a VIP; `None` when no service of the VIP matches (the caller decides what else it may be).
    fn request(
        &mut self,
        snapshot: &Snapshot,
        schedulers: &mut [Option<IpvsScheduler>],
        layout: &FrameLayout,
        handed_off: bool,
        now_ms: u64,
    ) -> Option<Action> {
        let flow = layout.flow;
        if layout.fragment != Fragment::None {
            return Some(self.fragment_request(snapshot, layout));
        }
        let (service_index, service) =
            snapshot.service_for(flow.dst_addr, flow.dst_port, flow.protocol)?;
        if !handed_off && self.place.software_steering {
            let owner = self.request_owner(&flow);
            if owner != self.place.index {
                return Some(Action::Handoff { worker: owner });
            }
        }

        if let Some(hit) = self.conns.lookup(&flow, now_ms) {
            if hit.direction == Direction::Original {
                if let Some(conn) = self.conns.get(hit.id).copied() {
                    if snapshot.backend(conn.backend).is_some() {
                        self.account(hit.id, Direction::Original, layout.tcp_flags, now_ms);
                        return Some(forward_request(snapshot, service, &conn, layout, false));
                    }
                    // The backend was removed: the flow is scheduled again as a new one.
                    if let Some(dead) = self.conns.remove(hit.id) {
                        self.load.connection_closed(dead.backend, dead.is_active());
                    }
                }
            } else {
                return Some(Action::Drop(DropReason::NoConnection));
            }
        }

        let schedules_any_packet = service.scheduler == SchedulerKind::Mh;
        let is_syn = layout.tcp_flags & (tcp_flags::SYN | tcp_flags::RST) == tcp_flags::SYN;
        if flow.protocol == packet::flow::ip_protocol::TCP && !is_syn && !schedules_any_packet {
            return Some(Action::Drop(DropReason::NoConnection));
        }

        let Some(backend_index) = self.schedule(schedulers, service_index, service, &flow, now_ms)
        else {
            return Some(Action::Drop(DropReason::NoBackend));
        };
        let backend = &service.backends[backend_index];
        let target = Target {
            backend: backend.id,
            addr: backend.addr,
            port: if service.mode == ForwardingMode::Nat || service.mode == ForwardingMode::FullNat
            {
                backend.port
            } else {
                flow.dst_port
            },
            mode: service.mode,
        };
        let load = &mut self.load;
        let inserted = self
            .conns
            .insert(now_ms, flow, target, layout.tcp_flags, |dead| {
                load.connection_closed(dead.backend, dead.is_active())
            });
        match inserted {
            Ok(id) => {
                let conn = *self.conns.get(id)?;
                self.load.connection_opened(conn.backend, conn.is_active());
                Some(opened(forward_request(
                    snapshot, service, &conn, layout, false,
                )))
            }
            Err(error) => {
                let untracked = Conn {
                    client: flow,
                    backend_endpoint: Endpoint {
                        addr: target.addr,
                        port: target.port,
                    },
                    local: None,
                    expires_at: 0,
                    backend: target.backend,
                    packets_in: 0,
                    packets_out: 0,
                    mode: target.mode,
                    tcp_state: crate::conntrack::TcpState::None,
                };
                match (service.mode, error) {
                    // DR and TUN need no state to forward: keep the service up when the table is full.
                    (ForwardingMode::Dr | ForwardingMode::Tun, InsertError::TableFull) => {
                        Some(forward_request(snapshot, service, &untracked, layout, true))
                    }
                    (_, InsertError::TableFull) => Some(Action::Drop(DropReason::TableFull)),
                    (_, InsertError::LocalPort(_)) => {
                        Some(Action::Drop(DropReason::LocalPortsExhausted))
                    }
                    _ => Some(Action::Drop(DropReason::ConnectionRejected)),
                }
            }
        }
    }

    fn fragment_request(&self, snapshot: &Snapshot, layout: &FrameLayout) -> Action {
        let flow = layout.flow;
        let service = match layout.fragment {
            Fragment::First { .. } => {
                snapshot.service_for(flow.dst_addr, flow.dst_port, flow.protocol)
            }
            _ => snapshot.fragment_service(flow.dst_addr, flow.protocol),
        };
        let Some((_, service)) = service else {
            return Action::Drop(DropReason::FragmentUnsupported);
        };
        if service.mode == ForwardingMode::FullNat {
            return Action::Drop(DropReason::FragmentUnsupported);
        }
        let hash = address_hash(flow.src_addr, flow.dst_addr, flow.protocol);
        let Some(index) = service.maglev.lookup(hash) else {
            return Action::Drop(DropReason::NoBackend);
        };
        let backend = &service.backends[index];
        let conn = Conn {
            client: flow,
            backend_endpoint: Endpoint {
                addr: backend.addr,
                port: if service.mode == ForwardingMode::Nat {
                    backend.port
                } else {
                    flow.dst_port
                },
            },
            local: None,
            expires_at: 0,
            backend: backend.id,
            packets_in: 0,
            packets_out: 0,
            mode: service.mode,
            tcp_state: crate::conntrack::TcpState::None,
        };
        forward_request(snapshot, service, &conn, layout, true)
    }

    fn schedule(
        &mut self,
        schedulers: &mut [Option<IpvsScheduler>],
        service_index: u32,
        service: &Service,
        flow: &FlowKey,
        now_ms: u64,
    ) -> Option<usize> {
        let persistent_client = service
            .persistence
            .map(|spec| mask_address(flow.src_addr, spec.prefix_v4, spec.prefix_v6));
        if let Some(client) = persistent_client {
            if let Some(id) = self.persistence.lookup(client, service.key, now_ms) {
                let place = service
                    .backends
                    .iter()
                    .position(|backend| backend.id == id && backend.weight > 0);
                if place.is_some() {
                    return place;
                }
            }
        }
        let picked = match service.scheduler {
            SchedulerKind::Mh => service.maglev.lookup(flow_hash(flow)),
            _ => schedulers.get_mut(service_index as usize)?.as_mut()?.pick(
                &service.backends,
                &self.load,
                flow,
                now_ms,
            ),
        }?;
        if let (Some(client), Some(spec)) = (persistent_client, service.persistence) {
            // A full persistence table only loses affinity, never the flow.
            let _ = self.persistence.record(
                client,
                service.key,
                service.backends[picked].id,
                now_ms.saturating_add(spec.timeout_ms),
                now_ms,
            );
        }
        Some(picked)
    }

    fn nat_reply(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        vip: IpAddr,
        vport: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let flow = layout.flow;
        match layout.fragment {
            Fragment::None => {}
            Fragment::First { .. } => {
                let Some(route) = snapshot.route(flow.dst_addr) else {
                    return Action::Drop(DropReason::NoRoute);
                };
                return forward(
                    route,
                    Rewrite::Source {
                        addr: vip,
                        port: vport,
                    },
                    None,
                    true,
                    true,
                );
            }
            Fragment::Later { .. } => return Action::Drop(DropReason::FragmentUnsupported),
        }
        if !handed_off && self.place.workers > 1 {
            let owner = self.owner_of_tuple(vip, flow.dst_addr, vport, flow.dst_port);
            if owner != self.place.index {
                return Action::Handoff { worker: owner };
            }
        }
        self.reply_to_client(snapshot, layout, now_ms, |client| Rewrite::Source {
            addr: client.dst_addr,
            port: client.dst_port,
        })
    }

    /// A backend's reply on the worker that owns its connection: accounted, and sent back towards the client with
    /// `rewrite` (made from the client's flow key); dropped when no connection holds it.
    fn reply_to_client(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        now_ms: u64,
        rewrite: impl FnOnce(&FlowKey) -> Rewrite,
    ) -> Action {
        let Some(hit) = self.conns.lookup(&layout.flow, now_ms) else {
            return Action::Drop(DropReason::NoConnection);
        };
        let Some(conn) = self.conns.get(hit.id).copied() else {
            return Action::Drop(DropReason::NoConnection);
        };
        if hit.direction != Direction::Reply {
            return Action::Drop(DropReason::NoConnection);
        }
        self.account(hit.id, Direction::Reply, layout.tcp_flags, now_ms);
        let Some(route) = snapshot.route(conn.client.src_addr) else {
            return Action::Drop(DropReason::NoRoute);
        };
        forward(
            route,
            rewrite(&conn.client),
            Some(conn.backend),
            false,
            true,
        )
    }

    fn fullnat_reply(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let flow = layout.flow;
        if layout.fragment != Fragment::None {
            return Action::Drop(DropReason::FragmentUnsupported);
        }
        if !handed_off && self.place.workers > 1 {
            match snapshot.local_ports().owner_of(flow.dst_port) {
                Some(owner) if owner != self.place.index => {
                    return Action::Handoff { worker: owner }
                }
                Some(_) => {}
                None => return Action::Drop(DropReason::NoConnection),
            }
        }
        self.reply_to_client(snapshot, layout, now_ms, |client| {
            Rewrite::SourceAndDestination {
                src: client.dst_addr,
                src_port: client.dst_port,
                dst: client.src_addr,
                dst_port: client.src_port,
            }
        })
    }

    /// An ICMP error quoting `inner` (the offending packet as its sender sent it).
    fn icmp_error(
        &mut self,
        snapshot: &Snapshot,
        outer: &FlowKey,
        inner: &FlowKey,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let quoted_flow = inner.reversed();
        let owned = snapshot.owned(outer.dst_addr);
        let owner = match owned {
            // About a reply we (or a DR/TUN backend) sent from the VIP: the flow's request owner.
            Some(owned) if owned.vip => self.request_owner(&quoted_flow),
            // About a FULLNAT request we sent from a local address.
            Some(owned) if owned.local_address => {
                match snapshot.local_ports().owner_of(inner.src_port) {
                    Some(owner) => owner,
                    None => return Action::Drop(DropReason::IcmpErrorUnknownFlow),
                }
            }
            Some(_) => return Action::Drop(DropReason::IcmpUnsupported),
            // About a NAT request we sent to a backend: steer like its replies.
            None => match snapshot.nat_service_of_backend(
                inner.dst_addr,
                inner.dst_port,
                inner.protocol,
            ) {
                Some(service) => self.owner_of_tuple(
                    service.key.vip,
                    inner.src_addr,
                    service.key.port,
                    inner.src_port,
                ),
                None => return not_ours(snapshot),
            },
        };
        // NICs hash ICMP on addresses alone, so errors are steered whatever the device does.
        if !handed_off && self.place.workers > 1 && owner != self.place.index {
            return Action::Handoff { worker: owner };
        }
        let Some(hit) = self.conns.lookup(&quoted_flow, now_ms) else {
            return Action::Drop(DropReason::IcmpErrorUnknownFlow);
        };
        let Some(conn) = self.conns.get(hit.id).copied() else {
            return Action::Drop(DropReason::IcmpErrorUnknownFlow);
        };
        let client = conn.client;
        let backend = conn.backend_endpoint;
        match hit.direction {
            Direction::Original => {
                let Some((service, _, route)) = snapshot.backend(conn.backend) else {
                    return Action::Drop(DropReason::IcmpErrorUnknownFlow);
                };
                let rewrite = match conn.mode {
                    ForwardingMode::Dr => Rewrite::MacsOnly,
                    ForwardingMode::Tun => match service.tunnel_source {
                        Some(outer_src) => Rewrite::Encapsulate {
                            outer_src,
                            outer_dst: backend.addr,
                        },
                        None => return Action::Drop(DropReason::IcmpUnsupported),
                    },
                    ForwardingMode::Nat => Rewrite::IcmpError {
                        destination: Some((backend.addr, backend.addr, backend.port)),
                        source: None,
                    },
                    ForwardingMode::FullNat => {
                        let Some(local) = conn.local else {
                            return Action::Drop(DropReason::IcmpErrorUnknownFlow);
                        };
                        Rewrite::IcmpError {
                            destination: Some((backend.addr, backend.addr, backend.port)),
                            source: Some((local.addr, local.addr, local.port)),
                        }
                    }
                };
                forward(*route, rewrite, Some(conn.backend), false, false)
            }
            Direction::Reply => {
                let Some(route) = snapshot.route(client.src_addr) else {
                    return Action::Drop(DropReason::NoRoute);
                };
                let source = Some((client.dst_addr, client.dst_addr, client.dst_port));
                let rewrite = match conn.mode {
                    ForwardingMode::Nat => Rewrite::IcmpError {
                        destination: None,
                        source,
                    },
                    ForwardingMode::FullNat => Rewrite::IcmpError {
                        destination: Some((client.src_addr, client.src_addr, client.src_port)),
                        source,
                    },
                    ForwardingMode::Dr | ForwardingMode::Tun => {
                        return Action::Drop(DropReason::IcmpErrorUnknownFlow)
                    }
                };
                forward(route, rewrite, Some(conn.backend), false, true)
            }
        }
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

    fn owner_of_tuple(&self, src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> u16 {
        if self.place.workers <= 1 {
            return 0;
        }
        let hash = rss::tuple_hash(&rss::SYMMETRIC_KEY, src, dst, src_port, dst_port, true);
        rss::queue_of(hash, u32::from(self.place.workers)) as u16
    }
}

fn not_ours(snapshot: &Snapshot) -> Action {
    if snapshot.kernel_exception_path() {
        Action::ToKernel
    } else {
        Action::Drop(DropReason::NotOurs)
    }
}

fn forward(
    route: Route,
    rewrite: Rewrite,
    backend: Option<BackendId>,
    untracked: bool,
    reply: bool,
) -> Action {
    Action::Forward(Forward {
        port: route.port,
        next_hop: route.next_hop,
        mac: route.mac,
        rewrite,
        backend,
        untracked,
        reply,
        opened: false,
    })
}

/// `action` marked as the first frame of a new connection.
fn opened(action: Action) -> Action {
    match action {
        Action::Forward(forward) => Action::Forward(Forward {
            opened: true,
            ..forward
        }),
        other => other,
    }
}

/// The forward of a client's frame to `conn`'s backend, by the service's mode.
fn forward_request(
    snapshot: &Snapshot,
    service: &Service,
    conn: &Conn,
    layout: &FrameLayout,
    untracked: bool,
) -> Action {
    let backend = conn.backend_endpoint;
    let route = match snapshot.backend(conn.backend) {
        Some((_, _, route)) => *route,
        None => match snapshot.route(backend.addr) {
            Some(route) => route,
            None => return Action::Drop(DropReason::NoRoute),
        },
    };
    let rewrite = match conn.mode {
        ForwardingMode::Dr => Rewrite::MacsOnly,
        ForwardingMode::Nat => Rewrite::Destination {
            addr: backend.addr,
            port: backend.port,
        },
        ForwardingMode::FullNat => match conn.local {
            Some(local) => Rewrite::SourceAndDestination {
                src: local.addr,
                src_port: local.port,
                dst: backend.addr,
                dst_port: backend.port,
            },
            None => return Action::Drop(DropReason::ConnectionRejected),
        },
        ForwardingMode::Tun => {
            let Some(outer_src) = service.tunnel_source else {
                return Action::Drop(DropReason::NoRoute);
            };
            let outer_len = if outer_src.is_ipv4() {
                packet::IPV4_HEADER_LEN
            } else {
                packet::IPV6_HEADER_LEN
            };
            let mtu = snapshot.port(route.port).map_or(u16::MAX, |port| port.mtu);
            if usize::from(layout.l3_len) + outer_len > usize::from(mtu) {
                return Action::TooBig {
                    from: conn.client.dst_addr,
                    mtu: mtu.saturating_sub(outer_len as u16),
                };
            }
            Rewrite::Encapsulate {
                outer_src,
                outer_dst: backend.addr,
            }
        }
    };
    forward(route, rewrite, Some(conn.backend), untracked, false)
}
