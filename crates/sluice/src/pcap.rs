//! The classic pcap format (what net_pcap reads and writes): a 24-byte file header, then a 16-byte header per frame.

use std::io::Write;

pub struct PcapWriter<W: Write> {
    out: W,
    frames: u32,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<PcapWriter<W>> {
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&65535u32.to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?; // Ethernet
        Ok(PcapWriter { out, frames: 0 })
    }

    pub fn write(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let micros = self.frames;
        self.out.write_all(&(micros / 1_000_000).to_le_bytes())?;
        self.out.write_all(&(micros % 1_000_000).to_le_bytes())?;
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(frame)?;
        self.frames += 1;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The frames of a classic pcap file of Ethernet frames, little-endian, with microsecond or nanosecond stamps (what
/// this writer, net_pcap's `tx_pcap` and `dpdk-dumpcap -P` write).
pub fn read_frames(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match word(0) {
        Some(0xa1b2_c3d4 | 0xa1b2_3c4d) => {}
        Some(magic) => {
            return Err(format!(
                "not a little-endian pcap file (magic {magic:#010x})"
            ))
        }
        None => return Err("shorter than a pcap file header".into()),
    }
    match word(20) {
        Some(1) => {}
        Some(link) => return Err(format!("link type {link}, not Ethernet")),
        None => return Err("shorter than a pcap file header".into()),
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let frame = word(at + 8)
            .and_then(|len| bytes.get(at + 16..(at + 16).checked_add(len as usize)?))
            .ok_or_else(|| format!("frame {} is cut off at byte {at}", frames.len() + 1))?;
        frames.push(frame.to_vec());
        at += 16 + frame.len();
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = PcapWriter::new(&mut out).unwrap();
        for frame in frames {
            writer.write(frame).unwrap();
        }
        writer.finish().unwrap();
        out
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let frames: [&[u8]; 3] = [&[1; 60], &[], &[2; 1514]];
        assert_eq!(read_frames(&written(&frames)).unwrap(), frames);
    }

    #[test]
    fn refuses_what_is_not_a_whole_pcap_of_ethernet_frames() {
        let whole = written(&[&[7; 60]]);
        let cut = &whole[..whole.len() - 1];
        assert!(read_frames(cut).unwrap_err().contains("cut off"));
        assert!(read_frames(&whole[..20]).is_err());
        let mut big_endian = whole.clone();
        big_endian[..4].reverse();
        assert!(read_frames(&big_endian)
            .unwrap_err()
            .contains("little-endian"));
        let mut raw_ip = whole;
        raw_ip[20] = 101;
        assert!(read_frames(&raw_ip).unwrap_err().contains("link type"));
    }
}
