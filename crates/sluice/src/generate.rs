//! `sluice generate`: client traffic for a VIP as a pcap file, from the same generator the benchmarks use, or the
//! backends' answers to a capture of what sluice sent them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dataplane::io::memory::MemoryFrame;
use dataplane::io::Frame;
use dataplane::traffic::{FrameTemplate, TrafficSpec};

use crate::pcap::PcapWriter;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Output pcap file.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "10.0.0.100")]
    vip: IpAddr,
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// First client address (of the VIP's family; default 198.18.0.1 or 2001:2::1, from the benchmarking ranges).
    #[arg(long)]
    client: Option<IpAddr>,
    /// Concurrent flows; each flow's first frame is a SYN, the rest ACKs.
    #[arg(long, default_value_t = 100)]
    flows: u32,
    /// Frames in all.
    #[arg(long, default_value_t = 1000)]
    frames: u64,
    /// UDP instead of TCP.
    #[arg(long)]
    udp: bool,
    /// Ethernet frame length without FCS (60 to 1514).
    #[arg(long, default_value_t = 60)]
    frame_len: usize,
    /// Destination MAC (the balancer's port).
    #[arg(long, default_value = "02:00:00:00:00:01")]
    dst_mac: String,
    /// Instead of client traffic, write the answer to every TCP and UDP frame of this capture (a pcap of what
    /// sluice sent to its backends, from a port's `tx_pcap`): addresses and ports swapped, a SYN answered with a
    /// SYN-ACK. Frames without an answer (ARP, ICMP, fragments) are skipped and counted.
    #[arg(long, value_name = "CAPTURE",
          conflicts_with_all = ["vip", "port", "client", "flows", "frames", "udp", "frame_len", "dst_mac"])]
    answers_to: Option<PathBuf>,
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?} is not a MAC address"))?;
    parts
        .try_into()
        .map_err(|_| format!("{text:?} is not a MAC address"))
}

pub fn generate(args: GenerateArgs) -> Result<(), String> {
    if let Some(capture) = &args.answers_to {
        return write_answers(capture, &args.out);
    }
    // The benchmarking ranges (RFC 2544's 198.18.0.0/15, RFC 5180's 2001:2::/48): addresses no balancer port or
    // backend has, so that the flows are never taken for the balancer's own (a martian source).
    let client = args.client.unwrap_or(if args.vip.is_ipv4() {
        "198.18.0.1".parse().expect("literal")
    } else {
        "2001:2::1".parse().expect("literal")
    });
    if client.is_ipv4() != args.vip.is_ipv4() {
        return Err("--client and --vip must be of one address family".into());
    }
    let spec = TrafficSpec {
        client_base: client,
        vip: args.vip,
        vip_port: args.port,
        protocol: if args.udp { 17 } else { 6 },
        flows: args.flows.max(1),
        frame_len: args.frame_len,
        new_connections: false,
        src_mac: [2, 0xc1, 0, 0, 0, 1],
        dst_mac: parse_mac(&args.dst_mac)?,
    };
    let template = FrameTemplate::new(&spec);
    let mut writer = create(&args.out)?;
    let mut frame = MemoryFrame::empty();
    frame.resize(template.len());
    for n in 0..args.frames {
        let flow = (n % u64::from(spec.flows)) as u32;
        let first_of_flow = n < u64::from(spec.flows);
        template.write(frame.data_mut(), client, flow, first_of_flow && !args.udp);
        writer.write(frame.data()).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    println!(
        "{}: {} frames over {} flows to {}:{}",
        args.out.display(),
        args.frames,
        spec.flows,
        args.vip,
        args.port
    );
    Ok(())
}

/// Writes to `out` the answers to the frames of the pcap `capture`.
fn write_answers(capture: &Path, out: &Path) -> Result<(), String> {
    let bytes = std::fs::read(capture).map_err(|e| format!("{}: {e}", capture.display()))?;
    let frames =
        crate::pcap::read_frames(&bytes).map_err(|e| format!("{}: {e}", capture.display()))?;
    let mut writer = create(out)?;
    let mut answered = 0usize;
    for mut frame in frames.iter().cloned() {
        if packet::mirror(&mut frame).is_ok() {
            writer.write(&frame).map_err(|e| e.to_string())?;
            answered += 1;
        }
    }
    writer.finish().map_err(|e| e.to_string())?;
    println!(
        "{}: {answered} answers to the {} frames of {} ({} without an answer skipped)",
        out.display(),
        frames.len(),
        capture.display(),
        frames.len() - answered
    );
    Ok(())
}

fn create(out: &Path) -> Result<PcapWriter<std::io::BufWriter<std::fs::File>>, String> {
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    PcapWriter::new(std::io::BufWriter::new(file)).map_err(|e| format!("{}: {e}", out.display()))
}
