//! Capturing a running sluice with DPDK's own secondary processes: started on hugepages with a file prefix and
//! `--huge-unlink=never`, sluice lets `dpdk-dumpcap` capture what its ports receive and send (written as pcap, read
//! back here with etherparse): the frames a pcap port forwards, and the ARP and ICMP echo a net_tap port exchanges
//! with the kernel of a namespace; `dpdk-proc-info` reads its ports' counters. With the default `--huge-unlink` the
//! log says why they cannot attach. Needs free 2 MiB hugepages and the dpdk tools (scripts/setup.sh); skipped
//! without them. (net_pcap's `infinite_rx`, which keeps frames coming, cannot be opened by a secondary process:
//! that capture is taken on the other port.)

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

mod common;
use common::running_sluice::RunningSluice;
use common::{free_hugepages, read_pcap, write_empty_pcap, write_pcap};

const CLIENT_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 1];
const CLIENT_PORT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const BACKEND_MAC: [u8; 6] = [2, 0xbe, 0, 0, 0, 11];

/// The hugepage files and runtime directory of EAL prefix `prefix`, removed when the test ends however it ends
/// (`--huge-unlink=never` leaves them behind on purpose).
struct EalLeftovers(String);

impl Drop for EalLeftovers {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir("/dev/hugepages") {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_name().to_string_lossy().starts_with(&self.0) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.0));
    }
}

fn tool_missing(name: &str) -> bool {
    Command::new(name)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
}

fn syn(client: Ipv4Addr, port: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, CLIENT_PORT_MAC)
        .ipv4(client.octets(), [10, 0, 0, 100], 64)
        .tcp(port, 80, 1000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(0));
    builder.write(&mut frame, &[]).unwrap();
    frame
}

/// A DR service on two pcap ports; the client port reads `client-in.pcap`, for ever with `replay` (`infinite_rx`:
/// frames flow for as long as a capture takes). `unlink` is the EAL's `--huge-unlink` argument.
fn config(dir: &Path, prefix: &str, unlink: &str, replay: bool) -> String {
    format!(
        r#"[eal]
args = ["-m", "64", "--no-pci", "--no-telemetry", "--file-prefix", "{prefix}", "{unlink}"]

[[port]]
name = "client"
device = "net_pcap0,rx_pcap={d}/client-in.pcap,tx_pcap=/dev/null{replay}"
addresses = ["10.0.0.1/24"]
mac = "02:00:00:00:00:01"

[[port]]
name = "backend"
device = "net_pcap1,rx_pcap={d}/empty.pcap,tx_pcap=/dev/null"
addresses = ["10.1.0.1/24"]
mac = "02:00:00:00:00:02"

[workers]
cores = [0]

[[service]]
vip = "10.0.0.100"
port = 80
mode = "dr"

[[service.backend]]
address = "10.1.0.11"
mac = "02:be:00:00:00:0b"
"#,
        d = dir.display(),
        replay = if replay { ",infinite_rx=1" } else { "" },
    )
}

/// `dpdk-dumpcap` on `device` until it has `count` frames, into `out` as pcap.
fn dumpcap(prefix: &str, device: &str, count: u32, out: &Path) -> String {
    let output = Command::new("timeout")
        .args(["30", "dpdk-dumpcap", &format!("--file-prefix={prefix}")])
        .args([
            "-i",
            device,
            "-p",
            "-P",
            "-q",
            "-c",
            &count.to_string(),
            "-w",
        ])
        .arg(out)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "dpdk-dumpcap: {text}");
    text
}

/// (source IP, destination IP, destination port, destination MAC) of each TCP frame.
fn tcp_frames(frames: &[Vec<u8>]) -> Vec<(Ipv4Addr, Ipv4Addr, u16, [u8; 6])> {
    frames
        .iter()
        .filter_map(|frame| {
            let packet = SlicedPacket::from_ethernet(frame).ok()?;
            let ethernet = match packet.link? {
                etherparse::LinkSlice::Ethernet2(ethernet) => ethernet.destination(),
                _ => return None,
            };
            let Some(NetSlice::Ipv4(ip)) = packet.net else {
                return None;
            };
            let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
                return None;
            };
            Some((
                ip.header().source_addr(),
                ip.header().destination_addr(),
                tcp.destination_port(),
                ethernet,
            ))
        })
        .collect()
}

fn prerequisites_missing() -> bool {
    if free_hugepages() < 128 || tool_missing("dpdk-dumpcap") || tool_missing("dpdk-proc-info") {
        eprintln!("skipped: fewer than 128 free hugepages, or no dpdk-dumpcap / dpdk-proc-info");
        return true;
    }
    false
}

/// Starts sluice on [`config`] with `--huge-unlink=never` and waits until it forwards.
fn start_capturable(dir: &Path, prefix: &str, replay: bool) -> RunningSluice {
    let client = Ipv4Addr::new(198, 51, 100, 7);
    write_pcap(&dir.join("client-in.pcap"), &[syn(client, 40000)]);
    write_empty_pcap(&dir.join("empty.pcap"));
    let path = dir.join("sluice.toml");
    std::fs::write(&path, config(dir, prefix, "--huge-unlink=never", replay)).unwrap();
    let mut sluice = RunningSluice::start(&path);
    let line = sluice.wait_for("secondary processes can attach", Duration::from_secs(30));
    assert!(line.contains(&format!("--file-prefix {prefix}")), "{line}");
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(30));
    sluice
}

#[test]
fn dumpcap_captures_what_a_running_sluice_sends() {
    if prerequisites_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("sluice-capture-{}", std::process::id());
    let _leftovers = EalLeftovers(prefix.clone());
    let _sluice = start_capturable(dir.path(), &prefix, true);
    // What the backend port sends: the replayed SYN, DR-forwarded to the backend's MAC, addresses kept.
    let sent = dir.path().join("sent.pcap");
    dumpcap(&prefix, "net_pcap1", 5, &sent);
    let frames = tcp_frames(&read_pcap(&sent));
    // dumpcap stops at the end of the burst that reaches the count.
    assert!(frames.len() >= 5, "{frames:?}");
    for frame in frames {
        assert_eq!(
            frame,
            (
                Ipv4Addr::new(198, 51, 100, 7),
                Ipv4Addr::new(10, 0, 0, 100),
                80,
                BACKEND_MAC
            )
        );
    }
}

#[test]
fn proc_info_reads_the_port_counters_of_a_running_sluice() {
    if prerequisites_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("sluice-procinfo-{}", std::process::id());
    let _leftovers = EalLeftovers(prefix.clone());
    let _sluice = start_capturable(dir.path(), &prefix, false);
    // One SYN in on the client port, forwarded out of the backend port; the counters live in shared memory.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new("timeout")
            .args([
                "30",
                "dpdk-proc-info",
                "--file-prefix",
                &prefix,
                "--no-pci",
                "--",
                "--stats",
            ])
            .output()
            .unwrap();
        // It exits non-zero here even after printing every counter: the counters are the verdict.
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let counter = |name: &str| -> Vec<u64> {
            text.lines()
                .filter_map(|line| line.trim().strip_prefix(name))
                .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                .collect()
        };
        let (rx, tx) = (counter("RX-packets:"), counter("TX-packets:"));
        if rx == [1, 0] && tx == [0, 1] {
            break;
        }
        assert!(Instant::now() < deadline, "rx {rx:?} tx {tx:?}: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn with_the_default_unlink_the_log_says_why_secondaries_cannot_attach() {
    if free_hugepages() < 128 {
        eprintln!("skipped: fewer than 128 free hugepages");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_pcap(
        &dir.path().join("client-in.pcap"),
        &[syn(Ipv4Addr::new(198, 51, 100, 7), 40000)],
    );
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let prefix = format!("sluice-nocapture-{}", std::process::id());
    let _leftovers = EalLeftovers(prefix.clone());
    let path = dir.path().join("sluice.toml");
    // `--huge-unlink` is what sluice adds when the configuration names none.
    std::fs::write(&path, config(dir.path(), &prefix, "--huge-unlink", false)).unwrap();
    let mut sluice = RunningSluice::start(&path);
    let line = sluice.wait_for("secondary processes", Duration::from_secs(30));
    assert!(
        line.contains("cannot attach: --huge-unlink: the hugepage files are unlinked once mapped"),
        "{line}"
    );
}

/// A network namespace of the test's own, removed (with what runs in it) on drop.
struct Namespace(String);

impl Namespace {
    fn new(name: String) -> Namespace {
        let namespace = Namespace(name);
        namespace.ip(&["netns", "add", &namespace.0]);
        namespace.ip(&["-n", &namespace.0, "link", "set", "lo", "up"]);
        // No IPv6 chatter (router solicitations, MLD) on the tap: the capture holds only what the test sends.
        namespace.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv6.conf.all.disable_ipv6=1",
        ]);
        namespace
    }

    #[track_caller]
    fn ip(&self, args: &[&str]) {
        let output = Command::new("ip").args(args).output().unwrap();
        assert!(
            output.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn dumpcap_captures_what_a_kernel_facing_port_receives_and_sends() {
    if prerequisites_missing() || tool_missing("ip") || tool_missing("ping") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("sluice-tapcapture-{}", std::process::id());
    let _leftovers = EalLeftovers(prefix.clone());
    let namespace = Namespace::new(format!("slc-cap{}", std::process::id()));
    write_empty_pcap(&dir.path().join("empty.pcap"));
    write_empty_pcap(&dir.path().join("client-in.pcap"));
    // The client port is a net_tap whose kernel end (capt0, 10.78.0.2) is in the namespace, as sluice is.
    let text = config(dir.path(), &prefix, "--huge-unlink=never", false)
        .replace(
            &format!(
                "net_pcap0,rx_pcap={}/client-in.pcap,tx_pcap=/dev/null",
                dir.path().display()
            ),
            "net_tap0,iface=capt0",
        )
        .replace("10.0.0.1/24", "10.78.0.1/24")
        .replace("vip = \"10.0.0.100\"", "vip = \"10.78.0.100\"");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &namespace.0,
            env!("CARGO_BIN_EXE_sluice"),
            "run",
            "--config",
        ])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sluice = RunningSluice::adopt(child);
    sluice.wait_for("secondary processes can attach", Duration::from_secs(30));
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(30));
    namespace.ip(&[
        "-n",
        &namespace.0,
        "addr",
        "add",
        "10.78.0.2/24",
        "dev",
        "capt0",
    ]);
    namespace.ip(&["-n", &namespace.0, "link", "set", "capt0", "up"]);

    // dumpcap on the tap port, both directions, while the namespace's kernel pings sluice's address through it.
    let capture = dir.path().join("tap.pcap");
    let mut dumpcap = Command::new("timeout")
        .args(["30", "dpdk-dumpcap", &format!("--file-prefix={prefix}")])
        .args([
            "-i",
            "net_tap0",
            "-p",
            "-P",
            "-c",
            "6",
            "-a",
            "duration:20",
            "-w",
        ])
        .arg(&capture)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its progress line ("Packets captured: 0 1 ...", no newline until it stops) starts once the capture runs.
    let mut started = String::new();
    let mut stderr = dumpcap.stderr.take().unwrap();
    while !started.contains("Packets captured:") {
        let mut chunk = [0u8; 256];
        let read = std::io::Read::read(&mut stderr, &mut chunk).unwrap();
        if read == 0 {
            panic!("dpdk-dumpcap stopped before capturing: {started}");
        }
        started.push_str(&String::from_utf8_lossy(&chunk[..read]));
    }
    let ping = namespace.exec(&["ping", "-c", "2", "-W", "2", "10.78.0.1"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(dumpcap.wait().unwrap().success(), "{started}");

    let frames = read_pcap(&capture);
    let arp = |operation: u16, sender: [u8; 4], target: [u8; 4]| {
        frames.iter().any(|frame| {
            frame.len() >= 42
                && frame[12..14] == [0x08, 0x06]
                && frame[20..22] == operation.to_be_bytes()
                && frame[28..32] == sender
                && frame[38..42] == target
        })
    };
    let (kernel, port) = ([10, 78, 0, 2], [10, 78, 0, 1]);
    assert!(arp(1, kernel, port), "no ARP request received: {frames:?}");
    assert!(arp(2, port, kernel), "no ARP reply sent: {frames:?}");
    let echoes: Vec<(Ipv4Addr, Ipv4Addr, u8)> = frames
        .iter()
        .filter_map(|frame| {
            let packet = SlicedPacket::from_ethernet(frame).ok()?;
            let Some(NetSlice::Ipv4(ip)) = packet.net else {
                return None;
            };
            let Some(TransportSlice::Icmpv4(icmp)) = packet.transport else {
                return None;
            };
            Some((
                ip.header().source_addr(),
                ip.header().destination_addr(),
                icmp.type_u8(),
            ))
        })
        .collect();
    let (kernel, port) = (Ipv4Addr::from(kernel), Ipv4Addr::from(port));
    assert_eq!(
        echoes,
        [
            (kernel, port, 8),
            (port, kernel, 0),
            (kernel, port, 8),
            (port, kernel, 0)
        ],
        "the echo requests received and the replies sent"
    );
}
