//! The commonest frames, classified in a straight line: untagged Ethernet, an IPv4 header of 20 bytes or an IPv6
//! header with no extension header, a whole datagram, TCP or UDP. Every field sits at a fixed offset of the
//! frame's first bytes, so one length check covers every read. Anything else (tags, options, extension headers,
//! fragments, ICMP, a field out of range) is left to the general parser, which reports the same facts or the same
//! error; this path only answers the frames it is sure of.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Fragment, FrameLayout, IcmpKind, L3};
use crate::checksum;
use crate::flow::{ip_protocol, FlowKey};

/// Ethernet (14) + IPv4 without options (20) + TCP without options (20): the shortest IPv4 frame this path reads.
const PLAIN_HEAD: usize = 54;
const L3_OFFSET: usize = 14;
const L4_OFFSET: usize = L3_OFFSET + 20;
/// The same with the fixed IPv6 header (40).
const PLAIN_HEAD_V6: usize = 74;
const L4_OFFSET_V6: usize = L3_OFFSET + 40;

/// The facts of `frame` when it is a plain IPv4 TCP or UDP frame whose every check passes; `None` sends it to the
/// general parser (including every frame the general parser would refuse).
#[inline(always)]
pub(super) fn parse_plain_ipv4(
    frame: &[u8],
    ipv4_checksum_verified: bool,
    layout: &mut FrameLayout,
) -> Option<()> {
    let head: &[u8; PLAIN_HEAD] = frame.first_chunk()?;
    // Ethertype IPv4, version 4 with a 20-byte header.
    if head[12] != 0x08
        || head[13] != 0x00
        || head[14] != 0x45
        || frame.len() > usize::from(u16::MAX)
    {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([head[16], head[17]]));
    let fragment_word = u16::from_be_bytes([head[20], head[21]]);
    // A fragment (more to come, or an offset) takes the general path; the don't-fragment bit may be set.
    if fragment_word & 0x3fff != 0 || L3_OFFSET + total > frame.len() {
        return None;
    }
    let ip_header = head[L3_OFFSET..L4_OFFSET].first_chunk::<20>()?;
    if !ipv4_checksum_verified && !checksum::ipv4_fixed_header_checksum_ok(ip_header) {
        return None;
    }
    let protocol = head[23];
    let (src_port, dst_port, tcp_flags) = plain_transport(
        head[L4_OFFSET..].first_chunk()?,
        protocol,
        total.saturating_sub(20),
    )?;
    let address = |at: usize| {
        IpAddr::V4(Ipv4Addr::new(
            head[at],
            head[at + 1],
            head[at + 2],
            head[at + 3],
        ))
    };
    *layout = plain_layout(
        L3::Ipv4,
        L4_OFFSET,
        total,
        head[22],
        fragment_word & 0x4000 != 0,
        FlowKey {
            src_addr: address(26),
            dst_addr: address(30),
            src_port,
            dst_port,
            protocol,
        },
        tcp_flags,
    );
    Some(())
}

/// The facts of `frame` when it is a plain IPv6 TCP or UDP frame (no extension header) whose every check passes;
/// `None` sends it to the general parser.
#[inline(always)]
pub(super) fn parse_plain_ipv6(frame: &[u8], layout: &mut FrameLayout) -> Option<()> {
    let head: &[u8; PLAIN_HEAD_V6] = frame.first_chunk()?;
    // Ethertype IPv6, version 6.
    if head[12] != 0x86
        || head[13] != 0xdd
        || head[14] >> 4 != 6
        || frame.len() > usize::from(u16::MAX)
    {
        return None;
    }
    let payload = usize::from(u16::from_be_bytes([head[18], head[19]]));
    let total = 40 + payload;
    // A jumbogram (payload length 0) and a packet longer than the frame take the general path.
    if payload == 0 || total > usize::from(u16::MAX) || L3_OFFSET + total > frame.len() {
        return None;
    }
    let protocol = head[20];
    let (src_port, dst_port, tcp_flags) =
        plain_transport(head[L4_OFFSET_V6..].first_chunk()?, protocol, payload)?;
    let address = |at: usize| {
        let octets: [u8; 16] = head[at..at + 16].try_into().unwrap_or_default();
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    *layout = plain_layout(
        L3::Ipv6,
        L4_OFFSET_V6,
        total,
        head[21],
        false,
        FlowKey {
            src_addr: address(22),
            dst_addr: address(38),
            src_port,
            dst_port,
            protocol,
        },
        tcp_flags,
    );
    Some(())
}

/// The layout of a plain frame: untagged, whole, no options or extension headers; the family's facts passed in.
#[inline(always)]
fn plain_layout(
    l3: L3,
    l4_offset: usize,
    total: usize,
    ttl: u8,
    dont_fragment: bool,
    flow: FlowKey,
    tcp_flags: u8,
) -> FrameLayout {
    FrameLayout {
        l2_len: L3_OFFSET as u16,
        vlan_tags: 0,
        vlan_id: None,
        l3,
        l3_offset: L3_OFFSET as u16,
        l4_offset: l4_offset as u16,
        l3_len: total as u16,
        protocol: flow.protocol,
        ttl,
        source_routed: false,
        dont_fragment,
        flow,
        fragment: Fragment::None,
        tcp_flags,
        icmp: IcmpKind::None,
        arp: None,
    }
}

/// Ports and TCP flags of the TCP or UDP header starting `transport`, when it lies whole within the `room` bytes the
/// IP packet has for it (a TCP header with its options, a UDP datagram as long as its length says).
#[inline(always)]
fn plain_transport(transport: &[u8; 20], protocol: u8, room: usize) -> Option<(u16, u16, u8)> {
    let tcp_flags = match protocol {
        ip_protocol::TCP => {
            let header_len = usize::from(transport[12] >> 4) * 4;
            if header_len < 20 || header_len > room {
                return None;
            }
            transport[13]
        }
        ip_protocol::UDP => {
            let length = usize::from(u16::from_be_bytes([transport[4], transport[5]]));
            if length < 8 || length > room {
                return None;
            }
            0
        }
        _ => return None,
    };
    Some((
        u16::from_be_bytes([transport[0], transport[1]]),
        u16::from_be_bytes([transport[2], transport[3]]),
        tcp_flags,
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{parse_frame_general, EMPTY_LAYOUT};
    use super::*;

    /// A valid plain IPv4 frame of `protocol` with a correct header checksum, padded to `len` bytes.
    fn plain_frame(protocol: u8, len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; len.max(PLAIN_HEAD)];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = (frame.len() - L3_OFFSET) as u16;
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame[20] = 0x40;
        frame[22] = 64;
        frame[23] = protocol;
        frame[26..30].copy_from_slice(&[10, 0, 0, 1]);
        frame[30..34].copy_from_slice(&[10, 0, 0, 100]);
        frame[34..38].copy_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
        frame[46] = 0x50;
        frame[47] = 0x10;
        if protocol == ip_protocol::UDP {
            frame[38..40].copy_from_slice(&(total - 20).to_be_bytes());
        }
        let sum = !checksum::fold(checksum::sum(&frame[14..34]));
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        frame
    }

    /// A valid plain IPv6 frame of `protocol`, padded to `len` bytes.
    fn plain_frame_v6(protocol: u8, len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; len.max(PLAIN_HEAD_V6)];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        let payload = (frame.len() - L4_OFFSET_V6) as u16;
        frame[14] = 0x60;
        frame[18..20].copy_from_slice(&payload.to_be_bytes());
        frame[20] = protocol;
        frame[21] = 64;
        frame[22..24].copy_from_slice(&[0x20, 0x01]);
        frame[37] = 1;
        frame[38..40].copy_from_slice(&[0x20, 0x01]);
        frame[53] = 0x10;
        frame[54..58].copy_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
        frame[66] = 0x50;
        frame[67] = 0x10;
        if protocol == ip_protocol::UDP {
            frame[58..60].copy_from_slice(&payload.to_be_bytes());
        }
        frame
    }

    /// The general parser's answer for `frame`: its layout when it accepts it, else its error.
    fn general(frame: &[u8], verified: bool) -> Result<FrameLayout, crate::ParseError> {
        let mut layout = EMPTY_LAYOUT;
        parse_frame_general(frame, verified, &mut layout).map(|()| layout)
    }

    #[test]
    fn a_plain_ipv6_udp_frame_takes_this_path_with_the_general_facts() {
        let frame = plain_frame_v6(ip_protocol::UDP, 90);
        let mut layout = EMPTY_LAYOUT;
        assert_eq!(parse_plain_ipv6(&frame, &mut layout), Some(()));
        assert_eq!(Ok(layout), general(&frame, false));
        assert_eq!(layout.flow.dst_port, 80);
        assert_eq!(layout.l3, L3::Ipv6);
    }

    #[test]
    fn a_plain_tcp_frame_takes_this_path_with_the_general_facts() {
        let frame = plain_frame(ip_protocol::TCP, 60);
        let mut layout = EMPTY_LAYOUT;
        assert_eq!(parse_plain_ipv4(&frame, false, &mut layout), Some(()));
        assert_eq!(Ok(layout), general(&frame, false));
        assert_eq!(layout.flow.dst_port, 80);
        assert!(layout.dont_fragment);
    }

    proptest! {
        /// Whatever bytes a frame holds, this path either leaves it to the general parser or gives exactly the
        /// layout the general parser gives; and the two together (`parse_frame_into`) answer as the general
        /// parser alone. Frames start from valid plain TCP and UDP frames with bytes of the first 64 replaced, so
        /// that most of them stay near the cases this path accepts.
        #[test]
        fn this_path_agrees_with_the_general_parser(
            v6 in any::<bool>(),
            udp in any::<bool>(),
            len in 40usize..112,
            changes in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            verified in any::<bool>(),
        ) {
            let protocol = if udp { ip_protocol::UDP } else { ip_protocol::TCP };
            let mut frame = if v6 { plain_frame_v6(protocol, len) } else { plain_frame(protocol, len) };
            frame.truncate(len);
            for (at, byte) in changes {
                if let Some(slot) = frame.get_mut(at) {
                    *slot = byte;
                }
            }
            let reference = general(&frame, verified);
            let mut layout = EMPTY_LAYOUT;
            if parse_plain_ipv4(&frame, verified, &mut layout).is_some() {
                prop_assert_eq!(Ok(layout), reference);
            }
            let mut layout = EMPTY_LAYOUT;
            if parse_plain_ipv6(&frame, &mut layout).is_some() {
                prop_assert_eq!(Ok(layout), reference);
            }
            let mut combined = EMPTY_LAYOUT;
            let answer = crate::parse_frame_into(&frame, verified, &mut combined).map(|()| combined);
            prop_assert_eq!(answer, reference);
        }
    }
}
