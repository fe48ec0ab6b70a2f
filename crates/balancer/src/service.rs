//! The service model: virtual services, their backends and how they forward, as the data path sees them.

use std::net::IpAddr;

/// How a service forwards a request to its backend (the four LVS forwarding methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardingMode {
    /// Direct routing: rewrite the MAC addresses only; the backend answers the client directly.
    Dr,
    /// Destination NAT: VIP:vport becomes RIP:rport; replies come back through the balancer.
    Nat,
    /// Source and destination NAT: CIP:cport becomes LIP:lport and VIP:vport becomes RIP:rport.
    FullNat,
    /// IP-in-IP (IPv4) or IPv6-in-IPv6 encapsulation towards the backend.
    Tun,
}

impl ForwardingMode {
    /// Every mode, in the order above.
    pub const ALL: [ForwardingMode; 4] = [
        ForwardingMode::Dr,
        ForwardingMode::Nat,
        ForwardingMode::FullNat,
        ForwardingMode::Tun,
    ];
}

/// The scheduler that picks a backend for a new flow (Linux IPVS names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SchedulerKind {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Sed,
    Nq,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    /// Maglev consistent hashing: the default, and the only one that gives every node the same choice.
    #[default]
    Mh,
}

impl ForwardingMode {
    /// The mode named as in configurations and ipvsadm's vocabulary: `dr`, `nat`, `fullnat`, `tun`.
    pub fn from_name(name: &str) -> Option<ForwardingMode> {
        match name {
            "dr" => Some(ForwardingMode::Dr),
            "nat" => Some(ForwardingMode::Nat),
            "fullnat" => Some(ForwardingMode::FullNat),
            "tun" => Some(ForwardingMode::Tun),
            _ => None,
        }
    }
}

impl SchedulerKind {
    /// Every scheduler's name, as IPVS names them.
    pub const NAMES: &'static str = "rr, wrr, lc, wlc, sed, nq, lblc, lblcr, dh, sh or mh";

    /// The scheduler named `name` (IPVS names).
    pub fn from_name(name: &str) -> Option<SchedulerKind> {
        Some(match name {
            "rr" => SchedulerKind::Rr,
            "wrr" => SchedulerKind::Wrr,
            "lc" => SchedulerKind::Lc,
            "wlc" => SchedulerKind::Wlc,
            "sed" => SchedulerKind::Sed,
            "nq" => SchedulerKind::Nq,
            "lblc" => SchedulerKind::Lblc,
            "lblcr" => SchedulerKind::Lblcr,
            "dh" => SchedulerKind::Dh,
            "sh" => SchedulerKind::Sh,
            "mh" => SchedulerKind::Mh,
            _ => return None,
        })
    }
}

/// A backend's identity that stays the same across configuration changes for as long as the backend exists.
///
/// The control plane assigns it; per-core state (connection counts, statistics) is indexed by it so that a new
/// snapshot does not reset what the workers have counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

/// One real server behind a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub id: BackendId,
    pub addr: IpAddr,
    /// Destination port on the backend; DR and TUN cannot map ports, so it equals the service port there.
    pub port: u16,
    /// Relative weight; 0 means drained: no new flows, existing flows stay.
    pub weight: u32,
    /// Where no MAC is configured the data plane resolves it by ARP/ND.
    pub mac: Option<[u8; 6]>,
}

/// What a client addresses: VIP, port and IP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: u8,
}
