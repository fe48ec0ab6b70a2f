//! A worker's part in connection exceptions, through its real loop: after a snapshot whose Maglev table changed,
//! the scan runs between polls within its slot budget (several polls for a table larger than the budget) and
//! queues exactly the connections whose backend the new table no longer gives; a snapshot with the same tables
//! starts no scan; the peers' exceptions it is sent land in its side table.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use balancer::conntrack::{tcp_flags, ConnTable, Timeouts};
use balancer::decision::{Action, WorkerPlace, WorkerState, WorkerTables};
use balancer::exceptions::{ConnException, ExceptionTable};
use balancer::maglev::{flow_hash, TableSize};
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::PortPartition;
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use crossbeam::channel::bounded;
use dataplane::exceptions::ExceptionLinks;
use dataplane::io::memory::{MemoryRx, MemoryTx};
use dataplane::worker::{HandoffLinks, PortQueues, TableUpdates, Worker, WorkerConfig};
use packet::{FlowKey, Fragment, FrameLayout, IcmpKind, L3};

const CAPACITY: usize = 1024;
const BUDGET: usize = 64;

fn spec(backends: u8) -> SnapshotSpec {
    SnapshotSpec {
        ports: vec![PortSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addresses: vec![("10.0.0.1".parse().unwrap(), 16)],
        }],
        gateways: vec![],
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
            backends: (0..backends)
                .map(|i| Backend {
                    id: BackendId(u32::from(i) + 1),
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 11 + i)),
                    port: 80,
                    weight: 1,
                    mac: Some([2, 0xbe, 0, 0, 0, i]),
                })
                .collect(),
        }],
        kernel_exception_path: false,
    }
}

fn flow(i: u32) -> FlowKey {
    FlowKey {
        src_addr: IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)),
        dst_addr: "10.0.0.100".parse().unwrap(),
        src_port: 20_000,
        dst_port: 80,
        protocol: 6,
    }
}

fn syn(flow: FlowKey) -> FrameLayout {
    FrameLayout {
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
    }
}

#[test]
fn the_worker_scans_within_its_budget_and_stores_what_peers_send() {
    let first = Arc::new(Snapshot::build(&spec(4), 1).unwrap());
    let mut tables = WorkerTables::new(Arc::clone(&first));
    let mut state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::new(CAPACITY, Timeouts::default()).unwrap(),
        load: LoadTable::new(16),
        persistence: PersistenceTable::new(16),
        neighbors: Arc::new(NeighborTable::new(16)),
        exceptions: ExceptionTable::new(64),
    };
    for i in 0..800 {
        let action = state.decide(&mut tables, &syn(flow(i)), None, 0, false, 0);
        assert!(matches!(action, Action::Forward(_)), "{action:?}");
    }
    let ports = vec![PortQueues {
        rx: MemoryRx {
            inbox: Arc::new(Mutex::new(VecDeque::new())),
        },
        tx: MemoryTx {
            outbox: Arc::new(Mutex::new(Vec::new())),
            capacity: 64,
            pool: 0,
        },
        mac: [2, 0, 0, 0, 0, 1],
        vlan: None,
    }];
    let (publish, incoming) = bounded(4);
    let (retired, _retired_rx) = bounded(4);
    let mut worker = Worker::new(
        state,
        tables,
        ports,
        HandoffLinks::alone(),
        TableUpdates { incoming, retired },
        WorkerConfig::default(),
    );
    let (found_tx, found) = bounded(4096);
    let (to_worker, from_peers) = bounded(16);
    let stats = worker.share_exceptions(ExceptionLinks {
        incoming: from_peers,
        found: found_tx,
        scan_budget: BUDGET,
        store_budget: 16,
    });

    // The same tables again: nothing to look for.
    publish
        .send(WorkerTables::new(Arc::new(
            Snapshot::build(&spec(4), 2).unwrap(),
        )))
        .unwrap();
    worker.poll(1);
    assert_eq!(stats.scans_started.load(Ordering::Relaxed), 0);

    // A fifth backend: the scan takes CAPACITY / BUDGET polls.
    let second = Arc::new(Snapshot::build(&spec(5), 3).unwrap());
    publish
        .send(WorkerTables::new(Arc::clone(&second)))
        .unwrap();
    worker.poll(2);
    assert_eq!(stats.scans_started.load(Ordering::Relaxed), 1);
    assert_eq!(stats.scans_finished.load(Ordering::Relaxed), 0);
    for now in 3..(3 + (CAPACITY / BUDGET) as u64) {
        worker.poll(now);
    }
    assert_eq!(stats.scans_finished.load(Ordering::Relaxed), 1);
    let reported: Vec<ConnException> = found.try_iter().collect();
    let service = &second.services()[0];
    let expected: BTreeSet<FlowKey> = worker
        .state()
        .conns
        .iter()
        .filter(|(_, conn)| service.maglev.lookup_id(flow_hash(&conn.client)) != Some(conn.backend))
        .map(|(_, conn)| conn.client)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(reported.len(), expected.len(), "each once");
    assert_eq!(
        reported.iter().map(|e| e.flow).collect::<BTreeSet<_>>(),
        expected
    );
    assert!(reported
        .iter()
        .all(|e| e.generation == 3 && e.lifetime_ms > 0));

    // A peer's exception for a flow this worker never saw lands in its side table.
    to_worker
        .send(ConnException {
            flow: flow(5000),
            backend_addr: "10.0.1.11".parse().unwrap(),
            backend_port: 80,
            generation: 9,
            lifetime_ms: 60_000,
        })
        .unwrap();
    worker.poll(100);
    assert_eq!(worker.state().exceptions.len(), 1);
    assert_eq!(stats.stored.load(Ordering::Relaxed), 1);
    assert_eq!(stats.held.load(Ordering::Relaxed), 1);
}

#[test]
fn the_worker_keeps_the_previous_tables_for_the_grace_period_and_then_retires_them() {
    let first = Arc::new(Snapshot::build(&spec(4), 1).unwrap());
    let state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::new(CAPACITY, Timeouts::default()).unwrap(),
        load: LoadTable::new(16),
        persistence: PersistenceTable::new(16),
        neighbors: Arc::new(NeighborTable::new(16)),
        exceptions: ExceptionTable::disabled(),
    };
    let ports = vec![PortQueues {
        rx: MemoryRx {
            inbox: Arc::new(Mutex::new(VecDeque::new())),
        },
        tx: MemoryTx {
            outbox: Arc::new(Mutex::new(Vec::new())),
            capacity: 64,
            pool: 0,
        },
        mac: [2, 0, 0, 0, 0, 1],
        vlan: None,
    }];
    let (publish, incoming) = bounded(4);
    let (retired, retired_rx) = bounded(4);
    let mut worker = Worker::new(
        state,
        WorkerTables::new(first),
        ports,
        HandoffLinks::alone(),
        TableUpdates { incoming, retired },
        WorkerConfig {
            previous_table_grace_ms: 1000,
            ..WorkerConfig::default()
        },
    );
    // Same tables: retired at once, nothing remembered.
    publish
        .send(WorkerTables::new(Arc::new(
            Snapshot::build(&spec(4), 2).unwrap(),
        )))
        .unwrap();
    worker.poll(10);
    assert_eq!(retired_rx.try_iter().count(), 1);
    assert!(!worker.state().exceptions.remembers_previous());
    // A changed table: the old tables stay with the worker for the grace period...
    publish
        .send(WorkerTables::new(Arc::new(
            Snapshot::build(&spec(5), 3).unwrap(),
        )))
        .unwrap();
    worker.poll(20);
    assert_eq!(retired_rx.try_iter().count(), 0);
    assert!(worker.state().exceptions.remembers_previous());
    worker.poll(1019);
    assert!(worker.state().exceptions.remembers_previous());
    // ...and go back to the control thread (freed there, not here) when it ends.
    worker.poll(1020);
    let back: Vec<WorkerTables> = retired_rx.try_iter().collect();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].snapshot.generation, 2);
    assert!(!worker.state().exceptions.remembers_previous());
}
