//! The commonest frames, classified in a straight line: untagged Ethernet, an IPv4 header of 20 bytes or an IPv6
//! header with no extension header, a whole datagram, TCP or UDP. Every field sits at a fixed offset of the
//! frame's first bytes, so one length check covers every read. Anything else (tags, options, extension headers,
//! fragments, ICMP, a field out of range) is left to the general parser, which reports the same facts or the same
//! error; this path only answers the frames it is sure of.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Fragment, FrameLayout, IcmpKind, L3};
use crate::checksum;
use crate::flow::{ip_protocol, FlowKey};
use crate::headers::IpHeaders;

/// Ethernet (14) + IPv4 without options (20) + TCP without options (20): the shortest IPv4 frame this path reads.
const PLAIN_HEAD: usize = 54;
const L3_OFFSET: usize = 14;
const L4_OFFSET: usize = L3_OFFSET + 20;
/// The same with the fixed IPv6 header (40).
const PLAIN_HEAD_V6: usize = 74;
const L4_OFFSET_V6: usize = L3_OFFSET + 40;
/// Where an IPv4 frame's source address starts: the destination and the two ports follow it (12 bytes).
const TUPLE_V4: usize = L3_OFFSET + 12;
/// Where an IPv6 frame's source address starts: the destination follows it, then (the transport header) the ports.
const TUPLE_V6: usize = L3_OFFSET + 8;

/// The facts of a plain frame (see the module's comment) that its established path reads: six bytes and a marker,
/// aligned to a word of eight so that one load or store moves them. Its addresses and ports stay
/// in the frame, where [`PlainFrame::tuple_v4`] and [`PlainFrame::tuple_v6`] read them, and
/// [`PlainFrame::layout`] gives the full [`FrameLayout`] a frame off the established path needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(align(8))]
pub struct PlainFrame {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// IP total length (IPv4) or 40 + payload length (IPv6).
    pub l3_len: u16,
    /// TCP or UDP.
    pub protocol: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// The byte whose other values mark `None` and the other kinds of a frame beside a `PlainFrame` (the
    /// compiler's niche): its one value is set on every path that makes a `PlainFrame`, so testing for it after
    /// those paths meet costs nothing (the niche was `v6`, which differs by path and was tested on every frame).
    marker: Marker,
}

/// The one value of [`PlainFrame`]'s marker byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Marker {
    Plain = 1,
}

/// The facts of `frame` when it is a plain IPv4 or IPv6 TCP or UDP frame whose every check passes; `None` sends it
/// to the general parser (including every frame the general parser would refuse).
/// `ipv4_checksum_verified`: the device found the IPv4 header checksum good.
#[inline(always)]
pub fn parse_plain(frame: &[u8], ipv4_checksum_verified: bool) -> Option<PlainFrame> {
    // The ethertype and the IP header's first byte, one word: IPv4 with a 20-byte header, or IPv6.
    let &[a, b, c, d] = frame.get(12..16)?.first_chunk::<4>()?;
    let word = u32::from_le_bytes([a, b, c, d]);
    if word & 0x00ff_ffff == 0x0045_0008 {
        parse_plain_ipv4(frame, ipv4_checksum_verified)
    } else if word & 0x00f0_ffff == 0x0060_dd86 {
        parse_plain_ipv6(frame)
    } else {
        None
    }
}

/// [`parse_plain`] of a frame of ethertype IPv4 whose header is of version 4 and 20 bytes long.
#[inline(always)]
fn parse_plain_ipv4(frame: &[u8], ipv4_checksum_verified: bool) -> Option<PlainFrame> {
    let head: &[u8; PLAIN_HEAD] = frame.first_chunk()?;
    if frame.len() > usize::from(u16::MAX) {
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
    let tcp_flags = plain_transport(
        head[L4_OFFSET..].first_chunk()?,
        protocol,
        total.saturating_sub(20),
    )?;
    Some(PlainFrame {
        v6: false,
        l3_len: total as u16,
        protocol,
        ttl: head[22],
        tcp_flags,
        marker: Marker::Plain,
    })
}

/// [`parse_plain`] of a frame of ethertype IPv6 whose header is of version 6 (no extension header).
#[inline(always)]
fn parse_plain_ipv6(frame: &[u8]) -> Option<PlainFrame> {
    let head: &[u8; PLAIN_HEAD_V6] = frame.first_chunk()?;
    if frame.len() > usize::from(u16::MAX) {
        return None;
    }
    let payload = usize::from(u16::from_be_bytes([head[18], head[19]]));
    let total = 40 + payload;
    // A jumbogram (payload length 0) and a packet longer than the frame take the general path.
    if payload == 0 || total > usize::from(u16::MAX) || L3_OFFSET + total > frame.len() {
        return None;
    }
    let protocol = head[20];
    let tcp_flags = plain_transport(head[L4_OFFSET_V6..].first_chunk()?, protocol, payload)?;
    Some(PlainFrame {
        v6: true,
        l3_len: total as u16,
        protocol,
        ttl: head[21],
        tcp_flags,
        marker: Marker::Plain,
    })
}

impl PlainFrame {
    /// An IPv4 frame's source address, destination address and ports as the wire holds them (12 bytes); `None`
    /// for an IPv6 frame or a frame shorter than a plain one.
    #[inline(always)]
    pub fn tuple_v4<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8; 12]> {
        if self.v6 {
            return None;
        }
        frame.get(TUPLE_V4..)?.first_chunk()
    }

    /// An IPv6 frame's source address, destination address and ports as the wire holds them (36 bytes); `None`
    /// for an IPv4 frame or a frame shorter than a plain one.
    #[inline(always)]
    pub fn tuple_v6<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8; 36]> {
        if !self.v6 {
            return None;
        }
        frame.get(TUPLE_V6..)?.first_chunk()
    }

    /// The full facts of `frame`, which [`parse_plain`] read as `self`: what the general parser gives for it.
    #[inline]
    pub fn layout(&self, frame: &[u8]) -> FrameLayout {
        let flow = match (self.tuple_v4(frame), self.tuple_v6(frame)) {
            (Some(tuple), _) => {
                let address = |at: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        tuple[at],
                        tuple[at + 1],
                        tuple[at + 2],
                        tuple[at + 3],
                    ))
                };
                self.flow(
                    address(0),
                    address(4),
                    tuple[8..12].try_into().unwrap_or_default(),
                )
            }
            (None, Some(tuple)) => {
                let address = |at: usize| {
                    let octets: [u8; 16] = tuple[at..at + 16].try_into().unwrap_or_default();
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                self.flow(
                    address(0),
                    address(16),
                    tuple[32..36].try_into().unwrap_or_default(),
                )
            }
            (None, None) => super::UNSPECIFIED_FLOW,
        };
        FrameLayout {
            l2_len: L3_OFFSET as u16,
            vlan_tags: 0,
            vlan_id: None,
            l3: self.l3(),
            l3_offset: L3_OFFSET as u16,
            l4_offset: self.l4_offset(),
            l3_len: self.l3_len,
            protocol: self.protocol,
            ttl: self.ttl,
            source_routed: false,
            // Read again here, off the established path, which never needs it.
            dont_fragment: !self.v6
                && frame
                    .get(L3_OFFSET + 6)
                    .is_some_and(|byte| byte & 0x40 != 0),
            flow,
            fragment: Fragment::None,
            tcp_flags: self.tcp_flags,
            icmp: IcmpKind::None,
            arp: None,
        }
    }

    #[inline(always)]
    fn flow(&self, src_addr: IpAddr, dst_addr: IpAddr, ports: [u8; 4]) -> FlowKey {
        FlowKey {
            src_addr,
            dst_addr,
            src_port: u16::from_be_bytes([ports[0], ports[1]]),
            dst_port: u16::from_be_bytes([ports[2], ports[3]]),
            protocol: self.protocol,
        }
    }
}

impl IpHeaders for PlainFrame {
    #[inline(always)]
    fn l2_len(&self) -> u16 {
        L3_OFFSET as u16
    }
    #[inline(always)]
    fn l3(&self) -> L3 {
        if self.v6 {
            L3::Ipv6
        } else {
            L3::Ipv4
        }
    }
    #[inline(always)]
    fn l3_offset(&self) -> u16 {
        L3_OFFSET as u16
    }
    #[inline(always)]
    fn l4_offset(&self) -> u16 {
        if !self.v6 {
            L4_OFFSET as u16
        } else {
            L4_OFFSET_V6 as u16
        }
    }
    #[inline(always)]
    fn l3_len(&self) -> u16 {
        self.l3_len
    }
    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
    #[inline(always)]
    fn later_fragment(&self) -> bool {
        false
    }
}

/// The TCP flags (0 for UDP) of the TCP or UDP header starting `transport`, when it lies whole within the `room`
/// bytes the IP packet has for it (a TCP header with its options, a UDP datagram as long as its length says).
#[inline(always)]
fn plain_transport(transport: &[u8; 20], protocol: u8, room: usize) -> Option<u8> {
    match protocol {
        ip_protocol::TCP => {
            let header_len = usize::from(transport[12] >> 4) * 4;
            if header_len < 20 || header_len > room {
                return None;
            }
            Some(transport[13])
        }
        ip_protocol::UDP => {
            let length = usize::from(u16::from_be_bytes([transport[4], transport[5]]));
            if length < 8 || length > room {
                return None;
            }
            Some(0)
        }
        _ => None,
    }
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
        let layout = parse_plain(&frame, false).expect("plain").layout(&frame);
        assert_eq!(Ok(layout), general(&frame, false));
        assert_eq!(layout.flow.dst_port, 80);
        assert_eq!(layout.l3, L3::Ipv6);
    }

    #[test]
    fn the_facts_travel_in_one_word() {
        assert_eq!(std::mem::size_of::<PlainFrame>(), 8);
        assert_eq!(std::mem::align_of::<PlainFrame>(), 8);
        // `Option<PlainFrame>` takes no word of its own: `None` lives in a spare value of some field.
        assert_eq!(std::mem::size_of::<Option<PlainFrame>>(), 8);
    }

    #[test]
    fn a_plain_tcp_frame_takes_this_path_with_the_general_facts() {
        let frame = plain_frame(ip_protocol::TCP, 60);
        let layout = parse_plain(&frame, false).expect("plain").layout(&frame);
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
            if let Some(plain) = parse_plain(&frame, verified) {
                let layout = plain.layout(&frame);
                prop_assert_eq!(Ok(layout), reference);
                // What the established path reads without the layout: the same facts, the same tuple.
                prop_assert_eq!(
                    (plain.l3(), plain.l3_len, plain.protocol),
                    (layout.l3, layout.l3_len, layout.protocol)
                );
                prop_assert_eq!((plain.ttl, plain.tcp_flags), (layout.ttl, layout.tcp_flags));
                let tuple = match (plain.tuple_v4(&frame), plain.tuple_v6(&frame)) {
                    (Some(v4), None) => v4.to_vec(),
                    (None, Some(v6)) => v6.to_vec(),
                    other => panic!("one family's tuple, not {other:?}"),
                };
                let flow = layout.flow;
                let mut expected = Vec::new();
                for addr in [flow.src_addr, flow.dst_addr] {
                    match addr {
                        IpAddr::V4(v4) => expected.extend(v4.octets()),
                        IpAddr::V6(v6) => expected.extend(v6.octets()),
                    }
                }
                expected.extend(flow.src_port.to_be_bytes());
                expected.extend(flow.dst_port.to_be_bytes());
                prop_assert_eq!(tuple, expected);
            }
            let mut combined = EMPTY_LAYOUT;
            let answer = crate::parse_frame_into(&frame, verified, &mut combined).map(|()| combined);
            prop_assert_eq!(answer, reference);
        }
    }
}
