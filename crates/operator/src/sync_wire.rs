//! The sync protocol's datagrams: encoding, authentication (HMAC-SHA-256 with the shared key over the whole
//! datagram) and the replay guard. Pure: no socket here (`crate::sync` owns it).
//!
//! A datagram (big-endian):
//! ```text
//!  0  magic "SLX1"          4  kind (1 hello, 2 exceptions)     5  reserved (0)
//!  6  boot id (u64: random per start of the sender)            14  sequence (u64, strictly increasing per sender)
//! 22  sent at (u64, Unix ms)                                   30  table digest (u64, the sender's Maglev tables)
//! 38  record count (u16)                                       40  records, 67 bytes each
//!  …  HMAC-SHA-256 of everything before it (32 bytes)
//! record: client address (16, IPv4 mapped) · VIP (16) · client port (2) · VIP port (2) · protocol (1)
//!         · backend address (16) · backend port (2) · table generation (8) · lifetime left in ms (4)
//! ```
//! The sequence starts at the sender's clock in microseconds when it starts, so that a restarted node's messages
//! follow its earlier ones; a receiver accepts each sequence number once (a 64-message window below the highest
//! for reordering) and only messages sent within [`FRESHNESS_MS`] of its own clock, so that a captured message
//! replayed later, or twice, is refused and counted.

use std::net::{IpAddr, Ipv6Addr};

use balancer::exceptions::ConnException;
use hmac::{Hmac, Mac};
use packet::FlowKey;
use sha2::Sha256;

pub const MAGIC: [u8; 4] = *b"SLX1";
pub const HEADER_BYTES: usize = 40;
pub const RECORD_BYTES: usize = 67;
pub const TAG_BYTES: usize = 32;
/// Records per datagram: the largest stays under 1420 bytes, inside a 1500-byte MTU with any IP header.
pub const MAX_RECORDS: usize = 20;
pub const MAX_DATAGRAM: usize = HEADER_BYTES + MAX_RECORDS * RECORD_BYTES + TAG_BYTES;
/// How far a message's send time may be from the receiver's clock.
pub const FRESHNESS_MS: u64 = 30_000;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// "I am here": sent every second; a hello with a boot id not seen before asks for the full set.
    Hello,
    Exceptions,
}

/// A datagram's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub boot: u64,
    pub sequence: u64,
    pub sent_at_ms: u64,
    pub digest: u64,
    pub exceptions: Vec<ConnException>,
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too short or too long, bad magic, kind or count: not one of ours.
    Malformed,
    /// The authentication tag does not match: forged, corrupted or sent with another key.
    BadTag,
    /// Sent too long ago (or in the future), or a sequence number already accepted: a replay.
    Replayed,
}

/// Encodes `message` (at most [`MAX_RECORDS`] exceptions) and signs it with `key`, into `out`.
pub fn encode(message: &Message, key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(match message.kind {
        Kind::Hello => 1,
        Kind::Exceptions => 2,
    });
    out.push(0);
    out.extend_from_slice(&message.boot.to_be_bytes());
    out.extend_from_slice(&message.sequence.to_be_bytes());
    out.extend_from_slice(&message.sent_at_ms.to_be_bytes());
    out.extend_from_slice(&message.digest.to_be_bytes());
    let records = &message.exceptions[..message.exceptions.len().min(MAX_RECORDS)];
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    for exception in records {
        let flow = &exception.flow;
        out.extend_from_slice(&canonical(flow.src_addr));
        out.extend_from_slice(&canonical(flow.dst_addr));
        out.extend_from_slice(&flow.src_port.to_be_bytes());
        out.extend_from_slice(&flow.dst_port.to_be_bytes());
        out.push(flow.protocol);
        out.extend_from_slice(&canonical(exception.backend_addr));
        out.extend_from_slice(&exception.backend_port.to_be_bytes());
        out.extend_from_slice(&exception.generation.to_be_bytes());
        out.extend_from_slice(&exception.lifetime_ms.to_be_bytes());
    }
    let tag = mac(key, out);
    out.extend_from_slice(&tag);
}

/// Checks `datagram`'s tag with `key` and decodes it. Freshness and replay are the [`ReplayGuard`]'s.
pub fn decode(datagram: &[u8], key: &[u8]) -> Result<Message, Refusal> {
    if datagram.len() < HEADER_BYTES + TAG_BYTES || datagram.len() > MAX_DATAGRAM {
        return Err(Refusal::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_BYTES);
    let mut check = HmacSha256::new_from_slice(key).map_err(|_| Refusal::BadTag)?;
    check.update(body);
    // Constant-time comparison: a forger learns nothing from how long a refusal takes.
    check.verify_slice(tag).map_err(|_| Refusal::BadTag)?;
    if body[..4] != MAGIC || body[5] != 0 {
        return Err(Refusal::Malformed);
    }
    let kind = match body[4] {
        1 => Kind::Hello,
        2 => Kind::Exceptions,
        _ => return Err(Refusal::Malformed),
    };
    let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap_or([0; 8]));
    let count = usize::from(u16::from_be_bytes([body[38], body[39]]));
    if count > MAX_RECORDS || body.len() != HEADER_BYTES + count * RECORD_BYTES {
        return Err(Refusal::Malformed);
    }
    let exceptions = body[HEADER_BYTES..]
        .chunks_exact(RECORD_BYTES)
        .map(record)
        .collect::<Option<Vec<_>>>()
        .ok_or(Refusal::Malformed)?;
    Ok(Message {
        kind,
        boot: u64_at(6),
        sequence: u64_at(14),
        sent_at_ms: u64_at(22),
        digest: u64_at(30),
        exceptions,
    })
}

fn record(bytes: &[u8]) -> Option<ConnException> {
    let address = |at: usize| -> Option<IpAddr> {
        let octets: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
        let v6 = Ipv6Addr::from(octets);
        Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
    };
    let u16_at = |at: usize| Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let flow = FlowKey {
        src_addr: address(0)?,
        dst_addr: address(16)?,
        src_port: u16_at(32)?,
        dst_port: u16_at(34)?,
        protocol: *bytes.get(36)?,
    };
    let backend_addr = address(37)?;
    if flow.src_addr.is_ipv4() != flow.dst_addr.is_ipv4()
        || flow.dst_addr.is_ipv4() != backend_addr.is_ipv4()
    {
        return None;
    }
    Some(ConnException {
        flow,
        backend_addr,
        backend_port: u16_at(53)?,
        generation: u64::from_be_bytes(bytes.get(55..63)?.try_into().ok()?),
        lifetime_ms: u32::from_be_bytes(bytes.get(63..67)?.try_into().ok()?),
    })
}

fn canonical(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn mac(key: &[u8], body: &[u8]) -> [u8; TAG_BYTES] {
    // Any key length is valid for HMAC; the configuration holds it to 16..64 bytes.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; TAG_BYTES];
    };
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// One peer's accepted sequence numbers: the highest, and which of the 64 below it were seen.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayGuard {
    highest: u64,
    /// Bit i: sequence `highest - 1 - i` was accepted.
    below: u64,
    started: bool,
}

impl ReplayGuard {
    /// Accepts `message` (already authenticated) once, if it is fresh at `now_ms`.
    pub fn accept(&mut self, message: &Message, now_ms: u64) -> Result<(), Refusal> {
        if message.sent_at_ms.abs_diff(now_ms) > FRESHNESS_MS {
            return Err(Refusal::Replayed);
        }
        let sequence = message.sequence;
        if !self.started || sequence > self.highest {
            let shift = sequence.saturating_sub(self.highest);
            self.below = if !self.started || shift > 64 {
                0
            } else {
                // The old highest becomes bit shift - 1.
                (self.below << (shift - 1) << 1) | (1 << (shift - 1))
            };
            self.highest = sequence;
            self.started = true;
            return Ok(());
        }
        let behind = self.highest - sequence;
        if behind == 0 || behind > 64 {
            return Err(Refusal::Replayed);
        }
        let bit = 1u64 << (behind - 1);
        if self.below & bit != 0 {
            return Err(Refusal::Replayed);
        }
        self.below |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn exception(i: u32) -> ConnException {
        ConnException {
            flow: FlowKey {
                src_addr: IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)),
                dst_addr: IpAddr::V4(Ipv4Addr::new(10, 200, 0, 100)),
                src_port: 40_000 + i as u16,
                dst_port: 80,
                protocol: 6,
            },
            backend_addr: IpAddr::V4(Ipv4Addr::new(10, 88, 0, 11)),
            backend_port: 80,
            generation: 7,
            lifetime_ms: 899_000,
        }
    }

    fn message(sequence: u64, count: u32) -> Message {
        Message {
            kind: if count == 0 {
                Kind::Hello
            } else {
                Kind::Exceptions
            },
            boot: 42,
            sequence,
            sent_at_ms: 1_000_000,
            digest: 0xfeed,
            exceptions: (0..count).map(exception).collect(),
        }
    }

    #[test]
    fn a_message_decodes_to_what_was_encoded() {
        let mut out = Vec::new();
        let sent = message(5, MAX_RECORDS as u32);
        encode(&sent, KEY, &mut out);
        assert_eq!(out.len(), MAX_DATAGRAM);
        assert_eq!(decode(&out, KEY), Ok(sent));
    }

    #[test]
    fn another_key_or_any_changed_byte_is_refused() {
        let mut out = Vec::new();
        encode(&message(5, 3), KEY, &mut out);
        assert_eq!(
            decode(&out, b"another key of sixteen bytes!!!!"),
            Err(Refusal::BadTag)
        );
        for at in 0..out.len() {
            let mut forged = out.clone();
            forged[at] ^= 1;
            assert_eq!(decode(&forged, KEY), Err(Refusal::BadTag), "byte {at}");
        }
        assert_eq!(decode(&out[..out.len() - 1], KEY), Err(Refusal::BadTag));
        assert_eq!(decode(&out[..10], KEY), Err(Refusal::Malformed));
    }

    #[test]
    fn a_replayed_or_stale_message_is_refused() {
        let mut guard = ReplayGuard::default();
        let now = 1_000_000;
        assert_eq!(guard.accept(&message(100, 1), now), Ok(()));
        assert_eq!(guard.accept(&message(100, 1), now), Err(Refusal::Replayed));
        // Reordered within the window: accepted once.
        assert_eq!(guard.accept(&message(102, 1), now), Ok(()));
        assert_eq!(guard.accept(&message(101, 1), now), Ok(()));
        assert_eq!(guard.accept(&message(101, 1), now), Err(Refusal::Replayed));
        assert_eq!(guard.accept(&message(30, 1), now), Err(Refusal::Replayed));
        let mut stale = message(200, 1);
        stale.sent_at_ms = now - FRESHNESS_MS - 1;
        assert_eq!(guard.accept(&stale, now), Err(Refusal::Replayed));
    }

    proptest! {
        /// Every sequence number is accepted at most once, whatever the order they come in.
        #[test]
        fn each_sequence_is_accepted_at_most_once(sequences in proptest::collection::vec(0u64..200, 0..400)) {
            let mut guard = ReplayGuard::default();
            let mut accepted = std::collections::BTreeSet::new();
            for sequence in sequences {
                if guard.accept(&message(sequence, 0), 1_000_000).is_ok() {
                    prop_assert!(accepted.insert(sequence), "{} accepted twice", sequence);
                }
            }
        }

        /// Arbitrary bytes never decode, and never panic.
        #[test]
        fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            prop_assert!(decode(&bytes, KEY).is_err());
        }
    }
}
