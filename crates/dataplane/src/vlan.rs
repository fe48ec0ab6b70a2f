//! 802.1Q at a port's edge: a port on a VLAN takes only frames tagged with its id and strips the tag as they come
//! in, and tags every frame it sends, so that everything between (parsing, the decision, rewrites, answers, the
//! kernel path) sees untagged frames, as on an untagged port. Ports without a VLAN never come here.

use crate::io::{Burst, Frame};

const TPID: [u8; 2] = [0x81, 0x00];
/// Destination and source MAC: what stays in front of the tag.
const MACS: usize = 12;
const TAG: usize = 4;

/// Keeps the frames of `burst` tagged once with `vlan` (priority bits aside), their tag stripped; the others (no
/// tag, another VLAN, two tags) go to `refused`. Returns how many were refused.
pub fn admit<F: Frame>(burst: &mut Burst<F>, vlan: u16, refused: &mut Burst<F>) -> usize {
    keep_where(burst, refused, |frame| {
        tagged_with(frame.data(), vlan) && strip(frame)
    })
}

/// Keeps the frames of `burst` for which `keep` (which may change them) says yes, in order; the others go to
/// `refused`, freed in bulk whenever it fills. Returns how many were refused.
fn keep_where<F: Frame>(
    burst: &mut Burst<F>,
    refused: &mut Burst<F>,
    mut keep: impl FnMut(&mut F) -> bool,
) -> usize {
    let mut count = 0;
    let frames = std::mem::take(burst);
    for mut frame in frames {
        if keep(&mut frame) {
            burst.push(frame);
        } else {
            count += 1;
            if refused.is_full() {
                F::free_burst(refused);
            }
            refused.push(frame);
        }
    }
    count
}

/// Whether `frame` carries exactly one 802.1Q tag, of `vlan`.
fn tagged_with(frame: &[u8], vlan: u16) -> bool {
    match frame.get(MACS..MACS + TAG + 2) {
        Some([tpid_high, tpid_low, tci_high, tci_low, inner_high, inner_low]) => {
            [*tpid_high, *tpid_low] == TPID
                && u16::from_be_bytes([*tci_high, *tci_low]) & 0x0fff == vlan
                && ![[0x81, 0x00], [0x88, 0xa8]].contains(&[*inner_high, *inner_low])
        }
        _ => false,
    }
}

/// Removes the tag behind the MACs.
fn strip<F: Frame>(frame: &mut F) -> bool {
    let len = frame.data().len();
    frame.data_mut().copy_within(MACS + TAG.., MACS);
    frame.resize(len - TAG)
}

/// Tags every frame of `burst` with `vlan`, in front of the headroom (or, without room there, by moving the frame
/// back); a frame that has room for neither goes to `refused`. Returns how many were refused.
pub fn tag<F: Frame>(burst: &mut Burst<F>, vlan: u16, refused: &mut Burst<F>) -> usize {
    keep_where(burst, refused, |frame| insert_tag(frame, vlan))
}

fn insert_tag<F: Frame>(frame: &mut F, vlan: u16) -> bool {
    if frame.data().len() < MACS {
        return false;
    }
    if frame.prepend(TAG) {
        frame.data_mut().copy_within(TAG..TAG + MACS, 0);
    } else {
        let len = frame.data().len();
        if !frame.resize(len + TAG) {
            return false;
        }
        frame.data_mut().copy_within(MACS..len, MACS + TAG);
    }
    let data = frame.data_mut();
    data[MACS..MACS + 2].copy_from_slice(&TPID);
    data[MACS + 2..MACS + TAG].copy_from_slice(&(vlan & 0x0fff).to_be_bytes());
    true
}

/// Tags the frames the kernel sends out of a port on `vlan` (see [`tag`]); drops those that cannot be.
pub fn tag_or_drop<F: Frame>(burst: &mut Burst<F>, vlan: u16) -> usize {
    let mut refused = Burst::new();
    let count = tag(burst, vlan, &mut refused);
    F::free_burst(&mut refused);
    count
}
