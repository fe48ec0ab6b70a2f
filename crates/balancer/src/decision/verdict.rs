//! The verdict of the forwarding decision: what to do with one frame, and why a dropped frame was dropped.

use std::net::{IpAddr, Ipv4Addr};

use packet::{MacWord, Translation, WireAddr};

use crate::conntrack::ConnId;
use crate::service::BackendId;

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
    /// A fragment whose datagram cannot be forwarded: a later fragment decided without the fragment table, a
    /// fragmented echo request for one of our addresses (answered only whole), or the rest of such a datagram.
    FragmentUnsupported,
    /// ARP or neighbour discovery not for us.
    NeighborNotForUs,
    /// The neighbour table had no room for a next hop to resolve.
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
    /// An 802.1Q or QinQ tagged frame: the ports are untagged.
    VlanTagged,
    /// An IPv4 packet with a loose or strict source route option, or IPv6 with a type 0 routing header.
    SourceRouted,
    /// A packet to forward with TTL or hop limit 0 or 1: a router would drop it too.
    TtlExpired,
    /// A new flow from a source no client has: unspecified, loopback, multicast, broadcast or one of our addresses.
    MartianSource,
    /// A NAT or FULLNAT reply that arrived on another port than the one facing the connection's backend.
    ReplyWrongPort,
    /// An ICMP error not addressed to the sender of the packet it quotes.
    IcmpErrorMisaddressed,
    /// An ICMP error that arrived on another side than the one the packet it quotes went to.
    IcmpErrorWrongPort,
    /// A later fragment whose datagram's first fragment did not come while it was held (counted by the data
    /// plane).
    FragmentWithoutFirst,
    /// A later fragment that came before its first while the worker already held as many as it may (counted by
    /// the data plane).
    FragmentHoldFull,
    /// ARP or neighbour discovery claiming an address that does not live on the subnet of the port it came in
    /// on (a poisoning attempt from another segment).
    NeighborWrongSide,
    /// An ARP reply or neighbour advertisement for an address that is no next hop sluice asked about: it cannot
    /// fill the table.
    NeighborUnwanted,
    /// Neighbour discovery with a hop limit below 255: it crossed a router (RFC 4861).
    NeighborRouted,
    /// A unicast frame to another host's MAC (the ports are promiscuous): a router would not take it (counted by
    /// the data plane).
    NotOurMac,
    /// A data frame the worker read and dropped unhandled because it was behind on a port with a kernel exception
    /// path: its queue is drained so that the control traffic behind the data is not lost (counted by the data
    /// plane).
    OverloadShed,
}

impl DropReason {
    pub const COUNT: usize = 33;
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
        DropReason::VlanTagged,
        DropReason::SourceRouted,
        DropReason::TtlExpired,
        DropReason::MartianSource,
        DropReason::ReplyWrongPort,
        DropReason::IcmpErrorMisaddressed,
        DropReason::IcmpErrorWrongPort,
        DropReason::FragmentWithoutFirst,
        DropReason::FragmentHoldFull,
        DropReason::NeighborWrongSide,
        DropReason::NeighborUnwanted,
        DropReason::NeighborRouted,
        DropReason::NotOurMac,
        DropReason::OverloadShed,
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
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::SourceRouted => "source_routed",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::MartianSource => "martian_source",
            DropReason::ReplyWrongPort => "reply_wrong_port",
            DropReason::IcmpErrorMisaddressed => "icmp_error_misaddressed",
            DropReason::IcmpErrorWrongPort => "icmp_error_wrong_port",
            DropReason::FragmentWithoutFirst => "fragment_without_first",
            DropReason::FragmentHoldFull => "fragment_hold_full",
            DropReason::NeighborWrongSide => "neighbor_wrong_side",
            DropReason::NeighborUnwanted => "neighbor_unwanted",
            DropReason::NeighborRouted => "neighbor_routed",
            DropReason::NotOurMac => "not_our_mac",
            DropReason::OverloadShed => "overload_shed",
        }
    }
}

/// The in-place change a forwarded frame needs besides its MAC addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// DR: the MACs only.
    MacsOnly,
    /// NAT request: destination becomes the backend.
    Destination { addr: WireAddr, port: u16 },
    /// NAT reply: source becomes the VIP.
    Source { addr: WireAddr, port: u16 },
    /// FULLNAT, both directions.
    SourceAndDestination {
        src: WireAddr,
        src_port: u16,
        dst: WireAddr,
        dst_port: u16,
    },
    /// TUN: IPv4-in-IPv4 or IPv6-in-IPv6 from `outer_src` to `outer_dst`.
    Encapsulate {
        outer_src: WireAddr,
        outer_dst: WireAddr,
    },
    /// TUN for an IPv4 packet without don't-fragment that the tunnel header makes longer than the egress `mtu`:
    /// encapsulated, and the outer packet sent in fragments that fit (RFC 2003 section 5.1), which the backend
    /// reassembles before it unwraps the packet.
    EncapsulateInFragments {
        outer_src: Ipv4Addr,
        outer_dst: Ipv4Addr,
        mtu: u16,
    },
    /// An ICMP error mapped like the flow it quotes: `destination` (address, port) becomes the outer destination
    /// and the quoted source; `source` the outer source and the quoted destination.
    IcmpError {
        destination: Option<(IpAddr, u16)>,
        source: Option<(IpAddr, u16)>,
    },
    /// A client's frame of the NAT or FULLNAT connection `ConnId`: the `Destination` or `SourceAndDestination`
    /// rewrite its entry holds, read from the entry when the frame is rewritten
    /// ([`crate::decision::WorkerState::rewrite_client`]) instead of copied into the verdict and back. Only
    /// [`crate::decision::WorkerState::decide_into`] gives it, for the frame it decides, while the connection
    /// cannot change; [`crate::decision::WorkerState::decide`] gives the rewrite it stands for.
    Connection(ConnId),
    /// TUN to backend `BackendId`: the [`Rewrite::Encapsulate`] its tunnel in the snapshot stands for
    /// ([`crate::snapshot::Snapshot::tunnel`]), prepared with the snapshot instead of built for every frame. Only
    /// [`crate::decision::WorkerState::decide_into`] gives it, for a packet that fits the tunnel whole.
    Tunnel(BackendId),
    /// A backend's frame of the NAT or FULLNAT connection `ConnId`, back to its client: the `Source` (NAT) or
    /// `SourceAndDestination` (FULLNAT) rewrite the connection's client key gives, read from the entry when the
    /// frame is rewritten ([`crate::decision::WorkerState::rewrite_reply`]) instead of copied into the verdict and
    /// back. Given, like [`Rewrite::Connection`], only by [`crate::decision::WorkerState::decide_into`].
    Reply(ConnId),
}

impl From<Translation> for Rewrite {
    /// The rewrite a verdict spells `translation` as (keeping both ends: the MACs only).
    fn from(translation: Translation) -> Rewrite {
        match (translation.src, translation.dst) {
            (None, None) => Rewrite::MacsOnly,
            (None, Some((addr, port))) => Rewrite::Destination { addr, port },
            (Some((addr, port)), None) => Rewrite::Source { addr, port },
            (Some((src, src_port)), Some((dst, dst_port))) => Rewrite::SourceAndDestination {
                src,
                src_port,
                dst,
                dst_port,
            },
        }
    }
}

/// A frame to send on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Egress port index.
    pub port: u16,
    /// Whose MAC the frame goes to: the destination on a connected subnet, else the gateway.
    pub next_hop: IpAddr,
    /// The next hop's configured MAC, if any: one word, written and read whole, so reading it right after the
    /// decision wrote it never waits on the stores.
    pub next_hop_mac: MacWord,
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

impl Forward {
    /// The next hop's MAC when configured; otherwise the neighbour table has it (or it must be resolved).
    #[inline]
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.next_hop_mac.get()
    }
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

#[cfg(test)]
mod tests {
    /// The verdict is moved on every frame: it must stay a few words, not grow with every new kind of rewrite.
    #[test]
    fn the_verdict_stays_small() {
        // Two rewrite addresses of 20 bytes (four words and a family flag: whole-word stores and loads) and two
        // ports are the largest rewrite; the verdict adds the egress, the next hop and the counters' facts.
        assert!(std::mem::size_of::<super::Action>() <= 88);
        assert!(std::mem::size_of::<super::Rewrite>() <= 48);
    }
}
