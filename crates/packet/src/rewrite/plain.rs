//! NAT of the commonest frame in a straight line: untagged Ethernet, a 20-byte IPv4 header, a whole TCP or UDP
//! datagram (what the plain parse path accepts). Every field sits at a fixed offset of the first 54 bytes, so
//! one length check covers every access, and which ends change is known where this is inlined. Any other frame
//! is left to the general rewrite, which gives the same bytes (property test).

use crate::checksum;
use crate::flow::ip_protocol;
use crate::parse::{Fragment, FrameLayout, L3};
use crate::wire_addr::WireAddr;

const HEAD: usize = 54;
const L3_OFFSET: usize = 14;
const L4_OFFSET: usize = 34;
const SOURCE_ADDRESS: usize = L3_OFFSET + 12;
const DESTINATION_ADDRESS: usize = L3_OFFSET + 16;
const HEADER_CHECKSUM: usize = L3_OFFSET + 10;

/// An address and port to write over one end of the flow.
pub(super) type NewEnd<'a> = Option<(&'a WireAddr, u16)>;

/// Writes `source` and `destination` (address and port, when given) over a plain IPv4 TCP or UDP frame and
/// updates its header and transport checksums; `None` when the frame or an address is not of that kind, for the
/// general rewrite to do.
#[inline(always)]
pub(super) fn rewrite_plain_ipv4(
    frame: &mut [u8],
    layout: &FrameLayout,
    source: NewEnd<'_>,
    destination: NewEnd<'_>,
) -> Option<()> {
    let udp = match layout.protocol {
        ip_protocol::TCP => false,
        ip_protocol::UDP => true,
        _ => return None,
    };
    if layout.l3 != L3::Ipv4
        || usize::from(layout.l3_offset) != L3_OFFSET
        || usize::from(layout.l4_offset) != L4_OFFSET
        || layout.fragment != Fragment::None
        || source.is_some_and(|(addr, _)| !addr.is_ipv4())
        || destination.is_some_and(|(addr, _)| !addr.is_ipv4())
    {
        return None;
    }
    let head: &mut [u8; HEAD] = frame.first_chunk_mut()?;
    let read = |head: &[u8; HEAD], at: usize| u16::from_be_bytes([head[at], head[at + 1]]);
    let (mut old_addresses, mut new_addresses) = (0u64, 0u64);
    let (mut old_ports, mut new_ports) = (0u64, 0u64);
    for (change, address_at, port_at) in [
        (source, SOURCE_ADDRESS, L4_OFFSET),
        (destination, DESTINATION_ADDRESS, L4_OFFSET + 2),
    ] {
        if let Some((addr, port)) = change {
            let new = addr.v4_octets();
            let old = [
                head[address_at],
                head[address_at + 1],
                head[address_at + 2],
                head[address_at + 3],
            ];
            old_addresses += u64::from(u32::from_be_bytes(old));
            new_addresses += u64::from(u32::from_be_bytes(new));
            head[address_at..address_at + 4].copy_from_slice(&new);
            old_ports += u64::from(read(head, port_at));
            new_ports += u64::from(port);
            head[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
        }
    }
    let header_check = checksum::update(read(head, HEADER_CHECKSUM), old_addresses, new_addresses);
    head[HEADER_CHECKSUM..HEADER_CHECKSUM + 2].copy_from_slice(&header_check.to_be_bytes());
    let check_at = L4_OFFSET + if udp { 6 } else { 16 };
    let check = read(head, check_at);
    // An IPv4 UDP datagram without a checksum stays without one.
    if udp && check == 0 {
        return Some(());
    }
    let mut updated = checksum::update(check, old_addresses + old_ports, new_addresses + new_ports);
    if updated == 0 && udp {
        updated = 0xffff;
    }
    head[check_at..check_at + 2].copy_from_slice(&updated.to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::super::{rewrite_both_ends, rewrite_end, End};
    use super::*;
    use crate::parse_frame;
    use crate::test_frames::plain_frame;

    fn address(v6: bool, bits: u128) -> WireAddr {
        if v6 {
            WireAddr::v6(Ipv6Addr::from(bits))
        } else {
            WireAddr::v4(Ipv4Addr::from(bits as u32))
        }
    }

    proptest! {
        /// On any frame the parser accepts, and any new ends, the straight-line rewrite either declines or writes
        /// exactly the bytes the general rewrite writes; the public functions always answer as the general one.
        #[test]
        fn this_path_writes_what_the_general_rewrite_writes(
            udp in any::<bool>(),
            len in 54usize..100,
            check in any::<u16>(),
            changes in proptest::collection::vec((0usize..64, any::<u8>()), 0..3),
            ends in 0u8..3,
            (source_v6, source, source_port) in (any::<bool>(), any::<u128>(), any::<u16>()),
            (destination_v6, destination, destination_port) in (any::<bool>(), any::<u128>(), any::<u16>()),
        ) {
            let mut frame = plain_frame(if udp { ip_protocol::UDP } else { ip_protocol::TCP }, len);
            let check_at = L4_OFFSET + if udp { 6 } else { 16 };
            frame[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
            for (at, byte) in changes {
                if let Some(slot) = frame.get_mut(at) {
                    *slot = byte;
                }
            }
            let Ok(layout) = parse_frame(&frame) else { return Ok(()) };
            let source = (address(source_v6, source), source_port);
            let destination = (address(destination_v6, destination), destination_port);
            let (new_source, new_destination) = match ends {
                0 => (Some((&source.0, source.1)), None),
                1 => (None, Some((&destination.0, destination.1))),
                _ => (Some((&source.0, source.1)), Some((&destination.0, destination.1))),
            };
            let mut general = frame.clone();
            let general_answer = match (new_source, new_destination) {
                (Some((addr, port)), None) => rewrite_end(&mut general, &layout, End::Source, addr, port),
                (None, Some((addr, port))) => rewrite_end(&mut general, &layout, End::Destination, addr, port),
                _ => rewrite_both_ends(&mut general, &layout, &source.0, source.1, &destination.0, destination.1),
            };
            let mut straight = frame.clone();
            if rewrite_plain_ipv4(&mut straight, &layout, new_source, new_destination).is_some() {
                prop_assert_eq!(general_answer, Ok(()));
                prop_assert_eq!(&straight, &general);
            }
            let mut public = frame.clone();
            let public_answer = match (new_source, new_destination) {
                (Some((addr, port)), None) => crate::rewrite_source(&mut public, &layout, *addr, port),
                (None, Some((addr, port))) => crate::rewrite_destination(&mut public, &layout, *addr, port),
                _ => crate::rewrite_source_and_destination(
                    &mut public, &layout, source.0, source.1, destination.0, destination.1,
                ),
            };
            prop_assert_eq!(public_answer, general_answer);
            if public_answer.is_ok() {
                prop_assert_eq!(public, general);
            }
        }
    }
}
