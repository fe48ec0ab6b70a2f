//! In-place rewrites driven by a [`FrameLayout`]: MAC addresses, NAT of either end with RFC 1624 checksum
//! updates, the packet an ICMP error quotes, and IP-in-IP / IPv6-in-IPv6 encapsulation.
//!
//! Each function takes the layout [`parse_frame`](crate::parse_frame) returned for the frame and checks every
//! access, so a layout that does not fit the frame is an error, not a panic.

use std::net::IpAddr;

use crate::checksum;
use crate::flow::ip_protocol;
use crate::mac::MacWord;
use crate::parse::{read_u16, read_u8, Fragment, FrameLayout, IcmpKind, ParseError, L3};
use crate::wire_addr::WireAddr;

pub const IPV4_HEADER_LEN: usize = 20;
/// An Ethernet header without VLAN tags.
const ETHERNET_HEADER_LEN: usize = 14;
pub const IPV6_HEADER_LEN: usize = 40;
/// TTL / hop limit of headers sluice builds.
pub const DEFAULT_TTL: u8 = 64;

#[inline]
fn slice_mut(frame: &mut [u8], at: usize, len: usize) -> Result<&mut [u8], ParseError> {
    frame.get_mut(at..at + len).ok_or(ParseError::Truncated)
}

#[inline]
fn write_u16(frame: &mut [u8], at: usize, value: u16) -> Result<(), ParseError> {
    slice_mut(frame, at, 2)?.copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// An address as bytes without allocation: (buffer, length).
#[inline]
fn address_octets(addr: &IpAddr) -> ([u8; 16], usize) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// Writes the Ethernet source and destination.
#[inline]
pub fn set_macs(frame: &mut [u8], src: [u8; 6], dst: [u8; 6]) -> Result<(), ParseError> {
    let header = slice_mut(frame, 0, 12)?;
    header[..6].copy_from_slice(&dst);
    header[6..].copy_from_slice(&src);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

/// [`set_macs`] with the destination as one word: an 8-byte store (its last two bytes land where the source goes
/// next) and the source's six bytes.
#[inline]
pub fn set_macs_word(frame: &mut [u8], src: [u8; 6], dst: MacWord) -> Result<(), ParseError> {
    let header = slice_mut(frame, 0, 12)?;
    header[..8].copy_from_slice(&dst.word().to_le_bytes());
    header[6..].copy_from_slice(&src);
    Ok(())
}

/// Offset of an address in an IP header at `l3`.
fn address_offset(l3: L3, end: End) -> Result<(usize, usize), ParseError> {
    match (l3, end) {
        (L3::Ipv4, End::Source) => Ok((12, 4)),
        (L3::Ipv4, End::Destination) => Ok((16, 4)),
        (L3::Ipv6, End::Source) => Ok((8, 16)),
        (L3::Ipv6, End::Destination) => Ok((24, 16)),
        _ => Err(ParseError::Unsupported("not an IP packet")),
    }
}

/// The ones'-complement sum of an address's bytes, as [`checksum::sum`] takes it (32-bit words, unfolded).
#[inline(always)]
fn sum_v6(octets: &[u8; 16]) -> u64 {
    let word = |at: usize| {
        u64::from(u32::from_be_bytes([
            octets[at],
            octets[at + 1],
            octets[at + 2],
            octets[at + 3],
        ]))
    };
    word(0) + word(4) + word(8) + word(12)
}

/// Writes `addr` over one address of the IP header at `l3` (of kind `kind`) without fixing any checksum; returns
/// the (old, new) sums of the address for the checksum updates. Straight-line for each family: NAT runs this on
/// every frame.
#[inline(always)]
fn swap_address(
    frame: &mut [u8],
    kind: L3,
    l3: usize,
    end: End,
    addr: &WireAddr,
) -> Result<(u64, u64), ParseError> {
    let (offset, len) = address_offset(kind, end)?;
    match (len, addr.is_ipv4()) {
        (4, true) => {
            let field: &mut [u8; 4] = slice_mut(frame, l3 + offset, 4)?
                .try_into()
                .map_err(|_| ParseError::Truncated)?;
            let old = u32::from_be_bytes(*field);
            let new = addr.v4_octets();
            *field = new;
            Ok((u64::from(old), u64::from(u32::from_be_bytes(new))))
        }
        (16, false) => {
            let field: &mut [u8; 16] = slice_mut(frame, l3 + offset, 16)?
                .try_into()
                .map_err(|_| ParseError::Truncated)?;
            let old_sum = sum_v6(field);
            let new = addr.v6_octets();
            *field = new;
            Ok((old_sum, sum_v6(&new)))
        }
        _ => Err(ParseError::Malformed(
            "address family differs from the packet's",
        )),
    }
}

/// Updates the IPv4 header checksum of the header at `l3` for address bytes whose sum went from `old_sum` to
/// `new_sum` (IPv6 has no header checksum).
#[inline(always)]
fn fix_header_checksum(
    frame: &mut [u8],
    kind: L3,
    l3: usize,
    old_sum: u64,
    new_sum: u64,
) -> Result<(), ParseError> {
    if kind == L3::Ipv4 {
        let check = read_u16(frame, l3 + 10)?;
        write_u16(frame, l3 + 10, checksum::update(check, old_sum, new_sum))?;
    }
    Ok(())
}

/// Replaces one address of the IP header at `l3` (of kind `kind`); returns the (old, new) sums of the address
/// for pseudo-header checksum updates. Fixes the IPv4 header checksum.
fn replace_address(
    frame: &mut [u8],
    kind: L3,
    l3: usize,
    end: End,
    addr: &WireAddr,
) -> Result<(u64, u64), ParseError> {
    let (old_sum, new_sum) = swap_address(frame, kind, l3, end, addr)?;
    fix_header_checksum(frame, kind, l3, old_sum, new_sum)?;
    Ok((old_sum, new_sum))
}

#[inline(always)]
fn rewrite_end(
    frame: &mut [u8],
    layout: &FrameLayout,
    end: End,
    addr: &WireAddr,
    port: u16,
) -> Result<(), ParseError> {
    let l3 = usize::from(layout.l3_offset);
    let (old_addr, new_addr) = swap_address(frame, layout.l3, l3, end, addr)?;
    fix_header_checksum(frame, layout.l3, l3, old_addr, new_addr)?;
    let (source_port, destination_port) = match end {
        End::Source => (Some(port), None),
        End::Destination => (None, Some(port)),
    };
    fix_transport(
        frame,
        layout,
        old_addr,
        new_addr,
        source_port,
        destination_port,
    )
}

/// Writes the given ports of the transport header and updates its checksum for them and for pseudo-header
/// address bytes whose sum went from `old_addr` to `new_addr`: one read and one write of the checksum, however
/// many fields changed.
#[inline(always)]
fn fix_transport(
    frame: &mut [u8],
    layout: &FrameLayout,
    mut old_sum: u64,
    mut new_sum: u64,
    source_port: Option<u16>,
    destination_port: Option<u16>,
) -> Result<(), ParseError> {
    if matches!(layout.fragment, Fragment::Later { .. }) {
        return Ok(());
    }
    let l4 = usize::from(layout.l4_offset);
    match layout.protocol {
        ip_protocol::TCP | ip_protocol::UDP => {
            for (at, port) in [(l4, source_port), (l4 + 2, destination_port)] {
                if let Some(port) = port {
                    old_sum += u64::from(read_u16(frame, at)?);
                    new_sum += u64::from(port);
                    write_u16(frame, at, port)?;
                }
            }
            let check_at = l4
                + if layout.protocol == ip_protocol::TCP {
                    16
                } else {
                    6
                };
            let check = read_u16(frame, check_at)?;
            if layout.protocol == ip_protocol::UDP && check == 0 && layout.l3 == L3::Ipv4 {
                // An IPv4 UDP datagram without a checksum stays without one.
                return Ok(());
            }
            let mut updated = checksum::update(check, old_sum, new_sum);
            if updated == 0 && layout.protocol == ip_protocol::UDP {
                updated = 0xffff;
            }
            write_u16(frame, check_at, updated)
        }
        ip_protocol::ICMPV6 if layout.l3 == L3::Ipv6 => {
            let check = read_u16(frame, l4 + 2)?;
            write_u16(frame, l4 + 2, checksum::update(check, old_sum, new_sum))
        }
        _ => Ok(()),
    }
}

/// FULLNAT of both ends at once: both addresses and (TCP/UDP) ports, each checksum read and written once. Gives
/// the same frame as [`rewrite_source`] then [`rewrite_destination`].
#[inline(always)]
pub fn rewrite_source_and_destination(
    frame: &mut [u8],
    layout: &FrameLayout,
    src: &WireAddr,
    src_port: u16,
    dst: &WireAddr,
    dst_port: u16,
) -> Result<(), ParseError> {
    let l3 = usize::from(layout.l3_offset);
    let (old_src, new_src) = swap_address(frame, layout.l3, l3, End::Source, src)?;
    let (old_dst, new_dst) = swap_address(frame, layout.l3, l3, End::Destination, dst)?;
    let (old_sum, new_sum) = (old_src + old_dst, new_src + new_dst);
    fix_header_checksum(frame, layout.l3, l3, old_sum, new_sum)?;
    fix_transport(
        frame,
        layout,
        old_sum,
        new_sum,
        Some(src_port),
        Some(dst_port),
    )
}

/// NAT of the destination: address and (TCP/UDP) port, checksums updated incrementally. The address is borrowed:
/// callers hand it straight from their verdict, and copying a just-written address whole would wait on its stores
/// (a load over several smaller stores cannot take its bytes from them); read field by field, it does not.
#[inline(always)]
pub fn rewrite_destination(
    frame: &mut [u8],
    layout: &FrameLayout,
    addr: &WireAddr,
    port: u16,
) -> Result<(), ParseError> {
    rewrite_end(frame, layout, End::Destination, addr, port)
}

/// NAT of the source: address and (TCP/UDP) port, checksums updated incrementally (the address borrowed, as for
/// [`rewrite_destination`]).
#[inline(always)]
pub fn rewrite_source(
    frame: &mut [u8],
    layout: &FrameLayout,
    addr: &WireAddr,
    port: u16,
) -> Result<(), ParseError> {
    rewrite_end(frame, layout, End::Source, addr, port)
}

fn icmp_error_offsets(layout: &FrameLayout) -> Result<(usize, usize, u8), ParseError> {
    match layout.icmp {
        IcmpKind::Error {
            inner,
            inner_l3_offset,
            inner_l4_offset,
        } => Ok((
            usize::from(inner_l3_offset),
            usize::from(inner_l4_offset),
            inner.protocol,
        )),
        _ => Err(ParseError::Unsupported("not an ICMP error")),
    }
}

/// Rewrites an ICMP error like the flow it quotes: the outer `end` address, and the opposite end of the quoted
/// packet (address and port); then recomputes the quoted IPv4 header checksum and the ICMP checksum in full (errors
/// are rare; a full sum is simplest to get right).
fn rewrite_icmp_error(
    frame: &mut [u8],
    layout: &FrameLayout,
    end: End,
    outer: IpAddr,
    inner_addr: IpAddr,
    inner_port: u16,
) -> Result<(), ParseError> {
    let (inner_l3, inner_l4, inner_protocol) = icmp_error_offsets(layout)?;
    let l3 = usize::from(layout.l3_offset);
    let l4 = usize::from(layout.l4_offset);
    let end_of_packet = l3 + usize::from(layout.l3_len);
    if frame.len() < end_of_packet || end_of_packet < l4 + 8 {
        return Err(ParseError::Truncated);
    }
    replace_address(frame, layout.l3, l3, end, &WireAddr::from(outer))?;
    let inner_end = if end == End::Source {
        End::Destination
    } else {
        End::Source
    };
    let (offset, len) = address_offset(layout.l3, inner_end)?;
    let (new, new_len) = address_octets(&inner_addr);
    if new_len != len {
        return Err(ParseError::Malformed(
            "address family differs from the packet's",
        ));
    }
    slice_mut(frame, inner_l3 + offset, len)?.copy_from_slice(&new[..len]);
    if layout.l3 == L3::Ipv4 {
        let header_len = usize::from(read_u8(frame, inner_l3)? & 0x0f) * 4;
        write_u16(frame, inner_l3 + 10, 0)?;
        let header = frame
            .get(inner_l3..inner_l3 + header_len)
            .ok_or(ParseError::Truncated)?;
        let sum = checksum::finish(checksum::sum(header));
        write_u16(frame, inner_l3 + 10, sum)?;
    }
    if matches!(inner_protocol, ip_protocol::TCP | ip_protocol::UDP) {
        let port_at = inner_l4 + if inner_end == End::Source { 0 } else { 2 };
        write_u16(frame, port_at, inner_port)?;
    }
    write_u16(frame, l4 + 2, 0)?;
    let message = &frame[l4..end_of_packet];
    let mut total = checksum::sum(message);
    if layout.l3 == L3::Ipv6 {
        let src = crate::parse::read_v6(frame, l3 + 8)?;
        let dst = crate::parse::read_v6(frame, l3 + 24)?;
        total += checksum::pseudo_header_sum(
            IpAddr::V6(src),
            IpAddr::V6(dst),
            ip_protocol::ICMPV6,
            (end_of_packet - l4) as u32,
        );
    }
    write_u16(frame, l4 + 2, checksum::finish(total))
}

/// An ICMP error towards a backend: the outer destination becomes `outer_dst`, the quoted packet's source
/// `inner_src:inner_src_port`.
pub fn rewrite_icmp_error_destination(
    frame: &mut [u8],
    layout: &FrameLayout,
    outer_dst: IpAddr,
    inner_src: IpAddr,
    inner_src_port: u16,
) -> Result<(), ParseError> {
    rewrite_icmp_error(
        frame,
        layout,
        End::Destination,
        outer_dst,
        inner_src,
        inner_src_port,
    )
}

/// An ICMP error towards a client: the outer source becomes `outer_src`, the quoted packet's destination
/// `inner_dst:inner_dst_port`.
pub fn rewrite_icmp_error_source(
    frame: &mut [u8],
    layout: &FrameLayout,
    outer_src: IpAddr,
    inner_dst: IpAddr,
    inner_dst_port: u16,
) -> Result<(), ParseError> {
    rewrite_icmp_error(
        frame,
        layout,
        End::Source,
        outer_src,
        inner_dst,
        inner_dst_port,
    )
}

/// Writes an outer IPv4 or IPv6 header: `buf[..IPV4_HEADER_LEN]` (or `IPV6_HEADER_LEN`) is free space in front
/// of the original frame `buf[outer..]` described by `inner`. The Ethernet header (with its VLAN tags) moves to the
/// front and the outer header follows it; the inner IP packet stays where it is. The addresses are borrowed, as
/// for [`rewrite_destination`].
pub fn encapsulate(
    buf: &mut [u8],
    inner: &FrameLayout,
    src: &WireAddr,
    dst: &WireAddr,
) -> Result<(), ParseError> {
    let l2 = usize::from(inner.l2_len);
    let inner_len = usize::from(inner.l3_len);
    match (inner.l3, src.is_ipv4(), dst.is_ipv4()) {
        (L3::Ipv4, true, true) => {
            let total = IPV4_HEADER_LEN + inner_len;
            if total > usize::from(u16::MAX) {
                return Err(ParseError::Unsupported(
                    "encapsulated packet longer than 65535 bytes",
                ));
            }
            let (front, inner_ip) = make_room(buf, l2, IPV4_HEADER_LEN, inner_len)?;
            // RFC 2003 section 3.1: TOS and DF are copied from the inner header.
            let (tos, df, id) = (inner_ip[1], inner_ip[6] & 0x40, [inner_ip[4], inner_ip[5]]);
            let header: &mut [u8; IPV4_HEADER_LEN] = (&mut front[l2..])
                .try_into()
                .map_err(|_| ParseError::Truncated)?;
            let (src, dst) = (src.v4_octets(), dst.v4_octets());
            // The checksum is summed from the fields themselves, not read back from the header just written
            // (bytes stored one by one and loaded as words would wait for the stores).
            let sum = u64::from(u16::from_be_bytes([0x45, tos]))
                + total as u64
                + u64::from(u16::from_be_bytes(id))
                + u64::from(u16::from_be_bytes([df, 0]))
                + u64::from(u16::from_be_bytes([DEFAULT_TTL, ip_protocol::IPIP]))
                + u64::from(u32::from_be_bytes(src))
                + u64::from(u32::from_be_bytes(dst));
            let check = checksum::finish(sum).to_be_bytes();
            *header = [
                0x45,
                tos,
                (total >> 8) as u8,
                total as u8,
                id[0],
                id[1],
                df,
                0,
                DEFAULT_TTL,
                ip_protocol::IPIP,
                check[0],
                check[1],
                src[0],
                src[1],
                src[2],
                src[3],
                dst[0],
                dst[1],
                dst[2],
                dst[3],
            ];
            Ok(())
        }
        (L3::Ipv6, false, false) => {
            let (front, inner_ip) = make_room(buf, l2, IPV6_HEADER_LEN, inner_len)?;
            // Traffic class and flow label are copied, so the flow keeps its ECMP entropy.
            let first_word = [
                0x60 | (inner_ip[0] & 0x0f),
                inner_ip[1],
                inner_ip[2],
                inner_ip[3],
            ];
            let header = &mut front[l2..];
            header[0..4].copy_from_slice(&first_word);
            header[4..6].copy_from_slice(&(inner_len as u16).to_be_bytes());
            header[6] = ip_protocol::IPV6_IN_IP;
            header[7] = DEFAULT_TTL;
            header[8..24].copy_from_slice(&src.v6_octets());
            header[24..40].copy_from_slice(&dst.v6_octets());
            Ok(())
        }
        _ => Err(ParseError::Unsupported(
            "encapsulation between address families",
        )),
    }
}

/// Moves the Ethernet header `outer` bytes to the front; returns (Ethernet + outer header room, inner IP packet).
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
