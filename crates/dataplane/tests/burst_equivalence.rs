//! Burst staging changes nothing a frame sees: the same random traffic through a worker that takes 32 frames per
//! burst (parsed and looked up together before any is decided) and through one that takes a single frame per poll
//! leaves the same frames, byte for byte, and the same drop counts, with random configuration updates, removed
//! backends and the passing of time in between.

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
use crossbeam::channel::{bounded, Receiver, Sender};
use dataplane::io::memory::{Inbox, MemoryFrame, MemoryRx, MemoryTx, Outbox};
use dataplane::io::Frame;
use dataplane::worker::{HandoffLinks, PortQueues, TableUpdates, Worker, WorkerConfig};
use etherparse::PacketBuilder;
use proptest::prelude::*;

const CLIENT_MAC: [u8; 6] = [2, 0xc1, 0, 0, 0, 1];
const PORT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Services of every mode on one VIP each; `present[i]` says whether backend i is configured.
fn spec(present: &[bool; 4], scheduler: SchedulerKind) -> SnapshotSpec {
    let modes = ForwardingMode::ALL;
    let services = modes
        .iter()
        .enumerate()
        .map(|(m, &mode)| ServiceSpec {
            key: ServiceKey {
                vip: IpAddr::V4([10, 0, 0, 100 + m as u8].into()),
                port: 80,
                protocol: 6,
            },
            mode,
            scheduler,
            persistence: None,
            backends: (0..4)
                .filter(|&b| present[b])
                .map(|b| Backend {
                    id: BackendId((m * 10 + b + 1) as u32),
                    addr: IpAddr::V4([10, 1, m as u8, 11 + b as u8].into()),
                    port: if matches!(mode, ForwardingMode::Nat | ForwardingMode::FullNat) {
                        8080
                    } else {
                        80
                    },
                    weight: 1 + b as u32,
                    mac: Some([2, 0xbe, 0, m as u8, 0, 11 + b as u8]),
                })
                .collect(),
        })
        .collect();
    SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: PORT_MACS[0],
                mtu: 1500,
                addresses: vec![(ip("10.0.0.1"), 24)],
            },
            PortSpec {
                mac: PORT_MACS[1],
                mtu: 1500,
                addresses: vec![(ip("10.1.0.1"), 16)],
            },
        ],
        gateways: vec![],
        tunnel_source_v4: Some(ip("10.1.0.1")),
        tunnel_source_v6: None,
        local_addresses: vec![ip("10.1.200.5")],
        local_ports: PortPartition::new(1024, 65535, 1).unwrap(),
        maglev_size: TableSize::new(251).unwrap(),
        services,
        kernel_exception_path: false,
    }
}

struct Lane {
    worker: Worker<MemoryRx, MemoryTx>,
    inbox: Inbox,
    outboxes: Vec<Outbox>,
    updates: Sender<WorkerTables>,
    _retired: Receiver<WorkerTables>,
}

fn lane(spec: &SnapshotSpec, burst: usize, capacity: usize) -> Lane {
    let neighbors = Arc::new(NeighborTable::new(64));
    neighbors.set_static(0, ip("10.0.0.2"), CLIENT_MAC).unwrap();
    let ports_alloc =
        PortAllocator::with_seed(spec.local_ports, 0, &spec.local_addresses, 7).unwrap();
    let state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::with_local_ports(capacity, Timeouts::default(), ports_alloc).unwrap(),
        load: LoadTable::new(256),
        persistence: PersistenceTable::new(64),
        neighbors,
        exceptions: balancer::exceptions::ExceptionTable::disabled(),
    };
    let inbox: Inbox = Arc::new(Mutex::new(VecDeque::new()));
    let outboxes: Vec<Outbox> = (0..2).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let ports = PORT_MACS
        .iter()
        .enumerate()
        .map(|(i, &mac)| PortQueues {
            rx: MemoryRx {
                inbox: if i == 0 {
                    Arc::clone(&inbox)
                } else {
                    Arc::new(Mutex::new(VecDeque::new()))
                },
            },
            tx: MemoryTx {
                outbox: Arc::clone(&outboxes[i]),
                capacity: 64,
                pool: 1 << 20,
            },
            mac,
            vlan: None,
        })
        .collect();
    let (updates, incoming) = bounded(8);
    let (retired, retired_rx) = bounded(8);
    let worker = Worker::new(
        state,
        WorkerTables::new(Arc::new(Snapshot::build(spec, 1).unwrap())),
        ports,
        HandoffLinks::alone(),
        TableUpdates { incoming, retired },
        WorkerConfig {
            burst,
            ..WorkerConfig::default()
        },
    );
    Lane {
        worker,
        inbox,
        outboxes,
        updates,
        _retired: retired_rx,
    }
}

impl Lane {
    /// Feeds `frames`, polls at `now` until they are all taken, and returns what left each port.
    fn run(&mut self, frames: &[Vec<u8>], now: u64) -> Vec<Vec<Vec<u8>>> {
        // The expiry sweep runs on the first poll of a millisecond: run it before any frame in both lanes, so that
        // both free the same dead connections (and FULLNAT ports) at the same point of the traffic.
        self.worker.poll(now);
        self.inbox
            .lock()
            .unwrap()
            .extend(frames.iter().map(|f| MemoryFrame::from_bytes(f)));
        while !self.inbox.lock().unwrap().is_empty() {
            self.worker.poll(now);
        }
        self.worker.poll(now);
        self.outboxes
            .iter()
            .map(|outbox| {
                outbox
                    .lock()
                    .unwrap()
                    .drain(..)
                    .map(|f| f.data().to_vec())
                    .collect()
            })
            .collect()
    }

    fn drops(&self) -> Vec<u64> {
        let stats = self.worker.stats();
        DropReason::ALL.iter().map(|&r| stats.drops(r)).collect()
    }
}

/// One client segment: flow `flow` of service `service` with `flags` (0 SYN, 1 ACK, 2 FIN+ACK, 3 RST; 4 an ACK to
/// another host's MAC and 5 an ACK at the end of its TTL, which are refused and must not keep their connection
/// alive).
fn frame(service: u8, flow: u16, flags: u8) -> Vec<u8> {
    let destination = if flags == 4 {
        [2, 0xee, 0, 0, 0, 9]
    } else {
        PORT_MACS[0]
    };
    let ttl = if flags == 5 { 1 } else { 64 };
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, destination)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 100 + service % 4], ttl)
        .tcp(10_000 + flow, 80, 1, 1000);
    let builder = match flags {
        0 => builder.syn(),
        2 => builder.fin().ack(1),
        3 => builder.rst(),
        _ => builder.ack(1),
    };
    let mut out = Vec::new();
    builder.write(&mut out, b"x").unwrap();
    out
}

#[derive(Clone, Debug)]
enum Step {
    Frames(Vec<(u8, u16, u8)>),
    Update([bool; 4]),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => proptest::collection::vec((0u8..4, 0u16..40, 0u8..6), 1..80).prop_map(Step::Frames),
        1 => proptest::array::uniform4(any::<bool>()).prop_map(Step::Update),
        1 => prop_oneof![Just(1u64), Just(1_500), Just(11_000), Just(70_000)].prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn staged_bursts_decide_like_single_frames(
        steps in proptest::collection::vec(step(), 1..25),
        round_robin in any::<bool>(),
        capacity in prop_oneof![Just(16usize), Just(4096)],
    ) {
        let scheduler = if round_robin { SchedulerKind::Wrr } else { SchedulerKind::Mh };
        let first = spec(&[true; 4], scheduler);
        let mut staged = lane(&first, 32, capacity);
        let mut single = lane(&first, 1, capacity);
        let mut now = 1_000u64;
        let mut generation = 1;
        for step in steps {
            match step {
                Step::Frames(frames) => {
                    let frames: Vec<Vec<u8>> =
                        frames.iter().map(|&(s, f, flags)| frame(s, f, flags)).collect();
                    prop_assert_eq!(staged.run(&frames, now), single.run(&frames, now));
                }
                Step::Update(present) => {
                    generation += 1;
                    let spec = spec(&present, scheduler);
                    for lane in [&mut staged, &mut single] {
                        let snapshot = Arc::new(Snapshot::build(&spec, generation).unwrap());
                        lane.updates.send(WorkerTables::new(snapshot)).unwrap();
                    }
                }
                Step::Advance(ms) => now += ms,
            }
            prop_assert_eq!(staged.drops(), single.drops());
            prop_assert_eq!(
                staged.worker.state().conns.len(),
                single.worker.state().conns.len()
            );
        }
    }
}
