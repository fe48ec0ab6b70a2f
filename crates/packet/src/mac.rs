//! A MAC address that may be unknown, packed in one word so that copying, testing and writing it into a frame
//! costs a register and a store or two, not six byte moves and an option tag.

/// A MAC address or none: the six bytes in wire order in the low 48 bits (as [`u64::from_le_bytes`] reads them),
/// and bit 48 set when there is one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacWord(u64);

const PRESENT: u64 = 1 << 48;

impl MacWord {
    /// No address.
    pub const NONE: MacWord = MacWord(0);

    #[inline]
    pub const fn new(mac: [u8; 6]) -> MacWord {
        MacWord(
            u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]) | PRESENT,
        )
    }

    #[inline]
    pub const fn from_option(mac: Option<[u8; 6]>) -> MacWord {
        match mac {
            Some(mac) => MacWord::new(mac),
            None => MacWord::NONE,
        }
    }

    #[inline]
    pub const fn is_known(self) -> bool {
        self.0 & PRESENT != 0
    }

    #[inline]
    pub const fn get(self) -> Option<[u8; 6]> {
        if !self.is_known() {
            return None;
        }
        let b = self.0.to_le_bytes();
        Some([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The word with the address in its first six little-endian bytes (what a frame's first eight bytes take).
    #[inline]
    pub(crate) const fn word(self) -> u64 {
        self.0
    }
}

impl From<[u8; 6]> for MacWord {
    fn from(mac: [u8; 6]) -> MacWord {
        MacWord::new(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keeps_every_address(mac in any::<[u8; 6]>()) {
            let word = MacWord::new(mac);
            prop_assert!(word.is_known());
            prop_assert_eq!(word.get(), Some(mac));
            prop_assert_eq!(MacWord::from_option(Some(mac)), word);
        }
    }

    #[test]
    fn none_is_unknown() {
        assert!(!MacWord::NONE.is_known());
        assert_eq!(MacWord::NONE.get(), None);
        assert_eq!(MacWord::from_option(None), MacWord::NONE);
        // The all-zero address is an address, not the absence of one.
        assert_eq!(MacWord::new([0; 6]).get(), Some([0; 6]));
    }
}
