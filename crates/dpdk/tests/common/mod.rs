//! Helpers shared by the EAL tests: EAL arguments for a hugepage-less run, and a minimal pcap reader and writer
//! (the classic format: a 24-byte file header, then a 16-byte header per frame).

#![allow(dead_code)]

use std::path::Path;

/// EAL arguments for a test process: no hugepages, no PCI, nothing left in /var/run.
pub fn eal_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "-l",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend(0i32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(65535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes()); // Ethernet
    for (i, frame) in frames.iter().enumerate() {
        out.extend((i as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend(frame);
    }
    std::fs::write(path, out).unwrap();
}

pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() >= 24, "pcap file too short");
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "not a little-endian pcap file"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let captured = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        frames.push(data[at..at + captured].to_vec());
        at += captured;
    }
    frames
}

/// Frames of assorted sizes with distinct contents.
pub fn sample_frames(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let len = 60 + (i * 37) % 1400;
            let mut frame: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            frame[12] = 0x08;
            frame[13] = 0x00;
            frame
        })
        .collect()
}
