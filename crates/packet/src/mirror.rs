//! A frame turned, in place, into the answer its destination sends back: the backends' side of replayed traffic
//! (`sluice generate --answers-to`), which the balancer's reply path is measured and trained on.

use crate::checksum;
use crate::flow::ip_protocol;
use crate::parse::{parse_frame, Fragment, ParseError, L3};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Turns `frame` into its answer: Ethernet addresses, IP addresses and TCP or UDP ports swapped, and a TCP SYN
/// answered with a SYN-ACK; every other flag, the payload and the VLAN tags stay. Swapping fields within one
/// checksum's sum keeps it, so only the SYN-ACK's flag word updates the TCP checksum.
///
/// Only whole TCP and UDP datagrams have an answer: anything else is refused and left unchanged.
pub fn mirror(frame: &mut [u8]) -> Result<(), ParseError> {
    let layout = parse_frame(frame)?;
    let address_len = match layout.l3 {
        L3::Ipv4 => 4,
        L3::Ipv6 => 16,
        _ => return Err(ParseError::Unsupported("only IP frames have an answer")),
    };
    if layout.fragment != Fragment::None {
        return Err(ParseError::Unsupported(
            "a fragment has no answer of its own",
        ));
    }
    let protocol = layout.protocol;
    if protocol != ip_protocol::TCP && protocol != ip_protocol::UDP {
        return Err(ParseError::Unsupported("only TCP and UDP have an answer"));
    }
    // The parser checked that every header read below is in the frame.
    let l3 = usize::from(layout.l3_offset);
    let l4 = usize::from(layout.l4_offset);
    let source = if address_len == 4 { l3 + 12 } else { l3 + 8 };
    swap_halves(&mut frame[..12]);
    swap_halves(&mut frame[source..source + 2 * address_len]);
    swap_halves(&mut frame[l4..l4 + 4]);
    if protocol == ip_protocol::TCP && frame[l4 + 13] & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let old = [frame[l4 + 12], frame[l4 + 13]];
        frame[l4 + 13] |= TCP_ACK;
        let new = [frame[l4 + 12], frame[l4 + 13]];
        let sum = u16::from_be_bytes([frame[l4 + 16], frame[l4 + 17]]);
        let sum = checksum::update_bytes(sum, &old, &new);
        frame[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
    }
    Ok(())
}

/// Swaps the first half of `bytes` with the second.
fn swap_halves(bytes: &mut [u8]) {
    let (first, second) = bytes.split_at_mut(bytes.len() / 2);
    first.swap_with_slice(second);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowKey;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// An Ethernet frame of one TCP or UDP datagram with correct checksums.
    fn datagram(flow: &FlowKey, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0xc1, 0, 0, 0, 9];
        let transport_len = if flow.protocol == ip_protocol::TCP {
            20
        } else {
            8
        } + payload.len();
        let mut transport = Vec::new();
        transport.extend(flow.src_port.to_be_bytes());
        transport.extend(flow.dst_port.to_be_bytes());
        if flow.protocol == ip_protocol::TCP {
            transport.extend([
                0, 0, 0, 7, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
            ]);
        } else {
            transport.extend((transport_len as u16).to_be_bytes());
            transport.extend([0, 0]);
        }
        transport.extend(payload);
        let pseudo = checksum::pseudo_header_sum(
            flow.src_addr,
            flow.dst_addr,
            flow.protocol,
            transport_len as u32,
        );
        let at = if flow.protocol == ip_protocol::TCP {
            16
        } else {
            6
        };
        let sum = checksum::finish(pseudo + checksum::sum(&transport));
        transport[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        match (flow.src_addr, flow.dst_addr) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend([0x08, 0x00]);
                let mut header = vec![0x45, 0];
                header.extend(((20 + transport_len) as u16).to_be_bytes());
                header.extend([0, 1, 0x40, 0, 64, flow.protocol, 0, 0]);
                header.extend(src.octets());
                header.extend(dst.octets());
                let sum = checksum::finish(checksum::sum(&header));
                header[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend(header);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
                frame.extend((transport_len as u16).to_be_bytes());
                frame.extend([flow.protocol, 64]);
                frame.extend(src.octets());
                frame.extend(dst.octets());
            }
            _ => unreachable!("one family per flow"),
        }
        frame.extend(transport);
        frame
    }

    /// Whether the transport checksum of a parsed frame verifies (and, for IPv4, the header's).
    fn checksums_verify(frame: &[u8]) -> bool {
        let layout = parse_frame(frame).unwrap();
        let l3 = usize::from(layout.l3_offset);
        let l4 = usize::from(layout.l4_offset);
        let end = l3 + usize::from(layout.l3_len);
        let pseudo = checksum::pseudo_header_sum(
            layout.flow.src_addr,
            layout.flow.dst_addr,
            layout.protocol,
            (end - l4) as u32,
        );
        let header_ok =
            layout.l3 != L3::Ipv4 || checksum::fold(checksum::sum(&frame[l3..l4])) == 0xffff;
        header_ok && checksum::fold(pseudo + checksum::sum(&frame[l4..end])) == 0xffff
    }

    fn flow(v6: bool, tcp: bool, src: u32, dst: u32, src_port: u16, dst_port: u16) -> FlowKey {
        let (src_addr, dst_addr) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::from(u128::from(src) | 0x2001_0db8 << 96)),
                IpAddr::V6(Ipv6Addr::from(u128::from(dst) | 0xfd00 << 112)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
            )
        };
        FlowKey {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            protocol: if tcp {
                ip_protocol::TCP
            } else {
                ip_protocol::UDP
            },
        }
    }

    #[test]
    fn a_syn_is_answered_with_a_syn_ack_to_its_sender() {
        let request = flow(false, true, 0xc612_0001, 0x0a00_0064, 40000, 80);
        let mut frame = datagram(&request, TCP_SYN, b"");
        mirror(&mut frame).unwrap();
        let answer = parse_frame(&frame).unwrap();
        assert_eq!(answer.flow, request.reversed());
        assert_eq!(answer.tcp_flags, TCP_SYN | TCP_ACK);
        assert_eq!(&frame[..12], &[2, 0xc1, 0, 0, 0, 9, 2, 0, 0, 0, 0, 1]);
        assert!(checksums_verify(&frame));
    }

    #[test]
    fn what_has_no_answer_is_refused_and_left_as_it_was() {
        let request = flow(false, true, 1, 2, 3, 4);
        let mut fragment = datagram(&request, TCP_ACK, b"data");
        fragment[20] = 0x20; // more fragments
        let mut arp = vec![0xff; 12];
        arp.extend([0x08, 0x06]);
        arp.extend([0; 46]);
        for frame in [fragment, arp] {
            let mut answered = frame.clone();
            assert!(mirror(&mut answered).is_err());
            assert_eq!(answered, frame);
        }
    }

    proptest! {
        #[test]
        fn an_answer_reverses_the_flow_and_keeps_its_checksums(
            v6: bool, tcp: bool, src: u32, dst: u32, src_port: u16, dst_port: u16,
            flags in proptest::sample::select(vec![TCP_SYN, TCP_ACK, 0x18, 0x11, 0x04]),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let request = flow(v6, tcp, src, dst, src_port, dst_port);
            let mut frame = datagram(&request, flags, &payload);
            let original = frame.clone();
            mirror(&mut frame).unwrap();
            let answer = parse_frame(&frame).unwrap();
            prop_assert_eq!(answer.flow, request.reversed());
            prop_assert!(checksums_verify(&frame));
            prop_assert_eq!(&frame[frame.len() - payload.len()..], &payload[..]);
            // Mirrored twice, a frame is itself again, but for the SYN's added ACK.
            mirror(&mut frame).unwrap();
            if !(tcp && flags == TCP_SYN) {
                prop_assert_eq!(frame, original);
            }
        }
    }
}
