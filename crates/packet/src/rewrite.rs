//! In-place rewrites driven by a [`FrameLayout`]: MAC addresses, NAT of either end with RFC 1624 checksum
//! updates, and the packet an ICMP error quotes (tunnels are [`crate::tunnel`]'s).
//!
//! Each function takes the layout [`parse_frame`](crate::parse_frame) returned for the frame and checks every
//! access, so a layout that does not fit the frame is an error, not a panic.

use std::net::IpAddr;

use crate::checksum;
use crate::flow::ip_protocol;
use crate::headers::IpHeaders;
use crate::mac::MacWord;
use crate::parse::{read_u8, FrameLayout, IcmpKind, ParseError, L3};
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

// The translations below sum every field as it sits in memory (native-endian words) and write every checksum
// the same way: a ones'-complement sum does not depend on byte order as long as the checksum and every term are
// taken in the same order (RFC 1071), so NAT swaps no byte on the way.

/// The first `N` bytes of `frame` from `at`, after one bounds check.
#[inline(always)]
fn fixed_mut<const N: usize>(frame: &mut [u8], at: usize) -> Result<&mut [u8; N], ParseError> {
    frame
        .get_mut(at..)
        .and_then(|rest| rest.first_chunk_mut::<N>())
        .ok_or(ParseError::Truncated)
}

/// The 16-bit word at `at` of `bytes`, in memory order.
#[inline(always)]
fn word16(bytes: &[u8], at: usize) -> u64 {
    u64::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]]))
}

/// Writes `addr` over the address at `at` of an IP header of `LEN` address bytes; returns the (old, new) sums of
/// the address.
#[inline(always)]
fn swap_address<const LEN: usize>(
    header: &mut [u8],
    at: usize,
    addr: &WireAddr,
) -> Result<(u64, u64), ParseError> {
    if addr.is_ipv4() != (LEN == 4) {
        return Err(ParseError::Malformed(
            "address family differs from the packet's",
        ));
    }
    let words = addr.wire_words();
    let field = header[at..at + LEN].chunks_exact_mut(4);
    let (mut old, mut new) = (0, 0);
    for (quad, word) in field.zip(words) {
        old += swap_quad(quad, word);
        new += u64::from(word);
    }
    Ok((old, new))
}

/// Writes `word` (in memory order) over the four bytes of `quad`; returns the word they held, for the sums.
#[inline(always)]
fn swap_quad(quad: &mut [u8], word: u32) -> u64 {
    let old = u64::from(u32::from_ne_bytes([quad[0], quad[1], quad[2], quad[3]]));
    quad.copy_from_slice(&word.to_ne_bytes());
    old
}

/// Updates an IPv4 header's checksum for address bytes whose sum went from `old` to `new`.
#[inline(always)]
fn update_ipv4_checksum(header: &mut [u8; IPV4_HEADER_LEN], old: u64, new: u64) {
    let check = checksum::update(word16(header, 10) as u16, old, new);
    header[10..12].copy_from_slice(&check.to_ne_bytes());
}

/// Writes the given addresses (source at `at[0]`, destination at `at[1]`, each of `LEN` bytes) over an IP
/// `header`; returns the (old, new) sums of the addresses written.
#[inline(always)]
fn swap_addresses<const LEN: usize>(
    header: &mut [u8],
    at: [usize; 2],
    addrs: [Option<&WireAddr>; 2],
) -> Result<(u64, u64), ParseError> {
    let (mut old, mut new) = (0, 0);
    for (at, addr) in at.into_iter().zip(addrs) {
        if let Some(addr) = addr {
            let (was, is) = swap_address::<LEN>(header, at, addr)?;
            (old, new) = (old + was, new + is);
        }
    }
    Ok((old, new))
}

/// Writes the given addresses over the IP header at `l3` (of kind `kind`) and updates the IPv4 header checksum
/// (IPv6 has none); returns the (old, new) sums of the addresses, for the pseudo-header checksum updates.
#[inline(always)]
fn translate_header(
    frame: &mut [u8],
    kind: L3,
    l3: usize,
    src: Option<&WireAddr>,
    dst: Option<&WireAddr>,
) -> Result<(u64, u64), ParseError> {
    match kind {
        L3::Ipv4 => {
            let header = fixed_mut::<IPV4_HEADER_LEN>(frame, l3)?;
            let (old, new) = swap_addresses::<4>(header, [12, 16], [src, dst])?;
            update_ipv4_checksum(header, old, new);
            Ok((old, new))
        }
        L3::Ipv6 => {
            let header = fixed_mut::<IPV6_HEADER_LEN>(frame, l3)?;
            swap_addresses::<16>(header, [8, 24], [src, dst])
        }
        _ => Err(ParseError::Unsupported("not an IP packet")),
    }
}

/// Writes the given ports (source, destination) at the start of a TCP or UDP `header`; returns the (old, new)
/// sums `sums` grew to with them.
#[inline(always)]
fn swap_ports(header: &mut [u8], ports: [Option<u16>; 2], sums: (u64, u64)) -> (u64, u64) {
    let (mut old, mut new) = sums;
    for (at, port) in [(0, ports[0]), (2, ports[1])] {
        if let Some(port) = port {
            old += word16(header, at);
            new += u64::from(u16::from_ne_bytes(port.to_be_bytes()));
            header[at..at + 2].copy_from_slice(&port.to_be_bytes());
        }
    }
    (old, new)
}

/// Writes the given ports of the transport header and updates its checksum for them and for pseudo-header
/// address bytes whose sum went from `old_sum` to `new_sum`: one bounds check, one read and one write of the
/// checksum, however many fields changed.
#[inline(always)]
fn translate_transport(
    frame: &mut [u8],
    layout: &impl IpHeaders,
    sums: (u64, u64),
    ports: [Option<u16>; 2],
) -> Result<(), ParseError> {
    if layout.later_fragment() {
        return Ok(());
    }
    let l4 = usize::from(layout.l4_offset());
    match layout.protocol() {
        ip_protocol::TCP => {
            let header = fixed_mut::<18>(frame, l4)?;
            let (old, new) = swap_ports(header, ports, sums);
            let check = checksum::update(word16(header, 16) as u16, old, new);
            header[16..18].copy_from_slice(&check.to_ne_bytes());
        }
        ip_protocol::UDP => {
            let header = fixed_mut::<8>(frame, l4)?;
            let (old, new) = swap_ports(header, ports, sums);
            let check = word16(header, 6) as u16;
            // An IPv4 UDP datagram without a checksum stays without one (zero reads the same in either order).
            if check == 0 && layout.l3() == L3::Ipv4 {
                return Ok(());
            }
            let mut updated = checksum::update(check, old, new);
            if updated == 0 {
                updated = 0xffff;
            }
            header[6..8].copy_from_slice(&updated.to_ne_bytes());
        }
        ip_protocol::ICMPV6 if layout.l3() == L3::Ipv6 => {
            let header = fixed_mut::<4>(frame, l4)?;
            let check = checksum::update(word16(header, 2) as u16, sums.0, sums.1);
            header[2..4].copy_from_slice(&check.to_ne_bytes());
        }
        _ => {}
    }
    Ok(())
}

/// The ends a NAT rewrite gives an IP packet: each a new address and (TCP, UDP) port, or `None` to keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub src: Option<(WireAddr, u16)>,
    pub dst: Option<(WireAddr, u16)>,
}

impl Translation {
    /// Rewrites the frame `layout` describes in place: [`rewrite_source`], [`rewrite_destination`] or
    /// [`rewrite_source_and_destination`], as the ends say.
    #[inline(always)]
    pub fn apply(&self, frame: &mut [u8], layout: &impl IpHeaders) -> Result<(), ParseError> {
        // One arm per shape, so that each inlined translation knows which ends it writes.
        match (&self.src, &self.dst) {
            (None, Some((dst, dst_port))) => translate(frame, layout, None, Some((dst, *dst_port))),
            (Some((src, src_port)), None) => translate(frame, layout, Some((src, *src_port)), None),
            (Some((src, src_port)), Some((dst, dst_port))) => translate(
                frame,
                layout,
                Some((src, *src_port)),
                Some((dst, *dst_port)),
            ),
            (None, None) => Ok(()),
        }
    }
}

/// Rewrites the given ends (address and, for TCP and UDP, port) of the IP packet in `frame`, checksums updated
/// incrementally (RFC 1624), each read and written once.
#[inline(always)]
fn translate(
    frame: &mut [u8],
    layout: &impl IpHeaders,
    src: Option<(&WireAddr, u16)>,
    dst: Option<(&WireAddr, u16)>,
) -> Result<(), ParseError> {
    let l3 = usize::from(layout.l3_offset());
    let sums = translate_header(
        frame,
        layout.l3(),
        l3,
        src.map(|(addr, _)| addr),
        dst.map(|(addr, _)| addr),
    )?;
    translate_transport(
        frame,
        layout,
        sums,
        [src.map(|(_, port)| port), dst.map(|(_, port)| port)],
    )
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
    translate(frame, layout, Some((src, src_port)), Some((dst, dst_port)))
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
    translate(frame, layout, None, Some((addr, port)))
}

/// [`rewrite_destination`] to an IPv4 address given as one word (its four bytes in network order, in memory order:
/// `u32::from_ne_bytes(octets)`): the NAT of a client's frame to an IPv4 backend, without building and reading
/// back a family-generic address. An IPv6 packet is an error.
#[inline(always)]
pub fn rewrite_destination_v4(
    frame: &mut [u8],
    layout: &impl IpHeaders,
    addr: u32,
    port: u16,
) -> Result<(), ParseError> {
    if layout.l3() != L3::Ipv4 {
        return Err(ParseError::Malformed(
            "address family differs from the packet's",
        ));
    }
    let header = fixed_mut::<IPV4_HEADER_LEN>(frame, usize::from(layout.l3_offset()))?;
    let (old, new) = (swap_quad(&mut header[16..20], addr), u64::from(addr));
    update_ipv4_checksum(header, old, new);
    translate_transport(frame, layout, (old, new), [None, Some(port)])
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
    translate(frame, layout, Some((addr, port)), None)
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
    let outer = WireAddr::from(outer);
    match end {
        End::Source => translate_header(frame, layout.l3, l3, Some(&outer), None)?,
        End::Destination => translate_header(frame, layout.l3, l3, None, Some(&outer))?,
    };
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
