//! What the binary's tests share: pcap files to feed the ports, the two-port pcap configuration most of them run
//! on, and a free TCP port for listeners. Each test file uses part of it.
#![allow(dead_code)]

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
