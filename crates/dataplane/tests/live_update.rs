//! Live updates under continuous traffic: a worker thread forwards without pause while this thread removes, adds
//! and reweights backends hundreds of times a second, publishing each new snapshot over the worker's queue. Every
//! frame must go to a backend present in the snapshot the worker used for it, no flow may move unless its backend
//! was removed, and the time from publish to the worker using the new table is measured and printed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use balancer::conntrack::{ConnTable, Timeouts};
use balancer::decision::{WorkerPlace, WorkerState, WorkerTables};
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::PortPartition;
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use crossbeam::channel::bounded;
use dataplane::io::memory::MemoryFrame;
use dataplane::io::{Burst, Frame, TxQueue};
use dataplane::traffic::{frame_pool, FramePool, TrafficSource, TrafficSpec};
use dataplane::worker::{
    HandoffLinks, PortQueues, TableUpdates, Worker, WorkerConfig, WorkerStats,
};

const BACKENDS: u8 = 6;
/// Backends 0..REMOVABLE come and go; the others stay (and are reweighted).
const REMOVABLE: u8 = 3;

/// (backend MAC byte, flow, generation in use) of one transmitted frame.
type Seen = (u8, [u8; 6], u64);

/// Records every transmitted frame and recycles it.
struct RecordingSink {
    pool: FramePool,
    stats: Arc<OnceLock<Arc<WorkerStats>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TxQueue for RecordingSink {
    type Frame = MemoryFrame;

    fn tx_burst(&mut self, burst: &mut Burst<MemoryFrame>) -> usize {
        let generation = self
            .stats
            .get()
            .map_or(0, |s| s.generation.load(Ordering::Acquire));
        let mut seen = self.seen.lock().unwrap();
        let sent = burst.len();
        for frame in burst.drain(..) {
            let data = frame.data();
            let flow: [u8; 6] = [data[26], data[27], data[28], data[29], data[34], data[35]];
            seen.push((data[5], flow, generation));
            self.pool.push(frame);
        }
        sent
    }

    fn alloc(&mut self) -> Option<MemoryFrame> {
        self.pool.pop()
    }
}

fn spec(present: &[bool; BACKENDS as usize], weights: &[u32; BACKENDS as usize]) -> SnapshotSpec {
    let backends = (0..BACKENDS)
        .filter(|&i| present[usize::from(i)])
        .map(|i| Backend {
            id: BackendId(u32::from(i)),
            addr: IpAddr::V4([10, 1, 0, 11 + i].into()),
            port: 80,
            weight: weights[usize::from(i)],
            mac: Some([2, 0xbe, 0, 0, 0, i]),
        })
        .collect();
    SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                addresses: vec![("10.0.0.1".parse().unwrap(), 24)],
            },
            PortSpec {
                mac: [2, 0, 0, 0, 0, 2],
                mtu: 1500,
                addresses: vec![("10.1.0.1".parse().unwrap(), 24)],
            },
        ],
        gateways: vec![balancer::snapshot::GatewaySpec {
            port: 0,
            addr: "10.0.0.254".parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 0xfe]),
        }],
        tunnel_source_v4: None,
        tunnel_source_v6: None,
        local_addresses: vec![],
        local_ports: PortPartition::new(1024, 65535, 1).unwrap(),
        maglev_size: TableSize::new(4099).unwrap(),
        services: vec![ServiceSpec {
            key: ServiceKey {
                vip: "10.0.0.100".parse().unwrap(),
                port: 80,
                protocol: 6,
            },
            mode: ForwardingMode::Dr,
            scheduler: SchedulerKind::Mh,
            persistence: None,
            backends,
        }],
        kernel_exception_path: false,
    }
}

#[test]
fn updates_under_traffic_lose_nothing_and_move_no_established_flow() {
    let mut present = [true; BACKENDS as usize];
    let mut weights = [1u32; BACKENDS as usize];
    let first = Arc::new(Snapshot::build(&spec(&present, &weights), 1).unwrap());
    let pool = frame_pool(4096);
    let traffic = TrafficSpec {
        client_base: "198.18.0.1".parse().unwrap(),
        vip: "10.0.0.100".parse().unwrap(),
        vip_port: 80,
        protocol: 6,
        flows: 3000,
        frame_len: 60,
        new_connections: false,
        src_mac: [2, 0, 0, 0, 0, 0xfe],
        dst_mac: [2, 0, 0, 0, 0, 1],
    };
    let stats_slot: Arc<OnceLock<Arc<WorkerStats>>> = Arc::new(OnceLock::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = |pool: &FramePool| RecordingSink {
        pool: pool.clone(),
        stats: Arc::clone(&stats_slot),
        seen: Arc::clone(&seen),
    };
    let mut idle = TrafficSource::new(traffic, pool.clone());
    idle.limit = 0;
    let ports = vec![
        PortQueues {
            rx: TrafficSource::new(traffic, pool.clone()),
            tx: sink(&pool),
            mac: [2, 0, 0, 0, 0, 1],
            vlan: None,
        },
        PortQueues {
            rx: idle,
            tx: sink(&pool),
            mac: [2, 0, 0, 0, 0, 2],
            vlan: None,
        },
    ];
    let (publish, incoming) = bounded(4);
    let (retired, retired_rx) = bounded(16);
    let state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::new(1 << 14, Timeouts::default()).unwrap(),
        load: LoadTable::new(16),
        persistence: PersistenceTable::new(16),
        neighbors: Arc::new(NeighborTable::new(16)),
        exceptions: balancer::exceptions::ExceptionTable::disabled(),
    };
    let mut worker = Worker::new(
        state,
        WorkerTables::new(first),
        ports,
        HandoffLinks::alone(),
        TableUpdates { incoming, retired },
        WorkerConfig::default(),
    );
    let stats = worker.stats();
    stats_slot.set(Arc::clone(&stats)).ok().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = Arc::clone(&stop);
    let started = Instant::now();
    let thread = std::thread::spawn(move || {
        while !worker_stop.load(Ordering::Relaxed) {
            worker.poll(started.elapsed().as_millis() as u64);
        }
    });

    // generation -> which backends were present
    let mut history: HashMap<u64, [bool; BACKENDS as usize]> = HashMap::from([(1, present)]);
    let mut latencies = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let updates = 400u64;
    let test_started = Instant::now();
    for generation in 2..2 + updates {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pick = (seed % u64::from(BACKENDS)) as usize;
        if pick < usize::from(REMOVABLE) {
            // Remove or add back, keeping at least one removable backend.
            let others_present = present[..usize::from(REMOVABLE)]
                .iter()
                .filter(|&&p| p)
                .count()
                > 1;
            present[pick] = !(present[pick] && others_present);
        } else {
            weights[pick] = 1 + (seed >> 32) as u32 % 4;
        }
        let snapshot = Arc::new(Snapshot::build(&spec(&present, &weights), generation).unwrap());
        let tables = WorkerTables::new(snapshot);
        history.insert(generation, present);
        let published = Instant::now();
        publish.send(tables).unwrap();
        while stats.generation.load(Ordering::Acquire) < generation {
            std::hint::spin_loop();
        }
        latencies.push(published.elapsed());
        while retired_rx.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_micros(1500));
    }
    let rate = updates as f64 / test_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();

    let seen = seen.lock().unwrap();
    assert!(
        seen.len() > 100_000,
        "traffic kept flowing: {} frames",
        seen.len()
    );
    let mut last_backend: HashMap<[u8; 6], u8> = HashMap::new();
    let mut moved_after_removal = 0;
    for &(backend, flow, generation) in seen.iter() {
        let present_then = history[&generation];
        assert!(
            present_then[usize::from(backend)],
            "frame sent to backend {backend} absent in generation {generation}"
        );
        if let Some(previous) = last_backend.insert(flow, backend) {
            if previous != backend {
                assert!(
                    !present_then[usize::from(previous)],
                    "flow {flow:?} moved from {previous} to {backend} while {previous} was present"
                );
                moved_after_removal += 1;
            }
        }
    }
    assert_eq!(stats.total_drops(), 0);
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    println!(
        "{updates} updates at {rate:.0}/s under {} frames: publish-to-use median {median:?}, p99 {p99:?}, max {max:?}; \
         {moved_after_removal} flow moves, all after their backend's removal",
        seen.len()
    );
}
