//! In-place rewrites driven by a [`FrameLayout`]: MAC addresses, NAT of either end with RFC 1624 checksum
//! updates, and the packet an ICMP error quotes (tunnels are [`crate::tunnel`]'s).
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
