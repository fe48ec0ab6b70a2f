//! The kernel exception path on in-memory ports: what is not balancer traffic reaches the ingress port's kernel
//! interface, ARP and neighbour discovery are copied (and still answered and learned), what the kernel sends
//! leaves through its own port ahead of data, nothing crosses from one port to another, and a worker behind sheds
//! data ahead of the control frames queued after it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use balancer::conntrack::{ConnTable, Timeouts};
use balancer::decision::{DropReason, WorkerPlace, WorkerState, WorkerTables};
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::PortPartition;
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use crossbeam::channel::bounded;
use dataplane::io::memory::{Inbox, MemoryFrame, MemoryRx, MemoryTx, Outbox};
use dataplane::io::Frame;
use dataplane::kernel::{KernelPath, KernelQueues};
use dataplane::worker::{HandoffLinks, PortQueues, TableUpdates, Worker, WorkerConfig};
use etherparse::PacketBuilder;

mod common;
use common::with_vlan_tags;

const PORT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
const ROUTER_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn spec(exception: bool) -> SnapshotSpec {
    SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: PORT_MACS[0],
                mtu: 1500,
                addresses: vec![(ip("10.0.0.1"), 24), (ip("fd00::1"), 64)],
            },
            PortSpec {
                mac: PORT_MACS[1],
                mtu: 1500,
                addresses: vec![(ip("10.1.0.1"), 24)],
            },
        ],
        gateways: vec![],
        tunnel_source_v4: None,
        tunnel_source_v6: None,
        local_addresses: vec![],
        local_ports: PortPartition::new(1024, 65535, 1).unwrap(),
        maglev_size: TableSize::new(251).unwrap(),
        services: vec![ServiceSpec {
            key: ServiceKey {
                vip: ip("10.0.0.100"),
                port: 80,
                protocol: 6,
            },
            mode: ForwardingMode::Dr,
            scheduler: SchedulerKind::Mh,
            persistence: None,
            backends: vec![Backend {
                id: BackendId(1),
                addr: ip("10.1.0.11"),
                port: 80,
                weight: 1,
                mac: Some([2, 0xbe, 0, 0, 0, 11]),
            }],
        }],
        kernel_exception_path: exception,
    }
}

struct Side {
    inbox: Inbox,
    outbox: Outbox,
}

fn side() -> Side {
    Side {
        inbox: Arc::new(Mutex::new(VecDeque::new())),
        outbox: Arc::new(Mutex::new(Vec::new())),
    }
}

fn queues(side: &Side) -> (MemoryRx, MemoryTx) {
    (
        MemoryRx {
            inbox: Arc::clone(&side.inbox),
        },
        MemoryTx {
            outbox: Arc::clone(&side.outbox),
            capacity: 64,
            pool: 1000,
        },
    )
}

struct Rig {
    worker: Worker<MemoryRx, MemoryTx>,
    ports: Vec<Side>,
    /// Port 0 has a kernel interface; port 1 has none (so that its traffic for the kernel is a counted drop).
    kernel: Side,
    neighbors: Arc<NeighborTable>,
}

fn rig() -> Rig {
    rig_on(WorkerConfig::default(), None)
}

fn rig_with(config: WorkerConfig) -> Rig {
    rig_on(config, None)
}

/// The rig with port 0 (the one with a kernel interface) on `vlan`.
fn rig_with_port0_vlan(vlan: Option<u16>) -> Rig {
    rig_on(WorkerConfig::default(), vlan)
}

fn rig_on(config: WorkerConfig, vlan: Option<u16>) -> Rig {
    let snapshot = Arc::new(Snapshot::build(&spec(true), 1).unwrap());
    let neighbors = Arc::new(NeighborTable::new(64));
    let state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::new(1024, Timeouts::default()).unwrap(),
        load: LoadTable::new(16),
        persistence: PersistenceTable::new(16),
        neighbors: Arc::clone(&neighbors),
        exceptions: balancer::exceptions::ExceptionTable::disabled(),
    };
    let ports: Vec<Side> = (0..2).map(|_| side()).collect();
    let port_queues = ports
        .iter()
        .zip(PORT_MACS)
        .zip([vlan, None])
        .map(|((side, mac), vlan)| {
            let (rx, tx) = queues(side);
            PortQueues { rx, tx, mac, vlan }
        })
        .collect();
    let (_publish, incoming) = bounded(1);
    let (retired, _retired_rx) = bounded(1);
    let mut worker = Worker::new(
        state,
        WorkerTables::new(snapshot),
        port_queues,
        HandoffLinks::alone(),
        TableUpdates { incoming, retired },
        config,
    );
    let kernel = side();
    let (rx, tx) = queues(&kernel);
    worker.attach_kernel_path(KernelPath::new(vec![Some(KernelQueues { rx, tx }), None]));
    Rig {
        worker,
        ports,
        kernel,
        neighbors,
    }
}

impl Rig {
    fn send(&self, port: usize, frame: &[u8]) {
        self.ports[port]
            .inbox
            .lock()
            .unwrap()
            .push_back(MemoryFrame::from_bytes(frame));
    }

    fn kernel_sends(&self, frame: &[u8]) {
        self.kernel
            .inbox
            .lock()
            .unwrap()
            .push_back(MemoryFrame::from_bytes(frame));
    }

    fn take(outbox: &Outbox) -> Vec<Vec<u8>> {
        outbox
            .lock()
            .unwrap()
            .drain(..)
            .map(|frame| frame.data().to_vec())
            .collect()
    }

    fn port_out(&self, port: usize) -> Vec<Vec<u8>> {
        Rig::take(&self.ports[port].outbox)
    }

    fn kernel_in(&self) -> Vec<Vec<u8>> {
        Rig::take(&self.kernel.outbox)
    }
}

fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
) -> Vec<u8> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (ip(src), ip(dst)) else {
        panic!("IPv4 only");
    };
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64000)
        .syn();
    let mut out = Vec::new();
    builder.write(&mut out, &[]).unwrap();
    out
}

fn icmp_echo(src: &str, dst: &str, reply: bool) -> Vec<u8> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (ip(src), ip(dst)) else {
        panic!("IPv4 only");
    };
    let builder =
        PacketBuilder::ethernet2(ROUTER_MAC, PORT_MACS[0]).ipv4(src.octets(), dst.octets(), 64);
    let builder = if reply {
        builder.icmpv4_echo_reply(7, 1)
    } else {
        builder.icmpv4_echo_request(7, 1)
    };
    let mut out = Vec::new();
    builder.write(&mut out, b"ping").unwrap();
    out
}

fn arp(operation_reply: bool, sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0u8; 60];
    let len = packet::build_arp_request(&mut frame, sender_mac, sender.into(), target.into(), None)
        .unwrap();
    frame.truncate(len);
    if operation_reply {
        // opcode 2, addressed to the port.
        frame[0..6].copy_from_slice(&PORT_MACS[0]);
        frame[20..22].copy_from_slice(&2u16.to_be_bytes());
        frame[32..38].copy_from_slice(&PORT_MACS[0]);
    }
    frame
}

#[test]
fn traffic_for_the_node_reaches_the_kernel_of_its_port_and_nothing_else() {
    let mut rig = rig();
    // BGP to the node's own address on port 0, and a frame for a stranger on port 0.
    let bgp = tcp(
        ROUTER_MAC,
        PORT_MACS[0],
        "10.0.0.254",
        40000,
        "10.0.0.1",
        179,
    );
    let stranger = tcp(
        ROUTER_MAC,
        PORT_MACS[0],
        "10.0.0.254",
        40001,
        "192.0.2.1",
        22,
    );
    rig.send(0, &bgp);
    rig.send(0, &stranger);
    rig.worker.poll(1000);
    assert_eq!(rig.kernel_in(), vec![bgp.clone(), stranger.clone()]);
    assert!(rig.port_out(0).is_empty() && rig.port_out(1).is_empty());
    // Port 1 has no kernel interface: the same frame there (to port 1's MAC) is a counted drop, never sent.
    let mut stranger_on_1 = stranger.clone();
    stranger_on_1[0..6].copy_from_slice(&PORT_MACS[1]);
    rig.send(1, &stranger_on_1);
    rig.worker.poll(1001);
    assert!(rig.kernel_in().is_empty() && rig.port_out(0).is_empty() && rig.port_out(1).is_empty());
    let stats = rig.worker.stats();
    assert_eq!(stats.drops(DropReason::NotOurs), 1);
    assert_eq!(stats.to_kernel.load(Ordering::Relaxed), 2);
    let kernel = rig.worker.kernel_stats().unwrap();
    assert_eq!(kernel.to_kernel.load(Ordering::Relaxed), 2);
    // Balancer traffic still goes to the backend, not to the kernel.
    rig.send(
        0,
        &tcp(
            ROUTER_MAC,
            PORT_MACS[0],
            "192.0.2.9",
            5555,
            "10.0.0.100",
            80,
        ),
    );
    rig.worker.poll(1002);
    assert_eq!(rig.port_out(1).len(), 1);
    assert!(rig.kernel_in().is_empty());
}

#[test]
fn arp_is_copied_to_the_kernel_and_still_answered() {
    let mut rig = rig();
    let request = arp(false, ROUTER_MAC, [10, 0, 0, 254], [10, 0, 0, 1]);
    rig.send(0, &request);
    rig.worker.poll(1000);
    assert_eq!(
        rig.kernel_in(),
        vec![request.clone()],
        "the request is copied"
    );
    let answers = rig.port_out(0);
    assert_eq!(answers.len(), 1, "and sluice answers it");
    assert_eq!(&answers[0][0..6], &ROUTER_MAC);
    // The router's answer to the kernel's own request: copied to the kernel; sluice, which forwards nothing
    // through that router (no gateway is configured), does not learn it.
    let reply = arp(true, ROUTER_MAC, [10, 0, 0, 254], [10, 0, 0, 1]);
    rig.send(0, &reply);
    rig.worker.poll(1001);
    assert_eq!(rig.kernel_in(), vec![reply]);
    assert_eq!(
        rig.neighbors.lookup(0, ip("10.0.0.254"), 1001),
        balancer::neighbor::Neighbor::Unresolved
    );
    assert_eq!(rig.worker.stats().drops(DropReason::NeighborUnwanted), 1);
    let kernel = rig.worker.kernel_stats().unwrap();
    assert_eq!(kernel.copied.load(Ordering::Relaxed), 2);
    // Echo requests are answered by sluice; echo replies to our address (the kernel's pings) go to the kernel.
    rig.send(0, &icmp_echo("10.0.0.254", "10.0.0.1", false));
    let pong = icmp_echo("10.0.0.254", "10.0.0.1", true);
    rig.send(0, &pong);
    rig.worker.poll(1002);
    assert_eq!(rig.port_out(0).len(), 1);
    assert_eq!(rig.kernel_in(), vec![pong]);
}

#[test]
fn what_the_kernel_sends_leaves_through_its_port_ahead_of_data() {
    let mut rig = rig();
    // Echo requests to the port are answered out of port 0: data of this turn for the same transmit queue.
    for _ in 0..20 {
        rig.send(0, &icmp_echo("10.0.0.254", "10.0.0.1", false));
    }
    let keepalive = tcp(
        PORT_MACS[0],
        ROUTER_MAC,
        "10.0.0.1",
        179,
        "10.0.0.254",
        40000,
    );
    rig.kernel_sends(&keepalive);
    rig.worker.poll(1000);
    let out = rig.port_out(0);
    assert_eq!(out.len(), 21);
    assert_eq!(
        out[0], keepalive,
        "the kernel's frame goes first, unchanged"
    );
    assert!(rig.port_out(1).is_empty(), "and only out of its own port");
    let kernel = rig.worker.kernel_stats().unwrap();
    assert_eq!(kernel.from_kernel.load(Ordering::Relaxed), 1);
    assert_eq!(kernel.from_kernel_dropped.load(Ordering::Relaxed), 0);
}

/// `count` new connections to the VIP's service, arriving on `port`.
fn data_frames(port: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            tcp(
                ROUTER_MAC,
                PORT_MACS[port],
                &format!("192.0.2.{}", 1 + i % 200),
                10_000 + i as u16,
                "10.0.0.100",
                80,
            )
        })
        .collect()
}

fn queued(rig: &Rig, port: usize) -> usize {
    rig.ports[port].inbox.lock().unwrap().len()
}

#[test]
fn a_worker_behind_sheds_data_and_keeps_the_control_frames_behind_it() {
    // Behind from the first full burst, so that one turn shows the whole of it.
    let config = WorkerConfig {
        overload_after_full_turns: 1,
        ..WorkerConfig::default()
    };
    let mut rig = rig_with(config);
    // A queue far longer than a burst, with a BGP segment and an ARP request deep inside it.
    let data = data_frames(0, config.burst + 200);
    let bgp = tcp(
        ROUTER_MAC,
        PORT_MACS[0],
        "10.0.0.254",
        40000,
        "10.0.0.1",
        179,
    );
    let request = arp(false, ROUTER_MAC, [10, 0, 0, 254], [10, 0, 0, 1]);
    for (i, frame) in data.iter().enumerate() {
        rig.send(0, frame);
        if i == 100 {
            rig.send(0, &bgp);
        }
        if i == 150 {
            rig.send(0, &request);
        }
    }
    rig.worker.poll(1000);
    // One turn: the first burst forwarded as usual; the rest read (the queue is drained), the control frames
    // handled, the data shed.
    assert_eq!(queued(&rig, 0), 0);
    assert_eq!(rig.port_out(1).len(), config.burst);
    assert_eq!(rig.kernel_in(), vec![bgp, request]);
    assert_eq!(rig.port_out(0).len(), 1, "the ARP request is answered");
    let stats = rig.worker.stats();
    assert_eq!(stats.drops(DropReason::OverloadShed), 200);
    assert_eq!(stats.rx.load(Ordering::Relaxed), config.burst as u64 + 202);
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), config.burst as u64);
    // Caught up: the next full burst is forwarded whole, with nothing shed.
    for frame in data_frames(0, config.burst) {
        rig.send(0, &frame);
    }
    rig.worker.poll(1001);
    assert_eq!(rig.port_out(1).len(), config.burst);
    assert_eq!(rig.worker.stats().drops(DropReason::OverloadShed), 200);
}

#[test]
fn shedding_reads_at_most_overload_bursts_more_and_only_on_ports_with_a_kernel_interface() {
    let config = WorkerConfig {
        overload_bursts: 2,
        overload_after_full_turns: 1,
        ..WorkerConfig::default()
    };
    let mut rig = rig_with(config);
    for frame in data_frames(0, config.burst * 10) {
        rig.send(0, &frame);
    }
    rig.worker.poll(1000);
    assert_eq!(
        queued(&rig, 0),
        config.burst * 7,
        "a burst forwarded, two shed"
    );
    assert_eq!(
        rig.worker.stats().drops(DropReason::OverloadShed),
        2 * config.burst as u64
    );
    // Port 1 has no kernel interface: a full burst there is throughput, not overload.
    for frame in data_frames(1, config.burst * 3) {
        rig.send(1, &frame);
    }
    let shed = rig.worker.stats().drops(DropReason::OverloadShed);
    rig.worker.poll(1001);
    assert_eq!(queued(&rig, 1), config.burst * 2);
    // (Port 0 shed its next two bursts in this turn too.)
    assert_eq!(
        rig.worker.stats().drops(DropReason::OverloadShed),
        shed + 2 * config.burst as u64
    );
    // overload_bursts = 0: never shed.
    let mut rig = rig_with(WorkerConfig {
        overload_bursts: 0,
        ..WorkerConfig::default()
    });
    for frame in data_frames(0, config.burst * 3) {
        rig.send(0, &frame);
    }
    rig.worker.poll(1000);
    assert_eq!(queued(&rig, 0), config.burst * 2);
    assert_eq!(rig.worker.stats().drops(DropReason::OverloadShed), 0);
}

#[test]
fn the_kernel_interface_of_a_port_on_a_vlan_sees_its_frames_untagged_and_what_it_sends_leaves_tagged(
) {
    let mut rig = rig_with_port0_vlan(Some(10));
    // A frame for the node (not balancer traffic) comes in tagged 10: the kernel gets it without the tag.
    let for_node = tcp(
        ROUTER_MAC,
        PORT_MACS[0],
        "10.0.0.254",
        179,
        "10.0.0.1",
        40000,
    );
    rig.send(0, &with_vlan_tags(&for_node, &[10]));
    rig.worker.poll(1);
    assert_eq!(rig.kernel_in(), vec![for_node]);
    // What the kernel sends out of the port leaves tagged 10.
    let from_kernel = tcp(
        PORT_MACS[0],
        ROUTER_MAC,
        "10.0.0.1",
        40000,
        "10.0.0.254",
        179,
    );
    rig.kernel_sends(&from_kernel);
    rig.worker.poll(2);
    let out: Vec<_> = rig
        .port_out(0)
        .into_iter()
        .filter(|frame| frame[16..18] == [0x08, 0x00])
        .collect();
    assert_eq!(out, vec![with_vlan_tags(&from_kernel, &[10])]);
}

/// A full burst alone is a clump of traffic, not overload: with the default setting, nothing is shed until bursts
/// have come back full for `overload_after_full_turns` turns in a row, and a turn that drains the queue starts the
/// count again.
#[test]
fn one_full_burst_is_not_overload() {
    let config = WorkerConfig::default();
    let turns = config.overload_after_full_turns as usize;
    let mut rig = rig_with(config);
    // Two full bursts and a partial one: forwarded over three turns, nothing shed.
    for frame in data_frames(0, config.burst * 2 + 5) {
        rig.send(0, &frame);
    }
    for now in 0..3 {
        rig.worker.poll(1000 + now);
    }
    assert_eq!(queued(&rig, 0), 0);
    assert_eq!(rig.port_out(1).len(), config.burst * 2 + 5);
    assert_eq!(rig.worker.stats().drops(DropReason::OverloadShed), 0);
    // A queue that stays full turn after turn: the turn that makes it `turns` in a row sheds.
    for frame in data_frames(0, config.burst * (turns + 4)) {
        rig.send(0, &frame);
    }
    for now in 0..turns as u64 - 1 {
        rig.worker.poll(2000 + now);
    }
    assert_eq!(rig.worker.stats().drops(DropReason::OverloadShed), 0);
    rig.worker.poll(3000);
    assert!(rig.worker.stats().drops(DropReason::OverloadShed) > 0);
}
