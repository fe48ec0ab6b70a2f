//! Outer fragments of an IPv4-in-IPv4 packet too long for the egress MTU (RFC 2003 section 5.1: the inner packet
//! may be fragmented, so the encapsulator fragments the outer one): each fragment is an Ethernet header, an outer
//! IPv4 header and a piece of the inner packet; the tunnel's far end reassembles the outer packet and unwraps it.

use std::net::Ipv4Addr;

use crate::checksum;
use crate::flow::ip_protocol;
use crate::parse::{FrameLayout, ParseError, L3};
use crate::rewrite::{DEFAULT_TTL, IPV4_HEADER_LEN};

/// Inner-packet bytes each outer fragment carries at most for an egress `mtu` (a multiple of 8, as fragment
/// offsets count in 8-byte units); `None` when the MTU leaves no room.
pub fn tunnel_fragment_payload(mtu: u16) -> Option<usize> {
    let room = usize::from(mtu).checked_sub(IPV4_HEADER_LEN)? / 8 * 8;
    (room > 0).then_some(room)
}

/// Writes into `out` outer fragment `index` (of the fragments [`tunnel_fragment_payload`] cuts) of the IPv4 packet
/// in `frame` (parsed as `inner`, untagged) encapsulated from `outer_src` to `outer_dst` with identification `id`;
/// returns its length, or `None` once every fragment was written. MACs are the caller's to set.
pub fn build_tunnel_fragment(
    out: &mut [u8],
    frame: &[u8],
    inner: &FrameLayout,
    (outer_src, outer_dst): (Ipv4Addr, Ipv4Addr),
    id: u16,
    mtu: u16,
    index: usize,
) -> Result<Option<usize>, ParseError> {
    if inner.l3 != L3::Ipv4 || inner.vlan_tags != 0 {
        return Err(ParseError::Unsupported(
            "tunnel fragments of an untagged IPv4 packet only",
        ));
    }
    let per_fragment =
        tunnel_fragment_payload(mtu).ok_or(ParseError::Unsupported("MTU below a fragment"))?;
    let l2 = usize::from(inner.l2_len);
    let l3 = usize::from(inner.l3_offset);
    let packet = frame
        .get(l3..l3 + usize::from(inner.l3_len))
        .ok_or(ParseError::Truncated)?;
    let offset = index * per_fragment;
    if offset >= packet.len() {
        return Ok(None);
    }
    let piece = &packet[offset..packet.len().min(offset + per_fragment)];
    let more = offset + piece.len() < packet.len();
    let len = l2 + IPV4_HEADER_LEN + piece.len();
    let out = out.get_mut(..len).ok_or(ParseError::Truncated)?;
    out[..l2].copy_from_slice(frame.get(..l2).ok_or(ParseError::Truncated)?);
    let header = &mut out[l2..l2 + IPV4_HEADER_LEN];
    header.fill(0);
    header[0] = 0x45;
    // RFC 2003 section 3.1: the TOS is copied from the inner header.
    header[1] = packet[1];
    header[2..4].copy_from_slice(&((IPV4_HEADER_LEN + piece.len()) as u16).to_be_bytes());
    header[4..6].copy_from_slice(&id.to_be_bytes());
    let word = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    header[6..8].copy_from_slice(&word.to_be_bytes());
    header[8] = DEFAULT_TTL;
    header[9] = ip_protocol::IPIP;
    header[12..16].copy_from_slice(&outer_src.octets());
    header[16..20].copy_from_slice(&outer_dst.octets());
    let sum = checksum::finish(checksum::sum(header));
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    out[l2 + IPV4_HEADER_LEN..].copy_from_slice(piece);
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_cut_in_fragments_that_fit_and_join_again() {
        // An IPv4 packet of 3000 bytes (header 20, payload 2980), behind a 14-byte Ethernet header.
        let mut frame = vec![0u8; 14 + 3000];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&3000u16.to_be_bytes());
        frame[22] = 64;
        frame[23] = 17;
        for (i, byte) in frame[34..].iter_mut().enumerate() {
            *byte = i as u8;
        }
        let sum = checksum::finish(checksum::sum(&frame[14..34]));
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        let layout = crate::parse_frame(&frame).unwrap();
        let ends = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 11));
        let mut joined = Vec::new();
        let mut out = vec![0u8; 1600];
        let mut index = 0;
        while let Some(len) =
            build_tunnel_fragment(&mut out, &frame, &layout, ends, 7, 1500, index).unwrap()
        {
            assert!(len - 14 <= 1500);
            let outer = crate::parse_frame(&out[..len]).unwrap();
            assert_eq!(outer.protocol, ip_protocol::IPIP);
            assert!(!outer.dont_fragment);
            joined.extend_from_slice(&out[34..len]);
            index += 1;
        }
        assert_eq!(index, 3);
        assert_eq!(joined, frame[14..]);
    }
}
