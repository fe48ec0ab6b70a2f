//! Frames sluice answers or originates: ARP replies, ICMP/ICMPv6 echo replies and neighbour advertisements (in
//! place), and ARP requests, neighbour solicitations and ICMP fragmentation-needed / packet-too-big messages
//! (into a separate buffer).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum;
use crate::flow::ip_protocol;
use crate::parse::{ethertype, icmp_type, FrameLayout, IcmpKind, ParseError, L3};
use crate::rewrite::DEFAULT_TTL;

const BROADCAST: [u8; 6] = [0xff; 6];
/// Shortest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;
/// Neighbour discovery messages are sent with hop limit 255 (RFC 4861) and rejected otherwise.
const ND_HOP_LIMIT: u8 = 255;
/// IPv6's minimum MTU: an ICMPv6 error must fit in it.
const IPV6_MIN_MTU: usize = 1280;

fn region(frame: &mut [u8], at: usize, len: usize) -> Result<&mut [u8], ParseError> {
    frame.get_mut(at..at + len).ok_or(ParseError::Truncated)
}

/// Swaps the Ethernet addresses, `our_mac` becoming the source.
fn reply_macs(frame: &mut [u8], our_mac: [u8; 6]) -> Result<(), ParseError> {
    let header = region(frame, 0, 12)?;
    let (dst, src) = header.split_at_mut(6);
    dst.copy_from_slice(src);
    src.copy_from_slice(&our_mac);
    Ok(())
}

/// Turns an ARP request for one of our addresses into the reply, in place.
pub fn answer_arp(
    frame: &mut [u8],
    layout: &FrameLayout,
    our_mac: [u8; 6],
) -> Result<(), ParseError> {
    if layout.l3 != L3::Arp {
        return Err(ParseError::Unsupported("not ARP"));
    }
    let at = usize::from(layout.l3_offset);
    reply_macs(frame, our_mac)?;
    let arp = region(frame, at, 28)?;
    arp[6..8].copy_from_slice(&2u16.to_be_bytes());
    let mut sender = [0u8; 10];
    sender.copy_from_slice(&arp[8..18]);
    let target_ip: [u8; 4] = [arp[24], arp[25], arp[26], arp[27]];
    arp[18..28].copy_from_slice(&sender);
    arp[8..14].copy_from_slice(&our_mac);
    arp[14..18].copy_from_slice(&target_ip);
    Ok(())
}

/// Turns an ICMP or ICMPv6 echo request into the reply from `our_mac`, in place: addresses swapped, TTL reset,
/// checksums fixed. The reply's source is the port's MAC, not the request's destination: a request sent to the
/// broadcast address must not be answered from it.
pub fn answer_echo(
    frame: &mut [u8],
    layout: &FrameLayout,
    our_mac: [u8; 6],
) -> Result<(), ParseError> {
    if layout.icmp != IcmpKind::EchoRequest {
        return Err(ParseError::Unsupported("not an echo request"));
    }
    let l3 = usize::from(layout.l3_offset);
    let l4 = usize::from(layout.l4_offset);
    reply_macs(frame, our_mac)?;
    let (reply_type, request_word, reply_word) = match layout.l3 {
        L3::Ipv4 => {
            let header = region(frame, l3, 20)?;
            let mut src = [0u8; 4];
            src.copy_from_slice(&header[12..16]);
            header.copy_within(16..20, 12);
            header[16..20].copy_from_slice(&src);
            // The reply is a datagram of its own: no flags (the request's reserved bit included), no offset.
            header[6..8].fill(0);
            header[8] = DEFAULT_TTL;
            header[10..12].fill(0);
            let header_len = usize::from(header[0] & 0x0f) * 4;
            let full = region(frame, l3, header_len)?;
            let sum = checksum::finish(checksum::sum(full));
            full[10..12].copy_from_slice(&sum.to_be_bytes());
            (
                icmp_type::ECHO_REPLY,
                u16::from(icmp_type::ECHO_REQUEST) << 8,
                0u16,
            )
        }
        L3::Ipv6 => {
            let header = region(frame, l3, 40)?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&header[8..24]);
            header.copy_within(24..40, 8);
            header[24..40].copy_from_slice(&src);
            header[7] = DEFAULT_TTL;
            (
                icmp_type::V6_ECHO_REPLY,
                u16::from(icmp_type::V6_ECHO_REQUEST) << 8,
                u16::from(icmp_type::V6_ECHO_REPLY) << 8,
            )
        }
        _ => return Err(ParseError::Unsupported("not IP")),
    };
    // Swapping addresses leaves the pseudo-header sum as it was; only the type word changes.
    let icmp = region(frame, l4, 4)?;
    let code = u16::from(icmp[1]);
    icmp[0] = reply_type;
    let check = u16::from_be_bytes([icmp[2], icmp[3]]);
    let updated = checksum::update(
        check,
        u64::from(request_word | code),
        u64::from(reply_word | code),
    );
    icmp[2..4].copy_from_slice(&updated.to_be_bytes());
    Ok(())
}

/// Neighbour advertisement length: IPv6 header, ICMPv6 NA (24 bytes) and a target link-layer option (8).
const NA_LEN: usize = 40 + 24 + 8;

/// Turns a neighbour solicitation for one of our addresses into a solicited advertisement carrying `our_mac`, in
/// place; returns the new frame length. The solicitation must be long enough to hold the answer (a solicitation
/// with a source link-layer option is; a duplicate-address probe without one is refused).
pub fn answer_neighbor_solicitation(
    frame: &mut [u8],
    layout: &FrameLayout,
    our_mac: [u8; 6],
) -> Result<usize, ParseError> {
    let IcmpKind::NeighborSolicitation { target } = layout.icmp else {
        return Err(ParseError::Unsupported("not a neighbour solicitation"));
    };
    let l3 = usize::from(layout.l3_offset);
    if usize::from(layout.l4_offset) != l3 + 40 {
        return Err(ParseError::Unsupported(
            "neighbour solicitation with extension headers",
        ));
    }
    let sender = crate::parse::read_v6(frame, l3 + 8)?;
    if sender.is_unspecified() {
        return Err(ParseError::Unsupported("duplicate address detection probe"));
    }
    reply_macs(frame, our_mac)?;
    let packet = region(frame, l3, NA_LEN)?;
    packet[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    packet[4..6].copy_from_slice(&((NA_LEN - 40) as u16).to_be_bytes());
    packet[6] = ip_protocol::ICMPV6;
    packet[7] = ND_HOP_LIMIT;
    packet[8..24].copy_from_slice(&target.octets());
    packet[24..40].copy_from_slice(&sender.octets());
    let icmp = &mut packet[40..];
    icmp.fill(0);
    icmp[0] = icmp_type::NEIGHBOR_ADVERTISEMENT;
    icmp[4] = 0x60; // solicited, override
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 2; // target link-layer address
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&our_mac);
    let total = checksum::sum(icmp)
        + checksum::pseudo_header_sum(
            IpAddr::V6(target),
            IpAddr::V6(sender),
            ip_protocol::ICMPV6,
            (NA_LEN - 40) as u32,
        );
    icmp[2..4].copy_from_slice(&checksum::finish(total).to_be_bytes());
    Ok(l3 + NA_LEN)
}

/// Writes an Ethernet header (with an optional 802.1Q tag); returns its length.
fn write_ethernet(
    out: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    vlan_id: Option<u16>,
    ether_type: u16,
) -> Result<usize, ParseError> {
    let len = if vlan_id.is_some() { 18 } else { 14 };
    let header = region(out, 0, len)?;
    header[0..6].copy_from_slice(&dst);
    header[6..12].copy_from_slice(&src);
    if let Some(id) = vlan_id {
        header[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        header[14..16].copy_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    header[len - 2..len].copy_from_slice(&ether_type.to_be_bytes());
    Ok(len)
}

/// Pads a frame of `len` bytes to the Ethernet minimum; returns the padded length.
fn pad(out: &mut [u8], len: usize) -> Result<usize, ParseError> {
    if len >= MIN_FRAME {
        return Ok(len);
    }
    region(out, len, MIN_FRAME - len)?.fill(0);
    Ok(MIN_FRAME)
}

/// Builds an ARP request for `target` into `out`; returns the frame length.
pub fn build_arp_request(
    out: &mut [u8],
    our_mac: [u8; 6],
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
    vlan_id: Option<u16>,
) -> Result<usize, ParseError> {
    let l2 = write_ethernet(out, BROADCAST, our_mac, vlan_id, ethertype::ARP)?;
    let arp = region(out, l2, 28)?;
    arp[0..2].copy_from_slice(&1u16.to_be_bytes());
    arp[2..4].copy_from_slice(&ethertype::IPV4.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes());
    arp[8..14].copy_from_slice(&our_mac);
    arp[14..18].copy_from_slice(&our_ip.octets());
    arp[18..24].fill(0);
    arp[24..28].copy_from_slice(&target.octets());
    pad(out, l2 + 28)
}

/// Builds a neighbour solicitation for `target` (to its solicited-node multicast group) into `out`; returns the
/// frame length.
pub fn build_neighbor_solicitation(
    out: &mut [u8],
    our_mac: [u8; 6],
    our_ip: Ipv6Addr,
    target: Ipv6Addr,
    vlan_id: Option<u16>,
) -> Result<usize, ParseError> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let group_mac = [0x33, 0x33, 0xff, t[13], t[14], t[15]];
    let l2 = write_ethernet(out, group_mac, our_mac, vlan_id, ethertype::IPV6)?;
    let packet = region(out, l2, NA_LEN)?;
    packet.fill(0);
    packet[0] = 0x60;
    packet[4..6].copy_from_slice(&((NA_LEN - 40) as u16).to_be_bytes());
    packet[6] = ip_protocol::ICMPV6;
    packet[7] = ND_HOP_LIMIT;
    packet[8..24].copy_from_slice(&our_ip.octets());
    packet[24..40].copy_from_slice(&group.octets());
    let icmp = &mut packet[40..];
    icmp[0] = icmp_type::NEIGHBOR_SOLICITATION;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 1; // source link-layer address
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&our_mac);
    let total = checksum::sum(icmp)
        + checksum::pseudo_header_sum(
            IpAddr::V6(our_ip),
            IpAddr::V6(group),
            ip_protocol::ICMPV6,
            (NA_LEN - 40) as u32,
        );
    icmp[2..4].copy_from_slice(&checksum::finish(total).to_be_bytes());
    Ok(l2 + NA_LEN)
}

/// Builds, into `out`, the ICMP fragmentation-needed (IPv4, type 3 code 4) or ICMPv6 packet-too-big (type 2)
/// answer to `original` (parsed as `layout`): from `from` to the original sender, Ethernet addresses reversed and
/// VLAN tags kept, quoting the IPv4 header and 8 bytes, or as much of the IPv6 packet as fits in 1280 bytes; sent
/// from `our_mac` (the port's, whatever the original was addressed to: broadcast is no source). Returns the frame
/// length.
pub fn build_too_big(
    out: &mut [u8],
    original: &[u8],
    layout: &FrameLayout,
    from: IpAddr,
    mtu: u16,
    our_mac: [u8; 6],
) -> Result<usize, ParseError> {
    let l2 = usize::from(layout.l2_len);
    let l3 = usize::from(layout.l3_offset);
    let packet_end = (l3 + usize::from(layout.l3_len)).min(original.len());
    let l2_header = original.get(..l2).ok_or(ParseError::Truncated)?;
    region(out, 0, l2)?.copy_from_slice(l2_header);
    reply_macs(out, our_mac)?;
    match (layout.l3, from, layout.flow.src_addr) {
        (L3::Ipv4, IpAddr::V4(src), IpAddr::V4(dst)) => {
            let quote_len = (usize::from(layout.l4_offset) - l3 + 8).min(packet_end - l3);
            let quote = original
                .get(l3..l3 + quote_len)
                .ok_or(ParseError::Truncated)?;
            let total = 20 + 8 + quote_len;
            let packet = region(out, l3, total)?;
            packet.fill(0);
            packet[0] = 0x45;
            packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            packet[8] = DEFAULT_TTL;
            packet[9] = ip_protocol::ICMP;
            packet[12..16].copy_from_slice(&src.octets());
            packet[16..20].copy_from_slice(&dst.octets());
            let sum = checksum::finish(checksum::sum(&packet[..20]));
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            let icmp = &mut packet[20..];
            icmp[0] = icmp_type::DEST_UNREACHABLE;
            icmp[1] = 4;
            icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
            icmp[8..].copy_from_slice(quote);
            let sum = checksum::finish(checksum::sum(icmp));
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            pad(out, l3 + total)
        }
        (L3::Ipv6, IpAddr::V6(src), IpAddr::V6(dst)) => {
            let quote_len = (packet_end - l3).min(IPV6_MIN_MTU - 40 - 8);
            let quote = original
                .get(l3..l3 + quote_len)
                .ok_or(ParseError::Truncated)?;
            let payload = 8 + quote_len;
            let packet = region(out, l3, 40 + payload)?;
            packet[..48].fill(0);
            packet[0] = 0x60;
            packet[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
            packet[6] = ip_protocol::ICMPV6;
            packet[7] = DEFAULT_TTL;
            packet[8..24].copy_from_slice(&src.octets());
            packet[24..40].copy_from_slice(&dst.octets());
            let icmp = &mut packet[40..];
            icmp[0] = icmp_type::V6_PACKET_TOO_BIG;
            icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
            icmp[8..].copy_from_slice(quote);
            let total = checksum::sum(icmp)
                + checksum::pseudo_header_sum(
                    IpAddr::V6(src),
                    IpAddr::V6(dst),
                    ip_protocol::ICMPV6,
                    payload as u32,
                );
            icmp[2..4].copy_from_slice(&checksum::finish(total).to_be_bytes());
            Ok(l3 + 40 + payload)
        }
        _ => Err(ParseError::Unsupported(
            "too-big answer between address families",
        )),
    }
}
