//! What the binary's tests share: pcap files to feed the ports and read back what they sent, the two-port pcap
//! configuration most of them run on, a free TCP port for listeners, the free hugepages, and a running sluice to
//! wait on ([`running_sluice::RunningSluice`]). Each test file uses part of it.
#![allow(dead_code)]

pub mod running_sluice;

use std::net::TcpListener;
use std::path::Path;

/// Writes `frames` as a pcap file (microsecond timestamps of zero).
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(65535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for frame in frames {
        out.extend([0u8; 8]);
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend(frame);
    }
    std::fs::write(path, out).unwrap();
}

/// The frames of a classic pcap file (the format net_pcap ports and `dpdk-dumpcap -P` write), after checking its
/// header: magic, Ethernet link type.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() >= 24, "{} is no pcap file", path.display());
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "magic {magic:#x}"
    );
    assert_eq!(
        u32::from_le_bytes(data[20..24].try_into().unwrap()),
        1,
        "link type"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(data[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    frames
}

/// A pcap file without frames: a port that receives nothing.
pub fn write_empty_pcap(path: &Path) {
    write_pcap(path, &[]);
}

/// `[eal]` and two pcap ports, "client" (10.0.0.1/24) and "backend" (10.1.0.1/24), both reading `dir/empty.pcap`
/// and writing `dir/c.pcap` and `dir/b.pcap`.
pub fn two_pcap_ports(dir: &Path) -> String {
    format!(
        r#"[eal]
args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry"]

[[port]]
name = "client"
device = "net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/c.pcap"
addresses = ["10.0.0.1/24"]

[[port]]
name = "backend"
device = "net_pcap1,rx_pcap={d}/empty.pcap,tx_pcap={d}/b.pcap"
addresses = ["10.1.0.1/24"]
"#,
        d = dir.display()
    )
}

/// [`two_pcap_ports`] with a DR service 10.0.0.100:80 whose backends and the sections after it are `rest`.
pub fn dr_service_on_two_pcap_ports(dir: &Path, rest: &str) -> String {
    format!(
        "{}\n[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n{rest}\n",
        two_pcap_ports(dir)
    )
}

/// A TCP port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many hugepages (of the default size) are free now; 0 where the kernel reports none.
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("HugePages_Free:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}
