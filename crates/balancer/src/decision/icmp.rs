//! ICMP errors about tracked flows: steered to the flow's owner and rewritten like the flow they quote.
//!
//! An error is taken only when it is addressed to the sender of the packet it quotes (as every host's stack
//! checks) and arrives on the side that packet went to: an error sent to one VIP quoting another VIP's flow, or
//! quoting a packet to a backend but arriving from the client side, is spoofed.

use packet::{FlowKey, WireAddr};

use super::{forward, not_ours, Action, DropReason, Rewrite, SharedBackendHop, WorkerState};
use crate::conntrack::Direction;
use crate::service::ForwardingMode;
use crate::snapshot::Snapshot;

impl WorkerState {
    /// An ICMP error quoting `inner` (the offending packet as its sender sent it).
    pub(super) fn icmp_error(
        &mut self,
        snapshot: &Snapshot,
        outer: &FlowKey,
        inner: &FlowKey,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        if outer.dst_addr != inner.src_addr {
            return Action::Drop(DropReason::IcmpErrorMisaddressed);
        }
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
                None => match snapshot.nat_services_of_shared_backend(
                    inner.dst_addr,
                    inner.dst_port,
                    inner.protocol,
                ) {
                    Some(services) => {
                        return self.shared_backend_icmp_error(
                            snapshot, inner, services, ingress, handed_off, now_ms,
                        )
                    }
                    None => return not_ours(snapshot),
                },
            },
        };
        // NICs hash ICMP on addresses alone, so errors are steered whatever the device does.
        if !handed_off && self.place.workers > 1 && owner != self.place.index {
            return Action::Handoff { worker: owner };
        }
        self.icmp_error_here(snapshot, &quoted_flow, ingress, now_ms)
    }

    /// An ICMP error about a connection to a backend that several NAT services share: tried on the candidate
    /// services' owners in turn, as the backend's replies are (`shared_backend_hop`).
    #[cold]
    fn shared_backend_icmp_error(
        &mut self,
        snapshot: &Snapshot,
        inner: &FlowKey,
        services: &[u32],
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let next = if self.place.workers > 1 {
            match self.shared_backend_hop(
                snapshot,
                services,
                inner.src_addr,
                inner.src_port,
                handed_off,
            ) {
                SharedBackendHop::Handoff(worker) => return Action::Handoff { worker },
                SharedBackendHop::Here { next } => next,
            }
        } else {
            None
        };
        match (
            self.icmp_error_here(snapshot, &inner.reversed(), ingress, now_ms),
            next,
        ) {
            (Action::Drop(DropReason::IcmpErrorUnknownFlow), Some(worker)) => {
                Action::Handoff { worker }
            }
            (action, _) => action,
        }
    }

    /// An ICMP error about `quoted_flow` (the flow as tracked) on the worker that owns it.
    fn icmp_error_here(
        &mut self,
        snapshot: &Snapshot,
        quoted_flow: &FlowKey,
        ingress: u16,
        now_ms: u64,
    ) -> Action {
        let Some(hit) = self.conns.lookup(quoted_flow, now_ms) else {
            return Action::Drop(DropReason::IcmpErrorUnknownFlow);
        };
        let Some(conn) = self.conns.get(hit.id) else {
            return Action::Drop(DropReason::IcmpErrorUnknownFlow);
        };
        let client = conn.client;
        let backend = conn.backend_endpoint;
        match hit.direction {
            Direction::Original => {
                let Some((service, _, route)) = snapshot.backend(conn.backend) else {
                    return Action::Drop(DropReason::IcmpErrorUnknownFlow);
                };
                // The quoted packet went to the client: the error comes from the client's side.
                if snapshot.route(client.src_addr).map(|route| route.port) != Some(ingress) {
                    return Action::Drop(DropReason::IcmpErrorWrongPort);
                }
                let rewrite = match conn.mode {
                    ForwardingMode::Dr => Rewrite::MacsOnly,
                    ForwardingMode::Tun => match service.tunnel_source {
                        Some(outer_src) => Rewrite::Encapsulate {
                            outer_src,
                            outer_dst: WireAddr::from(backend.addr),
                        },
                        None => return Action::Drop(DropReason::IcmpUnsupported),
                    },
                    ForwardingMode::Nat => Rewrite::IcmpError {
                        destination: Some((backend.addr, backend.port)),
                        source: None,
                    },
                    ForwardingMode::FullNat => {
                        let Some(local) = conn.local else {
                            return Action::Drop(DropReason::IcmpErrorUnknownFlow);
                        };
                        Rewrite::IcmpError {
                            destination: Some((backend.addr, backend.port)),
                            source: Some((local.addr, local.port)),
                        }
                    }
                };
                forward(route, rewrite, Some(conn.backend), false, false)
            }
            Direction::Reply => {
                // The quoted packet went to the backend: the error comes from the backend's side.
                let backend_port = match snapshot.backend(conn.backend) {
                    Some((_, _, route)) => Some(route.port),
                    None => snapshot.route(backend.addr).map(|route| route.port),
                };
                if backend_port != Some(ingress) {
                    return Action::Drop(DropReason::IcmpErrorWrongPort);
                }
                let Some(route) = snapshot.route(client.src_addr) else {
                    return Action::Drop(DropReason::NoRoute);
                };
                let source = Some((client.dst_addr, client.dst_port));
                let rewrite = match conn.mode {
                    ForwardingMode::Nat => Rewrite::IcmpError {
                        destination: None,
                        source,
                    },
                    ForwardingMode::FullNat => Rewrite::IcmpError {
                        destination: Some((client.src_addr, client.src_port)),
                        source,
                    },
                    ForwardingMode::Dr | ForwardingMode::Tun => {
                        return Action::Drop(DropReason::IcmpErrorUnknownFlow)
                    }
                };
                forward(&route, rewrite, Some(conn.backend), false, true)
            }
        }
    }
}
