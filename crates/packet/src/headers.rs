//! Where an IP packet's headers sit in its frame: the few facts the in-place rewrites and the tunnel read, given
//! by the full [`FrameLayout`] and by the established path's small [`PlainFrame`](crate::parse::PlainFrame) alike.

use crate::parse::{Fragment, FrameLayout, L3};

/// The offsets and facts an in-place rewrite of an IP packet needs.
pub trait IpHeaders {
    /// Ethernet header and VLAN tags.
    fn l2_len(&self) -> u16;
    fn l3(&self) -> L3;
    fn l3_offset(&self) -> u16;
    /// Transport header (after IPv4 options and IPv6 extension headers).
    fn l4_offset(&self) -> u16;
    /// IP total length (IPv4) or 40 + payload length (IPv6).
    fn l3_len(&self) -> u16;
    /// Transport protocol (the final next header for IPv6).
    fn protocol(&self) -> u8;
    /// A fragment after the first: no transport header to rewrite.
    fn later_fragment(&self) -> bool;
}

impl IpHeaders for FrameLayout {
    #[inline(always)]
    fn l2_len(&self) -> u16 {
        self.l2_len
    }
    #[inline(always)]
    fn l3(&self) -> L3 {
        self.l3
    }
    #[inline(always)]
    fn l3_offset(&self) -> u16 {
        self.l3_offset
    }
    #[inline(always)]
    fn l4_offset(&self) -> u16 {
        self.l4_offset
    }
    #[inline(always)]
    fn l3_len(&self) -> u16 {
        self.l3_len
    }
    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
    #[inline(always)]
    fn later_fragment(&self) -> bool {
        matches!(self.fragment, Fragment::Later { .. })
    }
}

/// Kept with the trait so that both implementations are read side by side.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_plain;

    #[test]
    fn a_plain_frame_places_its_headers_where_its_layout_does() {
        let mut frame = vec![0u8; 60];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&46u16.to_be_bytes());
        frame[22] = 64;
        frame[23] = 6;
        frame[46] = 0x50;
        let sum = !crate::checksum::fold(crate::checksum::sum(&frame[14..34]));
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        let plain = parse_plain(&frame, false).expect("a plain frame");
        let layout = plain.layout(&frame);
        assert_eq!(plain.l2_len(), layout.l2_len());
        assert_eq!(plain.l3(), layout.l3());
        assert_eq!(plain.l3_offset(), layout.l3_offset());
        assert_eq!(plain.l4_offset(), layout.l4_offset());
        assert_eq!(plain.l3_len(), layout.l3_len());
        assert_eq!(plain.protocol(), layout.protocol());
        assert!(!plain.later_fragment() && !layout.later_fragment());
    }
}
