//! Frames built by an independent library (etherparse), classified and rewritten by ours, and checked again by
//! etherparse and by a naive reference checksum: fields, offsets and every checksum after every rewrite.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId};
use packet::ip_protocol::{ICMP, ICMPV6, TCP, UDP};
use packet::WireAddr;
use packet::{Fragment, FrameLayout, IcmpKind, ParseError, L3};
use proptest::prelude::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// Reference ones'-complement sum: the simplest possible, independent of the crate's.
fn reference_sum(chunks: &[&[u8]]) -> u32 {
    let mut bytes = Vec::new();
    // Pseudo-header pieces are all of even length; only the last chunk may be odd.
    for chunk in chunks {
        bytes.extend_from_slice(chunk);
    }
    let mut total: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = (u32::from(pair[0]) << 8) | u32::from(*pair.get(1).unwrap_or(&0));
        total += word;
        total = (total & 0xffff) + (total >> 16);
    }
    total
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Asserts every checksum of an IP frame verifies: IPv4 header, and TCP/UDP/ICMP/ICMPv6 over the whole message.
fn assert_checksums(frame: &[u8]) {
    let layout = packet::parse_frame(frame).expect("frame parses");
    let l3 = usize::from(layout.l3_offset);
    let l4 = usize::from(layout.l4_offset);
    let end = l3 + usize::from(layout.l3_len);
    let (src, dst) = (layout.flow.src_addr, layout.flow.dst_addr);
    if layout.l3 == L3::Ipv4 {
        assert_eq!(
            reference_sum(&[&frame[l3..l4]]),
            0xffff,
            "IPv4 header checksum"
        );
    }
    if matches!(layout.fragment, Fragment::Later { .. }) || layout.fragment != Fragment::None {
        return;
    }
    let message = &frame[l4..end];
    let length = (message.len() as u32).to_be_bytes();
    let pseudo = |protocol: u8| {
        let mut bytes = octets(src);
        bytes.extend(octets(dst));
        bytes.extend([0, protocol]);
        bytes.extend(&length[2..]);
        if src.is_ipv6() {
            bytes.extend(&length[..2]);
        }
        bytes
    };
    match layout.protocol {
        TCP => assert_eq!(
            reference_sum(&[&pseudo(TCP), message]),
            0xffff,
            "TCP checksum"
        ),
        UDP if !(src.is_ipv4() && message[6..8] == [0, 0]) => {
            assert_eq!(
                reference_sum(&[&pseudo(UDP), message]),
                0xffff,
                "UDP checksum"
            )
        }
        ICMP => assert_eq!(reference_sum(&[message]), 0xffff, "ICMP checksum"),
        ICMPV6 => assert_eq!(
            reference_sum(&[&pseudo(ICMPV6), message]),
            0xffff,
            "ICMPv6 checksum"
        ),
        _ => {}
    }
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    v6: bool,
    tcp: bool,
    vlan: Option<u16>,
}

fn build(
    shape: Shape,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {
            if shape.tcp {
                $ip.tcp(sport, dport, 7, 1024)
                    .syn()
                    .ack(1)
                    .write(&mut out, payload)
                    .unwrap()
            } else {
                $ip.udp(sport, dport).write(&mut out, payload).unwrap()
            }
        };
    }
    match (src, dst, shape.vlan) {
        (IpAddr::V4(s), IpAddr::V4(d), None) => finish!(eth.ipv4(s.octets(), d.octets(), 61)),
        (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => {
            finish!(eth
                .single_vlan(VlanId::try_new(v).unwrap())
                .ipv4(s.octets(), d.octets(), 61))
        }
        (IpAddr::V6(s), IpAddr::V6(d), None) => finish!(eth.ipv6(s.octets(), d.octets(), 61)),
        (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => {
            finish!(eth
                .single_vlan(VlanId::try_new(v).unwrap())
                .ipv6(s.octets(), d.octets(), 61))
        }
        _ => unreachable!(),
    }
    out
}

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(a: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a))
}

#[test]
fn classifies_what_etherparse_builds() {
    for v6_frame in [false, true] {
        for tcp in [false, true] {
            for vlan in [None, Some(42)] {
                let (src, dst) = if v6_frame {
                    (v6(0x2001_0db8 << 96 | 1), v6(0xfd00 << 112 | 0x100))
                } else {
                    (v4(0xc000_0201), v4(0x0a00_0064))
                };
                let frame = build(
                    Shape {
                        v6: v6_frame,
                        tcp,
                        vlan,
                    },
                    src,
                    dst,
                    40000,
                    80,
                    b"hello",
                );
                let layout = packet::parse_frame(&frame).unwrap();
                let l2 = if vlan.is_some() { 18 } else { 14 };
                assert_eq!(layout.l2_len, l2);
                assert_eq!(layout.vlan_id, vlan);
                assert_eq!(layout.l3, if v6_frame { L3::Ipv6 } else { L3::Ipv4 });
                assert_eq!(layout.l4_offset, l2 + if v6_frame { 40 } else { 20 });
                assert_eq!(layout.protocol, if tcp { TCP } else { UDP });
                assert_eq!(layout.ttl, 61);
                assert_eq!(layout.flow.src_addr, src);
                assert_eq!(layout.flow.dst_addr, dst);
                assert_eq!((layout.flow.src_port, layout.flow.dst_port), (40000, 80));
                assert_eq!(layout.tcp_flags, if tcp { 0x12 } else { 0 });
                assert_eq!(usize::from(layout.l3_offset + layout.l3_len), frame.len());
                assert_checksums(&frame);
            }
        }
    }
}

#[test]
fn malformed_frames_are_errors() {
    let frame = build(
        Shape {
            v6: false,
            tcp: true,
            vlan: None,
        },
        v4(1),
        v4(2),
        1,
        2,
        b"x",
    );
    for len in 0..frame.len() {
        assert!(
            packet::parse_frame(&frame[..len]).is_err(),
            "truncated at {len}"
        );
    }
    let mut bad_version = frame.clone();
    bad_version[14] = 0x55;
    assert_eq!(
        packet::parse_frame(&bad_version),
        Err(ParseError::Malformed("IPv4 version"))
    );
    let mut bad_checksum = frame.clone();
    bad_checksum[24] ^= 1;
    assert_eq!(
        packet::parse_frame(&bad_checksum),
        Err(ParseError::Malformed("IPv4 header checksum"))
    );
    let mut short_ihl = frame.clone();
    short_ihl[14] = 0x44;
    assert!(packet::parse_frame(&short_ihl).is_err());
    let mut bad_offset = frame.clone();
    bad_offset[14 + 20 + 12] = 0x40; // data offset 4 words
    assert_eq!(
        packet::parse_frame(&bad_offset),
        Err(ParseError::Malformed("TCP data offset below 20"))
    );
    // Ethernet padding after the IP packet is allowed and not part of it.
    let mut padded = frame.clone();
    padded.extend([0u8; 10]);
    let layout = packet::parse_frame(&padded).unwrap();
    assert_eq!(usize::from(layout.l3_offset + layout.l3_len), frame.len());
}

#[test]
fn fragments_carry_ports_only_in_the_first() {
    let mut frame = build(
        Shape {
            v6: false,
            tcp: false,
            vlan: None,
        },
        v4(1),
        v4(2),
        5000,
        53,
        &[0; 40],
    );
    // More fragments, offset 0; then offset 8 (64 bytes): patch and fix the header checksum.
    for (word, expected_ports) in [(0x2000u16, (5000, 53)), (0x0008u16, (0, 0))] {
        frame[20..22].copy_from_slice(&word.to_be_bytes());
        frame[24..26].fill(0);
        let sum = reference_sum(&[&frame[14..34]]);
        frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let layout = packet::parse_frame(&frame).unwrap();
        assert_eq!((layout.flow.src_port, layout.flow.dst_port), expected_ports);
        let id = u32::from(u16::from_be_bytes([frame[18], frame[19]]));
        if word == 0x2000 {
            assert_eq!(layout.fragment, Fragment::First { id });
        } else {
            assert_eq!(layout.fragment, Fragment::Later { id });
            // Rewriting a later fragment touches the IP header only.
            let mut copy = frame.clone();
            packet::rewrite_destination(&mut copy, &layout, &WireAddr::from(v4(9)), 9).unwrap();
            assert_eq!(copy[34..], frame[34..]);
            assert_eq!(reference_sum(&[&copy[14..34]]), 0xffff);
        }
    }
}

/// A first fragment carries the beginning of its datagram: its UDP length names the whole datagram and runs past
/// the fragment, which is no reason to refuse it; a whole datagram whose UDP length runs past it is malformed.
#[test]
fn a_first_fragment_is_not_held_to_the_udp_length_of_its_datagram() {
    let shape = Shape {
        v6: false,
        tcp: false,
        vlan: None,
    };
    let whole = build(shape, v4(1), v4(2), 5000, 53, &[7; 2472]);
    // The first 1480 bytes of the IP payload, more fragments flag set, total length and checksum fixed.
    let mut first = whole[..14 + 20 + 1480].to_vec();
    first[16..18].copy_from_slice(&1500u16.to_be_bytes());
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    first[24..26].fill(0);
    let sum = reference_sum(&[&first[14..34]]);
    first[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let layout = packet::parse_frame(&first).expect("a first fragment parses");
    assert!(matches!(layout.fragment, Fragment::First { .. }));
    assert_eq!((layout.flow.src_port, layout.flow.dst_port), (5000, 53));
    // The same truncation without the fragment flag is a datagram shorter than its UDP length.
    let mut cut = first.clone();
    cut[20..22].fill(0);
    cut[24..26].fill(0);
    let sum = reference_sum(&[&cut[14..34]]);
    cut[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    assert_eq!(
        packet::parse_frame(&cut),
        Err(ParseError::Malformed("UDP length"))
    );
}

#[test]
fn encapsulation_wraps_and_unwraps() {
    for v6_frame in [false, true] {
        for vlan in [None, Some(7)] {
            let (src, dst, outer_src, outer_dst) = if v6_frame {
                (v6(1), v6(2), v6(0xfd01 << 112 | 1), v6(0xfd01 << 112 | 11))
            } else {
                (v4(1), v4(2), v4(0x0a01_0001), v4(0x0a01_000b))
            };
            let original = build(
                Shape {
                    v6: v6_frame,
                    tcp: true,
                    vlan,
                },
                src,
                dst,
                1000,
                80,
                b"payload",
            );
            let layout = packet::parse_frame(&original).unwrap();
            let outer = if v6_frame {
                packet::IPV6_HEADER_LEN
            } else {
                packet::IPV4_HEADER_LEN
            };
            let mut buf = vec![0u8; outer];
            buf.extend_from_slice(&original);
            packet::encapsulate(
                &mut buf,
                &layout,
                &WireAddr::from(outer_src),
                &WireAddr::from(outer_dst),
            )
            .unwrap();
            let snapshot = buf.clone();
            let sliced = SlicedPacket::from_ethernet(&snapshot).unwrap();
            match sliced.net.unwrap() {
                NetSlice::Ipv4(ip) => {
                    assert_eq!(ip.header().protocol().0, 4);
                    assert_eq!(IpAddr::V4(ip.header().source_addr()), outer_src);
                    assert_eq!(IpAddr::V4(ip.header().destination_addr()), outer_dst);
                    assert!(ip.header().dont_fragment());
                    assert_eq!(ip.header().ttl(), 64);
                }
                NetSlice::Ipv6(ip) => {
                    assert_eq!(ip.header().next_header().0, 41);
                    assert_eq!(IpAddr::V6(ip.header().destination_addr()), outer_dst);
                }
                _ => panic!("no IP"),
            }
            assert_checksums(&buf);
            let outer_layout = packet::parse_frame(&buf).unwrap();
            assert_eq!(outer_layout.vlan_id, vlan);
            let drop = packet::decapsulate(&mut buf, &outer_layout).unwrap();
            assert_eq!(&buf[drop..], &original[..]);
        }
    }
}

#[test]
fn echo_arp_and_neighbour_answers() {
    // ICMP echo, both families.
    let mut echo4 = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([192, 0, 2, 1], [10, 0, 0, 100], 50)
        .icmpv4_echo_request(77, 1)
        .write(&mut echo4, b"ping")
        .unwrap();
    let mut echo6 = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(
            octets(v6(1)).try_into().unwrap(),
            octets(v6(2)).try_into().unwrap(),
            50,
        )
        .icmpv6_echo_request(77, 1)
        .write(&mut echo6, b"ping")
        .unwrap();
    for frame in [&mut echo4, &mut echo6] {
        let layout = packet::parse_frame(frame).unwrap();
        assert_eq!(layout.icmp, IcmpKind::EchoRequest);
        assert_eq!(layout.flow.src_port, 77);
        packet::answer_echo(frame, &layout, MAC_B).unwrap();
        let reply = packet::parse_frame(frame).unwrap();
        assert_eq!(reply.icmp, IcmpKind::EchoReply);
        assert_eq!(reply.flow.src_addr, layout.flow.dst_addr);
        assert_eq!(reply.flow.dst_addr, layout.flow.src_addr);
        assert_eq!(&frame[0..6], &MAC_A);
        assert_eq!(&frame[6..12], &MAC_B);
        assert_checksums(frame);
    }

    // ARP: request built by us, answered by us, checked by etherparse.
    let mut request = vec![0u8; 64];
    let len = packet::build_arp_request(
        &mut request,
        MAC_A,
        Ipv4Addr::new(10, 0, 0, 2),
        Ipv4Addr::new(10, 0, 0, 100),
        None,
    )
    .unwrap();
    request.truncate(len);
    assert_eq!(len, 60);
    let layout = packet::parse_frame(&request).unwrap();
    let facts = layout.arp.unwrap();
    assert_eq!(
        (facts.operation, facts.sender_mac, facts.target_ip),
        (1, MAC_A, Ipv4Addr::new(10, 0, 0, 100))
    );
    packet::answer_arp(&mut request, &layout, MAC_B).unwrap();
    let reply = packet::parse_frame(&request).unwrap().arp.unwrap();
    assert_eq!(reply.operation, 2);
    assert_eq!(reply.sender_mac, MAC_B);
    assert_eq!(reply.sender_ip, Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(reply.target_ip, Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(&request[0..12], &[MAC_A, MAC_B].concat()[..]);
    let arp = etherparse::ArpPacketSlice::from_slice(&request[14..]).unwrap();
    assert_eq!(arp.target_hw_addr(), &MAC_A);

    // Neighbour discovery: our solicitation, answered as an advertisement.
    let ours: Ipv6Addr = "fd00::1".parse().unwrap();
    let target: Ipv6Addr = "fd00::100".parse().unwrap();
    let mut ns = vec![0u8; 128];
    let len = packet::build_neighbor_solicitation(&mut ns, MAC_A, ours, target, Some(9)).unwrap();
    ns.truncate(len);
    assert_checksums(&ns);
    let layout = packet::parse_frame(&ns).unwrap();
    assert_eq!(layout.icmp, IcmpKind::NeighborSolicitation { target });
    assert_eq!(layout.ttl, 255);
    let na_len = packet::answer_neighbor_solicitation(&mut ns, &layout, MAC_B).unwrap();
    ns.truncate(na_len);
    assert_checksums(&ns);
    let na = packet::parse_frame(&ns).unwrap();
    assert_eq!(
        na.icmp,
        IcmpKind::NeighborAdvertisement {
            target,
            target_mac: Some(MAC_B)
        }
    );
    assert_eq!(na.flow.dst_addr, IpAddr::V6(ours));
    assert_eq!(na.vlan_id, Some(9));
}

#[test]
fn too_big_answers_quote_the_offender() {
    for v6_frame in [false, true] {
        let (src, dst) = if v6_frame {
            (v6(5), v6(6))
        } else {
            (v4(5), v4(6))
        };
        let original = build(
            Shape {
                v6: v6_frame,
                tcp: true,
                vlan: Some(3),
            },
            src,
            dst,
            1234,
            80,
            &[7u8; 1400],
        );
        let layout = packet::parse_frame(&original).unwrap();
        let mut out = vec![0u8; 1600];
        let ours: [u8; 6] = original[0..6].try_into().unwrap();
        let len = packet::build_too_big(&mut out, &original, &layout, dst, 1480, ours).unwrap();
        out.truncate(len);
        assert_checksums(&out);
        let answer = packet::parse_frame(&out).unwrap();
        assert_eq!(answer.flow.dst_addr, src);
        assert_eq!(answer.flow.src_addr, dst);
        assert_eq!(answer.vlan_id, Some(3));
        let IcmpKind::Error { inner, .. } = answer.icmp else {
            panic!("{answer:?}")
        };
        assert_eq!(inner, layout.flow);
        if v6_frame {
            assert!(len - 18 <= 1280);
        }
        let sliced = SlicedPacket::from_ethernet(&out).unwrap();
        match sliced.transport.unwrap() {
            TransportSlice::Icmpv4(icmp) => assert_eq!(icmp.type_u8(), 3),
            TransportSlice::Icmpv6(icmp) => assert_eq!(icmp.type_u8(), 2),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn icmp_errors_are_rewritten_with_the_flow_they_quote() {
    for v6_frame in [false, true] {
        let (client, vip, backend) = if v6_frame {
            (v6(1), v6(2), v6(3))
        } else {
            (v4(1), v4(2), v4(3))
        };
        // The reply we sent (VIP:80 -> client:4000), quoted in a too-big error from a router back to the VIP.
        let reply = build(
            Shape {
                v6: v6_frame,
                tcp: true,
                vlan: None,
            },
            vip,
            client,
            80,
            4000,
            &[1u8; 100],
        );
        let reply_layout = packet::parse_frame(&reply).unwrap();
        let router = if v6_frame { v6(9) } else { v4(9) };
        let mut error = vec![0u8; 1600];
        let len =
            packet::build_too_big(&mut error, &reply, &reply_layout, router, 1400, MAC_A).unwrap();
        error.truncate(len);
        // build_too_big addresses the original sender (the VIP) from `router`.
        let layout = packet::parse_frame(&error).unwrap();
        assert_eq!(layout.flow.dst_addr, vip);
        packet::rewrite_icmp_error_destination(&mut error, &layout, backend, backend, 8080)
            .unwrap();
        assert_checksums(&error);
        let mapped = packet::parse_frame(&error).unwrap();
        assert_eq!(mapped.flow.dst_addr, backend);
        let IcmpKind::Error {
            inner,
            inner_l3_offset,
            ..
        } = mapped.icmp
        else {
            panic!()
        };
        assert_eq!((inner.src_addr, inner.src_port), (backend, 8080));
        assert_eq!((inner.dst_addr, inner.dst_port), (client, 4000));
        if !v6_frame {
            let at = usize::from(inner_l3_offset);
            assert_eq!(
                reference_sum(&[&error[at..at + 20]]),
                0xffff,
                "quoted header checksum"
            );
        }
        packet::rewrite_icmp_error_source(&mut error, &mapped, vip, vip, 81).unwrap();
        assert_checksums(&error);
    }
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1u16..4095),
    )
        .prop_map(|(v6, tcp, vlan)| Shape { v6, tcp, vlan })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any NAT, FULLNAT or SNAT rewrite leaves every checksum valid and exactly the rewritten fields changed.
    #[test]
    fn rewrites_keep_checksums_valid(
        shape in shape_strategy(),
        addrs in any::<[u128; 4]>(),
        ports in any::<[u16; 4]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let make = |a: u128| if shape.v6 { v6(a) } else { v4(a as u32) };
        let frame = build(shape, make(addrs[0]), make(addrs[1]), ports[0], ports[1], &payload);
        let layout = packet::parse_frame(&frame).unwrap();
        let mut copy = frame.clone();
        packet::rewrite_destination(&mut copy, &layout, &WireAddr::from(make(addrs[2])), ports[2]).unwrap();
        assert_checksums(&copy);
        packet::rewrite_source(&mut copy, &layout, &WireAddr::from(make(addrs[3])), ports[3]).unwrap();
        assert_checksums(&copy);
        packet::set_macs(&mut copy, MAC_B, MAC_A).unwrap();
        let after = packet::parse_frame(&copy).unwrap();
        prop_assert_eq!(after.flow.src_addr, make(addrs[3]));
        prop_assert_eq!(after.flow.dst_addr, make(addrs[2]));
        prop_assert_eq!((after.flow.src_port, after.flow.dst_port), (ports[3], ports[2]));
        prop_assert_eq!(after.ttl, layout.ttl);
        prop_assert_eq!(&copy[0..12], &[MAC_A, MAC_B].concat()[..]);
        // The payload is untouched.
        let start = frame.len() - payload.len();
        prop_assert_eq!(&copy[start..], &frame[start..]);
        // Reverting restores the original bytes, checksums included (up to the two zeros of ones' complement).
        let mut back = copy.clone();
        packet::set_macs(&mut back, MAC_A, MAC_B).unwrap();
        packet::rewrite_destination(&mut back, &after, &WireAddr::from(make(addrs[1])), ports[1]).unwrap();
        packet::rewrite_source(&mut back, &after, &WireAddr::from(make(addrs[0])), ports[0]).unwrap();
        assert_checksums(&back);
        let diff: Vec<_> = back.iter().zip(&frame).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
        prop_assert!(diff.len() <= 2, "reverted frame differs at {:?}", diff);
    }

    /// FULLNAT's single pass writes what its two one-end rewrites write, checksums valid.
    #[test]
    fn both_ends_at_once_equal_one_after_the_other(
        shape in shape_strategy(),
        addrs in any::<[u128; 4]>(),
        ports in any::<[u16; 4]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let make = |a: u128| if shape.v6 { v6(a) } else { v4(a as u32) };
        let frame = build(shape, make(addrs[0]), make(addrs[1]), ports[0], ports[1], &payload);
        let layout = packet::parse_frame(&frame).unwrap();
        let (src, dst) = (WireAddr::from(make(addrs[2])), WireAddr::from(make(addrs[3])));
        let mut stepwise = frame.clone();
        packet::rewrite_source(&mut stepwise, &layout, &src, ports[2]).unwrap();
        packet::rewrite_destination(&mut stepwise, &layout, &dst, ports[3]).unwrap();
        let mut at_once = frame.clone();
        packet::rewrite_source_and_destination(&mut at_once, &layout, &src, ports[2], &dst, ports[3]).unwrap();
        assert_checksums(&at_once);
        let diff: Vec<_> = at_once.iter().zip(&stepwise).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
        // Only a checksum may differ, and only between the two ones'-complement zeros.
        prop_assert!(diff.len() <= 2, "frames differ at {:?}", diff);
        let mismatched_family = if shape.v6 { v4(1) } else { v6(1) };
        prop_assert!(packet::rewrite_source_and_destination(&mut at_once, &layout, &WireAddr::from(mismatched_family), 1, &dst, 2).is_err());
    }

    /// The NAT to an IPv4 backend given as a word writes what the family-generic rewrite writes; an IPv6 packet is
    /// refused, untouched.
    #[test]
    fn the_ipv4_word_rewrite_equals_the_generic_one(
        shape in shape_strategy(),
        addrs in any::<[u128; 3]>(),
        ports in any::<[u16; 3]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let make = |a: u128| if shape.v6 { v6(a) } else { v4(a as u32) };
        let frame = build(shape, make(addrs[0]), make(addrs[1]), ports[0], ports[1], &payload);
        let layout = packet::parse_frame(&frame).unwrap();
        let backend = (addrs[2] as u32).to_be_bytes();
        let mut by_word = frame.clone();
        let result = packet::rewrite_destination_v4(&mut by_word, &layout, u32::from_ne_bytes(backend), ports[2]);
        if shape.v6 {
            prop_assert!(result.is_err());
            prop_assert_eq!(by_word, frame);
        } else {
            prop_assert!(result.is_ok());
            let mut generic = frame.clone();
            packet::rewrite_destination(&mut generic, &layout, &WireAddr::from_v4_octets(backend), ports[2]).unwrap();
            prop_assert_eq!(&by_word, &generic);
            assert_checksums(&by_word);
        }
    }

    #[test]
    fn set_macs_word_writes_what_set_macs_writes(
        frame in proptest::collection::vec(any::<u8>(), 12..80),
        src in any::<[u8; 6]>(),
        dst in any::<[u8; 6]>(),
    ) {
        let (mut by_bytes, mut by_word) = (frame.clone(), frame.clone());
        packet::set_macs(&mut by_bytes, src, dst).unwrap();
        packet::set_macs_word(&mut by_word, src, packet::MacWord::new(dst)).unwrap();
        prop_assert_eq!(by_bytes, by_word);
    }

    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = packet::parse_frame(&data);
        packet::fuzzing::exercise(&data);
    }

    #[test]
    fn encapsulation_round_trips(shape in shape_strategy(), payload in proptest::collection::vec(any::<u8>(), 0..100), outer in any::<[u128; 2]>()) {
        let make = |a: u128| if shape.v6 { v6(a) } else { v4(a as u32) };
        let original = build(shape, make(1), make(2), 3, 4, &payload);
        let layout: FrameLayout = packet::parse_frame(&original).unwrap();
        let room = if shape.v6 { 40 } else { 20 };
        let mut buf = vec![0u8; room];
        buf.extend_from_slice(&original);
        packet::encapsulate(&mut buf, &layout, &WireAddr::from(make(outer[0])), &WireAddr::from(make(outer[1]))).unwrap();
        assert_checksums(&buf);
        let outer_layout = packet::parse_frame(&buf).unwrap();
        let drop = packet::decapsulate(&mut buf, &outer_layout).unwrap();
        prop_assert_eq!(&buf[drop..], &original[..]);
    }
}

proptest! {
    /// RFC 2003 section 3.1: the outer IPv4 header copies the inner TOS and don't-fragment (and sluice its
    /// identification, so that outer fragments of one packet share one); IPv6 copies traffic class and flow label.
    /// The outer checksum covers what was copied.
    #[test]
    fn the_outer_header_carries_what_the_inner_one_gives(
        v6_frame in any::<bool>(),
        first_word in any::<u32>(),
        identification in any::<u16>(),
        dont_fragment in any::<bool>(),
        outer in any::<[u128; 2]>(),
    ) {
        let make = |a: u128| if v6_frame { v6(a) } else { v4(a as u32) };
        let shape = Shape { v6: v6_frame, tcp: true, vlan: None };
        let mut original = build(shape, make(1), make(2), 3, 4, b"payload");
        if v6_frame {
            original[14..18].copy_from_slice(&((6 << 28) | (first_word & 0x0fff_ffff)).to_be_bytes());
        } else {
            original[15] = first_word as u8;
            original[18..20].copy_from_slice(&identification.to_be_bytes());
            original[20] = if dont_fragment { 0x40 } else { 0 };
            original[21] = 0;
            original[24..26].fill(0);
            let check = !(reference_sum(&[&original[14..34]]) as u16);
            original[24..26].copy_from_slice(&check.to_be_bytes());
        }
        let layout = packet::parse_frame(&original).unwrap();
        let room = if v6_frame { 40 } else { 20 };
        let mut buf = vec![0u8; room];
        buf.extend_from_slice(&original);
        packet::encapsulate(&mut buf, &layout, &WireAddr::from(make(outer[0])), &WireAddr::from(make(outer[1]))).unwrap();
        assert_checksums(&buf);
        let sliced = SlicedPacket::from_ethernet(&buf).unwrap();
        match sliced.net.unwrap() {
            NetSlice::Ipv4(ip) => {
                let header = ip.header();
                prop_assert_eq!(header.dcp().value() << 2 | header.ecn().value(), first_word as u8);
                prop_assert_eq!(header.identification(), identification);
                prop_assert_eq!(header.dont_fragment(), dont_fragment);
                prop_assert_eq!(usize::from(header.total_len()), buf.len() - 14);
            }
            NetSlice::Ipv6(ip) => {
                let header = ip.header();
                prop_assert_eq!(header.traffic_class(), (first_word >> 20) as u8);
                prop_assert_eq!(header.flow_label().value(), first_word & 0xf_ffff);
                prop_assert_eq!(usize::from(header.payload_length()), buf.len() - 14 - 40);
            }
            _ => prop_assert!(false, "no IP"),
        }
    }
}

/// A TCP SYN from `src:40000` to `dst:80`, as a client opens a connection.
fn syn(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            eth.ipv4(s.octets(), d.octets(), 61).tcp(40000, 80, 7, 1024)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            eth.ipv6(s.octets(), d.octets(), 61).tcp(40000, 80, 7, 1024)
        }
        _ => unreachable!(),
    }
    .syn()
    .write(&mut out, b"")
    .unwrap();
    out
}

#[test]
fn a_syn_is_answered_with_a_syn_ack_to_its_sender() {
    for (src, dst) in [
        (v4(0xc612_0001), v4(0x0a00_0064)),
        (v6(0x2001_0db8 << 96 | 1), v6(0xfd00 << 112 | 0x100)),
    ] {
        let mut frame = syn(src, dst);
        packet::mirror(&mut frame).unwrap();
        let answer = packet::parse_frame(&frame).unwrap();
        assert_eq!((answer.flow.src_addr, answer.flow.dst_addr), (dst, src));
        assert_eq!((answer.flow.src_port, answer.flow.dst_port), (80, 40000));
        assert_eq!(answer.tcp_flags, 0x12);
        assert_eq!(&frame[..12], &[MAC_A, MAC_B].concat()[..]);
        assert_checksums(&frame);
        let Some(TransportSlice::Tcp(tcp)) = SlicedPacket::from_ethernet(&frame).unwrap().transport
        else {
            panic!("etherparse reads a TCP answer");
        };
        assert!(tcp.syn() && tcp.ack());
    }
}

#[test]
fn what_has_no_answer_is_refused_and_left_as_it_was() {
    let mut fragment = syn(v4(1), v4(2));
    fragment[20] = 0x20; // more fragments
    let mut arp = vec![0xff; 12];
    arp.extend([0x08, 0x06]);
    arp.extend([0; 46]);
    for frame in [fragment, arp] {
        let mut answered = frame.clone();
        assert!(packet::mirror(&mut answered).is_err());
        assert_eq!(answered, frame);
    }
}

proptest! {
    /// An answer reverses the flow (MACs, addresses, ports), keeps the payload, the tags and every checksum, and
    /// mirrored twice a frame is itself again (a SYN-ACK or a UDP datagram keeps its flags).
    #[test]
    fn an_answer_reverses_the_flow_and_keeps_its_checksums(
        shape in shape_strategy(),
        addrs in any::<[u128; 2]>(),
        ports in any::<[u16; 2]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let make = |a: u128| if shape.v6 { v6(a) } else { v4(a as u32) };
        let frame = build(shape, make(addrs[0]), make(addrs[1]), ports[0], ports[1], &payload);
        let mut answer = frame.clone();
        packet::mirror(&mut answer).unwrap();
        assert_checksums(&answer);
        let (request, reply) = (packet::parse_frame(&frame).unwrap(), packet::parse_frame(&answer).unwrap());
        prop_assert_eq!(reply.flow, request.flow.reversed());
        prop_assert_eq!(reply.vlan_id, request.vlan_id);
        prop_assert_eq!((&answer[..6], &answer[6..12]), (&frame[6..12], &frame[..6]));
        prop_assert_eq!(&answer[frame.len() - payload.len()..], &payload[..]);
        packet::mirror(&mut answer).unwrap();
        prop_assert_eq!(answer, frame);
    }
}

/// The fuzz smoke run: a few hundred thousand random and mutated frames through every rewrite.
#[test]
fn fuzz_smoke() {
    let seeds: Vec<Vec<u8>> = [false, true]
        .iter()
        .flat_map(|&v6_frame| {
            [false, true].into_iter().map(move |tcp| {
                let (s, d) = if v6_frame {
                    (v6(1), v6(2))
                } else {
                    (v4(1), v4(2))
                };
                build(
                    Shape {
                        v6: v6_frame,
                        tcp,
                        vlan: Some(5),
                    },
                    s,
                    d,
                    1,
                    2,
                    b"seed",
                )
            })
        })
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut parsed = 0;
    for round in 0..200_000u32 {
        let mut data = seeds[round as usize % seeds.len()].clone();
        for _ in 0..(next() % 4) {
            let at = next() as usize % data.len();
            data[at] = next() as u8;
        }
        if next() % 8 == 0 {
            let len = next() as usize % (data.len() + 1);
            data.truncate(len);
        }
        if packet::fuzzing::exercise(&data) {
            parsed += 1;
        }
    }
    // Most mutations break a checksum; enough must parse for the rewrites to have been exercised.
    assert!(parsed > 10_000, "only {parsed} mutated frames parsed");
}
