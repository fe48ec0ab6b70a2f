//! Valid frames of the kinds the straight-line paths take, for the tests of those paths.

use crate::checksum;
use crate::flow::ip_protocol;

/// Untagged Ethernet header length.
const L3_OFFSET: usize = 14;
/// Ethernet + IPv4 + TCP, without options.
const PLAIN_HEAD: usize = 54;
/// Ethernet + IPv6 + TCP.
const PLAIN_HEAD_V6: usize = 74;
const L4_OFFSET_V6: usize = 54;

/// A valid plain IPv4 frame of `protocol` with a correct header checksum, padded to `len` bytes.
pub(crate) fn plain_frame(protocol: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; len.max(PLAIN_HEAD)];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (frame.len() - L3_OFFSET) as u16;
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[20] = 0x40;
    frame[22] = 64;
    frame[23] = protocol;
    frame[26..30].copy_from_slice(&[10, 0, 0, 1]);
    frame[30..34].copy_from_slice(&[10, 0, 0, 100]);
    frame[34..38].copy_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
    frame[46] = 0x50;
    frame[47] = 0x10;
    if protocol == ip_protocol::UDP {
        frame[38..40].copy_from_slice(&(total - 20).to_be_bytes());
    }
    let sum = !checksum::fold(checksum::sum(&frame[14..34]));
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// A valid plain IPv6 frame of `protocol`, padded to `len` bytes.
pub(crate) fn plain_frame_v6(protocol: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; len.max(PLAIN_HEAD_V6)];
    frame[12..14].copy_from_slice(&[0x86, 0xdd]);
    let payload = (frame.len() - L4_OFFSET_V6) as u16;
    frame[14] = 0x60;
    frame[18..20].copy_from_slice(&payload.to_be_bytes());
    frame[20] = protocol;
    frame[21] = 64;
    frame[22..24].copy_from_slice(&[0x20, 0x01]);
    frame[37] = 1;
    frame[38..40].copy_from_slice(&[0x20, 0x01]);
    frame[53] = 0x10;
    frame[54..58].copy_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
    frame[66] = 0x50;
    frame[67] = 0x10;
    if protocol == ip_protocol::UDP {
        frame[58..60].copy_from_slice(&payload.to_be_bytes());
    }
    frame
}
