//! Writing the classic pcap format (what net_pcap reads): a 24-byte file header, then a 16-byte header per frame.

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
