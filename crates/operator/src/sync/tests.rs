//! The sync between two real nodes over loopback UDP: exceptions reach the peer's worker queue; a forged, replayed,
//! stale or unknown-sender datagram changes nothing and is counted; a node that says hello with a new boot id gets
//! the full set. And the cost of a backend change at 100K connections (1M with `--ignored`), measured through the
//! real scan, encoder and socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::conntrack::{tcp_flags, ConnTable, Timeouts};
use balancer::decision::{Action, WorkerPlace, WorkerState, WorkerTables};
use balancer::exceptions::{ConnException, ExceptionScan, ExceptionTable, ScanProgress};
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::PortPartition;
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{GatewaySpec, PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use control::sync_config::SyncConfig;
use packet::{FlowKey, Fragment, FrameLayout, IcmpKind, L3};

use super::SyncNode;
use crate::sync_wire::{self, Kind, Message};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A loopback address with a port free a moment ago.
fn free_address() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a loopback port")
}

fn config(listen: SocketAddr, peers: Vec<SocketAddr>) -> SyncConfig {
    SyncConfig {
        listen,
        peers,
        key: KEY.to_vec(),
        resend_interval: Duration::from_millis(50),
        resend_max_interval: Duration::from_millis(200),
        side_table: 1024,
        scan_budget: 1024,
    }
}

fn exception(i: u32) -> ConnException {
    ConnException {
        flow: FlowKey {
            src_addr: IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)),
            dst_addr: IpAddr::V4(Ipv4Addr::new(10, 200, 0, 100)),
            src_port: 40_000,
            dst_port: 80,
            protocol: 6,
        },
        backend_addr: IpAddr::V4(Ipv4Addr::new(10, 88, 0, 11)),
        backend_port: 80,
        generation: 3,
        lifetime_ms: 60_000,
    }
}

fn now_ms() -> u64 {
    super::unix_ms()
}

/// Turns both nodes until `done` or a second passed.
fn turn_until(nodes: &mut [&mut SyncNode], mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() && start.elapsed() < Duration::from_secs(1) {
        for node in nodes.iter_mut() {
            node.turn(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn exceptions_reach_the_peer_and_a_new_node_gets_the_full_set_even_from_a_dead_one() {
    let (a_addr, b_addr, c_addr) = (free_address(), free_address(), free_address());
    let (mut a, a_links) = SyncNode::open(config(a_addr, vec![b_addr, c_addr]), 1).unwrap();
    let (mut b, b_links) = SyncNode::open(config(b_addr, vec![a_addr, c_addr]), 2).unwrap();
    for i in 0..45 {
        a_links[0].found.send(exception(i)).unwrap();
    }
    let mut received = Vec::new();
    turn_until(&mut [&mut a, &mut b], || {
        received.extend(b_links.iter().flat_map(|links| links.incoming.try_iter()));
        received.len() >= 45
    });
    assert_eq!(
        received.len(),
        45,
        "45 exceptions in 3 datagrams, to the worker owning each flow"
    );
    assert!(received.contains(&exception(0)));
    // a dies; c joins and says hello: b sends it b's own exceptions (none) and a's, which it relays.
    drop(a);
    let (mut c, c_links) = SyncNode::open(config(c_addr, vec![a_addr, b_addr]), 1).unwrap();
    let mut relayed = 0;
    turn_until(&mut [&mut b, &mut c], || {
        relayed += c_links[0].incoming.try_iter().count();
        relayed >= 45
    });
    assert_eq!(relayed, 45, "the full set, a's exceptions relayed by b");
    let metrics = b.metrics(Instant::now());
    assert!(
        metrics.contains(&format!(
            "sluice_sync_messages_total{{direction=\"sent\",peer=\"{c_addr}\"}} "
        )) && metrics.contains(&format!(
            "sluice_sync_sent_bytes_total{{peer=\"{c_addr}\"}} "
        )),
        "{metrics}"
    );
    assert_exposition(&metrics);
}

/// Every sample follows the HELP and TYPE of its family, each family is declared once, and `promtool check metrics`
/// (when installed) accepts the text.
fn assert_exposition(text: &str) {
    let mut declared = std::collections::HashSet::new();
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap_or_default().to_owned();
            assert!(
                declared.insert(family.clone()),
                "{family} declared twice:\n{text}"
            );
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert_eq!(name, family, "{line} outside its family:\n{text}");
        }
    }
    use std::io::Write;
    let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_forged_replayed_stale_or_unknown_message_changes_nothing() {
    let (b_addr, attacker_addr) = (free_address(), free_address());
    let attacker = UdpSocket::bind(attacker_addr).unwrap();
    // The attacker sends from an address b counts as a peer: only the key keeps it out.
    let (mut b, b_links) = SyncNode::open(config(b_addr, vec![attacker_addr]), 1).unwrap();
    let message = |sequence: u64, sent_at_ms: u64| Message {
        kind: Kind::Exceptions,
        boot: 9,
        sequence,
        sent_at_ms,
        digest: 1,
        exceptions: vec![exception(1), exception(2)],
    };
    let health = |b: &SyncNode| b.peers().next().map(|(_, health)| health.clone()).unwrap();
    let settle = |b: &mut SyncNode| {
        for _ in 0..20 {
            b.turn(Instant::now());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // Forged: signed with another key, or a signed datagram with one byte changed.
    let mut datagram = Vec::new();
    sync_wire::encode(
        &message(100, now_ms()),
        b"not the shared key, not at all!!",
        &mut datagram,
    );
    attacker.send_to(&datagram, b_addr).unwrap();
    sync_wire::encode(&message(101, now_ms()), KEY, &mut datagram);
    let mut tampered = datagram.clone();
    tampered[HEADER_FLOW_BYTE] ^= 0x40;
    attacker.send_to(&tampered, b_addr).unwrap();
    settle(&mut b);
    assert_eq!(health(&b).rejected_forged, 2);
    assert_eq!(b_links[0].incoming.try_iter().count(), 0);
    // The genuine one is accepted once; sent again, it is a replay.
    attacker.send_to(&datagram, b_addr).unwrap();
    settle(&mut b);
    assert_eq!(b_links[0].incoming.try_iter().count(), 2);
    attacker.send_to(&datagram, b_addr).unwrap();
    // Stale: properly signed, but sent more than the freshness window ago.
    sync_wire::encode(
        &message(500, now_ms() - sync_wire::FRESHNESS_MS - 1000),
        KEY,
        &mut datagram,
    );
    attacker.send_to(&datagram, b_addr).unwrap();
    settle(&mut b);
    assert_eq!(health(&b).rejected_replayed, 2);
    assert_eq!(b_links[0].incoming.try_iter().count(), 0);
    // From an address that is not a peer: not even decoded.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    sync_wire::encode(&message(600, now_ms()), KEY, &mut datagram);
    stranger.send_to(&datagram, b_addr).unwrap();
    settle(&mut b);
    assert_eq!(b.unknown_senders, 1);
    assert_eq!(b_links[0].incoming.try_iter().count(), 0);
    assert_eq!(health(&b).received_messages, 1);
}

#[test]
fn a_peer_whose_digest_differs_longer_than_a_reload_takes_is_flagged() {
    let (a_addr, b_addr) = (free_address(), free_address());
    let (mut a, _a_links) = SyncNode::open(config(a_addr, vec![b_addr]), 1).unwrap();
    let (mut b, _b_links) = SyncNode::open(config(b_addr, vec![a_addr]), 1).unwrap();
    a.digest = 1;
    b.digest = 2;
    turn_until(&mut [&mut a, &mut b], || false);
    let start = Instant::now();
    a.turn(start);
    let health = |a: &SyncNode| a.peers().next().map(|(_, health)| health.clone()).unwrap();
    assert_eq!(health(&a).digest, Some(2));
    assert!(health(&a).last_hello.is_some());
    let since = health(&a).digest_differs_since.expect("the digests differ");
    assert!(!health(&a).warned, "not within the grace of a reload");
    a.turn(since + super::DIGEST_GRACE + Duration::from_millis(1));
    assert!(health(&a).warned, "flagged (and logged) past the grace");
    assert!(a
        .describe(Instant::now())
        .contains("digest 0000000000000002"));
    // The same tables again: the flag goes.
    a.digest = 2;
    a.turn(Instant::now() + super::DIGEST_GRACE * 2);
    assert_eq!(health(&a).digest_differs_since, None);
    assert!(!health(&a).warned);
}

/// A byte inside the first record (its client address).
const HEADER_FLOW_BYTE: usize = sync_wire::HEADER_BYTES + 15;

// ---- the cost of a backend change --------------------------------------------------------------------------

fn spec(backends: usize) -> SnapshotSpec {
    SnapshotSpec {
        ports: vec![PortSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addresses: vec![("10.0.0.1".parse().unwrap(), 8)],
        }],
        gateways: vec![GatewaySpec {
            port: 0,
            addr: "10.0.0.254".parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 0xfe]),
        }],
        tunnel_source_v4: None,
        tunnel_source_v6: None,
        local_addresses: vec![],
        local_ports: PortPartition::new(1024, 65535, 1).unwrap(),
        maglev_size: TableSize::new(65537).unwrap(),
        services: vec![ServiceSpec {
            key: ServiceKey {
                vip: "10.200.0.100".parse().unwrap(),
                port: 80,
                protocol: 6,
            },
            mode: ForwardingMode::Dr,
            scheduler: SchedulerKind::Mh,
            persistence: None,
            backends: (0..backends)
                .map(|i| Backend {
                    id: BackendId(i as u32 + 1),
                    addr: IpAddr::V4(Ipv4Addr::new(10, 1, (i / 200) as u8, (i % 200) as u8 + 1)),
                    port: 80,
                    weight: 1,
                    mac: Some([2, 0xbe, 0, 0, 0, i as u8]),
                })
                .collect(),
        }],
        kernel_exception_path: false,
    }
}

/// Opens `connections` through a worker with 10 backends, then removes one (`after` 9) or adds one (`after` 11),
/// scans, and sends what the scan found to a peer through the real node: returns (exceptions, datagrams, bytes)
/// for one peer.
fn cost_of_a_backend_change(connections: u32, after: usize) -> (u64, u64, u64) {
    let mut state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::new(connections as usize, Timeouts::default()).unwrap(),
        load: LoadTable::new(64),
        persistence: PersistenceTable::new(64),
        neighbors: Arc::new(NeighborTable::new(64)),
        exceptions: ExceptionTable::disabled(),
    };
    let mut tables = WorkerTables::new(Arc::new(Snapshot::build(&spec(10), 1).unwrap()));
    for i in 0..connections {
        let flow = FlowKey {
            src_addr: IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i / 16)),
            dst_addr: "10.200.0.100".parse().unwrap(),
            src_port: 1024 + (i % 16) as u16,
            dst_port: 80,
            protocol: 6,
        };
        let layout = FrameLayout {
            l2_len: 14,
            vlan_tags: 0,
            vlan_id: None,
            l3: L3::Ipv4,
            l3_offset: 14,
            l4_offset: 34,
            l3_len: 40,
            protocol: 6,
            ttl: 64,
            source_routed: false,
            dont_fragment: false,
            flow,
            fragment: Fragment::None,
            tcp_flags: tcp_flags::SYN,
            icmp: IcmpKind::None,
            arp: None,
        };
        let action = state.decide(&mut tables, &layout, None, 0, false, 1000);
        assert!(matches!(action, Action::Forward(_)), "{action:?}");
    }
    assert_eq!(state.conns.len(), connections as usize);
    // A backend leaves (the last one): its own flows are lost with it, the others Maglev moved are exceptions. Or
    // one joins: the flows whose slots it took are exceptions.
    let snapshot = Snapshot::build(&spec(after), 2).unwrap();
    let (peer_addr, node_addr) = (free_address(), free_address());
    let peer = UdpSocket::bind(peer_addr).unwrap();
    let (mut node, links) = SyncNode::open(
        SyncConfig {
            resend_interval: Duration::from_secs(3600),
            resend_max_interval: Duration::from_secs(3600),
            ..config(node_addr, vec![peer_addr])
        },
        1,
    )
    .unwrap();
    node.set_snapshot(&snapshot);
    // Hellos first, so that only the exceptions are counted.
    node.turn(Instant::now());
    let hello = node
        .peers()
        .next()
        .map(|(_, h)| (h.sent_messages, h.sent_bytes))
        .unwrap();
    let mut scan = ExceptionScan::default();
    scan.restart();
    let mut found = 0u64;
    // The worker walks 4096 slots per turn of its loop (microseconds); the control thread turns every few
    // milliseconds: it sees the finds of many steps at once. Modelled as one control turn per 64 steps.
    for step in 1.. {
        let progress = scan.step(&state.conns, &snapshot, 1000, 4096, |exception| {
            let queued = links[0].found.try_send(exception).is_ok();
            found += u64::from(queued);
            queued
        });
        if step % 64 == 0 {
            node.turn(Instant::now());
        }
        if matches!(progress, ScanProgress::Finished { .. }) {
            break;
        }
    }
    node.turn(Instant::now());
    drop(peer);
    let (_, health) = node.peers().next().unwrap();
    (
        found,
        health.sent_messages - hello.0,
        health.sent_bytes - hello.1,
    )
}

fn report(connections: u32, after: usize) {
    let started = Instant::now();
    let (exceptions, messages, bytes) = cost_of_a_backend_change(connections, after);
    println!(
        "sync cost: {connections} connections, 10 -> {after} backends: {exceptions} exceptions, {messages} datagrams, \
         {bytes} bytes per peer ({:.1} bytes per exception; measured in {:.1} s)",
        bytes as f64 / exceptions.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    assert!(exceptions > 0);
    // Full datagrams, but for the last of each control turn.
    let turns = u64::from(connections).div_ceil(4096 * 64) + 1;
    assert!(messages <= exceptions.div_ceil(sync_wire::MAX_RECORDS as u64) + turns);
    // Only the flows that need help travel: a few percent of the connections, not all of them.
    assert!(
        exceptions < u64::from(connections) / 10,
        "{exceptions} of {connections}"
    );
}

#[test]
fn the_cost_of_a_backend_change_at_100k_connections() {
    report(100_000, 9);
    report(100_000, 11);
}

#[test]
#[ignore = "a measurement: cargo test --release -p sluice sync::tests -- --ignored --nocapture"]
fn the_cost_of_a_backend_change_at_1m_connections() {
    report(1_000_000, 9);
    report(1_000_000, 11);
}
