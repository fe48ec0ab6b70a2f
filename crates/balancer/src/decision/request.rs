//! Client requests to a service: the connection table first, then the scheduler (Maglev or an IPVS scheduler, with
//! persistence) for a new flow, and the forward by the service's mode.

use std::hint::cold_path;
use std::net::IpAddr;

use packet::{FlowKey, FrameLayout};

use super::fast::{established_forward, EntryRewrite, Established};
use super::{forward, martian_source, opened, Action, DropReason, Rewrite, StagedKey, WorkerState};
use crate::conntrack::{
    tcp_flags, ClientHit, ConnKey, Direction, Endpoint, Forwarding, InsertError, RemovedConn,
    Target, WireEndpoints,
};
use crate::scheduler::IpvsScheduler;
use crate::service::{BackendId, ForwardingMode, SchedulerKind};
use crate::snapshot::{mask_address, Route, Service, Snapshot};

impl WorkerState {
    /// A frame to a VIP; `None` when no service of the VIP matches (the caller decides what else it may be).
    pub(super) fn request(
        &mut self,
        snapshot: &Snapshot,
        schedulers: &mut [Option<IpvsScheduler>],
        layout: &FrameLayout,
        handed_off: bool,
        now_ms: u64,
    ) -> Option<Action> {
        let flow = &layout.flow;
        // Without a service the frame may be the node's own (the kernel's), whatever its TTL.
        let (service_index, service) =
            snapshot.service_for(flow.dst_addr, flow.dst_port, flow.protocol)?;
        if layout.ttl <= 1 {
            return Some(Action::Drop(DropReason::TtlExpired));
        }
        Some(self.request_to(
            snapshot,
            schedulers,
            layout,
            None,
            service_index,
            service,
            handed_off,
            now_ms,
        ))
    }

    /// A client's frame of a connection this worker tracks, forwarded from the entry alone; otherwise whether the
    /// table holds no live connection for it at all (`Missed`) or one the full decision must look at (a reply, a
    /// backend gone from the snapshot).
    ///
    /// Equivalent to [`WorkerState::request_to`] for these frames: a connection in this worker's table was opened
    /// here, so this worker owns the flow; its backend is in the snapshot, so its service is too (backend ids
    /// belong to one service).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn established(
        &mut self,
        snapshot: &Snapshot,
        tcp_flags: u8,
        l3_len: u16,
        staged: &StagedKey,
        ingress: u16,
        now_ms: u64,
        hand_back: bool,
        verdict: &mut Action,
    ) -> Established {
        let (id, backend, mode, changing) = match self.conns.client_hit(
            &staged.key,
            staged.hash,
            staged.candidates,
            now_ms,
            tcp_flags,
        ) {
            ClientHit::Refreshed { id, backend, mode } => (id, backend, mode, false),
            ClientHit::Changing { id, backend, mode } => (id, backend, mode, true),
            ClientHit::Reply(hit) => {
                return self.established_reply(
                    snapshot, tcp_flags, hit.id, ingress, now_ms, hand_back, verdict,
                );
            }
            ClientHit::Missed => {
                cold_path();
                return Established::Missed { absent: false };
            }
            ClientHit::Absent => {
                cold_path();
                return Established::Missed { absent: true };
            }
        };
        // A refreshed connection whose backend left the snapshot is removed by the full decision, so pushing its
        // expiry out first changed nothing that matters.
        let Some(route) = snapshot.backend_route(backend) else {
            cold_path();
            return Established::Other;
        };
        if changing {
            cold_path();
            self.account(id, Direction::Original, tcp_flags, now_ms);
        }
        let rewrite = if mode == ForwardingMode::Dr {
            // The MACs are all DR changes: the backend's address is not even read.
            EntryRewrite::MacsOnly
        } else if mode != ForwardingMode::Tun {
            // NAT and FULLNAT: the addresses are read from the entry when the frame is rewritten.
            EntryRewrite::Connection(id)
        } else {
            // TUN: the backend's tunnel is prepared in the snapshot; a packet too long for it whole (fragmented or
            // answered too big) is the full decision's.
            match snapshot.tunnel(backend) {
                Some(tunnel) if l3_len <= tunnel.max_inner_len => EntryRewrite::Tunnel(backend),
                _ => {
                    cold_path();
                    return Established::Other;
                }
            }
        };
        established_forward(route, rewrite, backend, false, hand_back, verdict)
    }

    /// A whole datagram to `service` (at `service_index` in the snapshot).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn request_to(
        &mut self,
        snapshot: &Snapshot,
        schedulers: &mut [Option<IpvsScheduler>],
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        service_index: u32,
        service: &Service,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        // Borrowed, not copied: reading an address back from a fresh copy would wait on the copy's stores.
        let flow = &layout.flow;
        if !handed_off && self.place.software_steering {
            let owner = self.request_owner(flow);
            if owner != self.place.index {
                return Action::Handoff { worker: owner };
            }
        }

        if let Some(hit) = self.lookup_frame(flow, staged, now_ms) {
            if hit.direction == Direction::Original {
                if let Some(conn) = self.conns.forwarding(hit.id) {
                    if snapshot.backend(conn.backend).is_some() {
                        self.account(hit.id, Direction::Original, layout.tcp_flags, now_ms);
                        return forward_request(snapshot, service, &conn, layout, false);
                    }
                    // The backend was removed: the flow is scheduled again as a new one.
                    if let Some(dead) = self.conns.remove(hit.id) {
                        self.load.connection_closed(dead.backend, dead.is_active());
                    }
                }
            } else {
                return Action::Drop(DropReason::NoConnection);
            }
        }

        // No connection: the frame would open one.
        if martian_source(snapshot, flow.src_addr) {
            return Action::Drop(DropReason::MartianSource);
        }
        let schedules_any_packet = service.scheduler == SchedulerKind::Mh;
        let is_syn = layout.tcp_flags & (tcp_flags::SYN | tcp_flags::RST) == tcp_flags::SYN;
        if flow.protocol == packet::flow::ip_protocol::TCP && !is_syn && !schedules_any_packet {
            return Action::Drop(DropReason::NoConnection);
        }

        // A flow another node began, whose backend the table no longer gives: the backend that node reported.
        let excepted = if is_syn || !schedules_any_packet {
            None
        } else {
            self.exceptions.take(flow, service, now_ms)
        };
        let Some(backend_index) = excepted
            .or_else(|| self.schedule(schedulers, service_index, service, flow, staged, now_ms))
        else {
            return Action::Drop(DropReason::NoBackend);
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
        let on_removed =
            |dead: &RemovedConn<'_>| load.connection_closed(dead.backend(), dead.is_active());
        // The staged key is this frame's own flow, built and hashed already.
        let (key, hash, absent) = match staged {
            Some(staged) => (staged.key, staged.hash, staged.absent),
            None => {
                let key = ConnKey::from_flow(flow);
                (key, self.conns.hash(&key), false)
            }
        };
        let inserted = self.conns.insert_keyed(
            now_ms,
            *flow,
            &key,
            hash,
            absent,
            target,
            layout.tcp_flags,
            on_removed,
        );
        match inserted {
            Ok(inserted) => {
                self.load.connection_opened(target.backend, inserted.active);
                let conn = Forwarding {
                    backend: target.backend,
                    mode: target.mode,
                    backend_endpoint: Endpoint {
                        addr: target.addr,
                        port: target.port,
                    },
                    local: inserted.local,
                };
                opened(forward_request(snapshot, service, &conn, layout, false))
            }
            Err(error) => {
                let untracked = Forwarding {
                    backend: target.backend,
                    mode: target.mode,
                    backend_endpoint: Endpoint {
                        addr: target.addr,
                        port: target.port,
                    },
                    local: None,
                };
                match (service.mode, error) {
                    // DR and TUN need no state to forward: keep the service up when the table is full.
                    (ForwardingMode::Dr | ForwardingMode::Tun, InsertError::TableFull) => {
                        forward_request(snapshot, service, &untracked, layout, true)
                    }
                    (_, InsertError::TableFull) => Action::Drop(DropReason::TableFull),
                    (_, InsertError::LocalPort(_)) => Action::Drop(DropReason::LocalPortsExhausted),
                    _ => Action::Drop(DropReason::ConnectionRejected),
                }
            }
        }
    }

    pub(super) fn schedule(
        &mut self,
        schedulers: &mut [Option<IpvsScheduler>],
        service_index: u32,
        service: &Service,
        flow: &FlowKey,
        staged: Option<&StagedKey>,
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
            SchedulerKind::Mh => service.maglev.lookup(StagedKey::flow_hash_of(staged, flow)),
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
}

/// The forward of a client's frame to its connection's backend, by the service's mode.
pub(super) fn forward_request(
    snapshot: &Snapshot,
    service: &Service,
    conn: &Forwarding,
    layout: &FrameLayout,
    untracked: bool,
) -> Action {
    let route = match snapshot.backend(conn.backend) {
        Some((_, _, route)) => *route,
        None => match snapshot.route(conn.backend_endpoint.addr) {
            Some(route) => route,
            None => return Action::Drop(DropReason::NoRoute),
        },
    };
    if conn.mode == ForwardingMode::Dr {
        // The MACs are all DR changes: no rewrite address to prepare.
        return forward(
            &route,
            Rewrite::MacsOnly,
            Some(conn.backend),
            untracked,
            false,
        );
    }
    forward_on(
        snapshot,
        service,
        conn.mode,
        conn.backend,
        &WireEndpoints::from(conn),
        &route,
        layout,
        untracked,
    )
}

/// The forward of a client's frame to its connection's backend over `route`, by the connection's `mode`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_on(
    snapshot: &Snapshot,
    service: &Service,
    mode: ForwardingMode,
    backend_id: BackendId,
    endpoints: &WireEndpoints,
    route: &Route,
    layout: &FrameLayout,
    untracked: bool,
) -> Action {
    let rewrite = match mode {
        ForwardingMode::Dr => Rewrite::MacsOnly,
        ForwardingMode::Nat => Rewrite::Destination {
            addr: endpoints.backend,
            port: endpoints.backend_port,
        },
        ForwardingMode::FullNat => match endpoints.local {
            Some((local, local_port)) => Rewrite::SourceAndDestination {
                src: local,
                src_port: local_port,
                dst: endpoints.backend,
                dst_port: endpoints.backend_port,
            },
            None => return Action::Drop(DropReason::ConnectionRejected),
        },
        ForwardingMode::Tun => {
            if let Some(tunnel) = snapshot.tunnel(backend_id) {
                if layout.l3_len <= tunnel.max_inner_len {
                    return forward(
                        route,
                        Rewrite::Tunnel(backend_id),
                        Some(backend_id),
                        untracked,
                        false,
                    );
                }
            }
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
                // An IPv4 packet that may be fragmented is, as a router would; the others learn the path MTU.
                if let (false, IpAddr::V4(outer_src), IpAddr::V4(outer_dst)) =
                    (layout.dont_fragment, outer_src.ip(), endpoints.backend.ip())
                {
                    let rewrite = Rewrite::EncapsulateInFragments {
                        outer_src,
                        outer_dst,
                        mtu,
                    };
                    return forward(route, rewrite, Some(backend_id), untracked, false);
                }
                return Action::TooBig {
                    from: layout.flow.dst_addr,
                    mtu: mtu.saturating_sub(outer_len as u16),
                };
            }
            Rewrite::Encapsulate {
                outer_src,
                outer_dst: endpoints.backend,
            }
        }
    };
    forward(route, rewrite, Some(backend_id), untracked, false)
}
