//! A VIP another node owns now (VRRP BACKUP, `vip_owner = "vrrp"`): published without its services and marked
//! withheld, it is neither answered (ARP) nor balanced, and its traffic is dropped rather than handed to the
//! kernel, which may already hold the address and would reset the connections. Once held, the same VIP is
//! balanced again.

use std::net::IpAddr;
use std::sync::Arc;

use balancer::conntrack::{tcp_flags, ConnTable, Timeouts};
use balancer::decision::{Action, DropReason, WorkerPlace, WorkerState, WorkerTables};
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::PortPartition;
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use packet::flow::ip_protocol::TCP;
use packet::{ArpFacts, FlowKey, Fragment, FrameLayout, IcmpKind, L3};

const NOW: u64 = 1_000_000;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn spec(with_service: bool) -> SnapshotSpec {
    SnapshotSpec {
        ports: vec![PortSpec {
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addresses: vec![(ip("10.0.0.1"), 24)],
        }],
        gateways: vec![],
        tunnel_source_v4: None,
        tunnel_source_v6: None,
        local_addresses: vec![],
        local_ports: PortPartition::new(1024, 65535, 1).unwrap(),
        maglev_size: TableSize::new(251).unwrap(),
        services: if with_service {
            vec![ServiceSpec {
                key: ServiceKey {
                    vip: ip("10.0.0.100"),
                    port: 80,
                    protocol: TCP,
                },
                mode: ForwardingMode::Dr,
                scheduler: SchedulerKind::Mh,
                persistence: None,
                backends: vec![Backend {
                    id: BackendId(1),
                    addr: ip("10.0.0.11"),
                    port: 80,
                    weight: 1,
                    mac: Some([2, 0xbe, 0, 0, 0, 11]),
                }],
            }]
        } else {
            vec![]
        },
        kernel_exception_path: true,
    }
}

fn worker(snapshot: Snapshot) -> (WorkerState, WorkerTables) {
    let state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::new(1024, Timeouts::default()).unwrap(),
        load: LoadTable::new(1024),
        persistence: PersistenceTable::new(1024),
        neighbors: Arc::new(NeighborTable::new(256)),
        exceptions: balancer::exceptions::ExceptionTable::disabled(),
    };
    (state, WorkerTables::new(Arc::new(snapshot)))
}

fn segment(flags: u8) -> FrameLayout {
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
        flow: FlowKey {
            src_addr: ip("10.0.0.50"),
            dst_addr: ip("10.0.0.100"),
            src_port: 40000,
            dst_port: 80,
            protocol: TCP,
        },
        fragment: Fragment::None,
        tcp_flags: flags,
        icmp: IcmpKind::None,
        arp: None,
    }
}

fn arp_request() -> FrameLayout {
    FrameLayout {
        l3: L3::Arp,
        arp: Some(ArpFacts {
            operation: 1,
            sender_mac: [2, 9, 9, 9, 9, 9],
            sender_ip: "10.0.0.50".parse().unwrap(),
            target_ip: "10.0.0.100".parse().unwrap(),
        }),
        ..segment(0)
    }
}

fn decide(state: &mut WorkerState, tables: &mut WorkerTables, layout: &FrameLayout) -> Action {
    let staged = state.stage(&layout.flow);
    state.decide(tables, layout, Some(&staged), 0, false, NOW)
}

#[test]
fn a_withheld_vip_is_not_answered_and_its_traffic_dropped_not_given_to_the_kernel() {
    let withheld = Snapshot::build(&spec(false), 1)
        .unwrap()
        .with_withheld([ip("10.0.0.100")]);
    assert!(withheld.withheld(ip("10.0.0.100")));
    assert!(!withheld.withheld(ip("10.0.0.1")));
    let (mut state, mut tables) = worker(withheld);
    assert_eq!(
        decide(&mut state, &mut tables, &arp_request()),
        Action::Drop(DropReason::NeighborNotForUs)
    );
    for flags in [tcp_flags::SYN, tcp_flags::ACK] {
        assert_eq!(
            decide(&mut state, &mut tables, &segment(flags)),
            Action::Drop(DropReason::NotOurs)
        );
    }
}

#[test]
fn without_the_mark_other_addresses_still_reach_the_kernel_and_a_held_vip_is_balanced() {
    let (mut state, mut tables) = worker(Snapshot::build(&spec(false), 1).unwrap());
    assert_eq!(
        decide(&mut state, &mut tables, &segment(tcp_flags::SYN)),
        Action::ToKernel
    );
    let (mut state, mut tables) = worker(Snapshot::build(&spec(true), 2).unwrap());
    assert_eq!(
        decide(&mut state, &mut tables, &arp_request()),
        Action::AnswerArp
    );
    assert!(matches!(
        decide(&mut state, &mut tables, &segment(tcp_flags::SYN)),
        Action::Forward(_)
    ));
}
