//! Backends' replies in NAT and FULLNAT: found by their own key in the connection table and sent back to the
//! client with the addresses the client expects.
//!
//! A reply is taken only for a live connection and only from the port that faces the connection's backend, first
//! fragments included: a frame that claims a backend's address on the client side is spoofed (a relay attempt or a
//! blind reset) and is dropped before it can touch the connection.

use std::hint::cold_path;
use std::net::IpAddr;

use packet::{FlowKey, Fragment, FrameLayout, WireAddr};

use super::fast::{established_forward, EntryRewrite, Established};
use super::{forward, Action, DropReason, Rewrite, SharedBackendHop, StagedKey, WorkerState};
use crate::conntrack::{ConnId, Direction};
use crate::snapshot::Snapshot;

impl WorkerState {
    /// A backend's reply that the burst's lookup found: the reply entry of connection `id`. Sent back to the
    /// client as [`WorkerState::reply_to_client`] sends it, without classifying the destination first: like a
    /// client's packet, a packet of a tracked connection is forwarded by its connection. The connection lives on
    /// this worker, so it owns the reply and no handoff is asked. What is not plain (a backend gone from the
    /// snapshot, a reply on another port than its backend's, a client without a route) takes the full decision,
    /// which drops it under its reason, before anything is accounted.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn established_reply(
        &mut self,
        snapshot: &Snapshot,
        tcp_flags: u8,
        id: ConnId,
        ingress: u16,
        now_ms: u64,
        hand_back: bool,
        verdict: &mut Action,
    ) -> Established {
        let Some(reply) = self.conns.reply_path(id) else {
            cold_path();
            return Established::Other;
        };
        if snapshot
            .backend_route(reply.backend)
            .map(|route| route.port)
            != Some(ingress)
        {
            cold_path();
            return Established::Other;
        }
        let Some(route) = snapshot.route(reply.client.src_addr()) else {
            cold_path();
            return Established::Other;
        };
        if !self.conns.refresh(id, Direction::Reply, tcp_flags, now_ms) {
            cold_path();
            self.account(id, Direction::Reply, tcp_flags, now_ms);
        }
        // The addresses are read from the entry when the frame is rewritten.
        established_forward(
            &route,
            EntryRewrite::Reply(id),
            reply.backend,
            true,
            hand_back,
            verdict,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn nat_reply(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        vip: IpAddr,
        vport: u16,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let flow = layout.flow;
        // A first fragment carries the ports: it is mapped through its connection like a whole datagram.
        if let Fragment::Later { .. } = layout.fragment {
            return Action::Drop(DropReason::FragmentUnsupported);
        }
        if !handed_off && self.place.workers > 1 {
            let owner = self.owner_of_tuple(vip, flow.dst_addr, vport, flow.dst_port);
            if owner != self.place.index {
                return Action::Handoff { worker: owner };
            }
        }
        self.reply_to_client(snapshot, layout, staged, ingress, now_ms, |client| {
            Rewrite::Source {
                addr: WireAddr::from(client.dst_addr),
                port: client.dst_port,
            }
        })
    }

    /// A reply from a backend that several NAT services share: which service (and so which VIP and port the client
    /// sees) is told by the connection, not by the backend's address. With several workers the owners of the
    /// candidate services are tried in turn (`shared_backend_hop`).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn shared_nat_reply(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        services: &[u32],
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let flow = layout.flow;
        if let Fragment::Later { .. } = layout.fragment {
            return Action::Drop(DropReason::FragmentUnsupported);
        }
        let next = if self.place.workers > 1 {
            match self.shared_backend_hop(
                snapshot,
                services,
                flow.dst_addr,
                flow.dst_port,
                handed_off,
            ) {
                SharedBackendHop::Handoff(worker) => return Action::Handoff { worker },
                SharedBackendHop::Here { next } => next,
            }
        } else {
            None
        };
        let action = self.reply_to_client(snapshot, layout, staged, ingress, now_ms, |client| {
            Rewrite::Source {
                addr: WireAddr::from(client.dst_addr),
                port: client.dst_port,
            }
        });
        match (action, next) {
            (Action::Drop(DropReason::NoConnection), Some(worker)) => Action::Handoff { worker },
            (action, _) => action,
        }
    }

    /// A backend's reply on the worker that owns its connection: accounted, and sent back towards the client with
    /// `rewrite` (made from the client's flow key); dropped when no connection holds it or when it arrived on
    /// another port than the one that faces the connection's backend.
    pub(super) fn reply_to_client(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        now_ms: u64,
        rewrite: impl FnOnce(&FlowKey) -> Rewrite,
    ) -> Action {
        let Some(hit) = self.lookup_frame(&layout.flow, staged, now_ms) else {
            return Action::Drop(DropReason::NoConnection);
        };
        let Some(conn) = self.conns.get(hit.id) else {
            return Action::Drop(DropReason::NoConnection);
        };
        if hit.direction != Direction::Reply {
            return Action::Drop(DropReason::NoConnection);
        }
        // The backend's place in the snapshot holds its route (an array index, no probe); a backend removed while
        // its connections drain is routed afresh.
        let backend_port = match snapshot.backend(conn.backend) {
            Some((_, _, route)) => Some(route.port),
            None => snapshot.route(layout.flow.src_addr).map(|route| route.port),
        };
        if backend_port != Some(ingress) {
            return Action::Drop(DropReason::ReplyWrongPort);
        }
        self.account(hit.id, Direction::Reply, layout.tcp_flags, now_ms);
        let Some(route) = snapshot.route(conn.client.src_addr) else {
            return Action::Drop(DropReason::NoRoute);
        };
        forward(
            &route,
            rewrite(&conn.client),
            Some(conn.backend),
            false,
            true,
        )
    }

    pub(super) fn fullnat_reply(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> Action {
        let flow = layout.flow;
        // A first fragment carries the ports: it is mapped through its connection like a whole datagram.
        if let Fragment::Later { .. } = layout.fragment {
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
        self.reply_to_client(snapshot, layout, staged, ingress, now_ms, |client| {
            Rewrite::SourceAndDestination {
                src: WireAddr::from(client.dst_addr),
                src_port: client.dst_port,
                dst: WireAddr::from(client.src_addr),
                dst_port: client.src_port,
            }
        })
    }
}
