//! Connection exceptions end to end through the forwarding decision: node A opens connections, a backend joins,
//! A's scan finds the connections whose backend the new table no longer gives, and node B (which never saw them)
//! forwards their next non-SYN frames to their old backend once it holds A's exceptions, and to the new table's
//! backend without them. The scan is property-tested against a full walk, whatever its budget.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use balancer::conntrack::{tcp_flags, ConnTable, Timeouts};
use balancer::decision::{Action, WorkerPlace, WorkerState, WorkerTables};
use balancer::exceptions::{
    maglev_tables_differ, ConnException, ExceptionScan, ExceptionTable, ScanProgress,
};
use balancer::maglev::{flow_hash, TableSize};
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::PortPartition;
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{GatewaySpec, PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use packet::flow::ip_protocol::TCP;
use packet::{FlowKey, Fragment, FrameLayout, IcmpKind, L3};
use proptest::prelude::*;

const NOW: u64 = 1_000_000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn spec(backends: usize) -> SnapshotSpec {
    SnapshotSpec {
        ports: vec![PortSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addresses: vec![("10.0.0.1".parse().unwrap(), 16)],
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
        maglev_size: TableSize::new(251).unwrap(),
        services: vec![ServiceSpec {
            key: ServiceKey {
                vip: IpAddr::V4(VIP),
                port: 80,
                protocol: TCP,
            },
            mode: ForwardingMode::Dr,
            scheduler: SchedulerKind::Mh,
            persistence: None,
            backends: (0..backends)
                .map(|i| Backend {
                    id: BackendId(i as u32 + 1),
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 11 + i as u8)),
                    port: 80,
                    weight: 1,
                    mac: Some([2, 0xbe, 0, 0, 0, 11 + i as u8]),
                })
                .collect(),
        }],
        kernel_exception_path: false,
    }
}

struct Node {
    state: WorkerState,
    tables: WorkerTables,
}

impl Node {
    fn new(spec: &SnapshotSpec, exceptions: usize) -> Node {
        Node {
            state: WorkerState {
                place: WorkerPlace {
                    index: 0,
                    workers: 1,
                    software_steering: false,
                },
                conns: ConnTable::new(4096, Timeouts::default()).unwrap(),
                load: LoadTable::new(64),
                persistence: PersistenceTable::new(64),
                neighbors: Arc::new(NeighborTable::new(64)),
                exceptions: ExceptionTable::new(exceptions),
            },
            tables: WorkerTables::new(Arc::new(Snapshot::build(spec, 1).unwrap())),
        }
    }

    fn publish(&mut self, spec: &SnapshotSpec, generation: u64) {
        self.tables = WorkerTables::new(Arc::new(Snapshot::build(spec, generation).unwrap()));
    }

    /// The backend address a frame of `flow` with `flags` goes to.
    fn send(&mut self, flow: FlowKey, flags: u8) -> IpAddr {
        self.send_at(flow, flags, NOW)
    }

    fn send_at(&mut self, flow: FlowKey, flags: u8, now_ms: u64) -> IpAddr {
        match self.state.decide(
            &mut self.tables,
            &layout(flow, flags),
            None,
            0,
            false,
            now_ms,
        ) {
            Action::Forward(forward) => forward.next_hop,
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    fn scan(&self, budget: usize) -> Vec<ConnException> {
        let mut scan = ExceptionScan::default();
        scan.restart();
        let mut found = Vec::new();
        loop {
            let progress = scan.step(
                &self.state.conns,
                &self.tables.snapshot,
                NOW,
                budget,
                |exception| {
                    found.push(exception);
                    true
                },
            );
            match progress {
                ScanProgress::Running => continue,
                ScanProgress::Finished { found: count } => {
                    assert_eq!(count as usize, found.len());
                    return found;
                }
                ScanProgress::Idle => unreachable!("a restarted scan runs"),
            }
        }
    }
}

fn flow(i: u32) -> FlowKey {
    FlowKey {
        src_addr: IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)),
        dst_addr: IpAddr::V4(VIP),
        src_port: 10_000 + (i % 50_000) as u16,
        dst_port: 80,
        protocol: TCP,
    }
}

fn layout(flow: FlowKey, flags: u8) -> FrameLayout {
    FrameLayout {
        l2_len: 14,
        vlan_tags: 0,
        vlan_id: None,
        l3: L3::Ipv4,
        l3_offset: 14,
        l4_offset: 34,
        l3_len: 140,
        protocol: TCP,
        ttl: 64,
        source_routed: false,
        dont_fragment: false,
        flow,
        fragment: Fragment::None,
        tcp_flags: flags,
        icmp: IcmpKind::None,
        arp: None,
    }
}

const SYN: u8 = tcp_flags::SYN;
const ACK: u8 = tcp_flags::ACK;

#[test]
fn a_peer_that_holds_the_exceptions_keeps_old_flows_on_their_backend() {
    let (before, after) = (spec(4), spec(5));
    let mut a = Node::new(&before, 0);
    let flows: Vec<FlowKey> = (0..1000).map(flow).collect();
    let first: Vec<IpAddr> = flows.iter().map(|&f| a.send(f, SYN)).collect();
    a.publish(&after, 2);
    assert!(maglev_tables_differ(
        &Snapshot::build(&before, 1).unwrap(),
        &a.tables.snapshot
    ));
    let exceptions = a.scan(97);
    let moved: BTreeSet<FlowKey> = flows
        .iter()
        .zip(&first)
        .filter(|(f, backend)| {
            let service = &a.tables.snapshot.services()[0];
            let index = service.maglev.lookup(flow_hash(f)).unwrap();
            service.backends[index].addr != **backend
        })
        .map(|(f, _)| *f)
        .collect();
    assert!(!moved.is_empty(), "a fifth backend takes some slots");
    assert_eq!(
        exceptions.iter().map(|e| e.flow).collect::<BTreeSet<_>>(),
        moved
    );

    // Node B never saw these flows: without exceptions it sends the moved ones to the new table's backend...
    let mut without = Node::new(&after, 0);
    let broken = flows
        .iter()
        .zip(&first)
        .filter(|(f, backend)| without.send(**f, ACK) != **backend)
        .count();
    assert_eq!(broken, moved.len());
    // ...with them, every flow keeps its backend, and a matched exception became a connection.
    let mut with = Node::new(&after, 4096);
    for exception in &exceptions {
        assert!(with.state.exceptions.store(exception, NOW));
    }
    for (f, backend) in flows.iter().zip(&first) {
        assert_eq!(with.send(*f, ACK), *backend);
    }
    assert_eq!(with.state.exceptions.stats().used as usize, moved.len());
    assert!(with.state.exceptions.is_empty());
    assert_eq!(with.state.conns.len(), flows.len());
}

#[test]
fn a_syn_is_scheduled_by_the_table_even_with_an_exception() {
    let (before, after) = (spec(4), spec(5));
    let mut a = Node::new(&before, 0);
    let flows: Vec<FlowKey> = (0..400).map(flow).collect();
    for &f in &flows {
        a.send(f, SYN);
    }
    a.publish(&after, 2);
    let exceptions = a.scan(1000);
    let mut b = Node::new(&after, 4096);
    for exception in &exceptions {
        b.state.exceptions.store(exception, NOW);
    }
    // A new connection reusing the tuple is a new flow: the table decides.
    let exception = exceptions[0];
    let service = &b.tables.snapshot.services()[0];
    let chosen = service.backends[service.maglev.lookup(flow_hash(&exception.flow)).unwrap()].addr;
    assert_eq!(b.send(exception.flow, SYN), chosen);
    assert_ne!(chosen, exception.backend_addr);
}

#[test]
fn connections_to_a_removed_backend_are_not_exceptions() {
    let (before, after) = (spec(5), spec(4));
    let mut a = Node::new(&before, 0);
    for i in 0..500 {
        a.send(flow(i), SYN);
    }
    a.publish(&after, 2);
    // The removed backend's flows are gone with it: no exception names it. Maglev moves a few other slots too
    // (its disruption is small, not zero): those flows are the exceptions.
    let removed = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 15));
    let exceptions = a.scan(64);
    assert!(exceptions.iter().all(|e| e.backend_addr != removed));
    assert!(
        exceptions.len() < 500 / 5,
        "{} exceptions",
        exceptions.len()
    );
}

#[test]
fn the_previous_table_keeps_old_flows_for_its_grace_period_and_costs_new_ones() {
    let (before, after) = (spec(4), spec(5));
    let mut a = Node::new(&before, 0);
    let flows: Vec<FlowKey> = (0..600).map(flow).collect();
    let first: Vec<IpAddr> = flows.iter().map(|&f| a.send(f, SYN)).collect();
    let previous = Arc::new(Snapshot::build(&before, 1).unwrap());
    let table_after = Snapshot::build(&after, 2).unwrap();
    let service = &table_after.services()[0];
    let by_new_table =
        |f: &FlowKey| service.backends[service.maglev.lookup(flow_hash(f)).unwrap()].addr;
    let moved: Vec<usize> = (0..flows.len())
        .filter(|&i| by_new_table(&flows[i]) != first[i])
        .collect();
    assert!(!moved.is_empty());

    // Node B, no peers, a grace period of 1 s: every old flow keeps its backend within it...
    let mut b = Node::new(&after, 0);
    b.state
        .exceptions
        .remember_previous(Arc::clone(&previous), NOW + 1000);
    for (f, backend) in flows.iter().zip(&first) {
        assert_eq!(b.send_at(*f, ACK, NOW + 10), *backend);
    }
    assert_eq!(
        b.state.exceptions.stats().used_previous as usize,
        moved.len()
    );
    // ...a SYN is scheduled by the new table...
    let fresh = flow(100_000 + moved[0] as u32);
    assert_eq!(b.send_at(fresh, SYN, NOW + 10), by_new_table(&fresh));
    // ...and the cost: a flow that began on another node after the change (by the new table) and that a router
    // moves here within the grace period is sent to the previous table's backend when its slot changed.
    let late: Vec<FlowKey> = (200_000..200_600).map(flow).collect();
    let misrouted = late
        .iter()
        .filter(|f| b.send_at(**f, ACK, NOW + 20) != by_new_table(f))
        .count();
    assert!(
        misrouted > 0,
        "the grace period misroutes some new flows that move"
    );
    // After the grace period, a miss goes by the new table, and the previous table is dropped.
    let mut c = Node::new(&after, 0);
    c.state.exceptions.remember_previous(previous, NOW + 1000);
    let f = flows[moved[0]];
    assert_eq!(c.send_at(f, ACK, NOW + 1000), by_new_table(&f));
    assert!(c.state.exceptions.forget_previous(NOW + 1000));
    assert!(!c.state.exceptions.remembers_previous());
}

proptest! {
    /// Whatever the budget, the scan reports exactly the live connections whose backend differs from the new
    /// table's choice, each once.
    #[test]
    fn the_scan_finds_exactly_the_moved_connections(
        clients in proptest::collection::btree_set(0u32..100_000, 1..300),
        budget in 1usize..5000,
        backends_before in 1usize..6,
        backends_after in 1usize..6,
    ) {
        let mut a = Node::new(&spec(backends_before), 0);
        for &i in &clients {
            a.send(flow(i), SYN);
        }
        a.publish(&spec(backends_after), 2);
        let found = a.scan(budget);
        let snapshot = Arc::clone(&a.tables.snapshot);
        let service = &snapshot.services()[0];
        let expected: BTreeSet<FlowKey> = a
            .state
            .conns
            .iter()
            .filter(|(_, conn)| snapshot.backend(conn.backend).is_some())
            .filter(|(_, conn)| service.maglev.lookup_id(flow_hash(&conn.client)) != Some(conn.backend))
            .map(|(_, conn)| conn.client)
            .collect();
        prop_assert_eq!(found.len(), expected.len());
        prop_assert_eq!(found.iter().map(|e| e.flow).collect::<BTreeSet<_>>(), expected);
    }
}
