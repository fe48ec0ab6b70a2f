//! ARP and neighbour advertisements: answers for the addresses the balancer owns, and the neighbour table updated
//! only by an honest neighbour: one that lives on the subnet of the port the frame arrived on, speaks for itself,
//! and is a next hop sluice asked about (the table has an entry for it); an IPv6 advertisement only with hop limit
//! 255, as RFC 4861 requires (it was not routed). Everything else changes nothing and is counted by reason.

use std::net::{IpAddr, Ipv6Addr};

use packet::FrameLayout;

use super::{Action, DropReason, WorkerState};
use crate::snapshot::Snapshot;

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// The hop limit of neighbour discovery that was not routed (RFC 4861 section 7.1).
const LINK_LOCAL_HOP_LIMIT: u8 = 255;

/// Whether `addr` lives on the subnet of `port` (a connected subnet, or the port's gateway).
fn lives_on(snapshot: &Snapshot, port: u16, addr: IpAddr) -> bool {
    snapshot
        .route(addr)
        .is_some_and(|route| route.port == port && route.next_hop == addr)
}

impl WorkerState {
    #[inline(never)]
    pub(super) fn arp(
        &self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        ingress: u16,
        now_ms: u64,
    ) -> Action {
        let Some(arp) = layout.arp else {
            return Action::Drop(DropReason::NeighborNotForUs);
        };
        let for_us = snapshot.owned(IpAddr::V4(arp.target_ip)).is_some();
        let sender = IpAddr::V4(arp.sender_ip);
        match arp.operation {
            // An address probe (RFC 5227) names no sender to learn.
            ARP_REQUEST if arp.sender_ip.is_unspecified() && for_us => Action::AnswerArp,
            ARP_REQUEST if for_us => match snapshot.route(sender) {
                // A neighbour that asks for us tells its MAC: taken only if it is one of our next hops.
                Some(route) if route.next_hop == sender && route.port == ingress => {
                    self.neighbors
                        .confirm(ingress, sender, arp.sender_mac, now_ms);
                    Action::AnswerArp
                }
                // An address that lives behind another port, claimed here: a poisoning attempt.
                Some(route) if route.next_hop == sender => {
                    Action::Drop(DropReason::NeighborWrongSide)
                }
                // A sender outside every connected subnet (a router numbered elsewhere): answered, never learned.
                _ => Action::AnswerArp,
            },
            ARP_REPLY => self.neighbor_said(snapshot, ingress, sender, arp.sender_mac, now_ms),
            _ => Action::Drop(DropReason::NeighborNotForUs),
        }
    }

    /// A neighbour advertisement for `target` with the target's MAC, if it carries one.
    #[inline(never)]
    pub(super) fn neighbor_advertisement(
        &self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        target: Ipv6Addr,
        target_mac: Option<[u8; 6]>,
        ingress: u16,
        now_ms: u64,
    ) -> Action {
        if layout.ttl != LINK_LOCAL_HOP_LIMIT {
            return Action::Drop(DropReason::NeighborRouted);
        }
        match target_mac {
            Some(mac) => self.neighbor_said(snapshot, ingress, IpAddr::V6(target), mac, now_ms),
            None => Action::Drop(DropReason::NeighborNotForUs),
        }
    }

    /// `addr` says, on port `ingress`, that it is at `mac`.
    fn neighbor_said(
        &self,
        snapshot: &Snapshot,
        ingress: u16,
        addr: IpAddr,
        mac: [u8; 6],
        now_ms: u64,
    ) -> Action {
        if !lives_on(snapshot, ingress, addr) {
            return Action::Drop(DropReason::NeighborWrongSide);
        }
        if self.neighbors.confirm(ingress, addr, mac, now_ms) {
            Action::Consumed
        } else {
            Action::Drop(DropReason::NeighborUnwanted)
        }
    }
}
