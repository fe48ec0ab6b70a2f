//! The established path's small verdict: a frame of a connection this worker tracks, to a next hop whose MAC is
//! configured, is forwarded from a 24-byte [`FastForward`] that the data plane acts on where it was made (in
//! registers, once inlined), instead of an [`Action`] written to memory and read back.

use std::hint::cold_path;

use packet::{Fragment, FrameLayout, IcmpKind, MacWord, PlainFrame};

use super::{forward, Action, Rewrite, StagedKey, WorkerState};
use crate::conntrack::ConnId;
use crate::service::BackendId;
use crate::snapshot::{Route, Snapshot};

/// The rewrites of a frame of an established connection: the ones a connection entry or the snapshot holds, named
/// by their index instead of copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryRewrite {
    /// [`Rewrite::MacsOnly`] (DR).
    MacsOnly,
    /// [`Rewrite::Connection`] (a NAT or FULLNAT client's frame).
    Connection(ConnId),
    /// [`Rewrite::Reply`] (a NAT or FULLNAT backend's frame).
    Reply(ConnId),
    /// [`Rewrite::Tunnel`] (TUN).
    Tunnel(BackendId),
}

impl From<EntryRewrite> for Rewrite {
    #[inline(always)]
    fn from(rewrite: EntryRewrite) -> Rewrite {
        match rewrite {
            EntryRewrite::MacsOnly => Rewrite::MacsOnly,
            EntryRewrite::Connection(id) => Rewrite::Connection(id),
            EntryRewrite::Reply(id) => Rewrite::Reply(id),
            EntryRewrite::Tunnel(backend) => Rewrite::Tunnel(backend),
        }
    }
}

/// The forward of a frame of an established connection to a next hop whose MAC is configured: what
/// [`Action::Forward`] would say, minus what such a frame never needs (the next hop's address, the untracked and
/// opened marks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastForward {
    /// Egress port index.
    pub port: u16,
    /// Always known.
    pub next_hop_mac: MacWord,
    pub rewrite: EntryRewrite,
    pub backend: BackendId,
    /// A backend's reply on its way to the client.
    pub reply: bool,
}

/// What [`WorkerState::decide_established`] made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Established {
    /// Forwarded as this says; nothing is written to the verdict.
    Fast(FastForward),
    /// Forwarded (to a next hop whose MAC is not configured): the verdict is written.
    Forwarded,
    /// No live connection has the key; `absent` when no entry holds it at all. The full decision takes the
    /// frame, with [`StagedKey::after_miss`].
    Missed { absent: bool },
    /// Not a plain packet of a live connection (a backend gone from the snapshot, a reply on the wrong port or
    /// to a client without a route, a fragment, ICMP, a frame at the end of its TTL, a tagged or source-routed
    /// frame): the full decision takes it.
    Other,
}

/// The forward of an established connection's frame through `route`: handed back whole when the caller asked
/// for it (`hand_back`) and the next hop's MAC is configured; written as the verdict otherwise.
#[inline(always)]
pub(super) fn established_forward(
    route: &Route,
    rewrite: EntryRewrite,
    backend: BackendId,
    reply: bool,
    hand_back: bool,
    verdict: &mut Action,
) -> Established {
    if hand_back && route.mac.is_known() {
        Established::Fast(FastForward {
            port: route.port,
            next_hop_mac: route.mac,
            rewrite,
            backend,
            reply,
        })
    } else {
        cold_path();
        *verdict = forward(route, rewrite.into(), Some(backend), false, reply);
        Established::Forwarded
    }
}

impl StagedKey {
    /// Whether the entries' stage ([`WorkerState::stage_entries_with`]) found that no entry can hold the key: the
    /// frame likely opens a connection.
    #[inline]
    pub fn no_entry_holds_it(&self) -> bool {
        self.candidates
            .is_some_and(|candidates| candidates.is_empty())
    }

    /// The staged key of a frame whose established lookup missed: the full decision need not search again.
    #[inline]
    pub fn after_miss(&self, absent: bool) -> StagedKey {
        StagedKey {
            missed: true,
            absent,
            ..*self
        }
    }
}

impl WorkerState {
    /// The first step of [`WorkerState::decide_into`], which the data plane takes on its own: a whole, untagged,
    /// not source-routed datagram (not ICMP, TTL above 1) of a connection this worker tracks is forwarded from
    /// its entry, without classifying the destination; handed back as a [`FastForward`] when the caller asks
    /// (`hand_back`) and its next hop's MAC is configured, written to `verdict` otherwise. What this does not
    /// forward, [`WorkerState::decide_rest_into`] decides: together, the full decision's verdict for every frame.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn decide_established(
        &mut self,
        snapshot: &Snapshot,
        layout: &FrameLayout,
        staged: &StagedKey,
        ingress: u16,
        now_ms: u64,
        hand_back: bool,
        verdict: &mut Action,
    ) -> Established {
        if !plain(layout) {
            cold_path();
            return Established::Other;
        }
        self.established(
            snapshot,
            layout.tcp_flags,
            layout.l3_len,
            staged,
            ingress,
            now_ms,
            hand_back,
            verdict,
        )
    }

    /// [`WorkerState::decide_established`] for a frame [`packet::parse_plain`] read, staged with
    /// [`WorkerState::stage_plain_with`]: the same answer as for the frame's full layout, without the layout.
    #[inline(always)]
    pub fn decide_plain_established(
        &mut self,
        snapshot: &Snapshot,
        plain: &PlainFrame,
        staged: &StagedKey,
        ingress: u16,
        now_ms: u64,
        verdict: &mut Action,
    ) -> Established {
        // A plain frame is untagged, whole, not source-routed and not ICMP; only its TTL is left to check.
        if plain.ttl <= 1 {
            cold_path();
            return Established::Other;
        }
        self.established(
            snapshot,
            plain.tcp_flags,
            plain.l3_len,
            staged,
            ingress,
            now_ms,
            true,
            verdict,
        )
    }
}

/// Whether the established path may take a frame: an untagged, not source-routed, whole datagram, not ICMP,
/// whose TTL allows forwarding (a frame at the end of its TTL takes the full decision, which drops it when it
/// would be forwarded).
#[inline(always)]
fn plain(layout: &FrameLayout) -> bool {
    layout.vlan_tags == 0
        && !layout.source_routed
        && layout.fragment == Fragment::None
        && matches!(layout.icmp, IcmpKind::None)
        && layout.ttl > 1
}
