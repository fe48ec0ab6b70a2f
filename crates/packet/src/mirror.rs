//! A frame turned, in place, into the answer its destination sends back: the backends' side of replayed traffic
//! (`sluice generate --answers-to`), which the balancer's reply path is measured and trained on. Tested in
//! `tests/wire.rs` on frames etherparse builds, checksums checked by a reference sum.

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
