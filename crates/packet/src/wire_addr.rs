//! An IP address in the form the in-place rewrites take it: sixteen bytes held as four words and a family flag,
//! so that a verdict stores it with whole-word writes and a rewrite reads it back without waiting on byte stores
//! (held as a byte array, the compiler moves an address one byte at a time).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 address (in the first four bytes) or an IPv6 address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, align(4))]
pub struct WireAddr {
    /// The address's bytes in network order, four to a word (in memory order, whatever the machine's).
    words: [u32; 4],
    v6: bool,
}

#[inline(always)]
const fn words_of(octets: [u8; 16]) -> [u32; 4] {
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = octets;
    [
        u32::from_ne_bytes([a, b, c, d]),
        u32::from_ne_bytes([e, f, g, h]),
        u32::from_ne_bytes([i, j, k, l]),
        u32::from_ne_bytes([m, n, o, p]),
    ]
}

impl WireAddr {
    #[inline]
    pub const fn v4(addr: Ipv4Addr) -> WireAddr {
        WireAddr::from_v4_octets(addr.octets())
    }

    #[inline]
    pub const fn v6(addr: Ipv6Addr) -> WireAddr {
        WireAddr::from_v6_octets(addr.octets())
    }

    /// An IPv4 address from its four bytes in network order.
    #[inline]
    pub const fn from_v4_octets(octets: [u8; 4]) -> WireAddr {
        WireAddr {
            words: [u32::from_ne_bytes(octets), 0, 0, 0],
            v6: false,
        }
    }

    /// An IPv4 address from its four bytes in network order, held as one word in memory order
    /// (`u32::from_ne_bytes(octets)`): built from a word, the address is stored as a word, which a rewrite's
    /// four-byte read takes straight from the store.
    #[inline]
    pub const fn from_v4_word(word: u32) -> WireAddr {
        WireAddr {
            words: [word, 0, 0, 0],
            v6: false,
        }
    }

    /// An IPv6 address from its sixteen bytes in network order, held as four words in memory order.
    #[inline]
    pub const fn from_v6_words(words: [u32; 4]) -> WireAddr {
        WireAddr { words, v6: true }
    }

    /// An IPv6 address from its sixteen bytes in network order.
    #[inline]
    pub const fn from_v6_octets(octets: [u8; 16]) -> WireAddr {
        WireAddr {
            words: words_of(octets),
            v6: true,
        }
    }

    #[inline]
    pub const fn is_ipv4(&self) -> bool {
        !self.v6
    }

    #[inline]
    pub fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.v6_octets()))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.v4_octets()))
        }
    }

    /// The address's bytes as four words in memory order (an IPv4 address in the first), as a rewrite sums and
    /// stores them.
    #[inline]
    pub(crate) fn wire_words(&self) -> [u32; 4] {
        self.words
    }

    /// The first four bytes: the address of an IPv4 one.
    #[inline]
    pub(crate) fn v4_octets(&self) -> [u8; 4] {
        self.words[0].to_ne_bytes()
    }

    /// All sixteen bytes: the address of an IPv6 one.
    #[inline]
    pub(crate) fn v6_octets(&self) -> [u8; 16] {
        let [a, b, c, d] = self.words.map(u32::to_ne_bytes);
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }
}

impl From<IpAddr> for WireAddr {
    #[inline]
    fn from(addr: IpAddr) -> WireAddr {
        match addr {
            IpAddr::V4(v4) => WireAddr::v4(v4),
            IpAddr::V6(v6) => WireAddr::v6(v6),
        }
    }
}

impl fmt::Debug for WireAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.ip())
    }
}

impl fmt::Display for WireAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keeps_every_address(v4 in any::<u32>(), v6 in any::<u128>()) {
            let v4 = IpAddr::V4(Ipv4Addr::from(v4));
            let v6 = IpAddr::V6(Ipv6Addr::from(v6));
            prop_assert_eq!(WireAddr::from(v4).ip(), v4);
            prop_assert_eq!(WireAddr::from(v6).ip(), v6);
            prop_assert!(WireAddr::from(v4).is_ipv4());
            prop_assert!(!WireAddr::from(v6).is_ipv4());
            // A v4-mapped IPv6 address stays IPv6.
            let mapped = IpAddr::V6(Ipv4Addr::from(7).to_ipv6_mapped());
            prop_assert_eq!(WireAddr::from(mapped).ip(), mapped);
        }
    }
}
