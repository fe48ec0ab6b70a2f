//! One-pass classification of a frame: Ethernet and VLAN tags, ARP, IPv4 (options, fragments), IPv6 (extension
//! headers, fragment header), TCP, UDP, ICMP and ICMPv6 including the packet an error message quotes. The result
//! is a small `Copy` layout of offsets and facts that the decision and the rewrites work from.
//!
//! Every read is bounds-checked: a malformed frame is an error, never a panic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum;
use crate::flow::{ip_protocol, FlowKey};

mod plain;

pub use plain::{parse_plain, PlainFrame};

/// Why a frame cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The frame ends before a header it announces.
    Truncated,
    /// A header field holds a value no valid frame has.
    Malformed(&'static str),
    /// Valid, but not something sluice handles.
    Unsupported(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => write!(f, "frame truncated"),
            ParseError::Malformed(what) => write!(f, "malformed frame: {what}"),
            ParseError::Unsupported(what) => write!(f, "unsupported frame: {what}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    None,
    /// Offset zero, more fragments follow: carries the transport header.
    First {
        id: u32,
    },
    /// Any fragment after the first: no transport header.
    Later {
        id: u32,
    },
}

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    Arp,
    Ipv4,
    Ipv6,
    /// Another ethertype.
    Other(u16),
}

/// What an ICMP or ICMPv6 message is, as far as forwarding cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// Not ICMP.
    None,
    EchoRequest,
    EchoReply,
    /// An error quoting a packet: `inner` is its flow as its sender sent it.
    Error {
        inner: FlowKey,
        inner_l3_offset: u16,
        inner_l4_offset: u16,
    },
    NeighborSolicitation {
        target: Ipv6Addr,
    },
    NeighborAdvertisement {
        target: Ipv6Addr,
        target_mac: Option<[u8; 6]>,
    },
    /// Anything else (router discovery, MLD, ...).
    Other,
}

/// The facts of an ARP packet (IPv4 over Ethernet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpFacts {
    pub operation: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// Offsets and facts of one frame, from [`parse_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// Ethernet header and VLAN tags.
    pub l2_len: u16,
    pub vlan_tags: u8,
    /// The innermost tag's VLAN id.
    pub vlan_id: Option<u16>,
    pub l3: L3,
    pub l3_offset: u16,
    /// Transport header (after IPv4 options and IPv6 extension headers).
    pub l4_offset: u16,
    /// IP total length (IPv4) or 40 + payload length (IPv6); Ethernet padding may follow.
    pub l3_len: u16,
    /// Transport protocol (the final next header for IPv6).
    pub protocol: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// An IPv4 packet carrying a loose or strict source route option, or an IPv6 packet with a type 0 routing
    /// header: its sender picks the path, which no router of ours should follow (Linux drops these by default,
    /// `accept_source_route = 0`; RFC 5095 deprecates the IPv6 one).
    pub source_routed: bool,
    /// An IPv4 packet with the don't-fragment bit set (never for IPv6, which routers do not fragment): a tunnel
    /// that must make it smaller answers too-big instead of fragmenting it.
    pub dont_fragment: bool,
    /// Valid for IPv4 and IPv6; ICMP echo: the identifier in both ports; later fragments: ports 0.
    pub flow: FlowKey,
    pub fragment: Fragment,
    /// TCP flags (0 when not TCP or not the first fragment).
    pub tcp_flags: u8,
    pub icmp: IcmpKind,
    pub arp: Option<ArpFacts>,
}

pub(crate) mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

pub(crate) mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_TIME_EXCEEDED: u8 = 3;
    pub const V6_PARAMETER_PROBLEM: u8 = 4;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
    pub const NEIGHBOR_SOLICITATION: u8 = 135;
    pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
}

/// IPv6 extension headers walked before giving up.
const MAX_EXTENSION_HEADERS: usize = 8;

const UNSPECIFIED_FLOW: FlowKey = FlowKey {
    src_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    dst_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    src_port: 0,
    dst_port: 0,
    protocol: 0,
};

#[inline]
pub(crate) fn read_u16(bytes: &[u8], at: usize) -> Result<u16, ParseError> {
    match bytes.get(at..at + 2) {
        Some(pair) => Ok(u16::from_be_bytes([pair[0], pair[1]])),
        None => Err(ParseError::Truncated),
    }
}

#[inline]
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Result<u32, ParseError> {
    match bytes.get(at..at + 4) {
        Some(quad) => Ok(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])),
        None => Err(ParseError::Truncated),
    }
}

#[inline]
pub(crate) fn read_u8(bytes: &[u8], at: usize) -> Result<u8, ParseError> {
    bytes.get(at).copied().ok_or(ParseError::Truncated)
}

#[inline]
pub(crate) fn read_v4(bytes: &[u8], at: usize) -> Result<Ipv4Addr, ParseError> {
    Ok(Ipv4Addr::from(read_u32(bytes, at)?))
}

#[inline]
pub(crate) fn read_v6(bytes: &[u8], at: usize) -> Result<Ipv6Addr, ParseError> {
    let octets: [u8; 16] = bytes
        .get(at..at + 16)
        .ok_or(ParseError::Truncated)?
        .try_into()
        .map_err(|_| ParseError::Truncated)?;
    Ok(Ipv6Addr::from(octets))
}

#[inline]
pub(crate) fn read_mac(bytes: &[u8], at: usize) -> Result<[u8; 6], ParseError> {
    bytes
        .get(at..at + 6)
        .ok_or(ParseError::Truncated)?
        .try_into()
        .map_err(|_| ParseError::Truncated)
}

/// Classifies `frame` in one pass.
pub fn parse_frame(frame: &[u8]) -> Result<FrameLayout, ParseError> {
    let mut layout = EMPTY_LAYOUT;
    parse_frame_into(frame, false, &mut layout)?;
    Ok(layout)
}

/// An empty layout, to parse into with [`parse_frame_into`].
pub const EMPTY_LAYOUT: FrameLayout = FrameLayout {
    l2_len: 0,
    vlan_tags: 0,
    vlan_id: None,
    l3: L3::Other(0),
    l3_offset: 0,
    l4_offset: 0,
    l3_len: 0,
    protocol: 0,
    ttl: 0,
    source_routed: false,
    dont_fragment: false,
    flow: UNSPECIFIED_FLOW,
    fragment: Fragment::None,
    tcp_flags: 0,
    icmp: IcmpKind::None,
    arp: None,
};

/// [`parse_frame`] into a layout the caller keeps (a worker parses a whole burst into one array, so nothing is
/// copied). `ipv4_checksum_verified`: the device checked the IPv4 header checksum and found it good, so it is not
/// summed again. On error `layout` holds partial facts and must not be used.
#[inline(always)]
pub fn parse_frame_into(
    frame: &[u8],
    ipv4_checksum_verified: bool,
    layout: &mut FrameLayout,
) -> Result<(), ParseError> {
    if let Some(plain) = parse_plain(frame, ipv4_checksum_verified) {
        *layout = plain.layout(frame);
        return Ok(());
    }
    parse_frame_general(frame, ipv4_checksum_verified, layout)
}

/// [`parse_frame_into`] for every kind of frame: tags, ARP, IPv4 options and fragments, IPv6, ICMP, and every
/// error.
#[inline(never)]
fn parse_frame_general(
    frame: &[u8],
    ipv4_checksum_verified: bool,
    layout: &mut FrameLayout,
) -> Result<(), ParseError> {
    if frame.len() > usize::from(u16::MAX) {
        return Err(ParseError::Unsupported("frame longer than 65535 bytes"));
    }
    let mut offset = 12;
    let mut ether_type = read_u16(frame, offset)?;
    let mut vlan_tags = 0u8;
    let mut vlan_id = None;
    while ether_type == ethertype::VLAN || ether_type == ethertype::QINQ {
        if vlan_tags == 2 {
            return Err(ParseError::Unsupported("more than two VLAN tags"));
        }
        vlan_id = Some(read_u16(frame, offset + 2)? & 0x0fff);
        vlan_tags += 1;
        offset += 4;
        ether_type = read_u16(frame, offset)?;
    }
    let l2_len = offset as u16 + 2;
    layout.l2_len = l2_len;
    layout.vlan_tags = vlan_tags;
    layout.vlan_id = vlan_id;
    layout.l3 = L3::Other(ether_type);
    layout.l3_offset = l2_len;
    layout.l4_offset = l2_len;
    layout.l3_len = 0;
    layout.protocol = 0;
    layout.ttl = 0;
    layout.source_routed = false;
    layout.dont_fragment = false;
    layout.flow = UNSPECIFIED_FLOW;
    layout.fragment = Fragment::None;
    layout.tcp_flags = 0;
    layout.icmp = IcmpKind::None;
    layout.arp = None;
    match ether_type {
        ethertype::ARP => parse_arp(frame, layout),
        ethertype::IPV4 => parse_ipv4(frame, layout, ipv4_checksum_verified),
        ethertype::IPV6 => parse_ipv6(frame, layout),
        _ => Ok(()),
    }
}

fn parse_arp(frame: &[u8], layout: &mut FrameLayout) -> Result<(), ParseError> {
    let at = usize::from(layout.l3_offset);
    let arp = frame.get(at..at + 28).ok_or(ParseError::Truncated)?;
    if read_u16(arp, 0)? != 1 || read_u16(arp, 2)? != ethertype::IPV4 || arp[4] != 6 || arp[5] != 4
    {
        return Err(ParseError::Unsupported("ARP other than IPv4 over Ethernet"));
    }
    layout.l3 = L3::Arp;
    layout.l3_len = 28;
    layout.l4_offset = (at + 28) as u16;
    layout.arp = Some(ArpFacts {
        operation: read_u16(arp, 6)?,
        sender_mac: read_mac(arp, 8)?,
        sender_ip: read_v4(arp, 14)?,
        target_ip: read_v4(arp, 24)?,
    });
    Ok(())
}

/// Whether an IPv4 header (`header_len` bytes, at least 20) sums to 0xffff: the fixed part without a loop, the
/// options (rare) with the general sum.
#[inline(always)]
fn ipv4_header_checksum_ok(header: &[u8]) -> bool {
    let Some((fixed, options)) = header.split_first_chunk::<20>() else {
        return false;
    };
    if options.is_empty() {
        return checksum::ipv4_fixed_header_checksum_ok(fixed);
    }
    checksum::fold(checksum::sum_ipv4_fixed(fixed) + checksum::sum(options)) == 0xffff
}

#[inline]
fn parse_ipv4(
    frame: &[u8],
    layout: &mut FrameLayout,
    checksum_verified: bool,
) -> Result<(), ParseError> {
    let l3 = usize::from(layout.l3_offset);
    let first = read_u8(frame, l3)?;
    if first >> 4 != 4 {
        return Err(ParseError::Malformed("IPv4 version"));
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return Err(ParseError::Malformed("IPv4 header length below 20"));
    }
    let total = usize::from(read_u16(frame, l3 + 2)?);
    if total < header_len {
        return Err(ParseError::Malformed(
            "IPv4 total length below header length",
        ));
    }
    let header = frame
        .get(l3..l3 + header_len)
        .ok_or(ParseError::Truncated)?;
    if frame.len() < l3 + total {
        return Err(ParseError::Truncated);
    }
    if !checksum_verified && !ipv4_header_checksum_ok(header) {
        return Err(ParseError::Malformed("IPv4 header checksum"));
    }
    let fragment_word = read_u16(header, 6)?;
    let more_fragments = fragment_word & 0x2000 != 0;
    layout.dont_fragment = fragment_word & 0x4000 != 0;
    let fragment_offset = fragment_word & 0x1fff;
    // Fragments are cut at multiples of 8 bytes: one with more to come that is not cannot be put together.
    if more_fragments && !(total - header_len).is_multiple_of(8) {
        return Err(ParseError::Malformed(
            "IPv4 fragment with more to come, not a multiple of 8 bytes",
        ));
    }
    let id = u32::from(read_u16(header, 4)?);
    layout.l3 = L3::Ipv4;
    layout.l3_len = total as u16;
    layout.ttl = header[8];
    // Options are rare: only a header longer than 20 bytes is walked.
    layout.source_routed = header_len > 20 && ipv4_options_route_the_source(&header[20..])?;
    layout.protocol = header[9];
    layout.l4_offset = (l3 + header_len) as u16;
    layout.fragment = match (fragment_offset, more_fragments) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First { id },
        _ => Fragment::Later { id },
    };
    layout.flow = FlowKey {
        src_addr: IpAddr::V4(read_v4(header, 12)?),
        dst_addr: IpAddr::V4(read_v4(header, 16)?),
        src_port: 0,
        dst_port: 0,
        protocol: layout.protocol,
    };
    if matches!(layout.fragment, Fragment::Later { .. }) {
        return Ok(());
    }
    parse_transport(&frame[..l3 + total], layout)
}

/// IPv4 option types (RFC 791) that name the path: loose and strict source and record route.
const LOOSE_SOURCE_ROUTE: u8 = 0x83;
const STRICT_SOURCE_ROUTE: u8 = 0x89;

/// Whether IPv4 `options` hold a source route. Other options (record route, timestamps, router alert) are left
/// to the caller, who forwards them unchanged as LVS does. An option whose length runs past the header or is
/// below 2 is malformed, as it is for every IP stack.
fn ipv4_options_route_the_source(options: &[u8]) -> Result<bool, ParseError> {
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            // End of the option list.
            0 => return Ok(false),
            // No operation: one byte of padding.
            1 => at += 1,
            LOOSE_SOURCE_ROUTE | STRICT_SOURCE_ROUTE => return Ok(true),
            _ => {
                let length = usize::from(read_u8(options, at + 1)?);
                if length < 2 || at + length > options.len() {
                    return Err(ParseError::Malformed("IPv4 option length"));
                }
                at += length;
            }
        }
    }
    Ok(false)
}

/// Walks IPv6 extension headers from `next` at `offset` up to `end`; returns (protocol, transport offset,
/// fragment state, whether a type 0 routing header names the path: the IPv6 source route, deprecated by RFC 5095).
fn walk_ipv6_extensions(
    packet: &[u8],
    mut next: u8,
    mut offset: usize,
) -> Result<(u8, usize, Fragment, bool), ParseError> {
    let mut fragment = Fragment::None;
    let mut source_routed = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            0 | 43 | 60 => {
                if next == 43 && read_u8(packet, offset + 2)? == 0 {
                    source_routed = true;
                }
                let length = (usize::from(read_u8(packet, offset + 1)?) + 1) * 8;
                next = read_u8(packet, offset)?;
                offset += length;
            }
            44 => {
                let word = read_u16(packet, offset + 2)?;
                let id = read_u32(packet, offset + 4)?;
                // RFC 8200: a fragment with more to come must be a multiple of 8 bytes long, else discarded.
                if word & 1 != 0 && !(packet.len() - (offset + 8)).is_multiple_of(8) {
                    return Err(ParseError::Malformed(
                        "IPv6 fragment with more to come, not a multiple of 8 bytes",
                    ));
                }
                fragment = match (word >> 3, word & 1 != 0) {
                    (0, false) => Fragment::None,
                    (0, true) => Fragment::First { id },
                    _ => Fragment::Later { id },
                };
                next = read_u8(packet, offset)?;
                offset += 8;
            }
            51 => {
                let length = (usize::from(read_u8(packet, offset + 1)?) + 2) * 4;
                next = read_u8(packet, offset)?;
                offset += length;
            }
            _ => {
                if offset > packet.len() {
                    return Err(ParseError::Truncated);
                }
                return Ok((next, offset, fragment, source_routed));
            }
        }
    }
    Err(ParseError::Unsupported("too many IPv6 extension headers"))
}

fn parse_ipv6(frame: &[u8], layout: &mut FrameLayout) -> Result<(), ParseError> {
    let l3 = usize::from(layout.l3_offset);
    let header = frame.get(l3..l3 + 40).ok_or(ParseError::Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(ParseError::Malformed("IPv6 version"));
    }
    let payload = usize::from(read_u16(header, 4)?);
    if payload == 0 {
        return Err(ParseError::Unsupported("IPv6 jumbogram"));
    }
    let total = 40 + payload;
    if total > usize::from(u16::MAX) {
        return Err(ParseError::Unsupported(
            "IPv6 packet longer than 65535 bytes",
        ));
    }
    let packet = frame.get(l3..l3 + total).ok_or(ParseError::Truncated)?;
    // Most packets carry no extension header: their transport follows the fixed header, without the walk.
    let (protocol, l4, fragment, source_routed) = match header[6] {
        0 | 43 | 44 | 51 | 60 => walk_ipv6_extensions(packet, header[6], 40)?,
        next => (next, 40, Fragment::None, false),
    };
    layout.l3 = L3::Ipv6;
    layout.source_routed = source_routed;
    layout.l3_len = total as u16;
    layout.ttl = header[7];
    layout.protocol = protocol;
    layout.l4_offset = (l3 + l4) as u16;
    layout.fragment = fragment;
    layout.flow = FlowKey {
        src_addr: IpAddr::V6(read_v6(header, 8)?),
        dst_addr: IpAddr::V6(read_v6(header, 24)?),
        src_port: 0,
        dst_port: 0,
        protocol,
    };
    if matches!(fragment, Fragment::Later { .. }) {
        return Ok(());
    }
    parse_transport(&frame[..l3 + total], layout)
}

/// Reads the transport header at `layout.l4_offset` of `packet` (the frame cut at the end of the IP packet).
/// TCP and UDP inline, ICMP out of line.
#[inline(always)]
fn parse_transport(packet: &[u8], layout: &mut FrameLayout) -> Result<(), ParseError> {
    let l4 = usize::from(layout.l4_offset);
    match layout.protocol {
        ip_protocol::TCP => {
            let tcp = packet.get(l4..l4 + 20).ok_or(ParseError::Truncated)?;
            let data_offset = usize::from(tcp[12] >> 4) * 4;
            if data_offset < 20 {
                return Err(ParseError::Malformed("TCP data offset below 20"));
            }
            if packet.len() < l4 + data_offset {
                return Err(ParseError::Truncated);
            }
            layout.flow.src_port = read_u16(tcp, 0)?;
            layout.flow.dst_port = read_u16(tcp, 2)?;
            layout.tcp_flags = tcp[13];
        }
        ip_protocol::UDP => {
            let udp = packet.get(l4..l4 + 8).ok_or(ParseError::Truncated)?;
            let length = usize::from(read_u16(udp, 4)?);
            // The length covers the whole datagram: a first fragment carries only its beginning, so the length
            // can be checked against this packet only when the datagram is whole.
            let too_long = layout.fragment == Fragment::None && l4 + length > packet.len();
            if length < 8 || too_long {
                return Err(ParseError::Malformed("UDP length"));
            }
            layout.flow.src_port = read_u16(udp, 0)?;
            layout.flow.dst_port = read_u16(udp, 2)?;
        }
        ip_protocol::ICMP if layout.l3 == L3::Ipv4 => parse_icmpv4(packet, layout)?,
        ip_protocol::ICMPV6 if layout.l3 == L3::Ipv6 => parse_icmpv6(packet, layout)?,
        _ => {}
    }
    Ok(())
}

#[inline(never)]
fn parse_icmpv4(packet: &[u8], layout: &mut FrameLayout) -> Result<(), ParseError> {
    let l4 = usize::from(layout.l4_offset);
    let icmp = packet.get(l4..l4 + 8).ok_or(ParseError::Truncated)?;
    layout.icmp = match icmp[0] {
        icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY => {
            let id = read_u16(icmp, 4)?;
            layout.flow.src_port = id;
            layout.flow.dst_port = id;
            if icmp[0] == icmp_type::ECHO_REQUEST {
                IcmpKind::EchoRequest
            } else {
                IcmpKind::EchoReply
            }
        }
        icmp_type::DEST_UNREACHABLE | icmp_type::TIME_EXCEEDED | icmp_type::PARAMETER_PROBLEM => {
            quoted_ipv4(packet, l4 + 8)?
        }
        _ => IcmpKind::Other,
    };
    Ok(())
}

/// The flow of the IPv4 packet an ICMP error quotes at `at` (its header and at least the first 8 bytes after).
fn quoted_ipv4(packet: &[u8], at: usize) -> Result<IcmpKind, ParseError> {
    let first = read_u8(packet, at)?;
    if first >> 4 != 4 {
        return Err(ParseError::Malformed("quoted IPv4 version"));
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return Err(ParseError::Malformed("quoted IPv4 header length"));
    }
    let header = packet
        .get(at..at + header_len)
        .ok_or(ParseError::Truncated)?;
    let protocol = header[9];
    let inner_l4 = at + header_len;
    let (src_port, dst_port) = quoted_ports(packet, inner_l4, protocol, false)?;
    Ok(IcmpKind::Error {
        inner: FlowKey {
            src_addr: IpAddr::V4(read_v4(header, 12)?),
            dst_addr: IpAddr::V4(read_v4(header, 16)?),
            src_port,
            dst_port,
            protocol,
        },
        inner_l3_offset: at as u16,
        inner_l4_offset: inner_l4 as u16,
    })
}

/// Ports of a quoted transport header (the identifier for a quoted echo).
fn quoted_ports(
    packet: &[u8],
    at: usize,
    protocol: u8,
    v6: bool,
) -> Result<(u16, u16), ParseError> {
    match protocol {
        ip_protocol::TCP | ip_protocol::UDP => {
            Ok((read_u16(packet, at)?, read_u16(packet, at + 2)?))
        }
        ip_protocol::ICMP if !v6 => {
            let kind = read_u8(packet, at)?;
            if kind == icmp_type::ECHO_REQUEST || kind == icmp_type::ECHO_REPLY {
                let id = read_u16(packet, at + 4)?;
                Ok((id, id))
            } else {
                Ok((0, 0))
            }
        }
        ip_protocol::ICMPV6 if v6 => {
            let kind = read_u8(packet, at)?;
            if kind == icmp_type::V6_ECHO_REQUEST || kind == icmp_type::V6_ECHO_REPLY {
                let id = read_u16(packet, at + 4)?;
                Ok((id, id))
            } else {
                Ok((0, 0))
            }
        }
        _ => Ok((0, 0)),
    }
}

#[inline(never)]
fn parse_icmpv6(packet: &[u8], layout: &mut FrameLayout) -> Result<(), ParseError> {
    let l4 = usize::from(layout.l4_offset);
    let icmp = packet.get(l4..l4 + 8).ok_or(ParseError::Truncated)?;
    layout.icmp = match icmp[0] {
        icmp_type::V6_ECHO_REQUEST | icmp_type::V6_ECHO_REPLY => {
            let id = read_u16(icmp, 4)?;
            layout.flow.src_port = id;
            layout.flow.dst_port = id;
            if icmp[0] == icmp_type::V6_ECHO_REQUEST {
                IcmpKind::EchoRequest
            } else {
                IcmpKind::EchoReply
            }
        }
        icmp_type::V6_DEST_UNREACHABLE
        | icmp_type::V6_PACKET_TOO_BIG
        | icmp_type::V6_TIME_EXCEEDED
        | icmp_type::V6_PARAMETER_PROBLEM => quoted_ipv6(packet, l4 + 8)?,
        icmp_type::NEIGHBOR_SOLICITATION => IcmpKind::NeighborSolicitation {
            target: read_v6(packet, l4 + 8)?,
        },
        icmp_type::NEIGHBOR_ADVERTISEMENT => IcmpKind::NeighborAdvertisement {
            target: read_v6(packet, l4 + 8)?,
            target_mac: link_layer_option(packet, l4 + 24, 2)?,
        },
        _ => IcmpKind::Other,
    };
    Ok(())
}

/// The MAC in the first neighbour-discovery option of `kind` (1 source, 2 target) from `at` to the end.
fn link_layer_option(
    packet: &[u8],
    mut at: usize,
    kind: u8,
) -> Result<Option<[u8; 6]>, ParseError> {
    while at + 2 <= packet.len() {
        let option = read_u8(packet, at)?;
        let length = usize::from(read_u8(packet, at + 1)?) * 8;
        if length == 0 {
            return Err(ParseError::Malformed(
                "neighbour discovery option of length 0",
            ));
        }
        if option == kind && length >= 8 {
            return Ok(Some(read_mac(packet, at + 2)?));
        }
        at += length;
    }
    Ok(None)
}

/// The flow of the IPv6 packet an ICMPv6 error quotes at `at`.
fn quoted_ipv6(packet: &[u8], at: usize) -> Result<IcmpKind, ParseError> {
    let header = packet.get(at..at + 40).ok_or(ParseError::Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(ParseError::Malformed("quoted IPv6 version"));
    }
    let quoted = &packet[at..];
    let (protocol, inner_l4, _, _) = walk_ipv6_extensions(quoted, header[6], 40)?;
    let (src_port, dst_port) = quoted_ports(quoted, inner_l4, protocol, true)?;
    Ok(IcmpKind::Error {
        inner: FlowKey {
            src_addr: IpAddr::V6(read_v6(header, 8)?),
            dst_addr: IpAddr::V6(read_v6(header, 24)?),
            src_port,
            dst_port,
            protocol,
        },
        inner_l3_offset: at as u16,
        inner_l4_offset: (at + inner_l4) as u16,
    })
}
