//! The canonical connection key: both address families held as 16-byte addresses, packed into five `u64` words so
//! that comparing two keys is five word compares and hashing them is three folded multiplies.

use std::net::{IpAddr, Ipv4Addr};

use packet::{FlowKey, PlainFrame, WireAddr};

/// Family marker of an IPv4 key (the addresses are held v4-mapped, `::ffff:a.b.c.d`).
const FAMILY_V4: u64 = 4;
/// Family marker of an IPv6 key.
const FAMILY_V6: u64 = 6;

/// Bits of [`ConnKey::tail`] that belong to the key: ports, protocol and family. The entry that stores a key
/// uses the 16 bits above for its own state, so key comparisons mask with this.
pub(super) const TAIL_KEY_BITS: u64 = (1 << 48) - 1;

/// A flow's five-tuple in the table's compact form: 40 bytes, no enum tags, hashed once per packet.
///
/// The family marker keeps an IPv4 flow apart from an IPv6 flow between the v4-mapped addresses of the same
/// hosts, which would otherwise have the same 16-byte addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct ConnKey {
    /// Source then destination address, each as two native-endian words of its 16 bytes.
    pub(super) addrs: [u64; 4],
    /// Source port (bits 0..16), destination port (16..32), protocol (32..40), family (40..48); the rest zero.
    pub(super) tail: u64,
}

fn words(addr: IpAddr) -> [u64; 2] {
    let octets = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let (high, low) = octets.split_at(8);
    [
        u64::from_ne_bytes(high.try_into().expect("8 bytes")),
        u64::from_ne_bytes(low.try_into().expect("8 bytes")),
    ]
}

impl ConnKey {
    /// The key of a packet from `src:src_port` to `dst:dst_port`. Mixed families are held as IPv6 (no such
    /// flow exists on the wire; the table never creates one).
    #[inline]
    pub fn new(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, protocol: u8) -> ConnKey {
        let family = if src.is_ipv4() && dst.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        };
        let [s0, s1] = words(src);
        let [d0, d1] = words(dst);
        ConnKey {
            addrs: [s0, s1, d0, d1],
            tail: u64::from(src_port)
                | u64::from(dst_port) << 16
                | u64::from(protocol) << 32
                | family << 40,
        }
    }

    /// The key of `flow`.
    #[inline]
    pub fn from_flow(flow: &FlowKey) -> ConnKey {
        ConnKey::new(
            flow.src_addr,
            flow.dst_addr,
            flow.src_port,
            flow.dst_port,
            flow.protocol,
        )
    }

    /// The key of a plain frame (see [`packet::parse_plain`]), read from the frame's own bytes, and its hash under
    /// `seed`: the same key as [`ConnKey::from_flow`] of its parsed flow, without building the flow's addresses
    /// first. Each family builds and hashes its key on its own path. `None` when `frame` is not the one `plain`
    /// describes.
    #[inline(always)]
    pub(super) fn of_plain_hashed(
        frame: &[u8],
        plain: &PlainFrame,
        seed: u64,
    ) -> Option<(ConnKey, u32)> {
        if let Some(tuple) = plain.tuple_v4(frame) {
            let key = ConnKey::of_v4_tuple(tuple, plain.protocol);
            Some((key, key.hash_v4_with(seed)))
        } else {
            let key = ConnKey::of_v6_tuple(plain.tuple_v6(frame)?, plain.protocol);
            Some((key, key.hash_v6_with(seed)))
        }
    }

    /// The key of an IPv4 frame's addresses and ports as the wire holds them (see [`PlainFrame::tuple_v4`]).
    #[inline(always)]
    fn of_v4_tuple(tuple: &[u8; 12], protocol: u8) -> ConnKey {
        // v4-mapped: ten zero bytes, two 0xff bytes, the address (the second word's last four bytes).
        let mapped = |at: usize| {
            let address = u64::from(u32::from_ne_bytes([
                tuple[at],
                tuple[at + 1],
                tuple[at + 2],
                tuple[at + 3],
            ]));
            if cfg!(target_endian = "little") {
                address << 32 | 0xffff_0000
            } else {
                0xffff << 32 | address
            }
        };
        let ports = u32::from_be_bytes([tuple[8], tuple[9], tuple[10], tuple[11]]);
        ConnKey {
            addrs: [0, mapped(0), 0, mapped(4)],
            tail: ConnKey::tail_of_wire_ports(ports, protocol, FAMILY_V4),
        }
    }

    /// The key of an IPv6 frame's addresses and ports as the wire holds them (see [`PlainFrame::tuple_v6`]).
    #[inline(always)]
    fn of_v6_tuple(tuple: &[u8; 36], protocol: u8) -> ConnKey {
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&tuple[at..at + 8]);
            u64::from_ne_bytes(bytes)
        };
        let ports = u32::from_be_bytes([tuple[32], tuple[33], tuple[34], tuple[35]]);
        ConnKey {
            addrs: [word(0), word(8), word(16), word(24)],
            tail: ConnKey::tail_of_wire_ports(ports, protocol, FAMILY_V6),
        }
    }

    /// The tail word of a key whose ports are `ports` as the wire holds them (source port in the high half).
    #[inline(always)]
    fn tail_of_wire_ports(ports: u32, protocol: u8, family: u64) -> u64 {
        // Source port in the low half, destination port above it: the wire's order of the two, turned.
        u64::from(ports.rotate_left(16)) | u64::from(protocol) << 32 | family << 40
    }

    /// The flow this key stands for.
    pub fn to_flow(&self) -> FlowKey {
        FlowKey {
            src_addr: self.src_addr(),
            dst_addr: self.dst_addr(),
            src_port: self.src_port(),
            dst_port: self.dst_port(),
            protocol: self.protocol(),
        }
    }

    #[inline]
    pub fn is_ipv4(&self) -> bool {
        (self.tail >> 40) & 0xff == FAMILY_V4
    }

    /// The address held in `words` (see [`ConnKey::wire`]).
    #[inline]
    fn addr(&self, words: [u64; 2]) -> IpAddr {
        self.wire(words).ip()
    }

    /// The address held in `words`, in the form the rewrites take: an IPv4 key's addresses are v4-mapped, so the
    /// IPv4 address is the last four bytes, read straight from the second word.
    #[inline]
    fn wire(&self, words: [u64; 2]) -> WireAddr {
        // Split by shifts, not through bytes: the address is then stored in whole words, which the rewrite reads
        // back as whole words (a word assembled from byte stores cannot be forwarded to the load).
        let halves = |word: u64| {
            let (first, second) = (word as u32, (word >> 32) as u32);
            if cfg!(target_endian = "little") {
                [first, second]
            } else {
                [second, first]
            }
        };
        let [a, b] = halves(words[0]);
        let [c, d] = halves(words[1]);
        if self.is_ipv4() {
            WireAddr::from_v4_word(d)
        } else {
            WireAddr::from_v6_words([a, b, c, d])
        }
    }

    #[inline]
    pub fn src_wire(&self) -> WireAddr {
        self.wire([self.addrs[0], self.addrs[1]])
    }

    #[inline]
    pub fn dst_wire(&self) -> WireAddr {
        self.wire([self.addrs[2], self.addrs[3]])
    }

    #[inline]
    pub fn src_addr(&self) -> IpAddr {
        self.addr([self.addrs[0], self.addrs[1]])
    }

    #[inline]
    pub fn dst_addr(&self) -> IpAddr {
        self.addr([self.addrs[2], self.addrs[3]])
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        self.tail as u16
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        (self.tail >> 16) as u16
    }

    pub fn protocol(&self) -> u8 {
        (self.tail >> 32) as u8
    }

    /// The key's hash under `seed`: 64×64→128-bit multiplies folded to 64 bits (the wyhash/foldhash mixer), then
    /// to 32. A per-table random seed keeps clients from aiming many flows at one bucket.
    #[inline]
    pub(super) fn hash_with(&self, seed: u64) -> u32 {
        if self.is_ipv4() {
            self.hash_v4_with(seed)
        } else {
            self.hash_v6_with(seed)
        }
    }

    /// [`ConnKey::hash_with`] of an IPv4 key: its two addresses fit one word beside the tail word, one multiply.
    #[inline(always)]
    fn hash_v4_with(&self, seed: u64) -> u32 {
        // The mapped words hold each address in one half and the constant mapping bits in the other, in opposite
        // halves once one is turned: their XOR is a one-to-one mix of both addresses.
        let [_, s1, _, d1] = self.addrs;
        let h = fold(
            s1 ^ d1.rotate_left(32) ^ seed ^ P0,
            self.tail ^ seed.rotate_left(32) ^ P1,
        );
        (h ^ (h >> 32)) as u32
    }

    /// [`ConnKey::hash_with`] of an IPv6 key: three multiplies.
    #[inline(always)]
    fn hash_v6_with(&self, seed: u64) -> u32 {
        let [s0, s1, d0, d1] = self.addrs;
        let a = fold(s0 ^ seed ^ P0, s1 ^ P1);
        let b = fold(d0 ^ seed ^ P2, d1 ^ P3);
        let h = fold(a ^ self.tail ^ P4, b ^ seed ^ P1);
        (h ^ (h >> 32)) as u32
    }
}

// The hash's odd constants (wyhash's).
const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
const P3: u64 = 0x5899_65cc_7537_4cc3;
const P4: u64 = 0x1d8e_4e27_c47d_124f;

/// The full 128-bit product of `a` and `b`, its halves xored: every input bit reaches most output bits.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl From<&FlowKey> for ConnKey {
    #[inline]
    fn from(flow: &FlowKey) -> ConnKey {
        ConnKey::from_flow(flow)
    }
}

impl From<FlowKey> for ConnKey {
    #[inline]
    fn from(flow: FlowKey) -> ConnKey {
        ConnKey::from_flow(&flow)
    }
}

/// The IPv4 address `addr` as the `u32` a one-entry connection stores inline, when it is one.
pub(super) fn ipv4_bits(addr: IpAddr) -> Option<u32> {
    match addr {
        IpAddr::V4(v4) => Some(u32::from(v4)),
        IpAddr::V6(_) => None,
    }
}

/// The inline `u32` of a one-entry connection as the IPv4 address it is.
pub(super) fn ipv4_from_bits(bits: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(bits))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    proptest::proptest! {
        /// The rewrite form of a key's addresses is the flow's own addresses, in both families.
        #[test]
        fn wire_addresses_are_the_flow_addresses(v6 in proptest::prelude::any::<bool>(),
                                                 src in proptest::prelude::any::<u128>(),
                                                 dst in proptest::prelude::any::<u128>()) {
            let address = |bits: u128| if v6 {
                IpAddr::V6(Ipv6Addr::from(bits))
            } else {
                IpAddr::V4(Ipv4Addr::from(bits as u32))
            };
            let key = ConnKey::new(address(src), address(dst), 1, 2, 6);
            proptest::prop_assert_eq!(key.src_wire(), WireAddr::from(address(src)));
            proptest::prop_assert_eq!(key.dst_wire(), WireAddr::from(address(dst)));
        }
    }

    #[test]
    fn round_trips_both_families() {
        let flows = [
            FlowKey {
                src_addr: "10.0.0.1".parse().unwrap(),
                dst_addr: "192.0.2.1".parse().unwrap(),
                src_port: 1234,
                dst_port: 80,
                protocol: 6,
            },
            FlowKey {
                src_addr: "2001:db8::1".parse().unwrap(),
                dst_addr: "2001:db8::2".parse().unwrap(),
                src_port: 65535,
                dst_port: 0,
                protocol: 58,
            },
            FlowKey {
                src_addr: "::ffff:10.0.0.1".parse().unwrap(),
                dst_addr: "::ffff:192.0.2.1".parse().unwrap(),
                src_port: 1234,
                dst_port: 80,
                protocol: 6,
            },
        ];
        for flow in flows {
            assert_eq!(ConnKey::from(flow).to_flow(), flow);
        }
        assert_ne!(ConnKey::from(flows[0]), ConnKey::from(flows[2]));
        assert_eq!(ConnKey::from(flows[0]).tail & !TAIL_KEY_BITS, 0);
    }

    proptest::proptest! {
        #[test]
        fn every_flow_round_trips(
            v4 in proptest::prelude::any::<bool>(),
            src in proptest::prelude::any::<u128>(),
            dst in proptest::prelude::any::<u128>(),
            src_port in proptest::prelude::any::<u16>(),
            dst_port in proptest::prelude::any::<u16>(),
            protocol in proptest::prelude::any::<u8>(),
        ) {
            let (src_addr, dst_addr) = if v4 {
                (IpAddr::V4(Ipv4Addr::from(src as u32)), IpAddr::V4(Ipv4Addr::from(dst as u32)))
            } else {
                (IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)))
            };
            let flow = FlowKey { src_addr, dst_addr, src_port, dst_port, protocol };
            proptest::prop_assert_eq!(ConnKey::from_flow(&flow).to_flow(), flow);
        }
    }

    proptest::proptest! {
        /// Each field of a key, in either family, moves its hash, and so does the seed.
        #[test]
        fn hash_depends_on_every_field_and_the_seed(
            v6 in proptest::prelude::any::<bool>(),
            src in proptest::prelude::any::<u128>(),
            dst in proptest::prelude::any::<u128>(),
            ports in proptest::prelude::any::<(u16, u16)>(),
            protocol in proptest::prelude::any::<u8>(),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let address = |bits: u128| if v6 {
                IpAddr::V6(Ipv6Addr::from(bits))
            } else {
                IpAddr::V4(Ipv4Addr::from(bits as u32))
            };
            let key = |src: u128, dst: u128, (src_port, dst_port): (u16, u16), protocol: u8| {
                ConnKey::new(address(src), address(dst), src_port, dst_port, protocol)
            };
            let base = key(src, dst, ports, protocol);
            let variants = [
                key(src ^ 1, dst, ports, protocol),
                key(src ^ 1 << 31, dst, ports, protocol),
                key(src, dst ^ 1, ports, protocol),
                key(src, dst ^ 1 << 31, ports, protocol),
                key(src, dst, (ports.0 ^ 1, ports.1), protocol),
                key(src, dst, (ports.0, ports.1 ^ 0x8000), protocol),
                key(src, dst, ports, protocol ^ 1),
            ];
            for variant in variants {
                proptest::prop_assert_ne!(variant.hash_with(seed), base.hash_with(seed));
            }
            proptest::prop_assert_ne!(base.hash_with(seed), base.hash_with(seed ^ 1));
        }
    }

    /// Keys that differ in counted fields (sequential clients, sequential ports, both: what a flood or a load
    /// generator sends) spread over the index's buckets as random ones would.
    #[test]
    fn sequential_keys_spread_over_the_buckets() {
        type Client = fn(u32) -> IpAddr;
        const KEYS: u32 = 65_536;
        const BUCKETS: u64 = 1024;
        let families: [(IpAddr, Client); 2] = [
            ("192.0.2.1".parse().unwrap(), |n| {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
            }),
            ("2001:db8::1".parse().unwrap(), |n| {
                IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0001_u128 << 80 | u128::from(n)))
            }),
        ];
        for (vip, client) in families {
            let by_client = |n: u32| ConnKey::new(client(n), vip, 40_000, 80, 6);
            let by_port = |n: u32| ConnKey::new(client(7), vip, n as u16, 80, 6);
            // Both at once: 64 clients of 1,024 ports each.
            let by_both = |n: u32| ConnKey::new(client(n >> 10), vip, (n & 1023) as u16, 80, 6);
            for keys in [&by_client as &dyn Fn(u32) -> ConnKey, &by_port, &by_both] {
                let mut buckets = [0u32; BUCKETS as usize];
                for n in 0..KEYS {
                    let hash = keys(n).hash_with(0x5eed);
                    buckets[((u64::from(hash) * BUCKETS) >> 32) as usize] += 1;
                }
                // 64 per bucket on average; a uniform hash's fullest bucket is rarely above 100.
                let fullest = buckets.iter().max().copied().unwrap_or(0);
                assert!(
                    fullest < 128,
                    "{vip}: the fullest bucket holds {fullest} keys"
                );
            }
        }
    }
}
