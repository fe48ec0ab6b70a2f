//! Fragments kept whole: a datagram's first fragment, which carries the ports, is decided like a whole datagram
//! (the connection table, then the scheduler), so a fragmented datagram goes where its flow goes; the decision is
//! recorded in the [`FragmentTable`] and the datagram's later fragments, which carry no ports, get the same fate.
//! A later fragment that arrives before its first is held by the data plane (bounded, timed out) and decided
//! again when the first has been.
//!
//! With several workers, every fragment of a datagram first meets at one worker, the datagram's keeper, chosen by
//! the symmetric hash of its addresses alone (what a NIC that hashes fragments on their addresses picks, as ports
//! of zero add nothing to a Toeplitz hash). The keeper decides the first fragment; when the flow belongs to
//! another worker (a request's or a reply's owner), the keeper records a handoff to it and passes the first
//! fragment and every later one on, in order over the same ring; that worker decides the first fragment as its
//! owner and records the verdict for the later ones. A fragment therefore crosses at most two handoffs.

use std::net::IpAddr;

use packet::{Fragment, FrameLayout, WireAddr};

use super::fragment_table::{DatagramFate, DatagramKey, FragmentTable};
use super::{refused_whatever_its_destination, Action, DropReason, Forward, Rewrite, StagedKey};
use super::{WorkerState, WorkerTables};
use crate::snapshot::Snapshot;

/// What the decision made of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentAction {
    Act(Action),
    /// A later fragment whose first has not been decided here yet: hold it, and decide it again once the
    /// first of `datagram` has been.
    Hold(DatagramKey),
}

impl WorkerState {
    /// The decision for a frame that may be a fragment, with this worker's fragment table (a whole datagram is
    /// decided by [`WorkerState::decide`]). Arguments as for [`WorkerState::decide`].
    #[allow(clippy::too_many_arguments)]
    pub fn decide_fragment(
        &mut self,
        fragments: &mut FragmentTable,
        tables: &mut WorkerTables,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        handed_off: bool,
        now_ms: u64,
    ) -> FragmentAction {
        let Some(datagram) = DatagramKey::of(layout) else {
            return FragmentAction::Act(
                self.decide(tables, layout, staged, ingress, handed_off, now_ms),
            );
        };
        if layout.vlan_tags != 0 || layout.source_routed {
            return FragmentAction::Act(refused_whatever_its_destination(layout));
        }
        let keeper = self.keeper_of(&datagram);
        let at_keeper = keeper == self.place.index;
        if !at_keeper && !handed_off {
            return FragmentAction::Act(Action::Handoff { worker: keeper });
        }
        // Here: the keeper, or the flow's owner the keeper passed the datagram to.
        match layout.fragment {
            Fragment::None => FragmentAction::Act(Action::Drop(DropReason::FragmentUnsupported)),
            Fragment::First { .. } => {
                let action = if at_keeper {
                    self.first_fragment_at_keeper(tables, layout, staged, ingress, now_ms)
                } else {
                    self.decide(tables, layout, staged, ingress, true, now_ms)
                };
                fragments.record(datagram, DatagramFate::of(&action), now_ms);
                FragmentAction::Act(action)
            }
            Fragment::Later { .. } => match fragments.fate(&datagram, now_ms) {
                Some(fate) => FragmentAction::Act(later_fragment(&tables.snapshot, layout, fate)),
                None => FragmentAction::Hold(datagram),
            },
        }
    }

    /// The worker all fragments of `datagram` meet at.
    fn keeper_of(&self, datagram: &DatagramKey) -> u16 {
        self.owner_of_tuple(datagram.src, datagram.dst, 0, 0)
    }

    /// A first fragment at its datagram's keeper: passed to the worker that owns its flow, or decided here.
    fn first_fragment_at_keeper(
        &mut self,
        tables: &mut WorkerTables,
        layout: &FrameLayout,
        staged: Option<&StagedKey>,
        ingress: u16,
        now_ms: u64,
    ) -> Action {
        let flow = &layout.flow;
        if self.place.workers > 1 {
            // A request belongs to the owner of its 4-tuple even when the devices steer (whole datagrams of the
            // flow reach that worker by themselves; its fragments reached the keeper).
            let to_service = tables
                .snapshot
                .service_for(flow.dst_addr, flow.dst_port, flow.protocol)
                .is_some();
            if to_service {
                let owner = self.request_owner(flow);
                if owner != self.place.index {
                    return Action::Handoff { worker: owner };
                }
            }
        }
        // Not handed off as far as the decision goes: replies are passed on to their owner from here.
        self.decide(tables, layout, staged, ingress, false, now_ms)
    }
}

/// A later fragment given its datagram's fate: forwarded like the first (checked again for what depends on the
/// fragment itself: its TTL, and its size in a tunnel), or handed, given to the kernel or dropped as it was.
fn later_fragment(snapshot: &Snapshot, layout: &FrameLayout, fate: DatagramFate) -> Action {
    match fate {
        DatagramFate::Forward(forward) => {
            if layout.ttl <= 1 {
                return Action::Drop(DropReason::TtlExpired);
            }
            let tunnel = match forward.rewrite {
                Rewrite::Encapsulate {
                    outer_src,
                    outer_dst,
                } => Some((outer_src, outer_dst)),
                Rewrite::EncapsulateInFragments {
                    outer_src,
                    outer_dst,
                    ..
                } => Some((WireAddr::v4(outer_src), WireAddr::v4(outer_dst))),
                _ => None,
            };
            let Some((outer_src, outer_dst)) = tunnel else {
                return Action::Forward(forward);
            };
            // In a tunnel, each fragment is sized on its own: whole if it fits, else in outer fragments.
            let outer_len = if outer_src.is_ipv4() {
                packet::IPV4_HEADER_LEN
            } else {
                packet::IPV6_HEADER_LEN
            };
            let mtu = snapshot
                .port(forward.port)
                .map_or(u16::MAX, |port| port.mtu);
            let rewrite = if usize::from(layout.l3_len) + outer_len <= usize::from(mtu) {
                Rewrite::Encapsulate {
                    outer_src,
                    outer_dst,
                }
            } else {
                match (layout.dont_fragment, outer_src.ip(), outer_dst.ip()) {
                    (false, IpAddr::V4(outer_src), IpAddr::V4(outer_dst)) => {
                        Rewrite::EncapsulateInFragments {
                            outer_src,
                            outer_dst,
                            mtu,
                        }
                    }
                    _ => return Action::Drop(DropReason::TooBig),
                }
            };
            Action::Forward(Forward { rewrite, ..forward })
        }
        DatagramFate::Handoff { worker } => Action::Handoff { worker },
        DatagramFate::ToKernel => Action::ToKernel,
        DatagramFate::Drop(reason) => Action::Drop(reason),
    }
}
