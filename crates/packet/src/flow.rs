//! The flow key: what identifies one direction of a transport flow.

use std::net::IpAddr;

/// IP protocol numbers sluice cares about.
pub mod ip_protocol {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_IN_IP: u8 = 41;
    pub const ICMPV6: u8 = 58;
}

/// One direction of a flow, as seen on the wire.
///
/// For ICMP echo the identifier stands in both ports; for fragments and other protocols the ports are zero.
/// Both addresses are always of the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

impl FlowKey {
    /// The key of the opposite direction.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
        }
    }
}
