//! One table entry: a single 64-byte cache line holding a key and everything a hit on it needs, so that a lookup
//! costs one bucket line and one entry line.
//!
//! A connection is one *primary* entry (its client key, state, expiry, backend) and, when it needs one, a
//! *secondary* entry linked both ways: the reply key of a NAT or FULLNAT connection (indexed, so replies are found
//! by their own key), or the IPv6 backend endpoint of a DR or TUN connection (not indexed: an IPv4 backend fits
//! inline in the primary, an IPv6 one does not).

use super::key::{ConnKey, TAIL_KEY_BITS};
use super::tcp_state::{self, Direction, TcpState, TrackedPath};
use crate::service::ForwardingMode;

/// No entry: the end of a link or list.
pub(super) const NIL: u32 = u32::MAX;

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    Free = 0,
    /// A connection's primary entry, keyed by its client key; its index is the [`super::ConnId`].
    Original = 1,
    /// The reply key of a NAT or FULLNAT connection; `link` is its primary.
    Reply = 2,
    /// A DR or TUN connection's IPv6 backend endpoint, as the source of an unindexed key; `link` is its primary.
    Spill = 3,
}

const STATE_SHIFT: u32 = 48;
const META_SHIFT: u32 = 56;
const KIND_MASK: u64 = 0b11;
const MODE_SHIFT: u32 = 2;

fn mode_bits(mode: ForwardingMode) -> u64 {
    match mode {
        ForwardingMode::Dr => 0,
        ForwardingMode::Nat => 1,
        ForwardingMode::FullNat => 2,
        ForwardingMode::Tun => 3,
    }
}

const fn mode_of(bits: u64) -> ForwardingMode {
    match bits & 0b11 {
        0 => ForwardingMode::Dr,
        1 => ForwardingMode::Nat,
        2 => ForwardingMode::FullNat,
        _ => ForwardingMode::Tun,
    }
}

/// The states an ACK keeps ([`tcp_state::states_an_ack_keeps`]) by direction and by an entry's mode bits: one
/// load where the path of the mode and direction took a few branches.
const ACK_KEEPS: [[u16; 4]; 2] = {
    let directions = [Direction::Original, Direction::Reply];
    let mut keeps = [[0; 4]; 2];
    let mut direction = 0;
    while direction < 2 {
        let mut bits = 0;
        while bits < 4 {
            let path = TrackedPath::of(mode_of(bits as u64), directions[direction]);
            keeps[direction][bits] = tcp_state::states_an_ack_keeps(path);
            bits += 1;
        }
        direction += 1;
    }
    keeps
};

/// One cache line. Field order keeps the key first so a key compare reads the line's first 40 bytes.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(super) struct Entry {
    /// The key's addresses ([`ConnKey::addrs`]).
    addrs: [u64; 4],
    /// The key's ports, protocol and family in bits 0..48, then the TCP state (48..56) and the kind and mode
    /// (56..64): packing them here leaves room for the rest in one line.
    tail: u64,
    /// When the connection dies, in the caller's milliseconds; primaries only (a reply entry's lookup reads its
    /// primary's, which the reply path reads to forward anyway).
    pub expires_at: u64,
    /// The backend's id ([`crate::service::BackendId`]); primaries only.
    pub backend: u32,
    /// The other entry of the connection, or [`NIL`]. On a free entry: the next free entry.
    pub link: u32,
    /// The backend's port and IPv4 address, inline (`backend_inline`): on a one-entry connection (DR, TUN), and
    /// on a NAT connection to an IPv4 backend, whose client's packets then need not read the reply entry.
    pub backend_port: u16,
    /// Whether `backend_port` and `backend_v4` hold the backend; primaries only.
    pub backend_inline: bool,
    _reserved: u8,
    pub backend_v4: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);
const _: () = assert!(std::mem::align_of::<Entry>() == 64);

impl Entry {
    pub const FREE: Entry = Entry {
        addrs: [0; 4],
        tail: (Kind::Free as u64) << META_SHIFT,
        expires_at: 0,
        backend: 0,
        link: NIL,
        backend_port: 0,
        backend_inline: false,
        _reserved: 0,
        backend_v4: 0,
    };

    /// A free entry, next on its free stack to `next`.
    #[inline]
    pub fn free(next: u32) -> Entry {
        Entry {
            link: next,
            ..Entry::FREE
        }
    }

    /// An entry of `kind` for `key`; the caller fills in the rest.
    #[inline]
    pub fn new(kind: Kind, key: &ConnKey, mode: ForwardingMode, state: TcpState) -> Entry {
        let meta = kind as u64 | mode_bits(mode) << MODE_SHIFT;
        Entry {
            addrs: key.addrs,
            tail: key.tail | u64::from(state as u8) << STATE_SHIFT | meta << META_SHIFT,
            ..Entry::FREE
        }
    }

    /// Whether this entry holds `key` (the caller knows it is indexed, so it is not free).
    #[inline(always)]
    pub fn matches(&self, key: &ConnKey) -> bool {
        self.addrs == key.addrs && self.tail & TAIL_KEY_BITS == key.tail
    }

    #[inline]
    pub fn key(&self) -> ConnKey {
        ConnKey {
            addrs: self.addrs,
            tail: self.tail & TAIL_KEY_BITS,
        }
    }

    #[cfg(test)]
    pub fn kind(&self) -> Kind {
        match (self.tail >> META_SHIFT) & KIND_MASK {
            0 => Kind::Free,
            1 => Kind::Original,
            2 => Kind::Reply,
            _ => Kind::Spill,
        }
    }

    /// Whether the entry is of `kind`: one compare of its bits (matching on [`Entry::kind`] costs a jump table).
    #[inline(always)]
    pub fn is(&self, kind: Kind) -> bool {
        (self.tail >> META_SHIFT) & KIND_MASK == kind as u64
    }

    #[inline]
    pub fn mode(&self) -> ForwardingMode {
        mode_of(self.tail >> (META_SHIFT + MODE_SHIFT))
    }

    #[inline]
    pub fn state(&self) -> TcpState {
        TcpState::from_byte((self.tail >> STATE_SHIFT) as u8)
    }

    /// The TCP state as stored, `state as u8`.
    #[inline(always)]
    pub fn state_byte(&self) -> u8 {
        (self.tail >> STATE_SHIFT) as u8
    }

    /// Whether a segment with TCP `flags` travelling in `direction` certainly leaves the state as it is
    /// ([`TcpState::kept_by`] on the path of the entry's mode), read from the stored bits.
    #[inline(always)]
    pub fn kept_by(&self, direction: Direction, flags: u8) -> bool {
        let mode_bits = (self.tail >> (META_SHIFT + MODE_SHIFT)) as usize & 0b11;
        tcp_state::kept_by_ack(
            self.state_byte(),
            ACK_KEEPS[direction as usize][mode_bits],
            flags,
        )
    }

    #[inline]
    pub fn set_state(&mut self, state: TcpState) {
        self.tail = self.tail & !(0xff << STATE_SHIFT) | u64::from(state as u8) << STATE_SHIFT;
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        (self.tail >> 32) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP client's key.
    fn client_key() -> ConnKey {
        ConnKey::new(
            "10.0.0.1".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            1000,
            80,
            6,
        )
    }

    #[test]
    fn packs_kind_mode_and_state_beside_the_key() {
        let key = client_key();
        for mode in ForwardingMode::ALL {
            let mut entry = Entry::new(Kind::Reply, &key, mode, TcpState::SynRecv);
            assert!(entry.matches(&key));
            assert_eq!(entry.key(), key);
            assert_eq!(entry.kind(), Kind::Reply);
            assert_eq!(entry.mode(), mode);
            assert_eq!(entry.state(), TcpState::SynRecv);
            entry.set_state(TcpState::LastAck);
            assert_eq!(entry.state(), TcpState::LastAck);
            assert_eq!(entry.mode(), mode);
            assert!(entry.matches(&key));
        }
        assert_eq!(Entry::FREE.kind(), Kind::Free);
    }

    #[test]
    fn the_stored_bits_keep_a_state_as_the_state_machine_does() {
        let key = client_key();
        for mode in ForwardingMode::ALL {
            for state in TcpState::ALL {
                let entry = Entry::new(Kind::Original, &key, mode, state);
                for direction in [Direction::Original, Direction::Reply] {
                    let path = TrackedPath::of(mode, direction);
                    for flags in 0..=u8::MAX {
                        assert_eq!(
                            entry.kept_by(direction, flags),
                            state.kept_by(path, flags),
                            "{mode:?} {state:?} {direction:?} flags {flags:#04x}"
                        );
                    }
                }
            }
        }
    }
}
