//! Backends' replies in NAT and FULLNAT: found by their own key in the connection table and sent back to the
//! client with the addresses the client expects.

use std::net::IpAddr;

use packet::{FlowKey, Fragment, FrameLayout};

use super::{forward, Action, DropReason, Rewrite, StagedKey, WorkerState};
use crate::conntrack::Direction;
use crate::snapshot::Snapshot;

impl WorkerState {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn nat_reply(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
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
                    &route,
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
        self.reply_to_client(snapshot, layout, staged, now_ms, |client| Rewrite::Source {
            addr: client.dst_addr,
            port: client.dst_port,
        })
    }

    /// A backend's reply on the worker that owns its connection: accounted, and sent back towards the client with
    /// `rewrite` (made from the client's flow key); dropped when no connection holds it.
    pub(super) fn reply_to_client(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
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
        self.reply_to_client(snapshot, layout, staged, now_ms, |client| {
            Rewrite::SourceAndDestination {
                src: client.dst_addr,
                src_port: client.dst_port,
                dst: client.src_addr,
                dst_port: client.src_port,
            }
        })
    }
}
