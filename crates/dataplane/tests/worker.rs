//! The worker loop on in-memory ports: real frames in, rewritten frames out, checked by an independent parser.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use balancer::conntrack::{ConnTable, Timeouts};
use balancer::decision::{DropReason, WorkerPlace, WorkerState, WorkerTables};
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::{PortAllocator, PortPartition};
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use crossbeam::channel::bounded;
use dataplane::io::memory::{Inbox, MemoryFrame, MemoryRx, MemoryTx, Outbox};
use dataplane::io::Frame;
use dataplane::worker::{handoff_mesh, PortQueues, TableUpdates, Worker, WorkerConfig};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

mod common;
use common::with_vlan_tags;

const CLIENT_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 1];
const PORT0_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PORT1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn spec(mode: ForwardingMode, workers: u16, backend_macs: bool) -> SnapshotSpec {
    let port = if matches!(mode, ForwardingMode::Nat | ForwardingMode::FullNat) {
        8080
    } else {
        80
    };
    let backends = (0..3)
        .map(|i| Backend {
            id: BackendId(i + 1),
            addr: IpAddr::V4([10, 1, 0, 11 + i as u8].into()),
            port,
            weight: 1,
            mac: backend_macs.then_some([2, 0xbe, 0, 0, 0, 11 + i as u8]),
        })
        .chain((0..3).map(|i| Backend {
            id: BackendId(i + 101),
            addr: ip(&format!("fd01::{:x}", 11 + i)),
            port,
            weight: 1,
            mac: backend_macs.then_some([2, 0xbe, 0, 0, 1, 11 + i as u8]),
        }))
        .collect::<Vec<_>>();
    let service = |vip: &str, backends: &[Backend]| ServiceSpec {
        key: ServiceKey {
            vip: ip(vip),
            port: 80,
            protocol: 6,
        },
        mode,
        scheduler: SchedulerKind::Mh,
        persistence: None,
        backends: backends.to_vec(),
    };
    SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: PORT0_MAC,
                mtu: 1500,
                addresses: vec![(ip("10.0.0.1"), 24), (ip("fd00::1"), 64)],
            },
            PortSpec {
                mac: PORT1_MAC,
                mtu: 1500,
                addresses: vec![(ip("10.1.0.1"), 24), (ip("fd01::1"), 64)],
            },
        ],
        gateways: vec![],
        tunnel_source_v4: Some(ip("10.1.0.1")),
        tunnel_source_v6: Some(ip("fd01::1")),
        local_addresses: vec![ip("10.1.0.5"), ip("fd01::5")],
        local_ports: PortPartition::new(1024, 65535, workers).unwrap(),
        maglev_size: TableSize::new(251).unwrap(),
        services: vec![
            service("10.0.0.100", &backends[..3]),
            service("fd00::100", &backends[3..]),
        ],
        kernel_exception_path: false,
    }
}

struct Rig {
    workers: Vec<Worker<MemoryRx, MemoryTx>>,
    inboxes: Vec<Vec<Inbox>>,
    outboxes: Vec<Vec<Outbox>>,
    neighbors: Arc<NeighborTable>,
    updates: Vec<crossbeam::channel::Sender<WorkerTables>>,
}

fn rig(spec: &SnapshotSpec, workers: u16) -> Rig {
    rig_on_vlans(spec, workers, [None, None])
}

/// A rig whose ports are on the given VLANs.
fn rig_on_vlans(spec: &SnapshotSpec, workers: u16, vlans: [Option<u16>; 2]) -> Rig {
    rig_with(spec, workers, vlans, WorkerConfig::default(), 4096)
}

fn rig_with(
    spec: &SnapshotSpec,
    workers: u16,
    vlans: [Option<u16>; 2],
    config: WorkerConfig,
    table_capacity: usize,
) -> Rig {
    let snapshot = Arc::new(Snapshot::build(spec, 1).unwrap());
    let neighbors = Arc::new(NeighborTable::new(256));
    neighbors.set_static(0, ip("10.0.0.2"), CLIENT_MAC).unwrap();
    neighbors.set_static(0, ip("fd00::2"), CLIENT_MAC).unwrap();
    let mut mesh = handoff_mesh(usize::from(workers), 1024).into_iter();
    let mut rig = Rig {
        workers: vec![],
        inboxes: vec![],
        outboxes: vec![],
        neighbors: Arc::clone(&neighbors),
        updates: vec![],
    };
    for index in 0..workers {
        let ports_alloc =
            PortAllocator::new(spec.local_ports, index, &spec.local_addresses).unwrap();
        let state = WorkerState {
            place: WorkerPlace {
                index,
                workers,
                software_steering: workers > 1,
            },
            conns: ConnTable::with_local_ports(table_capacity, Timeouts::default(), ports_alloc)
                .unwrap(),
            load: LoadTable::new(256),
            persistence: PersistenceTable::new(256),
            neighbors: Arc::clone(&neighbors),
            exceptions: balancer::exceptions::ExceptionTable::disabled(),
        };
        let mut inboxes = vec![];
        let mut outboxes = vec![];
        let ports = [PORT0_MAC, PORT1_MAC]
            .into_iter()
            .zip(vlans)
            .map(|(mac, vlan)| {
                let inbox: Inbox = Arc::new(Mutex::new(VecDeque::new()));
                let outbox: Outbox = Arc::new(Mutex::new(Vec::new()));
                inboxes.push(Arc::clone(&inbox));
                outboxes.push(Arc::clone(&outbox));
                PortQueues {
                    rx: MemoryRx { inbox },
                    tx: MemoryTx {
                        outbox,
                        capacity: 64,
                        pool: 1000,
                    },
                    mac,
                    vlan,
                }
            })
            .collect();
        let (send, receive) = bounded(4);
        let (retired, _retired_rx) = bounded(4);
        rig.updates.push(send);
        rig.workers.push(Worker::new(
            state,
            WorkerTables::new(Arc::clone(&snapshot)),
            ports,
            mesh.next().expect("one set of links per worker"),
            TableUpdates {
                incoming: receive,
                retired,
            },
            config,
        ));
        rig.inboxes.push(inboxes);
        rig.outboxes.push(outboxes);
    }
    rig
}

impl Rig {
    fn send(&self, worker: usize, port: usize, frame: Vec<u8>) {
        self.inboxes[worker][port]
            .lock()
            .unwrap()
            .push_back(MemoryFrame::from_bytes(&frame));
    }

    fn poll_all(&mut self, rounds: usize) {
        for round in 0..rounds {
            for worker in &mut self.workers {
                worker.poll(1_000 + round as u64);
            }
        }
    }

    fn take(&self, worker: usize, port: usize) -> Vec<Vec<u8>> {
        self.outboxes[worker][port]
            .lock()
            .unwrap()
            .drain(..)
            .map(|f| f.data().to_vec())
            .collect()
    }
}

fn tcp_frame(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, PORT0_MAC);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let b = builder
                .ipv4(s.octets(), d.octets(), 60)
                .tcp(sport, dport, 1, 1000);
            if syn {
                b.syn().write(&mut out, payload)
            } else {
                b.ack(1).write(&mut out, payload)
            }
            .unwrap()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let b = builder
                .ipv6(s.octets(), d.octets(), 60)
                .tcp(sport, dport, 1, 1000);
            if syn {
                b.syn().write(&mut out, payload)
            } else {
                b.ack(1).write(&mut out, payload)
            }
            .unwrap()
        }
        _ => unreachable!(),
    }
    out
}

/// (src, dst, sport, dport, ttl, payload, checksums valid) read by etherparse, looking inside IP-in-IP.
fn read(frame: &[u8]) -> (IpAddr, IpAddr, u16, u16, u8, Vec<u8>, bool) {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let (src, dst, ttl, v4_header) = match sliced.net.as_ref().unwrap() {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.ttl(),
                Some(h.to_header()),
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.hop_limit(),
                None,
            )
        }
        _ => panic!("not IP"),
    };
    if let Some(header) = &v4_header {
        assert_eq!(header.calc_header_checksum(), header.header_checksum);
    }
    match sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let valid = match sliced.net.as_ref().unwrap() {
                NetSlice::Ipv4(v4) => tcp
                    .calc_checksum_ipv4(v4.header().source(), v4.header().destination())
                    .unwrap(),
                NetSlice::Ipv6(v6) => tcp
                    .calc_checksum_ipv6(v6.header().source(), v6.header().destination())
                    .unwrap(),
                _ => unreachable!(),
            } == tcp.checksum();
            (
                src,
                dst,
                tcp.source_port(),
                tcp.destination_port(),
                ttl,
                tcp.payload().to_vec(),
                valid,
            )
        }
        _ => {
            // IP-in-IP: read the inner packet.
            let inner_at = 14 + if src.is_ipv4() { 20 } else { 40 };
            let mut inner = frame[..14].to_vec();
            inner.extend_from_slice(&frame[inner_at..]);
            read(&inner)
        }
    }
}

#[test]
fn every_mode_rewrites_exactly_its_fields_in_both_families() {
    for mode in ForwardingMode::ALL {
        for v6 in [false, true] {
            let mut rig = rig(&spec(mode, 1, true), 1);
            let (client, vip) = if v6 {
                (ip("fd00::2"), ip("fd00::100"))
            } else {
                (ip("10.0.0.2"), ip("10.0.0.100"))
            };
            let mut per_backend = std::collections::HashMap::new();
            for flow in 0..60u16 {
                for packet in 0..3 {
                    let payload = [flow as u8; 33];
                    rig.send(
                        0,
                        0,
                        tcp_frame(client, 20000 + flow, vip, 80, packet == 0, &payload),
                    );
                }
            }
            rig.poll_all(10);
            let out = rig.take(0, 1);
            assert_eq!(
                out.len(),
                180,
                "{mode:?} v6={v6}: {:?}",
                rig.workers[0].stats()
            );
            for frame in &out {
                assert_eq!(&frame[6..12], &PORT1_MAC);
                let (src, dst, sport, dport, ttl, payload, valid) = read(frame);
                assert!(valid, "{mode:?} checksum");
                assert_eq!(ttl, 60, "TTL intact");
                let flow = sport.wrapping_sub(20000);
                assert_eq!(payload, vec![payload[0]; 33]);
                let backend_mac: [u8; 6] = frame[0..6].try_into().unwrap();
                let backend_addr = match mode {
                    ForwardingMode::Dr | ForwardingMode::Tun => {
                        assert_eq!((src, dst, dport), (client, vip, 80));
                        backend_mac
                    }
                    ForwardingMode::Nat => {
                        assert_eq!((src, sport), (client, 20000 + flow));
                        assert_eq!(dport, 8080);
                        assert_ne!(dst, vip);
                        backend_mac
                    }
                    ForwardingMode::FullNat => {
                        assert_eq!(src, if v6 { ip("fd01::5") } else { ip("10.1.0.5") });
                        assert_eq!(dport, 8080);
                        backend_mac
                    }
                };
                if mode == ForwardingMode::Tun {
                    let outer = SlicedPacket::from_ethernet(frame).unwrap();
                    let outer_dst = match outer.net.unwrap() {
                        NetSlice::Ipv4(v4) => IpAddr::V4(v4.header().destination_addr()),
                        NetSlice::Ipv6(v6) => IpAddr::V6(v6.header().destination_addr()),
                        _ => unreachable!(),
                    };
                    assert_eq!(
                        backend_mac[5],
                        match outer_dst {
                            IpAddr::V4(a) => a.octets()[3],
                            IpAddr::V6(a) => a.octets()[15],
                        }
                    );
                }
                per_backend
                    .entry(payload[0])
                    .or_insert_with(std::collections::HashSet::new)
                    .insert(backend_addr);
            }
            // Every packet of a flow went to one backend; flows spread over all three.
            assert!(per_backend.values().all(|backends| backends.len() == 1));
            let used: std::collections::HashSet<_> = per_backend.values().flatten().collect();
            assert_eq!(used.len(), 3, "{mode:?}");
        }
    }
}

#[test]
fn more_frames_to_one_port_in_a_poll_than_a_transmit_burst_holds_are_all_sent_in_order() {
    // Two full bursts of 64, one on each port, all to backends behind port 1: the port's transmit burst fills
    // halfway through the second and is sent, and the rest queue behind it.
    let config = WorkerConfig {
        burst: 64,
        ..WorkerConfig::default()
    };
    let mut rig = rig_with(
        &spec(ForwardingMode::Dr, 1, true),
        1,
        [None, None],
        config,
        4096,
    );
    let frame = |port: usize, flow: u16| {
        to_port(
            port,
            tcp_frame(
                ip("10.0.0.2"),
                20000 + flow,
                ip("10.0.0.100"),
                80,
                true,
                b"",
            ),
        )
    };
    for flow in 0..64 {
        rig.send(0, 0, frame(0, flow));
        rig.send(0, 1, frame(1, 64 + flow));
    }
    rig.poll_all(1);
    let out = rig.take(0, 1);
    let stats = rig.workers[0].stats();
    assert_eq!(out.len(), 128, "{stats:?}");
    assert_eq!(stats.total_drops(), 0, "{stats:?}");
    let ports: Vec<u16> = out.iter().map(|frame| read(frame).2).collect();
    assert_eq!(ports, (20000..20128).collect::<Vec<u16>>());
}

#[test]
fn nat_and_fullnat_replies_are_mapped_back_to_the_client() {
    for mode in [ForwardingMode::Nat, ForwardingMode::FullNat] {
        let mut rig = rig(&spec(mode, 1, true), 1);
        let (client, vip) = (ip("10.0.0.2"), ip("10.0.0.100"));
        rig.send(0, 0, tcp_frame(client, 30000, vip, 80, true, b""));
        rig.poll_all(2);
        let request = rig.take(0, 1).pop().unwrap();
        let (src, dst, sport, dport, ..) = read(&request);
        // The backend answers to whatever source it saw.
        let reply = {
            let mut out = Vec::new();
            let (IpAddr::V4(s), IpAddr::V4(d)) = (dst, src) else {
                unreachable!()
            };
            PacketBuilder::ethernet2([2, 0xbe, 0, 0, 0, 11], PORT1_MAC)
                .ipv4(s.octets(), d.octets(), 64)
                .tcp(dport, sport, 9, 1000)
                .syn()
                .ack(2)
                .write(&mut out, b"hello back")
                .unwrap();
            out
        };
        rig.send(0, 1, reply);
        rig.poll_all(2);
        let back = rig.take(0, 0);
        assert_eq!(back.len(), 1, "{mode:?}: {:?}", rig.workers[0].stats());
        let (src, dst, sport, dport, ttl, payload, valid) = read(&back[0]);
        assert!(valid);
        assert_eq!((src, sport, dst, dport), (vip, 80, client, 30000));
        assert_eq!((ttl, payload.as_slice()), (64, &b"hello back"[..]));
        assert_eq!(&back[0][0..6], &CLIENT_MAC);
        assert_eq!(&back[0][6..12], &PORT0_MAC);
    }
}

#[test]
fn malformed_and_foreign_frames_are_counted_drops_with_no_output() {
    let mut rig = rig(&spec(ForwardingMode::Nat, 1, true), 1);
    let good = tcp_frame(ip("10.0.0.2"), 1, ip("10.0.0.100"), 80, true, b"");
    let mut bad_checksum = good.clone();
    bad_checksum[24] ^= 0xff;
    rig.send(0, 0, bad_checksum);
    rig.send(0, 0, good[..30].to_vec());
    rig.send(0, 0, vec![0u8; 3]);
    rig.send(
        0,
        0,
        tcp_frame(ip("10.0.0.2"), 1, ip("192.0.2.1"), 80, true, b""),
    );
    rig.send(
        0,
        0,
        tcp_frame(ip("10.0.0.2"), 1, ip("10.0.0.100"), 81, true, b""),
    );
    rig.poll_all(2);
    assert!(rig.take(0, 0).is_empty() && rig.take(0, 1).is_empty());
    let stats = rig.workers[0].stats();
    assert_eq!(stats.drops(DropReason::Malformed), 3);
    assert_eq!(stats.drops(DropReason::NotOurs), 1);
    assert_eq!(stats.drops(DropReason::NoService), 1);
    assert_eq!(stats.rx.load(std::sync::atomic::Ordering::Relaxed), 5);
}

/// The resolution requests (ARP, neighbour solicitations) and the other frames among `frames`.
fn split_arp(frames: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    frames.into_iter().partition(|frame| {
        frame[12..14] == [0x08, 0x06]
            || matches!(
                packet::parse_frame(frame).map(|layout| layout.icmp),
                Ok(packet::IcmpKind::NeighborSolicitation { .. })
            )
    })
}

#[test]
fn arp_is_answered_and_the_first_frame_waits_for_its_backend_to_be_resolved() {
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, false), 1);
    // A client asks who has the VIP.
    let mut request = vec![0u8; 60];
    let len = packet::build_arp_request(
        &mut request,
        [2, 0xc1, 0, 0, 0, 9],
        [10, 0, 0, 9].into(),
        [10, 0, 0, 100].into(),
        None,
    )
    .unwrap();
    request.truncate(len);
    rig.send(0, 0, request);
    // A SYN to a backend whose MAC nobody knows yet.
    rig.send(
        0,
        0,
        tcp_frame(ip("10.0.0.2"), 5, ip("10.0.0.100"), 80, true, b""),
    );
    rig.poll_all(1);
    let answers = rig.take(0, 0);
    assert_eq!(answers.len(), 1);
    let reply = etherparse::ArpPacketSlice::from_slice(&answers[0][14..]).unwrap();
    assert_eq!(reply.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(reply.sender_hw_addr(), &PORT0_MAC);
    assert_eq!(reply.sender_protocol_addr(), &[10, 0, 0, 100]);
    // The client that asked is no next hop of ours: nothing is learned of it.
    assert_eq!(
        rig.neighbors.lookup(0, ip("10.0.0.9"), 1),
        balancer::neighbor::Neighbor::Unresolved
    );
    // The SYN waits; ARP requests for the backends went out of the backend port (worker 0 resolves the
    // configured backends from its first turn).
    let (resolution, others) = split_arp(rig.take(0, 1));
    assert!(others.is_empty(), "the SYN waits for its backend's MAC");
    assert!(!resolution.is_empty());
    // The backends answer; the waiting SYN goes out, without a retransmission.
    for asked in resolution
        .iter()
        .filter(|frame| frame[12..14] == [0x08, 0x06])
    {
        let asked = etherparse::ArpPacketSlice::from_slice(&asked[14..]).unwrap();
        assert_eq!(asked.sender_protocol_addr(), &[10, 1, 0, 1]);
        let target: [u8; 4] = asked.target_protocol_addr().try_into().unwrap();
        let mut answer = vec![0u8; 60];
        let len = packet::build_arp_request(
            &mut answer,
            [2, 0xbe, 0, 0, 0, 99],
            target.into(),
            [10, 1, 0, 1].into(),
            None,
        )
        .unwrap();
        answer.truncate(len);
        answer[21] = 2; // make it a reply
        rig.send(0, 1, answer);
    }
    rig.poll_all(2);
    let (_, forwarded) = split_arp(rig.take(0, 1));
    assert_eq!(forwarded.len(), 1);
    assert_eq!(&forwarded[0][0..6], &[2, 0xbe, 0, 0, 0, 99]);
    assert_eq!(
        rig.workers[0].stats().drops(DropReason::NeighborUnresolved),
        0
    );
}

#[test]
fn two_workers_hand_frames_to_the_flow_owner() {
    let spec = spec(ForwardingMode::FullNat, 2, true);
    let mut rig = rig(&spec, 2);
    // Everything arrives on worker 0 (a device without RSS); replies arrive on worker 1.
    for flow in 0..64u16 {
        rig.send(
            0,
            0,
            tcp_frame(
                ip("10.0.0.2"),
                40000 + flow,
                ip("10.0.0.100"),
                80,
                true,
                b"",
            ),
        );
    }
    rig.poll_all(3);
    let from_0 = rig.take(0, 1);
    let from_1 = rig.take(1, 1);
    assert_eq!(from_0.len() + from_1.len(), 64);
    assert!(
        !from_0.is_empty() && !from_1.is_empty(),
        "both workers own some flows"
    );
    let handed = rig.workers[0]
        .stats()
        .handed_off
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(handed as usize, from_1.len());
    // Every FULLNAT local port belongs to the worker that sent it; replies sent to the wrong worker find the owner.
    for (owner, frames) in [(0u16, &from_0), (1u16, &from_1)] {
        for frame in frames.iter() {
            let (src, dst, sport, dport, ..) = read(frame);
            assert_eq!(spec.local_ports.owner_of(sport), Some(owner));
            let (IpAddr::V4(s), IpAddr::V4(d)) = (dst, src) else {
                unreachable!()
            };
            let mut reply = Vec::new();
            PacketBuilder::ethernet2([2, 0xbe, 0, 0, 0, 11], PORT1_MAC)
                .ipv4(s.octets(), d.octets(), 64)
                .tcp(dport, sport, 9, 1000)
                .syn()
                .ack(2)
                .write(&mut reply, b"")
                .unwrap();
            rig.send(1 - usize::from(owner), 1, reply);
        }
    }
    rig.poll_all(3);
    let back = rig.take(0, 0).len() + rig.take(1, 0).len();
    assert_eq!(back, 64);
    let dropped: u64 = rig.workers.iter().map(|w| w.stats().total_drops()).sum();
    assert_eq!(dropped, 0);
}

#[test]
fn a_new_snapshot_is_picked_up_between_bursts() {
    let mut spec = spec(ForwardingMode::Dr, 1, true);
    let mut rig = rig(&spec, 1);
    spec.services[0].backends.retain(|b| b.id == BackendId(2));
    let snapshot = Arc::new(Snapshot::build(&spec, 2).unwrap());
    rig.updates[0].send(WorkerTables::new(snapshot)).unwrap();
    for flow in 0..30u16 {
        rig.send(
            0,
            0,
            tcp_frame(ip("10.0.0.2"), 1000 + flow, ip("10.0.0.100"), 80, true, b""),
        );
    }
    rig.poll_all(2);
    let out = rig.take(0, 1);
    assert_eq!(out.len(), 30);
    assert!(
        out.iter().all(|frame| frame[5] == 12),
        "all to the one remaining backend"
    );
    assert_eq!(
        rig.workers[0]
            .stats()
            .generation
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn tun_answers_too_big_instead_of_dropping_silently() {
    let mut rig = rig(&spec(ForwardingMode::Tun, 1, true), 1);
    for (client, vip, payload, mtu) in [
        ("10.0.0.2", "10.0.0.100", 1450usize, 1480u32),
        ("fd00::2", "fd00::100", 1430, 1460),
    ] {
        rig.send(
            0,
            0,
            tcp_frame(ip(client), 7000, ip(vip), 80, true, &vec![7u8; payload]),
        );
        rig.poll_all(1);
        assert!(rig.take(0, 1).is_empty(), "nothing goes to the backend");
        let answers = rig.take(0, 0);
        assert_eq!(answers.len(), 1);
        let sliced = SlicedPacket::from_ethernet(&answers[0]).unwrap();
        match sliced.transport.unwrap() {
            TransportSlice::Icmpv4(icmp) => {
                assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 4));
                assert_eq!(
                    u32::from(u16::from_be_bytes(
                        icmp.bytes5to8()[2..4].try_into().unwrap()
                    )),
                    mtu
                );
            }
            TransportSlice::Icmpv6(icmp) => {
                assert_eq!(icmp.type_u8(), 2);
                assert_eq!(u32::from_be_bytes(icmp.bytes5to8()), mtu);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(&answers[0][0..6], &CLIENT_MAC);
    }
    assert_eq!(rig.workers[0].stats().drops(DropReason::TooBig), 2);
}

#[test]
fn neighbour_discovery_answers_and_resolves() {
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, false), 1);
    // A client solicits the IPv6 VIP.
    let mut solicitation = vec![0u8; 128];
    let len = packet::build_neighbor_solicitation(
        &mut solicitation,
        CLIENT_MAC,
        "fd00::2".parse().unwrap(),
        "fd00::100".parse().unwrap(),
        None,
    )
    .unwrap();
    solicitation.truncate(len);
    rig.send(0, 0, solicitation);
    // A SYN to an IPv6 backend nobody has resolved.
    rig.send(
        0,
        0,
        tcp_frame(ip("fd00::2"), 9, ip("fd00::100"), 80, true, b""),
    );
    rig.poll_all(1);
    let answers = rig.take(0, 0);
    assert_eq!(answers.len(), 1);
    let advert = packet::parse_frame(&answers[0]).unwrap();
    assert_eq!(
        advert.icmp,
        packet::IcmpKind::NeighborAdvertisement {
            target: "fd00::100".parse().unwrap(),
            target_mac: Some(PORT0_MAC)
        }
    );
    // The SYN waits; solicitations went out for the IPv6 backends (and ARP requests for the IPv4 ones).
    let (requests, others) = split_arp(rig.take(0, 1));
    assert!(others.is_empty(), "the SYN waits for its backend's MAC");
    let solicitations: Vec<_> = requests
        .iter()
        .filter(|frame| frame[12..14] == [0x86, 0xdd])
        .collect();
    assert!(
        !solicitations.is_empty(),
        "neighbour solicitations for the backends"
    );
    // Every backend answers with an advertisement; the waiting SYN goes through to its MAC.
    let backend_mac = [2, 0xbe, 0, 0, 1, 0x77];
    for solicitation in solicitations {
        let asked = packet::parse_frame(solicitation).unwrap();
        assert_eq!(asked.flow.src_addr, ip("fd01::1"));
        // Our solicitation answered as the backend would.
        let mut to_backend = solicitation.clone();
        let na_len =
            packet::answer_neighbor_solicitation(&mut to_backend, &asked, backend_mac).unwrap();
        to_backend.truncate(na_len);
        rig.send(0, 1, to_backend);
    }
    rig.poll_all(2);
    let (_, forwarded) = split_arp(rig.take(0, 1));
    assert_eq!(forwarded.len(), 1);
    assert_eq!(&forwarded[0][0..6], &backend_mac);
    assert_eq!(
        rig.workers[0].stats().drops(DropReason::NeighborUnresolved),
        0
    );
}

/// The IPv4 header checksum of `frame` (untagged) made right again after an edit.
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let header_len = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let mut sum = 0u32;
    for pair in frame[14..14 + header_len].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// `frame` (untagged IPv4) with `options` (a multiple of 4 bytes) after its fixed header.
fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x40 | (5 + options.len() / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// `frame` (untagged) with its TTL or hop limit set to `ttl`.
fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    if out[12..14] == [0x08, 0x00] {
        out[22] = ttl;
        fix_ipv4_checksum(&mut out);
    } else {
        out[21] = ttl;
    }
    out
}

#[test]
fn tagged_frames_on_untagged_ports_are_dropped_as_vlan_tagged() {
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
    let syn = tcp_frame(ip("10.0.0.2"), 4000, ip("10.0.0.100"), 80, true, b"");
    rig.send(0, 0, with_vlan_tags(&syn, &[42]));
    rig.send(0, 0, with_vlan_tags(&syn, &[7, 42]));
    rig.poll_all(2);
    assert!(rig.take(0, 0).is_empty() && rig.take(0, 1).is_empty());
    assert_eq!(rig.workers[0].stats().drops(DropReason::VlanTagged), 2);
    assert_eq!(rig.workers[0].state().conns.len(), 0);
    // The same frame untagged goes through.
    rig.send(0, 0, syn);
    rig.poll_all(1);
    assert_eq!(rig.take(0, 1).len(), 1);
}

#[test]
fn source_routed_ipv4_is_dropped_and_other_options_pass_unchanged() {
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
    let syn = tcp_frame(ip("10.0.0.2"), 4001, ip("10.0.0.100"), 80, true, b"");
    // Loose and strict source routes through 192.0.2.9 (type, length 7, pointer 4, one hop), end of list.
    for kind in [0x83, 0x89] {
        let options = [kind, 7, 4, 192, 0, 2, 9, 0];
        rig.send(0, 0, with_ipv4_options(&syn, &options));
    }
    // A loose source route behind a no-operation byte is found too.
    rig.send(
        0,
        0,
        with_ipv4_options(&syn, &[1, 0x83, 7, 4, 192, 0, 2, 9]),
    );
    rig.poll_all(2);
    assert!(rig.take(0, 0).is_empty() && rig.take(0, 1).is_empty());
    assert_eq!(rig.workers[0].stats().drops(DropReason::SourceRouted), 3);
    assert_eq!(rig.workers[0].state().conns.len(), 0);

    // Record route is forwarded as it came, options included.
    let record_route = with_ipv4_options(&syn, &[7, 7, 4, 0, 0, 0, 0, 0]);
    rig.send(0, 0, record_route.clone());
    rig.poll_all(1);
    let out = rig.take(0, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][14..], &record_route[14..]);
    let (src, dst, _, dport, ttl, _, valid) = read(&out[0]);
    assert_eq!(
        (src, dst, dport, ttl),
        (ip("10.0.0.2"), ip("10.0.0.100"), 80, 60)
    );
    assert!(valid);

    // An option whose length runs past the header is malformed.
    rig.send(0, 0, with_ipv4_options(&syn, &[7, 9, 4, 0, 0, 0, 0, 0]));
    rig.poll_all(1);
    assert_eq!(rig.workers[0].stats().drops(DropReason::Malformed), 1);
}

#[test]
fn ttl_and_hop_limit_zero_and_one_are_not_forwarded_and_others_pass_unchanged() {
    for (client, vip) in [
        (ip("10.0.0.2"), ip("10.0.0.100")),
        (ip("fd00::2"), ip("fd00::100")),
    ] {
        let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
        let syn = tcp_frame(client, 4002, vip, 80, true, b"");
        rig.send(0, 0, with_ttl(&syn, 0));
        rig.send(0, 0, with_ttl(&syn, 1));
        rig.poll_all(1);
        assert!(rig.take(0, 1).is_empty());
        assert_eq!(rig.workers[0].stats().drops(DropReason::TtlExpired), 2);
        assert_eq!(
            rig.workers[0].state().conns.len(),
            0,
            "no connection opened"
        );

        rig.send(0, 0, with_ttl(&syn, 2));
        rig.poll_all(1);
        let out = rig.take(0, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(read(&out[0]).4, 2, "forwarded with its TTL unchanged");

        // A frame of the established connection with TTL 1 leaves the fast path and is dropped too.
        let ack = tcp_frame(client, 4002, vip, 80, false, b"data");
        rig.send(0, 0, with_ttl(&ack, 1));
        rig.poll_all(1);
        assert!(rig.take(0, 1).is_empty());
        assert_eq!(rig.workers[0].stats().drops(DropReason::TtlExpired), 3);
        rig.send(0, 0, ack);
        rig.poll_all(1);
        assert_eq!(rig.take(0, 1).len(), 1);
    }
}

#[test]
fn martian_sources_open_no_connection() {
    let mut rig = rig(&spec(ForwardingMode::Nat, 1, true), 1);
    let martians = [
        ("0.0.0.0", "10.0.0.100"),
        ("127.0.0.1", "10.0.0.100"),
        ("224.0.0.1", "10.0.0.100"),
        ("255.255.255.255", "10.0.0.100"),
        ("10.0.0.100", "10.0.0.100"),
        ("10.0.0.1", "10.0.0.100"),
        ("10.1.0.5", "10.0.0.100"),
        ("::", "fd00::100"),
        ("::1", "fd00::100"),
        ("ff02::1", "fd00::100"),
        ("fd00::100", "fd00::100"),
        ("fd00::1", "fd00::100"),
    ];
    for (source, vip) in martians {
        rig.send(0, 0, tcp_frame(ip(source), 4003, ip(vip), 80, true, b""));
    }
    rig.poll_all(2);
    assert!(rig.take(0, 0).is_empty() && rig.take(0, 1).is_empty());
    assert_eq!(
        rig.workers[0].stats().drops(DropReason::MartianSource),
        martians.len() as u64
    );
    assert_eq!(rig.workers[0].state().conns.len(), 0);
    // An honest client still gets through.
    rig.send(
        0,
        0,
        tcp_frame(ip("10.0.0.2"), 4003, ip("10.0.0.100"), 80, true, b""),
    );
    rig.poll_all(1);
    assert_eq!(rig.take(0, 1).len(), 1);
}

/// A NAT connection from 10.0.0.2:`client_port` to the VIP, opened on the worker: the request as it left.
fn open_nat_connection(rig: &mut Rig, client_port: u16) -> Vec<u8> {
    rig.send(
        0,
        0,
        tcp_frame(ip("10.0.0.2"), client_port, ip("10.0.0.100"), 80, true, b""),
    );
    rig.poll_all(1);
    rig.take(0, 1).pop().expect("the SYN reaches a backend")
}

/// `frame` addressed to port `port`'s MAC (an attacker on that side sends to the MAC it sees there).
fn to_port(port: usize, mut frame: Vec<u8>) -> Vec<u8> {
    frame[0..6].copy_from_slice(&[PORT0_MAC, PORT1_MAC][port]);
    frame
}

/// A TCP segment from `src` to `dst` with `flags` set by `build`, in an Ethernet frame to the port.
fn segment_v4(
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    build: impl FnOnce(etherparse::PacketBuilderStep<etherparse::TcpHeader>, &mut Vec<u8>),
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.0, dst.0) else {
        unreachable!()
    };
    let mut out = Vec::new();
    build(
        PacketBuilder::ethernet2([2, 0xbe, 0, 0, 0, 11], PORT1_MAC)
            .ipv4(s.octets(), d.octets(), 64)
            .tcp(src.1, dst.1, 9, 1000),
        &mut out,
    );
    out
}

#[test]
fn a_spoofed_backend_reply_on_the_client_port_is_dropped_and_the_connection_untouched() {
    let mut rig = rig(&spec(ForwardingMode::Nat, 1, true), 1);
    let request = open_nat_connection(&mut rig, 31000);
    let (client, backend, client_port, backend_port, ..) = read(&request);
    // A blind reset claiming to be the backend's, sent from the client side.
    let reset = segment_v4((backend, backend_port), (client, client_port), |b, out| {
        b.rst().write(out, b"").unwrap()
    });
    rig.send(0, 0, to_port(0, reset));
    rig.poll_all(1);
    assert!(rig.take(0, 0).is_empty() && rig.take(0, 1).is_empty());
    assert_eq!(rig.workers[0].stats().drops(DropReason::ReplyWrongPort), 1);
    // The backend's own answer, from its side, still goes back to the client.
    let answer = segment_v4((backend, backend_port), (client, client_port), |b, out| {
        b.syn().ack(2).write(out, b"").unwrap()
    });
    rig.send(0, 1, answer);
    rig.poll_all(1);
    let back = rig.take(0, 0);
    assert_eq!(back.len(), 1);
    let (src, dst, sport, dport, ..) = read(&back[0]);
    assert_eq!(
        (src, sport, dst, dport),
        (ip("10.0.0.100"), 80, client, client_port)
    );
}

#[test]
fn a_first_fragment_claiming_a_backend_is_not_relayed_without_a_connection() {
    let mut rig = rig(&spec(ForwardingMode::Nat, 1, true), 1);
    for port in [0, 1] {
        // From a backend's address and service port to an arbitrary host, more fragments flag set.
        let mut fragment = segment_v4(
            (ip("10.1.0.11"), 8080),
            (ip("198.51.100.9"), 5555),
            |b, out| b.ack(1).write(out, b"relay me now").unwrap(),
        );
        fragment[20] = 0x20;
        fix_ipv4_checksum(&mut fragment);
        rig.send(0, port, to_port(port, fragment));
    }
    rig.poll_all(1);
    assert!(rig.take(0, 0).is_empty() && rig.take(0, 1).is_empty());
    assert_eq!(rig.workers[0].stats().drops(DropReason::NoConnection), 2);
}

/// An ICMPv4 port unreachable from `from` to `to`, quoting the first 28 bytes of the IPv4 packet in `quoted`.
fn port_unreachable(from: &str, to: &str, quoted: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(from), ip(to)) else {
        unreachable!()
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0xbe, 0, 0, 0, 0xfe], PORT1_MAC)
        .ipv4(s.octets(), d.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut out, &quoted[14..14 + 28])
        .unwrap();
    out
}

#[test]
fn an_icmp_error_is_taken_only_for_the_quoted_sender_and_from_the_side_it_concerns() {
    let mut rig = rig(&spec(ForwardingMode::Nat, 1, true), 1);
    let request = open_nat_connection(&mut rig, 32000);
    // Addressed to the VIP, not to the client who sent the quoted request.
    rig.send(0, 1, port_unreachable("10.1.0.254", "10.0.0.100", &request));
    // Addressed right, but arriving from the client side while the request went to the backend side.
    rig.send(
        0,
        0,
        to_port(0, port_unreachable("10.1.0.254", "10.0.0.2", &request)),
    );
    rig.poll_all(1);
    assert!(rig.take(0, 0).is_empty() && rig.take(0, 1).is_empty());
    let stats = rig.workers[0].stats();
    assert_eq!(stats.drops(DropReason::IcmpErrorMisaddressed), 1);
    assert_eq!(stats.drops(DropReason::IcmpErrorWrongPort), 1);
    // From the backend side it reaches the client, mapped like the flow.
    rig.send(0, 1, port_unreachable("10.1.0.254", "10.0.0.2", &request));
    rig.poll_all(1);
    let back = rig.take(0, 0);
    assert_eq!(back.len(), 1);
    assert_eq!(&back[0][0..6], &CLIENT_MAC);
}

#[test]
fn ipv6_with_a_type_0_routing_header_is_dropped_as_source_routed() {
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
    let syn = tcp_frame(ip("fd00::2"), 4004, ip("fd00::100"), 80, true, b"");
    // A routing header (next header TCP, length 2: 24 bytes) of `kind`, segments left 1, one address, inserted
    // after the fixed header. The TCP checksum does not cover extension headers.
    let with_routing_header = |kind: u8| {
        let mut out = syn[..54].to_vec();
        out[20] = 43;
        let payload = u16::from_be_bytes([out[18], out[19]]) + 24;
        out[18..20].copy_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[6, 2, kind, 1, 0, 0, 0, 0]);
        out.extend_from_slice(&ip6_octets("fd00::100"));
        out.extend_from_slice(&syn[54..]);
        out
    };
    rig.send(0, 0, with_routing_header(0));
    rig.poll_all(1);
    assert!(rig.take(0, 1).is_empty());
    assert_eq!(rig.workers[0].stats().drops(DropReason::SourceRouted), 1);
    assert_eq!(rig.workers[0].state().conns.len(), 0);
}

fn ip6_octets(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

#[test]
fn a_frame_to_another_hosts_mac_is_dropped_and_counted() {
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
    let mut stranger = tcp_frame(ip("10.0.0.2"), 5, ip("10.0.0.100"), 80, true, b"");
    stranger[0..6].copy_from_slice(&[2, 0x77, 0, 0, 0, 1]);
    // In one burst: the stranger, a malformed frame, and the same SYN to the port's MAC, which is balanced.
    let syn = tcp_frame(ip("10.0.0.2"), 5, ip("10.0.0.100"), 80, true, b"");
    let mut malformed = syn.clone();
    malformed[14] = 0x46;
    let all_bytes = (stranger.len() + malformed.len() + syn.len()) as u64;
    rig.send(0, 0, stranger);
    rig.send(0, 0, malformed);
    rig.send(0, 0, syn);
    rig.poll_all(1);
    assert_eq!(rig.take(0, 1).len(), 1);
    let stats = rig.workers[0].stats();
    assert_eq!(stats.drops(DropReason::NotOurMac), 1);
    assert_eq!(stats.drops(DropReason::Malformed), 1);
    // Received bytes count every frame, dropped or not.
    assert_eq!(
        stats.rx_bytes.load(std::sync::atomic::Ordering::Relaxed),
        all_bytes
    );
}

/// An ICMP echo request from the client to port 0's address (10.0.0.1), carrying `payload`.
fn echo_request_to_port0(payload: &[u8]) -> Vec<u8> {
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, PORT0_MAC)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut echo, payload)
        .unwrap();
    echo
}

/// `frame` sent to the broadcast MAC instead of the port's.
fn to_broadcast(mut frame: Vec<u8>) -> Vec<u8> {
    frame[0..6].fill(0xff);
    frame
}

#[test]
fn answers_to_frames_sent_to_the_broadcast_mac_come_from_the_ports_mac() {
    // An echo request for the port's address, and a packet too big for the tunnel, both sent to ff:ff:ff:ff:ff:ff:
    // the answers leave from the port's MAC, never from the broadcast address the requests were sent to.
    let mut rig = rig(&spec(ForwardingMode::Tun, 1, true), 1);
    let echo = echo_request_to_port0(b"ping");
    rig.send(0, 0, to_broadcast(echo));
    rig.send(
        0,
        0,
        to_broadcast(tcp_frame(
            ip("fd00::2"),
            7000,
            ip("fd00::100"),
            80,
            true,
            &[7u8; 1430],
        )),
    );
    rig.poll_all(1);
    let answers = rig.take(0, 0);
    assert_eq!(answers.len(), 2, "{:?}", rig.workers[0].stats());
    for answer in &answers {
        assert_eq!(&answer[0..6], &CLIENT_MAC);
        assert_eq!(&answer[6..12], &PORT0_MAC);
    }
    let kinds: Vec<_> = answers
        .iter()
        .map(
            |answer| match SlicedPacket::from_ethernet(answer).unwrap().transport {
                Some(TransportSlice::Icmpv4(icmp)) => icmp.type_u8(),
                Some(TransportSlice::Icmpv6(icmp)) => icmp.type_u8(),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(kinds, [0, 2], "an echo reply and a packet-too-big");
}

#[test]
fn a_fragment_with_more_to_come_that_is_not_a_multiple_of_8_bytes_is_dropped_as_malformed() {
    // Fragments are cut at multiples of 8 bytes (RFC 791; RFC 8200 says discard): a first fragment of 22 bytes
    // with more to come cannot be put together with any other and goes nowhere, in either family.
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
    let mut v4 = tcp_frame(ip("10.0.0.2"), 7100, ip("10.0.0.100"), 80, true, b"ab");
    v4[20] = 0x20;
    fix_ipv4_checksum(&mut v4);
    let whole = tcp_frame(ip("fd00::2"), 7100, ip("fd00::100"), 80, true, b"ab");
    // The same segment behind a fragment header: offset 0, more to come.
    let mut v6 = whole[..54].to_vec();
    v6[20] = 44;
    v6.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 9]);
    v6.extend_from_slice(&whole[54..]);
    let payload = (v6.len() - 54) as u16;
    v6[18..20].copy_from_slice(&payload.to_be_bytes());
    for frame in [v4, v6] {
        rig.send(0, 0, frame);
    }
    rig.poll_all(1);
    assert!(rig.take(0, 1).is_empty(), "nothing reaches a backend");
    assert_eq!(rig.workers[0].stats().drops(DropReason::Malformed), 2);
}

/// ARP replies from MAC `mac` to every ARP request among `frames` (as each asked backend would answer).
fn answer_arp_requests(frames: &[Vec<u8>], mac: [u8; 6]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter(|frame| frame[12..14] == [0x08, 0x06])
        .map(|request| {
            let asked = etherparse::ArpPacketSlice::from_slice(&request[14..]).unwrap();
            let target: [u8; 4] = asked.target_protocol_addr().try_into().unwrap();
            let sender: [u8; 4] = asked.sender_protocol_addr().try_into().unwrap();
            let mut reply = vec![0u8; 60];
            let len =
                packet::build_arp_request(&mut reply, mac, target.into(), sender.into(), None)
                    .unwrap();
            reply.truncate(len);
            reply[0..6].copy_from_slice(&PORT1_MAC);
            reply[21] = 2; // a reply
            reply[32..38].copy_from_slice(&PORT1_MAC);
            reply
        })
        .collect()
}

#[test]
fn a_used_neighbour_is_probed_again_before_it_expires_and_traffic_never_waits() {
    // The neighbour table keeps an answer reachable for 30 s, then stale for 30 s (used while asked again), then
    // forgets it. A flow that runs for three minutes to a backend that answers every request must never wait for
    // a resolution: the worker asks again once the entry is stale and the answer makes it reachable again.
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, false), 1);
    let backend_mac = [2, 0xbe, 0, 0, 0, 0x42];
    rig.workers[0].poll(0);
    for reply in answer_arp_requests(&rig.take(0, 1), backend_mac) {
        rig.send(0, 1, reply);
    }
    rig.workers[0].poll(1);
    let mut probes_after_start = 0;
    for second in 1..=180u64 {
        let now = second * 1000;
        rig.send(
            0,
            0,
            tcp_frame(
                ip("10.0.0.2"),
                4000,
                ip("10.0.0.100"),
                80,
                second == 1,
                b"x",
            ),
        );
        rig.workers[0].poll(now);
        let (requests, forwarded) = split_arp(rig.take(0, 1));
        assert_eq!(
            forwarded.len(),
            1,
            "second {second}: the frame left at once"
        );
        assert_eq!(&forwarded[0][0..6], &backend_mac);
        probes_after_start += requests.len();
        // The backends answer what was asked.
        for reply in answer_arp_requests(&requests, backend_mac) {
            rig.send(0, 1, reply);
        }
    }
    assert!(probes_after_start > 0, "stale entries were asked again");
    let stats = rig.workers[0].stats();
    assert_eq!(stats.drops(DropReason::NeighborUnresolved), 0);
    assert_eq!(
        rig.neighbors.lookup(1, ip("10.1.0.11"), 180_000),
        balancer::neighbor::Neighbor::Reachable(backend_mac)
    );
}

/// The 802.1Q tag of `frame`: its VLAN id, if it carries exactly one tag.
fn vlan_of(frame: &[u8]) -> Option<u16> {
    (frame[12..14] == [0x81, 0x00] && frame[16..18] != [0x81, 0x00])
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// `frame` without its (single) tag.
fn untagged(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&frame[16..]);
    out
}

#[test]
fn a_port_on_a_vlan_takes_only_its_tag_and_tags_all_it_sends() {
    // Port 0 (clients) is on VLAN 10, port 1 (backends) on VLAN 20, in NAT: a tagged SYN goes out retagged, the
    // backend's tagged reply comes back with the client's tag, answers and resolution requests carry the port's
    // tag, and frames untagged or of another VLAN are dropped as vlan_tagged.
    let mut rig = rig_on_vlans(
        &spec(ForwardingMode::Nat, 1, false),
        1,
        [Some(10), Some(20)],
    );
    let syn = tcp_frame(ip("10.0.0.2"), 5000, ip("10.0.0.100"), 80, true, b"hi");
    let v6_syn = tcp_frame(ip("fd00::2"), 5000, ip("fd00::100"), 80, true, b"hi");
    rig.send(0, 0, with_vlan_tags(&syn, &[10]));
    rig.send(0, 0, with_vlan_tags(&v6_syn, &[10]));
    // Refused: untagged, another VLAN, two tags.
    rig.send(
        0,
        0,
        tcp_frame(ip("10.0.0.2"), 5001, ip("10.0.0.100"), 80, true, b""),
    );
    rig.send(0, 0, with_vlan_tags(&syn, &[11]));
    rig.send(0, 0, with_vlan_tags(&syn, &[10, 10]));
    rig.poll_all(1);
    assert_eq!(rig.workers[0].stats().drops(DropReason::VlanTagged), 3);
    // The SYNs wait for their backends' MACs: ARP requests and neighbour solicitations leave tagged 20.
    let (requests, others) =
        split_arp(rig.take(0, 1).iter().map(|frame| untagged(frame)).collect());
    assert!(others.is_empty());
    assert!(!requests.is_empty());
    let backend_mac = [2, 0xbe, 0, 0, 0, 0x20];
    for request in &requests {
        let answer = if request[12..14] == [0x08, 0x06] {
            answer_arp_requests(std::slice::from_ref(request), backend_mac).remove(0)
        } else {
            let asked = packet::parse_frame(request).unwrap();
            let mut advert = request.clone();
            let len =
                packet::answer_neighbor_solicitation(&mut advert, &asked, backend_mac).unwrap();
            advert.truncate(len);
            advert
        };
        rig.send(0, 1, with_vlan_tags(&answer, &[20]));
    }
    rig.poll_all(2);
    let to_backends = rig.take(0, 1);
    let forwarded: Vec<_> = to_backends
        .iter()
        .filter(|frame| {
            let frame = untagged(frame);
            frame[12..14] != [0x08, 0x06] && split_arp(vec![frame.clone()]).0.is_empty()
        })
        .collect();
    assert_eq!(forwarded.len(), 2, "{:?}", rig.workers[0].stats());
    for frame in &to_backends {
        assert_eq!(
            vlan_of(frame),
            Some(20),
            "everything sent on port 1 is tagged 20"
        );
    }
    // The backend's reply to the IPv4 SYN, tagged 20, reaches the client tagged 10, from the VIP.
    let to_backend = untagged(
        forwarded
            .iter()
            .find(|f| f[16..18] == [0x08, 0x00])
            .unwrap(),
    );
    let (src, dst, sport, dport, _, payload, valid) = read(&to_backend);
    assert!(valid);
    assert_eq!(payload, b"hi");
    let reply = {
        let mut out = Vec::new();
        let (IpAddr::V4(s), IpAddr::V4(d)) = (dst, src) else {
            unreachable!()
        };
        PacketBuilder::ethernet2(backend_mac, PORT1_MAC)
            .ipv4(s.octets(), d.octets(), 64)
            .tcp(dport, sport, 7, 1000)
            .syn()
            .ack(2)
            .write(&mut out, b"")
            .unwrap();
        out
    };
    rig.send(0, 1, with_vlan_tags(&reply, &[20]));
    // An ARP request for the VIP on port 0, tagged 10: answered tagged 10.
    let mut who_has = vec![0u8; 60];
    let len = packet::build_arp_request(
        &mut who_has,
        CLIENT_MAC,
        [10, 0, 0, 2].into(),
        [10, 0, 0, 100].into(),
        None,
    )
    .unwrap();
    who_has.truncate(len);
    rig.send(0, 0, with_vlan_tags(&who_has, &[10]));
    rig.poll_all(1);
    let to_clients = rig.take(0, 0);
    assert_eq!(to_clients.len(), 2, "{:?}", rig.workers[0].stats());
    for frame in &to_clients {
        assert_eq!(
            vlan_of(frame),
            Some(10),
            "everything sent on port 0 is tagged 10"
        );
    }
    let back = to_clients
        .iter()
        .map(|frame| untagged(frame))
        .find(|frame| frame[12..14] == [0x08, 0x00])
        .unwrap();
    let (src, dst, sport, dport, _, _, valid) = read(&back);
    assert!(valid);
    assert_eq!(
        (src, sport, dst, dport),
        (ip("10.0.0.100"), 80, ip("10.0.0.2"), 5000)
    );
    assert_eq!(rig.workers[0].stats().drops(DropReason::VlanTagged), 3);
}

#[test]
fn an_untagged_port_still_drops_tagged_frames() {
    let mut rig = rig_on_vlans(&spec(ForwardingMode::Dr, 1, true), 1, [None, Some(20)]);
    let syn = tcp_frame(ip("10.0.0.2"), 5000, ip("10.0.0.100"), 80, true, b"");
    rig.send(0, 0, with_vlan_tags(&syn, &[20]));
    rig.send(0, 0, syn);
    rig.poll_all(1);
    assert_eq!(rig.workers[0].stats().drops(DropReason::VlanTagged), 1);
    let out = rig.take(0, 1);
    let forwarded: Vec<_> = out.iter().filter(|f| f[16..18] == [0x08, 0x00]).collect();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(vlan_of(forwarded[0]), Some(20));
}

#[test]
fn an_echo_reply_carries_no_flags_whatever_the_request_had() {
    // A request with the reserved flag and don't-fragment set: the reply is a datagram of its own, its flags and
    // offset zero (the reserved bit must never leave sluice in what it originates).
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
    let mut echo = echo_request_to_port0(b"ping");
    echo[20] = 0xc0;
    fix_ipv4_checksum(&mut echo);
    rig.send(0, 0, echo);
    rig.poll_all(1);
    let answers = rig.take(0, 0);
    assert_eq!(answers.len(), 1, "{:?}", rig.workers[0].stats());
    assert_eq!(&answers[0][20..22], &[0, 0]);
    let sliced = SlicedPacket::from_ethernet(&answers[0]).unwrap();
    let Some(NetSlice::Ipv4(v4)) = sliced.net else {
        panic!("IPv4")
    };
    let header = v4.header().to_header();
    assert_eq!(header.calc_header_checksum(), header.header_checksum);
}

#[test]
fn a_fragmented_echo_request_is_not_answered_from_its_first_fragment() {
    // The first fragment of a 1,000-byte echo request holds part of the message its checksum covers: answering it
    // in place sent a reply with a bad checksum. Without reassembly (and without a kernel path) it is dropped.
    let mut rig = rig(&spec(ForwardingMode::Dr, 1, true), 1);
    let echo = echo_request_to_port0(&[0x5a; 992]);
    // Its first 512 bytes of ICMP, more to come.
    let mut first = echo[..14 + 20 + 512].to_vec();
    first[16..18].copy_from_slice(&(20u16 + 512).to_be_bytes());
    first[20] = 0x20;
    fix_ipv4_checksum(&mut first);
    rig.send(0, 0, first);
    rig.poll_all(1);
    assert!(
        rig.take(0, 0).is_empty(),
        "no answer from part of a request"
    );
    assert_eq!(
        rig.workers[0]
            .stats()
            .drops(DropReason::FragmentUnsupported),
        1
    );
}

/// Once the connection table outgrows a core's cache, bursts that open connections are staged from the frames'
/// layouts, which the plain frames get then. Bursts that mix new flows with established ones forward every frame,
/// and each new flow goes to the backend a worker with a small table (which stages no new flow) picks for it.
#[test]
fn bursts_that_open_connections_in_a_table_beyond_the_cache_forward_every_frame() {
    const FLOWS: u16 = 8_400;
    let spec = spec(ForwardingMode::Dr, 1, true);
    let mut large = rig_with(&spec, 1, [None, None], WorkerConfig::default(), 16_384);
    let (client, vip) = (ip("10.0.0.2"), ip("10.0.0.100"));
    let mut backend_of = std::collections::HashMap::new();
    let mut forwarded = 0;
    let mut sent = 0;
    for flow in 0..FLOWS {
        // Each burst of 32: the new flows' SYNs and the ACKs of flows opened 64 flows before.
        large.send(0, 0, tcp_frame(client, 1_000 + flow, vip, 80, true, b""));
        sent += 1;
        if flow >= 64 {
            large.send(
                0,
                0,
                tcp_frame(client, 1_000 + flow - 64, vip, 80, false, b""),
            );
            sent += 1;
        }
        if flow % 16 == 15 || flow + 1 == FLOWS {
            large.poll_all(1);
            for frame in large.take(0, 1) {
                let (_, _, client_port, _, _, _, _) = read(&frame);
                let mac: [u8; 6] = frame[..6].try_into().unwrap();
                assert_eq!(*backend_of.entry(client_port).or_insert(mac), mac);
                forwarded += 1;
            }
        }
    }
    large.poll_all(4);
    forwarded += large.take(0, 1).len();
    assert_eq!(forwarded, sent);
    assert_eq!(large.workers[0].state().conns.len(), usize::from(FLOWS));
    // The flows opened with the table beyond the cache, opened again in a small table.
    let mut small = rig(&spec, 1);
    for flow in (FLOWS - 200)..FLOWS {
        small.send(0, 0, tcp_frame(client, 1_000 + flow, vip, 80, true, b""));
    }
    small.poll_all(20);
    let again = small.take(0, 1);
    assert_eq!(again.len(), 200);
    for frame in again {
        let (_, _, client_port, _, _, _, _) = read(&frame);
        assert_eq!(
            frame[..6],
            backend_of[&client_port],
            "client port {client_port}"
        );
    }
}
