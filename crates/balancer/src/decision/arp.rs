//! ARP: answers for the addresses the balancer owns, and neighbours learned from replies.

use std::net::IpAddr;

use packet::FrameLayout;

use super::{Action, DropReason, WorkerState};
use crate::snapshot::Snapshot;

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

impl WorkerState {
    #[inline(never)]
    pub(super) fn arp(&self, snapshot: &Snapshot, layout: &FrameLayout) -> Action {
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
}
