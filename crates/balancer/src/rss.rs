//! Software RSS: the Toeplitz hash NICs use to spread flows over queues, computed in software.
//!
//! sluice decides which worker owns a flow with the same function a NIC would apply, so that on a device with
//! hardware RSS (programmed with [`SYMMETRIC_KEY`]) requests already arrive on their owner's queue, and on devices
//! without it (virtual devices, some virtio NICs) the receiving worker computes the owner itself and hands the frame
//! over. The symmetric key gives the same hash for both directions of a flow.

use std::net::IpAddr;

/// Length of a Toeplitz key large enough for an IPv6 4-tuple (36 bytes of input + 4).
pub const KEY_LEN: usize = 40;

/// `0x6d5a` repeated: a Toeplitz key whose hash is symmetric in (source, destination).
pub const SYMMETRIC_KEY: [u8; KEY_LEN] = {
    let mut key = [0u8; KEY_LEN];
    let mut i = 0;
    while i < KEY_LEN {
        key[i] = 0x6d;
        key[i + 1] = 0x5a;
        i += 2;
    }
    key
};

/// Entries in the redirection table, as most NICs have (and DPDK's default RETA layout: entry i -> queue i % n).
pub const RETA_SIZE: u32 = 128;

/// The Toeplitz hash of `input` under `key`. Inputs longer than `KEY_LEN - 4` bytes are hashed up to that length.
#[inline]
pub fn toeplitz(key: &[u8; KEY_LEN], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    // A sliding 64-bit window over the key: its top 32 bits are the key bits aligned with the current input bit.
    let mut window = u64::from_be_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ]);
    for (next_key_byte, &byte) in (8..).zip(input.iter().take(KEY_LEN - 4)) {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= (window >> 32) as u32;
            }
            window <<= 1;
        }
        // Refill the low byte that the eight shifts emptied.
        let refill = key.get(next_key_byte).copied().unwrap_or(0);
        window |= u64::from(refill);
    }
    hash
}

/// Input bytes a table covers: an IPv6 4-tuple.
const TABLE_INPUT: usize = KEY_LEN - 4;

/// The Toeplitz hash of one key as table lookups: for every input byte position and byte value, the XOR of the key
/// windows its set bits select. Hashing an IPv4 4-tuple is then twelve loads and XORs instead of 96 shifts and
/// branches; the table is built at compile time for [`SYMMETRIC_KEY`] ([`SYMMETRIC_TABLE`]).
pub struct ToeplitzTable {
    table: [[u32; 256]; TABLE_INPUT],
}

/// The 32 key bits that an input bit at `offset` (counted from the first input byte's top bit) is multiplied with.
const fn key_window(key: &[u8; KEY_LEN], offset: usize) -> u32 {
    let byte = offset / 8;
    let mut window = 0u64;
    let mut i = 0;
    while i < 5 {
        let value = if byte + i < KEY_LEN { key[byte + i] } else { 0 };
        window = (window << 8) | value as u64;
        i += 1;
    }
    // 40 bits loaded; drop the bits before `offset` and keep the next 32.
    ((window << (offset % 8)) >> 8) as u32
}

impl ToeplitzTable {
    /// The table of `key` (a const fn: for a constant key it costs nothing at run time).
    pub const fn new(key: &[u8; KEY_LEN]) -> ToeplitzTable {
        let mut table = [[0u32; 256]; TABLE_INPUT];
        let mut position = 0;
        while position < TABLE_INPUT {
            let mut windows = [0u32; 8];
            let mut bit = 0;
            while bit < 8 {
                windows[bit] = key_window(key, position * 8 + bit);
                bit += 1;
            }
            let mut value = 0;
            while value < 256 {
                let mut hash = 0u32;
                let mut bit = 0;
                while bit < 8 {
                    if value & (0x80 >> bit) != 0 {
                        hash ^= windows[bit];
                    }
                    bit += 1;
                }
                table[position][value] = hash;
                value += 1;
            }
            position += 1;
        }
        ToeplitzTable { table }
    }

    /// The Toeplitz hash of `input` (up to `KEY_LEN - 4` bytes), equal to [`toeplitz`] with the table's key.
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        input
            .iter()
            .zip(self.table.iter())
            .fold(0, |hash, (&byte, row)| hash ^ row[usize::from(byte)])
    }

    /// [`tuple_hash`] through the table.
    #[inline]
    pub fn tuple_hash(
        &self,
        src: IpAddr,
        dst: IpAddr,
        src_port: u16,
        dst_port: u16,
        with_ports: bool,
    ) -> u32 {
        let (input, len) = tuple_input(src, dst, src_port, dst_port, with_ports);
        self.hash(&input[..len])
    }
}

/// The table of [`SYMMETRIC_KEY`].
pub static SYMMETRIC_TABLE: ToeplitzTable = ToeplitzTable::new(&SYMMETRIC_KEY);

/// The input layout NICs hash for TCP/UDP: source address, destination address, source port, destination port.
/// Returns the hash of the 4-tuple (ports included when `with_ports`).
#[inline]
pub fn tuple_hash(
    key: &[u8; KEY_LEN],
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    with_ports: bool,
) -> u32 {
    let (input, len) = tuple_input(src, dst, src_port, dst_port, with_ports);
    toeplitz(key, &input[..len])
}

/// The bytes NICs hash for a 4-tuple, and how many of them count.
#[inline]
fn tuple_input(
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    with_ports: bool,
) -> ([u8; 36], usize) {
    let mut input = [0u8; 36];
    let len = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            input[0..4].copy_from_slice(&s.octets());
            input[4..8].copy_from_slice(&d.octets());
            8
        }
        (s, d) => {
            input[0..16].copy_from_slice(&to_v6_octets(s));
            input[16..32].copy_from_slice(&to_v6_octets(d));
            32
        }
    };
    let len = if with_ports {
        input[len..len + 2].copy_from_slice(&src_port.to_be_bytes());
        input[len + 2..len + 4].copy_from_slice(&dst_port.to_be_bytes());
        len + 4
    } else {
        len
    };
    (input, len)
}

fn to_v6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The queue (worker) a hash selects with DPDK's default redirection table over `queues` queues.
#[inline]
pub fn queue_of(hash: u32, queues: u32) -> u32 {
    if queues <= 1 {
        return 0;
    }
    (hash % RETA_SIZE) % queues
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key of Microsoft's RSS verification suite, whose published vectors pin the algorithm.
    const VERIFICATION_KEY: [u8; KEY_LEN] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_published_ipv4_vectors() {
        let k = &VERIFICATION_KEY;
        // (source, destination, source port, destination port, hash with ports, hash without)
        let vectors = [
            (
                "66.9.149.187",
                "161.142.100.80",
                2794,
                1766,
                0x51cc_c178,
                0x323e_8fc2,
            ),
            (
                "199.92.111.2",
                "65.69.140.83",
                14230,
                4739,
                0xc626_b0ea,
                0xd718_262a,
            ),
            (
                "24.19.198.95",
                "12.22.207.184",
                12898,
                38024,
                0x5c2b_394a,
                0xd2d0_a5de,
            ),
            (
                "38.27.205.30",
                "209.142.163.6",
                48228,
                2217,
                0xafc7_327f,
                0x8298_9176,
            ),
            (
                "153.39.163.191",
                "202.188.127.2",
                44251,
                1303,
                0x10e8_28a2,
                0x5d18_09c5,
            ),
        ];
        for (src, dst, sp, dp, with_ports, without) in vectors {
            assert_eq!(
                tuple_hash(k, ip(src), ip(dst), sp, dp, true),
                with_ports,
                "{src} -> {dst}"
            );
            assert_eq!(
                tuple_hash(k, ip(src), ip(dst), sp, dp, false),
                without,
                "{src} -> {dst}"
            );
        }
    }

    #[test]
    fn matches_published_ipv6_vectors() {
        let k = &VERIFICATION_KEY;
        let vectors = [
            (
                "3ffe:2501:200:1fff::7",
                "3ffe:2501:200:3::1",
                2794,
                1766,
                0x4020_7d3d,
                0x2cc1_8cd5,
            ),
            (
                "3ffe:501:8::260:97ff:fe40:efab",
                "ff02::1",
                14230,
                4739,
                0xdde5_1bbf,
                0x0f0c_461c,
            ),
            (
                "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
                "fe80::200:f8ff:fe21:67cf",
                44251,
                38024,
                0x02d1_feef,
                0x4b61_e985,
            ),
        ];
        for (src, dst, sp, dp, with_ports, without) in vectors {
            assert_eq!(
                tuple_hash(k, ip(src), ip(dst), sp, dp, true),
                with_ports,
                "{src} -> {dst}"
            );
            assert_eq!(
                tuple_hash(k, ip(src), ip(dst), sp, dp, false),
                without,
                "{src} -> {dst}"
            );
        }
    }

    proptest! {
        #[test]
        fn table_equals_the_bitwise_hash(
            key in proptest::array::uniform32(any::<u8>()),
            tail in proptest::array::uniform8(any::<u8>()),
            input in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut full = [0u8; KEY_LEN];
            full[..32].copy_from_slice(&key);
            full[32..].copy_from_slice(&tail);
            let table = Box::new(ToeplitzTable::new(&full));
            prop_assert_eq!(table.hash(&input), toeplitz(&full, &input));
        }

        #[test]
        fn symmetric_table_equals_the_bitwise_tuple_hash(
            src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, v4: bool, ports: bool,
        ) {
            let (src, dst) = if v4 {
                (IpAddr::from([src[0], src[1], src[2], src[3]]), IpAddr::from([dst[0], dst[1], dst[2], dst[3]]))
            } else {
                (IpAddr::from(src), IpAddr::from(dst))
            };
            prop_assert_eq!(
                SYMMETRIC_TABLE.tuple_hash(src, dst, sport, dport, ports),
                tuple_hash(&SYMMETRIC_KEY, src, dst, sport, dport, ports)
            );
        }

        #[test]
        fn symmetric_key_hashes_both_directions_alike(
            a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), pa: u16, pb: u16, v4: bool,
        ) {
            let (x, y) = if v4 {
                (IpAddr::from([a[0], a[1], a[2], a[3]]), IpAddr::from([b[0], b[1], b[2], b[3]]))
            } else {
                (IpAddr::from(a), IpAddr::from(b))
            };
            let k = &SYMMETRIC_KEY;
            prop_assert_eq!(tuple_hash(k, x, y, pa, pb, true), tuple_hash(k, y, x, pb, pa, true));
        }

        #[test]
        fn queue_is_in_range(hash: u32, queues in 1u32..64) {
            prop_assert!(queue_of(hash, queues) < queues);
        }
    }
}
