//! sluice end to end through real DPDK: frames built by an independent library (etherparse) go in through a
//! net_pcap port, the real binary runs with a real configuration, and the frames that come out of the other
//! port's pcap are checked by etherparse: exactly the fields each mode rewrites, valid checksums, TTL and payload
//! intact, one backend per flow, spread by weight, malformed frames counted and not forwarded, ARP and ICMP echo
//! answered, NAT replies mapped back.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// The seed sluice draws FULLNAT local ports from in the replay whose replies are written before it runs.
const LOCAL_PORT_SEED: u64 = 11;
const CLIENT_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 1];
const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
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

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(data[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    frames
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

struct Addresses {
    vip: IpAddr,
    client_net: IpAddr,
    backends: [IpAddr; 3],
    local: IpAddr,
    tunnel: IpAddr,
}

fn addresses(v6: bool) -> Addresses {
    if v6 {
        Addresses {
            vip: ip("fd00::100"),
            client_net: ip("2001:db8::"),
            backends: [ip("fd01::b"), ip("fd01::c"), ip("fd01::d")],
            local: ip("fd01::5"),
            tunnel: ip("fd01::1"),
        }
    } else {
        Addresses {
            vip: ip("10.0.0.100"),
            client_net: ip("198.51.100.0"),
            backends: [ip("10.1.0.11"), ip("10.1.0.12"), ip("10.1.0.13")],
            local: ip("10.1.0.5"),
            tunnel: ip("10.1.0.1"),
        }
    }
}

fn client_addr(a: &Addresses, i: u32) -> IpAddr {
    match a.client_net {
        IpAddr::V4(net) => IpAddr::V4((u32::from(net) + 1 + i % 200).into()),
        IpAddr::V6(net) => IpAddr::V6((u128::from(net) + 1 + u128::from(i % 200)).into()),
    }
}

fn backend_mac(index: usize) -> [u8; 6] {
    [2, 0xbe, 0, 0, 0, 11 + index as u8]
}

fn config(dir: &Path, mode: &str, v6: bool) -> String {
    let a = addresses(v6);
    let backend_port = if mode == "nat" || mode == "fullnat" {
        8080
    } else {
        80
    };
    let backends: String = a
        .backends
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let mac = backend_mac(i);
            format!(
                "[[service.backend]]\naddress = \"{addr}\"\nport = {backend_port}\nweight = {}\nmac = \"{}\"\n\n",
                if i == 2 { 2 } else { 1 },
                mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
            )
        })
        .collect();
    format!(
        r#"
[eal]
args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry"]

[[port]]
name = "client"
device = "net_pcap0,rx_pcap={dir}/client-in.pcap,tx_pcap={dir}/client-out.pcap"
addresses = ["10.0.0.1/24", "fd00::1/64"]

[[port]]
name = "backend"
device = "net_pcap1,rx_pcap={dir}/backend-in.pcap,tx_pcap={dir}/backend-out.pcap"
addresses = ["10.1.0.1/24", "fd01::1/64"]

[workers]
cores = [0]

[network]
gateways = [
    {{ port = "client", address = "10.0.0.254", mac = "02:00:00:00:00:fe" }},
    {{ port = "client", address = "fd00::fe", mac = "02:00:00:00:00:fe" }},
]
tunnel_source_v4 = "10.1.0.1"
tunnel_source_v6 = "fd01::1"
local_addresses = ["10.1.0.5", "fd01::5"]

[[service]]
vip = "{vip}"
port = 80
protocol = "tcp"
mode = "{mode}"

{backends}"#,
        dir = dir.display(),
        vip = a.vip,
    )
}

fn tcp(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    flags: &str,
    payload: &[u8],
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    macro_rules! with_flags {
        ($b:expr) => {{
            let b = $b.tcp(sport, dport, 1000, 64000);
            match flags {
                "syn" => b.syn().write(&mut out, payload),
                "synack" => b.syn().ack(1).write(&mut out, payload),
                _ => b.ack(1).write(&mut out, payload),
            }
            .unwrap()
        }};
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => with_flags!(eth.ipv4(s.octets(), d.octets(), 57)),
        (IpAddr::V6(s), IpAddr::V6(d)) => with_flags!(eth.ipv6(s.octets(), d.octets(), 57)),
        _ => unreachable!(),
    }
    out
}

struct Run {
    stdout: String,
    client_out: Vec<Vec<u8>>,
    backend_out: Vec<Vec<u8>>,
}

fn run(dir: &Path, config_text: &str, client_in: &[Vec<u8>], backend_in: &[Vec<u8>]) -> Run {
    write_pcap(&dir.join("client-in.pcap"), client_in);
    write_pcap(&dir.join("backend-in.pcap"), backend_in);
    let config_path = dir.join("sluice.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config_path)
        .args(["--idle-exit-ms", "400"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "sluice failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("mempool: 0 buffers in use"), "{stdout}");
    Run {
        stdout,
        client_out: read_pcap(&dir.join("client-out.pcap")),
        backend_out: read_pcap(&dir.join("backend-out.pcap")),
    }
}

/// What etherparse reads of a TCP frame, looking inside one level of IP-in-IP; checks every checksum.
#[derive(Debug)]
struct Seen {
    outer: Option<(IpAddr, IpAddr, u8)>,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    ttl: u8,
    payload: Vec<u8>,
}

fn seen(frame: &[u8]) -> Seen {
    let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse reads the frame");
    let (src, dst, ttl, protocol) = match sliced.net.as_ref().expect("IP") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            let header = h.to_header();
            assert_eq!(
                header.calc_header_checksum(),
                header.header_checksum,
                "IPv4 header checksum"
            );
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.ttl(),
                h.protocol().0,
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.hop_limit(),
                h.next_header().0,
            )
        }
        _ => panic!("not IP"),
    };
    if protocol == 4 || protocol == 41 {
        let outer_len = if protocol == 4 { 20 } else { 40 };
        let mut inner = frame[..14].to_vec();
        inner.extend_from_slice(&frame[14 + outer_len..]);
        let mut inside = seen(&inner);
        inside.outer = Some((src, dst, ttl));
        return inside;
    }
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    let valid = match sliced.net.as_ref().unwrap() {
        NetSlice::Ipv4(v4) => tcp
            .calc_checksum_ipv4(v4.header().source(), v4.header().destination())
            .unwrap(),
        NetSlice::Ipv6(v6) => tcp
            .calc_checksum_ipv6(v6.header().source(), v6.header().destination())
            .unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(valid, tcp.checksum(), "TCP checksum");
    Seen {
        outer: None,
        src,
        dst,
        sport: tcp.source_port(),
        dport: tcp.destination_port(),
        ttl,
        payload: tcp.payload().to_vec(),
    }
}

fn drops(stdout: &str, reason: &str) -> u64 {
    stdout
        .split_whitespace()
        .filter_map(|word| word.strip_prefix(&format!("{reason}=")))
        .filter_map(|count| count.parse::<u64>().ok())
        .sum()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn every_mode_in_both_families() {
    const FLOWS: u32 = 300;
    const PER_FLOW: u32 = 3;
    for mode in ["dr", "nat", "fullnat", "tun"] {
        for v6 in [false, true] {
            let dir = tempdir();
            let a = addresses(v6);
            let mut frames = Vec::new();
            for round in 0..PER_FLOW {
                for flow in 0..FLOWS {
                    let payload = format!("flow {flow} packet {round}").into_bytes();
                    let flags = if round == 0 { "syn" } else { "ack" };
                    frames.push(tcp(
                        client_addr(&a, flow),
                        10_000 + flow as u16,
                        a.vip,
                        80,
                        flags,
                        &payload,
                        (GATEWAY_MAC, [0; 6]),
                    ));
                }
            }
            // Malformed: a broken IPv4 header checksum, a truncated frame, garbage behind an IPv4 ethertype.
            let mut broken = tcp(
                ip("198.51.100.9"),
                1,
                ip("10.0.0.100"),
                80,
                "syn",
                b"x",
                (GATEWAY_MAC, [0; 6]),
            );
            broken[24] ^= 0x55;
            frames.push(broken);
            frames.push(frames[0][..20].to_vec());
            let mut garbage = vec![0xff; 40];
            garbage[12..14].copy_from_slice(&[0x08, 0x00]);
            frames.push(garbage);
            let result = run(dir.path(), &config(dir.path(), mode, v6), &frames, &[]);
            let label = format!("{mode} v6={v6}");
            assert_eq!(
                result.backend_out.len(),
                (FLOWS * PER_FLOW) as usize,
                "{label}: {}",
                result.stdout
            );
            assert_eq!(
                drops(&result.stdout, "malformed"),
                3,
                "{label}: {}",
                result.stdout
            );
            let mut backend_of_flow: HashMap<u16, HashSet<usize>> = HashMap::new();
            for frame in &result.backend_out {
                let s = seen(frame);
                let backend = backend_mac_index(&frame[0..6]);
                assert_eq!(s.ttl, 57, "{label}: TTL intact");
                let flow = s.sport.wrapping_sub(10_000);
                if mode != "fullnat" {
                    assert_eq!(
                        s.src,
                        client_addr(&a, u32::from(flow)),
                        "{label}: client address kept"
                    );
                }
                assert!(
                    String::from_utf8(s.payload.clone())
                        .unwrap()
                        .starts_with("flow "),
                    "{label}: payload intact"
                );
                match mode {
                    "dr" => {
                        assert_eq!((s.dst, s.dport), (a.vip, 80));
                        assert!(s.outer.is_none());
                    }
                    "tun" => {
                        assert_eq!((s.dst, s.dport), (a.vip, 80));
                        let (outer_src, outer_dst, _) = s.outer.expect("encapsulated");
                        assert_eq!(outer_src, a.tunnel);
                        assert_eq!(outer_dst, a.backends[backend]);
                    }
                    "nat" => assert_eq!((s.dst, s.dport), (a.backends[backend], 8080)),
                    "fullnat" => {
                        assert_eq!(
                            (s.src, s.dst, s.dport),
                            (a.local, a.backends[backend], 8080)
                        );
                    }
                    _ => unreachable!(),
                }
                let key = if mode == "fullnat" {
                    let text = String::from_utf8(s.payload).unwrap();
                    text.split_whitespace()
                        .nth(1)
                        .unwrap()
                        .parse::<u16>()
                        .unwrap()
                } else {
                    flow
                };
                backend_of_flow.entry(key).or_default().insert(backend);
            }
            assert_eq!(backend_of_flow.len(), FLOWS as usize);
            assert!(
                backend_of_flow.values().all(|b| b.len() == 1),
                "{label}: a flow changed backend"
            );
            let mut per_backend = [0usize; 3];
            for backends in backend_of_flow.values() {
                per_backend[*backends.iter().next().unwrap()] += 1;
            }
            // Weights 1:1:2 -> 25% 25% 50% of the flows, within sampling noise.
            assert!(
                (45..=110).contains(&per_backend[0]),
                "{label}: {per_backend:?}"
            );
            assert!(
                (45..=110).contains(&per_backend[1]),
                "{label}: {per_backend:?}"
            );
            assert!(
                (110..=190).contains(&per_backend[2]),
                "{label}: {per_backend:?}"
            );
            assert!(result.client_out.is_empty());
            // The ipvsadm-style summary counts the service's connections and packets.
            let service_line = result
                .stdout
                .lines()
                .find(|line| line.starts_with("TCP  "))
                .unwrap_or_else(|| panic!("{label}: no service line in {}", result.stdout));
            let columns: Vec<&str> = service_line.split_whitespace().collect();
            assert_eq!(
                columns[2..4],
                [FLOWS.to_string(), (FLOWS * PER_FLOW).to_string()],
                "{label}: {service_line}"
            );
        }
    }
}

fn backend_mac_index(mac: &[u8]) -> usize {
    (0..3)
        .find(|&i| backend_mac(i) == mac)
        .unwrap_or_else(|| panic!("unknown destination MAC {mac:02x?}"))
}

#[test]
fn nat_replies_are_mapped_back_to_the_vip() {
    let dir = tempdir();
    let a = addresses(false);
    // Requests and replies in matching order: each poll takes a burst of requests, then the burst of replies.
    // The reply's backend is not known in advance, so every backend answers each flow: only the one that holds
    // the flow is mapped back, the others are counted as no_connection.
    let flows = 20u32;
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    for flow in 0..flows {
        let client = client_addr(&a, flow);
        requests.push(tcp(
            client,
            20_000 + flow as u16,
            a.vip,
            80,
            "syn",
            b"",
            (GATEWAY_MAC, [0; 6]),
        ));
        for (i, backend) in a.backends.iter().enumerate() {
            replies.push(tcp(
                *backend,
                8080,
                client,
                20_000 + flow as u16,
                "synack",
                b"hello",
                (backend_mac(i), [0; 6]),
            ));
        }
    }
    // One request per reply slot keeps requests ahead of their replies burst by burst.
    let mut padded_requests = Vec::new();
    for request in requests {
        padded_requests.push(request.clone());
        padded_requests.push(request.clone());
        padded_requests.push(request);
    }
    let result = run(
        dir.path(),
        &config(dir.path(), "nat", false),
        &padded_requests,
        &replies,
    );
    assert_eq!(result.client_out.len(), flows as usize, "{}", result.stdout);
    for frame in &result.client_out {
        let s = seen(frame);
        assert_eq!((s.src, s.sport), (a.vip, 80));
        assert_eq!(s.dst, client_addr(&a, u32::from(s.dport - 20_000)));
        assert_eq!(s.payload, b"hello");
        assert_eq!(&frame[0..6], &GATEWAY_MAC, "clients are beyond the gateway");
    }
    assert_eq!(
        drops(&result.stdout, "no_connection"),
        u64::from(flows) * 2,
        "{}",
        result.stdout
    );
}

#[test]
fn arp_and_echo_are_answered() {
    let dir = tempdir();
    let mut frames = Vec::new();
    let mut arp = vec![0u8; 60];
    let len = packet::build_arp_request(
        &mut arp,
        CLIENT_MAC,
        [10, 0, 0, 7].into(),
        [10, 0, 0, 100].into(),
        None,
    )
    .unwrap();
    arp.truncate(len);
    frames.push(arp);
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0; 6])
        .ipv4([10, 0, 0, 7], [10, 0, 0, 100], 64)
        .icmpv4_echo_request(99, 1)
        .write(&mut echo, b"are you there")
        .unwrap();
    frames.push(echo);
    let result = run(dir.path(), &config(dir.path(), "dr", false), &frames, &[]);
    assert_eq!(result.client_out.len(), 2, "{}", result.stdout);
    let arp_reply = etherparse::ArpPacketSlice::from_slice(&result.client_out[0][14..]).unwrap();
    assert_eq!(arp_reply.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(arp_reply.sender_protocol_addr(), &[10, 0, 0, 100]);
    assert_eq!(arp_reply.target_hw_addr(), &CLIENT_MAC);
    let echo_reply = SlicedPacket::from_ethernet(&result.client_out[1]).unwrap();
    match echo_reply.transport {
        Some(TransportSlice::Icmpv4(icmp)) => {
            assert_eq!(icmp.type_u8(), 0);
            assert_eq!(icmp.payload(), b"are you there");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(&result.client_out[1][0..6], &CLIENT_MAC);
}

#[test]
fn the_pipe_copies_a_pcap_frame_for_frame() {
    let dir = tempdir();
    let frames: Vec<Vec<u8>> = (0..700)
        .map(|i| {
            let src: IpAddr = IpAddr::V4((0xc633_6400u32 + i).into());
            tcp(
                src,
                i as u16,
                ip("10.0.0.100"),
                80,
                "ack",
                &vec![i as u8; (i as usize * 13) % 1400],
                (CLIENT_MAC, [0; 6]),
            )
        })
        .collect();
    write_pcap(&dir.path().join("client-in.pcap"), &frames);
    write_pcap(&dir.path().join("backend-in.pcap"), &[]);
    let text = config(dir.path(), "dr", false);
    let head = text.split("[[service]]").next().unwrap();
    let pipe = format!("{head}\n[pipe]\nfrom = \"client\"\nto = \"backend\"\n");
    let result = run(dir.path(), &pipe, &frames, &[]);
    assert_eq!(result.backend_out, frames, "{}", result.stdout);
}

#[test]
fn a_broken_configuration_is_refused_with_its_line() {
    let dir = tempdir();
    let path: PathBuf = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[port]]\nname = \"a\"\ndevice = \"net_null0\"\n\n[pipe]\nfrom = \"a\"\nto = \"b\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:") && stderr.contains("no [[port]] named \"b\""),
        "{stderr}"
    );
}

/// Two workers on two-queue devices without RSS: every request arrives on queue 0, the worker there hands the
/// flows it does not own to the other worker over the lock-free ring, and both transmit.
#[test]
fn two_workers_share_flows_by_software_rss() {
    let dir = tempdir();
    let a = addresses(false);
    let frames: Vec<Vec<u8>> = (0..400u32)
        .map(|flow| {
            tcp(
                client_addr(&a, flow),
                30_000 + flow as u16,
                a.vip,
                80,
                "syn",
                b"",
                (GATEWAY_MAC, [0; 6]),
            )
        })
        .collect();
    write_pcap(&dir.path().join("client-q0.pcap"), &frames);
    write_pcap(&dir.path().join("empty.pcap"), &[]);
    let d = dir.path().display();
    let text = config(dir.path(), "fullnat", false)
        .replace(
            &format!("net_pcap0,rx_pcap={d}/client-in.pcap,tx_pcap={d}/client-out.pcap"),
            &format!("net_pcap0,rx_pcap={d}/client-q0.pcap,rx_pcap={d}/empty.pcap,tx_pcap={d}/c0.pcap,tx_pcap={d}/c1.pcap"),
        )
        .replace(
            &format!("net_pcap1,rx_pcap={d}/backend-in.pcap,tx_pcap={d}/backend-out.pcap"),
            &format!("net_pcap1,rx_pcap={d}/empty.pcap,rx_pcap={d}/empty.pcap,tx_pcap={d}/b0.pcap,tx_pcap={d}/b1.pcap"),
        )
        .replace("cores = [0]", "cores = [0, 1]");
    let config_path = dir.path().join("two.toml");
    std::fs::write(&config_path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config_path)
        .args(["--idle-exit-ms", "400"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_0 = read_pcap(&dir.path().join("b0.pcap"));
    let from_1 = read_pcap(&dir.path().join("b1.pcap"));
    assert_eq!(from_0.len() + from_1.len(), frames.len(), "{stdout}");
    assert!(
        from_0.len() > 100 && from_1.len() > 100,
        "flows split {} / {}",
        from_0.len(),
        from_1.len()
    );
    // Each worker allocated FULLNAT local ports from its own share: replies will be steered back to it.
    for (worker, out) in [(0u16, &from_0), (1, &from_1)] {
        for frame in out.iter() {
            assert_eq!(
                seen(frame).sport % 2,
                worker,
                "local port of worker {worker}"
            );
        }
    }
    assert!(
        stdout.contains(&format!("handed_off {}", from_1.len())),
        "{stdout}"
    );
    assert!(stdout.contains("mempool: 0 buffers in use"));
}

/// Two workers, FULLNAT: every request and every backend reply arrives on queue 0 (a device without RSS). Each
/// reply must reach the worker that owns its local port, which maps it back to the client and sends it from its own
/// queue. The test predicts each flow's owner (symmetric Toeplitz over the 4-tuple), backend (Maglev) and local port
/// (the owner's allocator, in arrival order) with the balancer's public functions, and plays the backends.
#[test]
fn fullnat_replies_reach_the_worker_that_owns_the_local_port() {
    use balancer::maglev::flow_hash;
    use balancer::port_alloc::PortAllocator;
    use balancer::rss::{queue_of, tuple_hash, SYMMETRIC_KEY};

    let dir = tempdir();
    let d = dir.path().display();
    let a = addresses(false);
    let text = config(dir.path(), "fullnat", false)
        .replace(
            &format!("net_pcap0,rx_pcap={d}/client-in.pcap,tx_pcap={d}/client-out.pcap"),
            &format!("net_pcap0,rx_pcap={d}/requests.pcap,rx_pcap={d}/empty.pcap,tx_pcap={d}/c0.pcap,tx_pcap={d}/c1.pcap"),
        )
        .replace(
            &format!("net_pcap1,rx_pcap={d}/backend-in.pcap,tx_pcap={d}/backend-out.pcap"),
            &format!("net_pcap1,rx_pcap={d}/replies.pcap,rx_pcap={d}/empty.pcap,tx_pcap={d}/b0.pcap,tx_pcap={d}/b1.pcap"),
        )
        .replace("cores = [0]", "cores = [0, 1]");
    let config = control::config::Config::parse(&text, "two.toml").unwrap();
    let spec = config
        .snapshot_spec(
            &[[0; 6], [0; 6]],
            &mut control::config::BackendIdRegistry::new(),
        )
        .unwrap();
    let snapshot = balancer::snapshot::Snapshot::build(&spec, 1).unwrap();
    let service = &snapshot.services()[0];
    let mut allocators: Vec<_> = (0..2)
        .map(|w| {
            PortAllocator::with_seed(spec.local_ports, w, &spec.local_addresses, LOCAL_PORT_SEED)
                .unwrap()
        })
        .collect();

    let flows = 256u32;
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    let mut expected_owner = HashMap::new();
    for flow in 0..flows {
        let (client, port) = (client_addr(&a, flow), 40_000 + flow as u16);
        requests.push(tcp(
            client,
            port,
            a.vip,
            80,
            "syn",
            b"",
            (GATEWAY_MAC, [0; 6]),
        ));
        let key = packet::FlowKey {
            src_addr: client,
            dst_addr: a.vip,
            src_port: port,
            dst_port: 80,
            protocol: 6,
        };
        let owner = queue_of(tuple_hash(&SYMMETRIC_KEY, client, a.vip, port, 80, true), 2) as u16;
        let backend = &service.backends[service.maglev.lookup(flow_hash(&key)).unwrap()];
        let local = allocators[usize::from(owner)]
            .allocate(&backend.addr)
            .unwrap();
        let payload = format!("reply {flow}").into_bytes();
        replies.push(tcp(
            backend.addr,
            8080,
            local.addr,
            local.port,
            "synack",
            &payload,
            ([2, 0xbe, 0, 0, 0, 11], [0; 6]),
        ));
        expected_owner.insert(flow, owner);
    }
    write_pcap(&dir.path().join("requests.pcap"), &requests);
    write_pcap(&dir.path().join("replies.pcap"), &replies);
    write_pcap(&dir.path().join("empty.pcap"), &[]);
    let config_path = dir.path().join("two.toml");
    std::fs::write(&config_path, &text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config_path)
        .args(["--idle-exit-ms", "400"])
        .args(["--local-port-seed", &LOCAL_PORT_SEED.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut mapped = 0;
    for (worker, file) in [(0u16, "c0.pcap"), (1, "c1.pcap")] {
        for frame in read_pcap(&dir.path().join(file)) {
            let s = seen(&frame);
            let flow: u32 = String::from_utf8(s.payload.clone()).unwrap()[6..]
                .parse()
                .unwrap();
            assert_eq!(
                expected_owner[&flow], worker,
                "reply of flow {flow} left from worker {worker}"
            );
            assert_eq!((s.src, s.sport), (a.vip, 80));
            assert_eq!(
                (s.dst, s.dport),
                (client_addr(&a, flow), 40_000 + flow as u16)
            );
            mapped += 1;
        }
    }
    assert_eq!(mapped, flows, "{stdout}");
    let owned_by_1 = expected_owner.values().filter(|&&w| w == 1).count();
    assert!(owned_by_1 > 50 && owned_by_1 < 206);
    // Worker 0 handed worker 1 its requests and their replies.
    assert!(
        stdout.contains(&format!("handed_off {}", 2 * owned_by_1)),
        "{stdout}"
    );
}

/// Two workers, two NAT services (VIP:80 and VIP:8443) with the same backends: every request and every reply
/// arrives on queue 0. A reply names only the backend and the client, not the service: it must reach the worker
/// that owns its connection (tried on the candidate services' owners in turn) and leave from the VIP and port its
/// client connected to.
#[test]
fn replies_of_a_backend_shared_by_two_nat_services_map_back_right() {
    use balancer::maglev::flow_hash;
    use balancer::rss::{queue_of, tuple_hash, SYMMETRIC_KEY};

    let dir = tempdir();
    let d = dir.path().display();
    let a = addresses(false);
    let base = config(dir.path(), "nat", false);
    let backends = &base[base.find("[[service.backend]]").unwrap()..];
    let text = format!(
        "{base}\n[[service]]\nvip = \"{}\"\nport = 8443\nprotocol = \"tcp\"\nmode = \"nat\"\n\n{backends}",
        a.vip
    )
    .replace(
        &format!("net_pcap0,rx_pcap={d}/client-in.pcap,tx_pcap={d}/client-out.pcap"),
        &format!("net_pcap0,rx_pcap={d}/requests.pcap,rx_pcap={d}/empty.pcap,tx_pcap={d}/c0.pcap,tx_pcap={d}/c1.pcap"),
    )
    .replace(
        &format!("net_pcap1,rx_pcap={d}/backend-in.pcap,tx_pcap={d}/backend-out.pcap"),
        &format!("net_pcap1,rx_pcap={d}/replies.pcap,rx_pcap={d}/empty.pcap,tx_pcap={d}/b0.pcap,tx_pcap={d}/b1.pcap"),
    )
    .replace("cores = [0]", "cores = [0, 1]");
    let config = control::config::Config::parse(&text, "shared.toml").unwrap();
    let spec = config
        .snapshot_spec(
            &[[0; 6], [0; 6]],
            &mut control::config::BackendIdRegistry::new(),
        )
        .unwrap();
    let snapshot = balancer::snapshot::Snapshot::build(&spec, 1).unwrap();

    let flows = 256u32;
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    let mut expected = HashMap::new();
    for flow in 0..flows {
        let (client, port) = (client_addr(&a, flow), 40_000 + flow as u16);
        let (index, vport) = if flow % 2 == 0 { (0, 80) } else { (1, 8443) };
        let service = &snapshot.services()[index];
        requests.push(tcp(
            client,
            port,
            a.vip,
            vport,
            "syn",
            b"",
            (GATEWAY_MAC, [0; 6]),
        ));
        let key = packet::FlowKey {
            src_addr: client,
            dst_addr: a.vip,
            src_port: port,
            dst_port: vport,
            protocol: 6,
        };
        let owner = queue_of(
            tuple_hash(&SYMMETRIC_KEY, client, a.vip, port, vport, true),
            2,
        ) as u16;
        let backend = &service.backends[service.maglev.lookup(flow_hash(&key)).unwrap()];
        let payload = format!("reply {flow}").into_bytes();
        replies.push(tcp(
            backend.addr,
            8080,
            client,
            port,
            "synack",
            &payload,
            ([2, 0xbe, 0, 0, 0, 11], [0; 6]),
        ));
        expected.insert(flow, (owner, vport));
    }
    write_pcap(&dir.path().join("requests.pcap"), &requests);
    write_pcap(&dir.path().join("replies.pcap"), &replies);
    write_pcap(&dir.path().join("empty.pcap"), &[]);
    let config_path = dir.path().join("shared.toml");
    std::fs::write(&config_path, &text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&config_path)
        .args(["--idle-exit-ms", "400"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut mapped = 0;
    for (worker, file) in [(0u16, "c0.pcap"), (1, "c1.pcap")] {
        for frame in read_pcap(&dir.path().join(file)) {
            let s = seen(&frame);
            let flow: u32 = String::from_utf8(s.payload.clone()).unwrap()[6..]
                .parse()
                .unwrap();
            let (owner, vport) = expected[&flow];
            assert_eq!(
                owner, worker,
                "reply of flow {flow} left from worker {worker}"
            );
            assert_eq!((s.src, s.sport), (a.vip, vport), "flow {flow}");
            assert_eq!(
                (s.dst, s.dport),
                (client_addr(&a, flow), 40_000 + flow as u16)
            );
            mapped += 1;
        }
    }
    assert_eq!(mapped, flows, "{stdout}");
}
