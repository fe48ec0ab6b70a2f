//! Frame edits shared by the worker test binaries.

/// `frame` (untagged) with 802.1Q tags `vids` inserted after the MACs (the outer one first, as QinQ 0x88a8).
pub fn with_vlan_tags(frame: &[u8], vids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (index, vid) in vids.iter().enumerate() {
        let tpid: u16 = if index + 1 < vids.len() {
            0x88a8
        } else {
            0x8100
        };
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}
