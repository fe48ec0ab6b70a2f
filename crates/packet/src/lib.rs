//! Zero-copy classification and in-place rewrites for the frames sluice forwards: Ethernet and VLAN, ARP, IPv4,
//! IPv6, TCP, UDP, ICMP and ICMPv6; RFC 1624 checksum updates; IP-in-IP encapsulation; the answers sluice sends
//! itself. No DPDK dependency, no allocation, no panics on any input.
#![forbid(unsafe_code)]

pub mod answer;
pub mod checksum;
pub mod flow;
pub mod fuzzing;
pub mod headers;
pub mod mac;
pub mod mirror;
pub mod parse;
pub mod rewrite;
pub mod tunnel;
pub mod tunnel_fragment;
pub mod wire_addr;

pub use answer::{
    answer_arp, answer_echo, answer_neighbor_solicitation, build_arp_request,
    build_neighbor_solicitation, build_too_big,
};
pub use flow::{ip_protocol, FlowKey};
pub use headers::IpHeaders;
pub use mac::MacWord;
pub use mirror::mirror;
pub use parse::{
    parse_frame, parse_frame_into, parse_plain, ArpFacts, Fragment, FrameLayout, IcmpKind,
    ParseError, PlainFrame, EMPTY_LAYOUT, L3,
};
pub use rewrite::{
    rewrite_destination, rewrite_destination_v4, rewrite_icmp_error_destination,
    rewrite_icmp_error_source, rewrite_source, rewrite_source_and_destination, set_macs,
    set_macs_word, Translation, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
};
pub use tunnel::{decapsulate, encapsulate, TunnelHeader};
pub use tunnel_fragment::{build_tunnel_fragment, tunnel_fragment_payload};
pub use wire_addr::WireAddr;
