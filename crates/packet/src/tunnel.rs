//! IP-in-IP and IPv6-in-IPv6 tunnels (TUN mode): the outer header prepared once per tunnel, the encapsulation of
//! a frame in place, and its inverse.

use crate::checksum;
use crate::flow::ip_protocol;
use crate::headers::IpHeaders;
use crate::parse::{FrameLayout, ParseError, L3};
use crate::rewrite::{DEFAULT_TTL, IPV4_HEADER_LEN, IPV6_HEADER_LEN};
use crate::wire_addr::WireAddr;

/// An Ethernet header without VLAN tags.
const ETHERNET_HEADER_LEN: usize = 14;

/// The outer header of one tunnel (source, destination), prepared once: what every packet shares is written and
/// summed ahead, so that encapsulating a packet copies the header and patches what the inner packet gives (TOS,
/// identification and don't-fragment for IPv4; traffic class and flow label for IPv6; the lengths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelHeader {
    /// The whole IPv6 header, or the IPv4 header in the first 20 bytes with its per-packet fields zero.
    header: [u8; IPV6_HEADER_LEN],
    /// IPv4: the sum of the header's shared fields (version, TTL, protocol, addresses).
    shared_sum: u32,
    v4: bool,
}

impl TunnelHeader {
    /// The tunnel from `src` to `dst`; `None` when they are not of one family.
    pub fn new(src: &WireAddr, dst: &WireAddr) -> Option<TunnelHeader> {
        let mut header = [0u8; IPV6_HEADER_LEN];
        match (src.is_ipv4(), dst.is_ipv4()) {
            (true, true) => {
                header[0] = 0x45;
                header[8] = DEFAULT_TTL;
                header[9] = ip_protocol::IPIP;
                header[12..16].copy_from_slice(&src.v4_octets());
                header[16..20].copy_from_slice(&dst.v4_octets());
                let shared_sum = u32::from(checksum::fold(checksum::sum(&header[..20])));
                Some(TunnelHeader {
                    header,
                    shared_sum,
                    v4: true,
                })
            }
            (false, false) => {
                header[0] = 0x60;
                header[6] = ip_protocol::IPV6_IN_IP;
                header[7] = DEFAULT_TTL;
                header[8..24].copy_from_slice(&src.v6_octets());
                header[24..40].copy_from_slice(&dst.v6_octets());
                Some(TunnelHeader {
                    header,
                    shared_sum: 0,
                    v4: false,
                })
            }
            _ => None,
        }
    }

    /// Bytes the outer header adds in front of the inner packet.
    #[inline(always)]
    pub fn len(&self) -> usize {
        if self.v4 {
            IPV4_HEADER_LEN
        } else {
            IPV6_HEADER_LEN
        }
    }

    /// Never: an outer header has a length.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_ipv4(&self) -> bool {
        self.v4
    }

    /// The tunnel's (source, destination).
    pub fn endpoints(&self) -> (WireAddr, WireAddr) {
        let h = &self.header;
        if self.v4 {
            let v4 = |at: usize| WireAddr::from_v4_octets([h[at], h[at + 1], h[at + 2], h[at + 3]]);
            (v4(12), v4(16))
        } else {
            let v6 = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&h[at..at + 16]);
                WireAddr::from_v6_octets(octets)
            };
            (v6(8), v6(24))
        }
    }

    /// Writes the outer header: `buf[..self.len()]` is free space in front of the original frame
    /// `buf[self.len()..]` described by `inner`. The Ethernet header (with its VLAN tags) moves to the front and
    /// the outer header follows it; the inner IP packet, of the tunnel's family, stays where it is.
    #[inline(always)]
    pub fn write(&self, buf: &mut [u8], inner: &impl IpHeaders) -> Result<(), ParseError> {
        let l2 = usize::from(inner.l2_len());
        let inner_len = usize::from(inner.l3_len());
        match (inner.l3(), self.v4) {
            (L3::Ipv4, true) => {
                let total = IPV4_HEADER_LEN + inner_len;
                if total > usize::from(u16::MAX) {
                    return Err(ParseError::Unsupported(
                        "encapsulated packet longer than 65535 bytes",
                    ));
                }
                let (front, inner_ip) = make_room(buf, l2, IPV4_HEADER_LEN, inner_len)?;
                // RFC 2003 section 3.1: TOS and DF are copied from the inner header.
                let (tos, id, df) = (inner_ip[1], [inner_ip[4], inner_ip[5]], inner_ip[6] & 0x40);
                let sum = u64::from(self.shared_sum)
                    + u64::from(tos)
                    + total as u64
                    + u64::from(u16::from_be_bytes(id))
                    + (u64::from(df) << 8);
                let check = checksum::finish(sum).to_be_bytes();
                let header: &mut [u8; IPV4_HEADER_LEN] = front
                    .get_mut(l2..)
                    .and_then(|header| header.try_into().ok())
                    .ok_or(ParseError::Truncated)?;
                let Some(shared) = self.header.first_chunk::<IPV4_HEADER_LEN>() else {
                    return Err(ParseError::Truncated);
                };
                *header = *shared;
                header[1] = tos;
                header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                header[4..6].copy_from_slice(&id);
                header[6] = df;
                header[10..12].copy_from_slice(&check);
                Ok(())
            }
            (L3::Ipv6, false) => {
                let (front, inner_ip) = make_room(buf, l2, IPV6_HEADER_LEN, inner_len)?;
                // Traffic class and flow label are copied, so the flow keeps its ECMP entropy.
                let first_word = [
                    0x60 | (inner_ip[0] & 0x0f),
                    inner_ip[1],
                    inner_ip[2],
                    inner_ip[3],
                ];
                let header: &mut [u8; IPV6_HEADER_LEN] = front
                    .get_mut(l2..)
                    .and_then(|header| header.try_into().ok())
                    .ok_or(ParseError::Truncated)?;
                *header = self.header;
                header[0..4].copy_from_slice(&first_word);
                header[4..6].copy_from_slice(&(inner_len as u16).to_be_bytes());
                Ok(())
            }
            _ => Err(ParseError::Unsupported(
                "encapsulation between address families",
            )),
        }
    }
}

/// Writes an outer IPv4 or IPv6 header from `src` to `dst` in front of the frame: see [`TunnelHeader::write`].
pub fn encapsulate(
    buf: &mut [u8],
    inner: &FrameLayout,
    src: &WireAddr,
    dst: &WireAddr,
) -> Result<(), ParseError> {
    TunnelHeader::new(src, dst)
        .ok_or(ParseError::Unsupported(
            "encapsulation between address families",
        ))?
        .write(buf, inner)
}

/// Moves the Ethernet header `outer` bytes to the front; returns (Ethernet + outer header room, inner IP packet).
#[inline(always)]
fn make_room(
    buf: &mut [u8],
    l2: usize,
    outer: usize,
    inner_len: usize,
) -> Result<(&mut [u8], &mut [u8]), ParseError> {
    if inner_len < 20 || buf.len() < outer + l2 + inner_len {
        return Err(ParseError::Truncated);
    }
    if l2 == ETHERNET_HEADER_LEN {
        // The untagged header, moved as one fixed-size copy rather than a call to memmove.
        let header: [u8; ETHERNET_HEADER_LEN] = buf[outer..outer + ETHERNET_HEADER_LEN]
            .try_into()
            .map_err(|_| ParseError::Truncated)?;
        buf[..ETHERNET_HEADER_LEN].copy_from_slice(&header);
    } else {
        buf.copy_within(outer..outer + l2, 0);
    }
    let (front, rest) = buf.split_at_mut(l2 + outer);
    Ok((front, &mut rest[..inner_len]))
}

/// Removes an outer IPv4/IPv6 header of an IP-in-IP packet described by `layout` by moving the Ethernet header
/// forward over it; returns how many bytes to drop from the front of the frame.
pub fn decapsulate(frame: &mut [u8], layout: &FrameLayout) -> Result<usize, ParseError> {
    let expected = match layout.l3 {
        L3::Ipv4 => ip_protocol::IPIP,
        L3::Ipv6 => ip_protocol::IPV6_IN_IP,
        _ => return Err(ParseError::Unsupported("not an IP packet")),
    };
    if layout.protocol != expected {
        return Err(ParseError::Unsupported("not an encapsulated packet"));
    }
    let l2 = usize::from(layout.l2_len);
    let outer = usize::from(layout.l4_offset) - usize::from(layout.l3_offset);
    if frame.len() < l2 + outer {
        return Err(ParseError::Truncated);
    }
    frame.copy_within(0..l2, outer);
    Ok(outer)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn wire(addr: &str) -> WireAddr {
        WireAddr::from(addr.parse::<IpAddr>().expect("address"))
    }

    #[test]
    fn a_tunnel_gives_back_its_endpoints_in_both_families() {
        for (src, dst) in [("192.0.2.1", "10.1.0.11"), ("2001:db8::1", "fd01::11")] {
            let tunnel = TunnelHeader::new(&wire(src), &wire(dst)).expect("one family");
            assert_eq!(tunnel.endpoints(), (wire(src), wire(dst)));
            assert_eq!(tunnel.len(), if tunnel.is_ipv4() { 20 } else { 40 });
        }
    }

    #[test]
    fn no_tunnel_between_families() {
        assert_eq!(
            TunnelHeader::new(&wire("192.0.2.1"), &wire("fd01::11")),
            None
        );
        assert_eq!(
            TunnelHeader::new(&wire("2001:db8::1"), &wire("10.1.0.11")),
            None
        );
    }
}
