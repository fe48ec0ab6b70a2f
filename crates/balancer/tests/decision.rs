//! The forwarding decision on hand-built frame layouts: every mode in both directions, answers, steering between
//! workers, fragments, ICMP errors, persistence, removal and draining, and a full table.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use balancer::conntrack::{tcp_flags, ConnTable, Timeouts};
use balancer::decision::{
    Action, DropReason, Established, FastForward, Forward, FragmentAction, FragmentTable, Rewrite,
    StagedKey, WorkerPlace, WorkerState, WorkerTables,
};
use balancer::maglev::TableSize;
use balancer::neighbor::{Neighbor, NeighborTable};
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::{PortAllocator, PortPartition};
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{
    GatewaySpec, PersistenceSpec, PortSpec, ServiceSpec, Snapshot, SnapshotSpec,
};
use packet::flow::ip_protocol::{ICMP, TCP, UDP};
use packet::{ArpFacts, FlowKey, Fragment, FrameLayout, IcmpKind, L3};

const CLIENT_PORT: u16 = 0;
const BACKEND_PORT: u16 = 1;
const NOW: u64 = 1_000_000;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn vip(v6: bool) -> IpAddr {
    if v6 {
        ip("fd00::100")
    } else {
        ip("10.0.0.100")
    }
}

fn backends(v6: bool, weights: &[u32], port: u16) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Backend {
            id: BackendId(if v6 { 100 } else { 0 } + i as u32 + 1),
            addr: if v6 {
                ip(&format!("fd01::{}", 11 + i))
            } else {
                ip(&format!("10.1.0.{}", 11 + i))
            },
            port,
            weight,
            mac: Some([2, 0xbe, 0, 0, 0, 11 + i as u8]),
        })
        .collect()
}

fn service(
    mode: ForwardingMode,
    scheduler: SchedulerKind,
    v6: bool,
    weights: &[u32],
) -> ServiceSpec {
    let backend_port = if matches!(mode, ForwardingMode::Nat | ForwardingMode::FullNat) {
        8080
    } else {
        80
    };
    ServiceSpec {
        key: ServiceKey {
            vip: vip(v6),
            port: 80,
            protocol: TCP,
        },
        mode,
        scheduler,
        persistence: None,
        backends: backends(v6, weights, backend_port),
    }
}

fn spec(services: Vec<ServiceSpec>, workers: u16) -> SnapshotSpec {
    SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                addresses: vec![(ip("10.0.0.1"), 24), (ip("fd00::1"), 64)],
            },
            PortSpec {
                mac: [2, 0, 0, 0, 0, 2],
                mtu: 1500,
                addresses: vec![(ip("10.1.0.1"), 24), (ip("fd01::1"), 64)],
            },
        ],
        gateways: vec![
            GatewaySpec {
                port: CLIENT_PORT,
                addr: ip("10.0.0.254"),
                mac: Some([2, 0, 0, 0, 0, 0xfe]),
            },
            GatewaySpec {
                port: CLIENT_PORT,
                addr: ip("fd00::fe"),
                mac: None,
            },
        ],
        tunnel_source_v4: Some(ip("10.1.0.1")),
        tunnel_source_v6: Some(ip("fd01::1")),
        local_addresses: vec![ip("10.1.0.5"), ip("fd01::5")],
        local_ports: PortPartition::new(1024, 65535, workers).unwrap(),
        maglev_size: TableSize::new(251).unwrap(),
        services,
        kernel_exception_path: false,
    }
}

struct Harness {
    state: WorkerState,
    tables: WorkerTables,
}

impl Harness {
    fn new(spec: &SnapshotSpec) -> Harness {
        Harness::worker(spec, 0, 1, false)
    }

    fn worker(spec: &SnapshotSpec, index: u16, workers: u16, software_steering: bool) -> Harness {
        let snapshot = Arc::new(Snapshot::build(spec, 1).unwrap());
        let ports = PortAllocator::new(spec.local_ports, index, &spec.local_addresses).unwrap();
        Harness {
            state: WorkerState {
                place: WorkerPlace {
                    index,
                    workers,
                    software_steering,
                },
                conns: ConnTable::with_local_ports(1024, Timeouts::default(), ports).unwrap(),
                load: LoadTable::new(1024),
                persistence: PersistenceTable::new(1024),
                neighbors: Arc::new(NeighborTable::new(256)),
                exceptions: balancer::exceptions::ExceptionTable::disabled(),
            },
            tables: WorkerTables::new(snapshot),
        }
    }

    /// A single worker whose FULLNAT local ports come from `seed`: two such harnesses allocate alike.
    fn seeded(spec: &SnapshotSpec, seed: u64) -> Harness {
        let mut harness = Harness::new(spec);
        let ports =
            PortAllocator::with_seed(spec.local_ports, 0, &spec.local_addresses, seed).unwrap();
        harness.state.conns =
            ConnTable::with_local_ports(1024, Timeouts::default(), ports).unwrap();
        harness
    }

    fn publish(&mut self, spec: &SnapshotSpec, generation: u64) {
        let snapshot = Arc::new(Snapshot::build(spec, generation).unwrap());
        self.tables = WorkerTables::new(snapshot);
    }

    /// The decision for `layout` arriving on the port that faces its source, as an honest frame does.
    fn decide(&mut self, layout: &FrameLayout) -> Action {
        let ingress = self.facing(layout);
        self.decide_on(layout, ingress)
    }

    /// The port that faces `layout`'s source.
    fn facing(&self, layout: &FrameLayout) -> u16 {
        self.tables
            .snapshot
            .route(layout.flow.src_addr)
            .map_or(0, |route| route.port)
    }

    fn decide_on(&mut self, layout: &FrameLayout, ingress: u16) -> Action {
        // Through every stage of the staged lookup, as the worker does.
        let staged = self.stage_fully(layout);
        self.state
            .decide(&mut self.tables, layout, Some(&staged), ingress, false, NOW)
    }

    /// The decision as the data plane takes it, in two steps: the established path first, whose [`FastForward`]
    /// comes back as is, then the rest for what it did not forward.
    fn decide_split_on(
        &mut self,
        layout: &FrameLayout,
        ingress: u16,
    ) -> Result<FastForward, Action> {
        let staged = self.stage_fully(layout);
        let mut verdict = Action::Consumed;
        let established = self.state.decide_established(
            &self.tables.snapshot,
            layout,
            &staged,
            ingress,
            NOW,
            true,
            &mut verdict,
        );
        self.decide_rest_after(layout, staged, established, ingress, verdict)
    }

    /// [`Harness::decide_split_on`] as the data plane takes a plain frame: the frame `layout` describes, read by
    /// `parse_plain` and staged from its bytes, without its layout until the established path leaves it.
    fn decide_plain_split_on(
        &mut self,
        layout: &FrameLayout,
        ingress: u16,
    ) -> Result<FastForward, Action> {
        let frame = frame_of(layout);
        let plain = packet::parse_plain(&frame, false).expect("a plain frame");
        assert_eq!(plain.layout(&frame), *layout);
        let mut staged = self
            .state
            .stage_plain_with(&frame, &plain, |_| {})
            .expect("the frame's key");
        if self.state.stage_entries_with(&mut staged, |_| {}) {
            let snapshot = &self.tables.snapshot;
            self.state
                .stage_new_flow_with(snapshot, layout, &mut staged, |_| {});
            self.state
                .stage_reply_with(snapshot, &layout.flow, &staged, |_| {});
        }
        let mut verdict = Action::Consumed;
        let established = self.state.decide_plain_established(
            &self.tables.snapshot,
            &plain,
            &staged,
            ingress,
            NOW,
            &mut verdict,
        );
        self.decide_rest_after(layout, staged, established, ingress, verdict)
    }

    /// The second of the data plane's two steps, after the established path answered `established`.
    fn decide_rest_after(
        &mut self,
        layout: &FrameLayout,
        staged: StagedKey,
        established: Established,
        ingress: u16,
        mut verdict: Action,
    ) -> Result<FastForward, Action> {
        let staged = match established {
            Established::Fast(fast) => return Ok(fast),
            Established::Forwarded => return Err(verdict),
            Established::Missed { absent } => staged.after_miss(absent),
            Established::Other => staged,
        };
        self.state.decide_rest_into(
            &mut self.tables,
            layout,
            Some(&staged),
            ingress,
            false,
            NOW,
            &mut verdict,
        );
        Err(verdict)
    }

    fn stage_fully(&mut self, layout: &FrameLayout) -> StagedKey {
        let snapshot = &self.tables.snapshot;
        let mut staged = self.state.stage(&layout.flow);
        if self.state.stage_entries_with(&mut staged, |_| {}) {
            self.state
                .stage_new_flow_with(snapshot, layout, &mut staged, |_| {});
            self.state
                .stage_reply_with(snapshot, &layout.flow, &staged, |_| {});
        }
        staged
    }

    /// The verdict the worker itself reads: staged, through `decide_into`, a [`Rewrite::Connection`],
    /// [`Rewrite::Reply`] or [`Rewrite::Tunnel`] left as it is; for a frame arriving on the port that faces its
    /// source.
    fn decide_in_worker(&mut self, layout: &FrameLayout) -> Action {
        let staged = self.stage_fully(layout);
        let ingress = self.facing(layout);
        let mut verdict = Action::Consumed;
        self.state.decide_into(
            &mut self.tables,
            layout,
            Some(&staged),
            ingress,
            false,
            NOW,
            &mut verdict,
        );
        verdict
    }

    /// The decision without staging, as for a frame another worker handed over.
    fn decide_unstaged(&mut self, layout: &FrameLayout) -> Action {
        self.decide_unstaged_on(layout, CLIENT_PORT)
    }

    fn decide_unstaged_on(&mut self, layout: &FrameLayout, ingress: u16) -> Action {
        self.state
            .decide(&mut self.tables, layout, None, ingress, false, NOW)
    }

    /// The TCP state of the connection of the client's `flow`, if one is live.
    fn tcp_state(&self, flow: &FlowKey) -> Option<&'static str> {
        let hit = self.state.conns.lookup(flow, NOW)?;
        Some(self.state.conns.get(hit.id)?.tcp_state.name())
    }
}

fn transport(
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
    protocol: u8,
    flags: u8,
) -> FrameLayout {
    let v4 = src.is_ipv4();
    let ip_len: u16 = if v4 { 20 } else { 40 };
    let l4_len: u16 = if protocol == TCP { 20 } else { 8 };
    FrameLayout {
        l2_len: 14,
        vlan_tags: 0,
        vlan_id: None,
        l3: if v4 { L3::Ipv4 } else { L3::Ipv6 },
        l3_offset: 14,
        l4_offset: 14 + ip_len,
        l3_len: ip_len + l4_len + 100,
        protocol,
        ttl: 64,
        source_routed: false,
        dont_fragment: false,
        flow: FlowKey {
            src_addr: src,
            dst_addr: dst,
            src_port,
            dst_port,
            protocol,
        },
        fragment: Fragment::None,
        tcp_flags: if protocol == TCP { flags } else { 0 },
        icmp: IcmpKind::None,
        arp: None,
    }
}

fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, flags: u8) -> FrameLayout {
    transport(src, src_port, dst, dst_port, TCP, flags)
}

fn client(i: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6((0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i)).into())
    } else {
        IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i))
    }
}

fn forwarded(action: Action) -> Forward {
    match action {
        Action::Forward(forward) => forward,
        other => panic!("expected a forward, got {other:?}"),
    }
}

const SYN: u8 = tcp_flags::SYN;
const ACK: u8 = tcp_flags::ACK;

#[test]
fn dr_rewrites_macs_only_and_keeps_every_packet_of_a_flow_on_one_backend() {
    for v6 in [false, true] {
        let mut harness = Harness::new(&spec(
            vec![service(
                ForwardingMode::Dr,
                SchedulerKind::Mh,
                v6,
                &[1, 1, 1],
            )],
            1,
        ));
        let mut per_backend = [0u32; 3];
        for i in 0..600 {
            let src = client(i, v6);
            let first = forwarded(harness.decide(&tcp(src, 40000, vip(v6), 80, SYN)));
            assert_eq!(first.rewrite, Rewrite::MacsOnly);
            assert_eq!(first.port, BACKEND_PORT);
            assert!(!first.untracked);
            let backend = first.backend.unwrap();
            assert_eq!(
                first.next_hop,
                harness.tables.snapshot.backend(backend).unwrap().1.addr
            );
            assert_eq!(
                first.mac(),
                harness.tables.snapshot.backend(backend).unwrap().1.mac
            );
            per_backend[(backend.0 % 100 - 1) as usize] += 1;
            for _ in 0..3 {
                let later = forwarded(harness.decide(&tcp(src, 40000, vip(v6), 80, ACK)));
                assert_eq!(later.backend, Some(backend));
            }
        }
        for count in per_backend {
            assert!(
                (150..=250).contains(&count),
                "uneven spread {per_backend:?}"
            );
        }
    }
}

/// Staging looks up a new flow's service and computes its Maglev hash ahead (to prefetch its slot), and the
/// decision takes both from there: the backends it picks are the ones the decision picks by itself, for new flows
/// of both families (two services, one per family) and every mode.
#[test]
fn staged_new_flows_pick_the_backends_unstaged_decisions_pick() {
    for mode in ForwardingMode::ALL {
        let spec = spec(
            vec![
                service(mode, SchedulerKind::Mh, false, &[1, 2, 3, 5]),
                service(mode, SchedulerKind::Mh, true, &[1, 2, 3, 5]),
            ],
            1,
        );
        let (mut staged, mut unstaged) = (Harness::new(&spec), Harness::new(&spec));
        for v6 in [false, true] {
            let mut backends = std::collections::HashSet::new();
            let mut guesses = 0;
            for i in 0..400 {
                let syn = tcp(
                    client(i, v6),
                    10_000 + i as u16,
                    vip(v6),
                    80,
                    tcp_flags::SYN,
                );
                // Staging's guess at a new NAT connection's reply key is the key its replies will come with. It
                // guesses only when no entry could hold the flow's key: an entry of the table's earlier flows
                // whose signature matches in the key's bucket (the table's hash is seeded at random) leaves the
                // flow to the decision alone.
                let (predicted, guessed) = {
                    let key = staged.stage_fully(&syn);
                    let predicted =
                        staged
                            .state
                            .staged_reply_key(&staged.tables.snapshot, &syn.flow, &key);
                    (predicted, key.no_entry_holds_it())
                };
                guesses += usize::from(guessed);
                let (expected, got) = (unstaged.decide_unstaged(&syn), staged.decide(&syn));
                if mode == ForwardingMode::Nat {
                    let Rewrite::Destination { addr, port } = forwarded(got).rewrite else {
                        panic!("a NAT request is rewritten to its backend");
                    };
                    let reply = FlowKey {
                        src_addr: addr.ip(),
                        dst_addr: client(i, v6),
                        src_port: port,
                        dst_port: 10_000 + i as u16,
                        protocol: TCP,
                    };
                    let expected_guess = guessed.then_some(reply);
                    assert_eq!(predicted, expected_guess, "v6={v6} flow {i}");
                } else {
                    assert_eq!(predicted, None);
                }
                if mode == ForwardingMode::FullNat {
                    // Each table draws its local ports at random: only the backend must agree.
                    assert_eq!(forwarded(got).backend, forwarded(expected).backend);
                } else {
                    assert_eq!(got, expected, "{mode:?} v6={v6} flow {i}");
                }
                backends.insert(forwarded(expected).backend);
            }
            // A matching signature in a key's bucket is rare (16 bits against a few entries): staging must have
            // guessed for nearly every flow, or the check above checked little.
            assert!(
                guesses >= 380,
                "{mode:?} v6={v6}: staging guessed for {guesses} of 400 new flows"
            );
            assert_eq!(backends.len(), 4, "{mode:?} v6={v6}: every backend picked");
        }
    }
}

#[test]
fn nat_maps_requests_to_the_backend_and_replies_back_to_the_vip() {
    for v6 in [false, true] {
        let mut harness = Harness::new(&spec(
            vec![service(ForwardingMode::Nat, SchedulerKind::Mh, v6, &[1, 1])],
            1,
        ));
        let src = client(7, v6);
        let request = forwarded(harness.decide(&tcp(src, 40000, vip(v6), 80, SYN)));
        let Rewrite::Destination { addr, port } = request.rewrite else {
            panic!("NAT rewrites the destination: {request:?}");
        };
        let addr = addr.ip();
        assert_eq!(port, 8080);
        assert_eq!(request.port, BACKEND_PORT);
        let reply = harness.decide(&tcp(addr, 8080, src, 40000, SYN | ACK));
        let reply = forwarded(reply);
        assert_eq!(
            reply.rewrite,
            Rewrite::Source {
                addr: vip(v6).into(),
                port: 80
            }
        );
        assert_eq!(reply.port, CLIENT_PORT);
        // The client is behind the gateway; the IPv6 gateway's MAC is left to neighbour discovery.
        assert_eq!(
            reply.next_hop,
            if v6 { ip("fd00::fe") } else { ip("10.0.0.254") }
        );
        assert_eq!(reply.mac().is_some(), !v6);
        // A reply for a flow nobody opened is dropped.
        assert_eq!(
            harness.decide(&tcp(addr, 8080, client(8, v6), 40000, ACK)),
            Action::Drop(DropReason::NoConnection)
        );
    }
}

#[test]
fn fullnat_rewrites_both_ends_and_maps_replies_to_the_client() {
    for v6 in [false, true] {
        let mut harness = Harness::new(&spec(
            vec![service(
                ForwardingMode::FullNat,
                SchedulerKind::Mh,
                v6,
                &[1, 1],
            )],
            1,
        ));
        let src = client(9, v6);
        let request = forwarded(harness.decide(&tcp(src, 40000, vip(v6), 80, SYN)));
        let Rewrite::SourceAndDestination {
            src: local,
            src_port: local_port,
            dst,
            dst_port,
        } = request.rewrite
        else {
            panic!("FULLNAT rewrites both ends: {request:?}");
        };
        let (local, dst) = (local.ip(), dst.ip());
        assert_eq!(local, if v6 { ip("fd01::5") } else { ip("10.1.0.5") });
        assert_eq!(dst_port, 8080);
        let reply = forwarded(harness.decide(&tcp(dst, 8080, local, local_port, SYN | ACK)));
        assert_eq!(
            reply.rewrite,
            Rewrite::SourceAndDestination {
                src: vip(v6).into(),
                src_port: 80,
                dst: src.into(),
                dst_port: 40000
            }
        );
        // Another local port gets nothing.
        assert_eq!(
            harness.decide(&tcp(dst, 8080, local, local_port.wrapping_add(1), ACK)),
            Action::Drop(DropReason::NoConnection)
        );
    }
}

/// The reply a backend sends on `harness`'s connection for the client's request `flow`, as its request's verdict
/// rewrote it (made up, for a flow it never forwarded).
fn reply_of(request: Option<&Action>, flow: &FlowKey, flags: u8) -> FrameLayout {
    let (src, src_port, dst, dst_port) = match request {
        Some(Action::Forward(Forward {
            rewrite: Rewrite::Destination { addr, port },
            ..
        })) => (addr.ip(), *port, flow.src_addr, flow.src_port),
        Some(Action::Forward(Forward {
            rewrite:
                Rewrite::SourceAndDestination {
                    src,
                    src_port,
                    dst,
                    dst_port,
                },
            ..
        })) => (dst.ip(), *dst_port, src.ip(), *src_port),
        _ => (
            backends(flow.src_addr.is_ipv6(), &[1], 8080)[0].addr,
            8080,
            flow.src_addr,
            flow.src_port,
        ),
    };
    tcp(src, src_port, dst, dst_port, flags)
}

proptest::proptest! {
    /// A backend's reply that the burst's staged lookup finds is forwarded from its connection, without classifying
    /// its destination: it gets the verdict, and leaves its connection in the state, that the full decision gives
    /// it, in NAT and FULLNAT and both families, through random requests and replies with random TCP flags, from
    /// the port that faces the backend or from the other one.
    #[test]
    fn staged_replies_are_decided_as_the_full_decision_decides_them(
        nat: bool,
        v6: bool,
        steps in proptest::collection::vec(
            (
                0u32..6,
                proptest::bool::ANY,
                proptest::sample::select(vec![SYN, SYN | ACK, ACK, ACK | tcp_flags::FIN, tcp_flags::RST]),
                proptest::bool::weighted(0.85),
            ),
            1..48,
        ),
    ) {
        let mode = if nat { ForwardingMode::Nat } else { ForwardingMode::FullNat };
        let mut spec = spec(vec![service(mode, SchedulerKind::Mh, v6, &[1, 2, 3])], 1);
        // A short local port range: building its shuffled pool is most of a case's time.
        spec.local_ports = PortPartition::new(50000, 50999, 1).unwrap();
        let mut staged = Harness::seeded(&spec, 5);
        let mut full = Harness::seeded(&spec, 5);
        let mut requests: [Option<Action>; 6] = Default::default();
        for (flow_index, reply, flags, from_backend_port) in steps {
            let request = tcp(client(flow_index, v6), 40000, vip(v6), 80, flags);
            let (layout, ingress) = if reply {
                let ingress = if from_backend_port { BACKEND_PORT } else { CLIENT_PORT };
                (reply_of(requests[flow_index as usize].as_ref(), &request.flow, flags), ingress)
            } else {
                (request, CLIENT_PORT)
            };
            let by_stage = staged.decide_on(&layout, ingress);
            let by_full = full.decide_unstaged_on(&layout, ingress);
            proptest::prop_assert_eq!(&by_stage, &by_full, "{:?} on port {}", layout.flow, ingress);
            if !reply && matches!(by_stage, Action::Forward(_)) {
                requests[flow_index as usize] = Some(by_stage);
            }
            proptest::prop_assert_eq!(staged.tcp_state(&request.flow), full.tcp_state(&request.flow));
        }
    }
}

/// Whether `fast` says what the forward `action` says (a fast forward leaves out the next hop's address: its MAC is
/// known).
fn stands_for(fast: &FastForward, action: &Action) -> bool {
    let Action::Forward(forward) = action else {
        return false;
    };
    forward.port == fast.port
        && forward.next_hop_mac == fast.next_hop_mac
        && forward.next_hop_mac.is_known()
        && forward.rewrite == Rewrite::from(fast.rewrite)
        && forward.backend == Some(fast.backend)
        && forward.reply == fast.reply
        && !forward.untracked
        && !forward.opened
}

proptest::proptest! {
    /// The data plane's two steps (the established path, acted on from its small verdict, then the rest) decide
    /// every frame as `decide_into` does in one, in every mode and both families, through random requests and
    /// replies with random TCP flags from either port, each taken from its layout or as a plain frame, and leave
    /// the connections in the same states; frames of established connections to a next hop with a configured MAC
    /// take the small verdict.
    #[test]
    fn the_data_planes_two_steps_decide_as_decide_into(
        mode in proptest::sample::select(vec![
            ForwardingMode::Dr,
            ForwardingMode::Nat,
            ForwardingMode::FullNat,
            ForwardingMode::Tun,
        ]),
        v6: bool,
        steps in proptest::collection::vec(
            (
                0u32..6,
                proptest::bool::ANY,
                proptest::sample::select(vec![SYN, SYN | ACK, ACK, ACK | tcp_flags::FIN, tcp_flags::RST]),
                proptest::bool::weighted(0.85),
                proptest::bool::ANY,
            ),
            1..48,
        ),
    ) {
        let mut spec = spec(vec![service(mode, SchedulerKind::Mh, v6, &[1, 2, 3])], 1);
        spec.local_ports = PortPartition::new(50000, 50999, 1).unwrap();
        let mut split = Harness::seeded(&spec, 5);
        let mut whole = Harness::seeded(&spec, 5);
        let mut requests: [Option<Action>; 6] = Default::default();
        for (flow_index, reply, flags, from_backend_port, through_plain) in steps {
            let request = tcp(client(flow_index, v6), 40000, vip(v6), 80, flags);
            let (layout, ingress) = if reply {
                let ingress = if from_backend_port { BACKEND_PORT } else { CLIENT_PORT };
                (reply_of(requests[flow_index as usize].as_ref(), &request.flow, flags), ingress)
            } else {
                (request, CLIENT_PORT)
            };
            // A plain frame takes the data plane's plain path (its key from its bytes, no layout) or the layout's.
            let by_split = if through_plain {
                split.decide_plain_split_on(&layout, ingress)
            } else {
                split.decide_split_on(&layout, ingress)
            };
            let staged = whole.stage_fully(&layout);
            let mut by_whole = Action::Consumed;
            whole.state.decide_into(
                &mut whole.tables, &layout, Some(&staged), ingress, false, NOW, &mut by_whole,
            );
            match &by_split {
                Ok(fast) => {
                    proptest::prop_assert!(stands_for(fast, &by_whole), "{:?}: {:?} / {:?}", layout.flow, fast, by_whole);
                }
                Err(action) => proptest::prop_assert_eq!(action, &by_whole, "{:?}", layout.flow),
            }
            if let (false, Action::Forward(forward)) = (reply, by_whole) {
                requests[flow_index as usize] = whole
                    .state
                    .concrete_rewrite(&whole.tables.snapshot, forward.rewrite)
                    .map(|rewrite| Action::Forward(Forward { rewrite, ..forward }));
            }
            proptest::prop_assert_eq!(split.tcp_state(&request.flow), whole.tcp_state(&request.flow));
        }
    }
}

/// A client's frame of an established connection in every mode, and a backend's reply in NAT and FULLNAT, take
/// the small verdict when the next hop's MAC is configured (the backends' always; the IPv4 clients' gateway's),
/// and the written verdict when it is not (the IPv6 clients' gateway).
#[test]
fn established_frames_to_a_configured_mac_take_the_small_verdict() {
    for mode in [
        ForwardingMode::Dr,
        ForwardingMode::Nat,
        ForwardingMode::FullNat,
        ForwardingMode::Tun,
    ] {
        for v6 in [false, true] {
            let mut harness = Harness::new(&spec(
                vec![service(mode, SchedulerKind::Mh, v6, &[1, 1])],
                1,
            ));
            let request = tcp(client(11, v6), 40000, vip(v6), 80, SYN);
            let opened = harness.decide(&request);
            let ack = tcp(client(11, v6), 40000, vip(v6), 80, ACK);
            let fast = harness.decide_split_on(&ack, CLIENT_PORT);
            assert!(fast.is_ok(), "{mode:?} v6={v6}: {fast:?}");
            if matches!(mode, ForwardingMode::Nat | ForwardingMode::FullNat) {
                let answer = reply_of(Some(&opened), &request.flow, SYN | ACK);
                forwarded(harness.decide(&answer));
                let reply = reply_of(Some(&opened), &request.flow, ACK);
                let split = harness.decide_split_on(&reply, BACKEND_PORT);
                assert_eq!(split.is_ok(), !v6, "{mode:?} v6={v6}: {split:?}");
                if let Ok(fast) = split {
                    assert!(fast.reply, "{mode:?}: {fast:?}");
                }
            }
        }
    }
}

/// An established TUN frame decided through staging, as the worker decides it, gets a rewrite that refers to the
/// backend's tunnel in the snapshot; `decide` gives the encapsulation it stands for; and writing the tunnel's
/// prepared header writes exactly the bytes that encapsulation writes.
#[test]
fn a_tunnel_rewrite_stands_for_the_concrete_encapsulation_byte_for_byte() {
    for v6 in [false, true] {
        let mut harness = Harness::new(&spec(
            vec![service(ForwardingMode::Tun, SchedulerKind::Mh, v6, &[1, 1])],
            1,
        ));
        let src = client(11, v6);
        forwarded(harness.decide(&tcp(src, 40000, vip(v6), 80, SYN)));
        let frame = tcp_frame(src, 40000, vip(v6), 80, ACK);
        let layout = packet::parse_frame(&frame).expect("a plain frame");
        let verdict = harness.decide_in_worker(&layout);
        let Rewrite::Tunnel(backend) = forwarded(verdict).rewrite else {
            panic!("v6={v6}: the fast path refers to the tunnel: {verdict:?}");
        };
        assert_eq!(forwarded(verdict).backend, Some(backend));
        let concrete = forwarded(harness.decide(&layout)).rewrite;
        assert_eq!(
            harness
                .state
                .concrete_rewrite(&harness.tables.snapshot, Rewrite::Tunnel(backend)),
            Some(concrete)
        );
        let Rewrite::Encapsulate {
            outer_src,
            outer_dst,
        } = concrete
        else {
            panic!("v6={v6}: TUN encapsulates: {concrete:?}");
        };
        let tunnel = harness
            .tables
            .snapshot
            .tunnel(backend)
            .expect("a TUN backend");
        let room = vec![0u8; tunnel.header.len()];
        let (mut through_tunnel, mut through_concrete) = (
            [room.clone(), frame.clone()].concat(),
            [room, frame].concat(),
        );
        tunnel.header.write(&mut through_tunnel, &layout).unwrap();
        packet::encapsulate(&mut through_concrete, &layout, &outer_src, &outer_dst).unwrap();
        assert_eq!(through_tunnel, through_concrete, "v6={v6}");
        assert_eq!(
            packet::parse_frame(&through_tunnel)
                .expect("encapsulated")
                .flow
                .dst_addr,
            outer_dst.ip()
        );
    }
}

#[test]
fn tun_encapsulates_from_the_tunnel_source_and_fragments_or_answers_too_big() {
    for v6 in [false, true] {
        let mut harness = Harness::new(&spec(
            vec![service(ForwardingMode::Tun, SchedulerKind::Mh, v6, &[1, 1])],
            1,
        ));
        let src = client(3, v6);
        let request = forwarded(harness.decide(&tcp(src, 40000, vip(v6), 80, SYN)));
        let Rewrite::Encapsulate {
            outer_src,
            outer_dst,
        } = request.rewrite
        else {
            panic!("TUN encapsulates: {request:?}");
        };
        let (outer_src, outer_dst) = (outer_src.ip(), outer_dst.ip());
        assert_eq!(outer_src, if v6 { ip("fd01::1") } else { ip("10.1.0.1") });
        assert_eq!(
            Some(outer_dst),
            request
                .backend
                .map(|id| harness.tables.snapshot.backend(id).unwrap().1.addr)
        );
        // The connection's later frames are encapsulated alike, up to the longest that fits in the tunnel whole.
        let outer = if v6 { 40 } else { 20 };
        let mut fits = tcp(src, 40000, vip(v6), 80, ACK);
        for len in [60, 1500 - outer] {
            fits.l3_len = len;
            assert_eq!(
                forwarded(harness.decide(&fits)).rewrite,
                request.rewrite,
                "{len} bytes"
            );
        }
        let mut big = tcp(src, 40000, vip(v6), 80, ACK);
        big.l3_len = 1500 - outer + 1;
        if !v6 {
            assert!(matches!(
                forwarded(harness.decide(&big)).rewrite,
                Rewrite::EncapsulateInFragments { .. }
            ));
        }
        big.l3_len = 1500;
        // An IPv4 packet that may be fragmented is sent in outer fragments; IPv6, and IPv4 with don't-fragment,
        // learn the path MTU.
        if !v6 {
            let fragmented = forwarded(harness.decide(&big));
            assert_eq!(
                fragmented.rewrite,
                Rewrite::EncapsulateInFragments {
                    outer_src: "10.1.0.1".parse().unwrap(),
                    outer_dst: match outer_dst {
                        IpAddr::V4(v4) => v4,
                        IpAddr::V6(_) => unreachable!(),
                    },
                    mtu: 1500
                }
            );
            big.dont_fragment = true;
        }
        assert_eq!(
            harness.decide(&big),
            Action::TooBig {
                from: vip(v6),
                mtu: 1500 - outer
            }
        );
    }
}

#[test]
fn non_syn_segments_open_nothing_under_ipvs_schedulers_but_do_under_maglev() {
    let mut harness = Harness::new(&spec(
        vec![service(
            ForwardingMode::Dr,
            SchedulerKind::Wlc,
            false,
            &[1, 1],
        )],
        1,
    ));
    assert_eq!(
        harness.decide(&tcp(client(1, false), 1000, vip(false), 80, ACK)),
        Action::Drop(DropReason::NoConnection)
    );
    forwarded(harness.decide(&tcp(client(1, false), 1000, vip(false), 80, SYN)));
    forwarded(harness.decide(&tcp(client(1, false), 1000, vip(false), 80, ACK)));

    let mut maglev = Harness::new(&spec(
        vec![service(
            ForwardingMode::Dr,
            SchedulerKind::Mh,
            false,
            &[1, 1],
        )],
        1,
    ));
    forwarded(maglev.decide(&tcp(client(1, false), 1000, vip(false), 80, ACK)));
}

#[test]
fn udp_services_and_unknown_ports() {
    let mut udp = service(ForwardingMode::Nat, SchedulerKind::Rr, false, &[1, 1]);
    udp.key.protocol = UDP;
    let mut harness = Harness::new(&spec(vec![udp], 1));
    let first =
        forwarded(harness.decide(&transport(client(1, false), 5353, vip(false), 80, UDP, 0)));
    let second =
        forwarded(harness.decide(&transport(client(2, false), 5353, vip(false), 80, UDP, 0)));
    assert_ne!(first.backend, second.backend, "rr alternates");
    assert_eq!(
        harness.decide(&transport(client(1, false), 5353, vip(false), 81, UDP, 0)),
        Action::Drop(DropReason::NoService)
    );
    assert_eq!(
        harness.decide(&tcp(client(1, false), 5353, vip(false), 80, SYN)),
        Action::Drop(DropReason::NoService)
    );
}

#[test]
fn traffic_for_others_is_dropped_or_handed_to_the_kernel() {
    let mut spec = spec(
        vec![service(ForwardingMode::Dr, SchedulerKind::Mh, false, &[1])],
        1,
    );
    let mut harness = Harness::new(&spec);
    let stranger = tcp(client(1, false), 1000, ip("192.0.2.99"), 80, SYN);
    assert_eq!(harness.decide(&stranger), Action::Drop(DropReason::NotOurs));
    spec.kernel_exception_path = true;
    harness.publish(&spec, 2);
    assert_eq!(harness.decide(&stranger), Action::ToKernel);
    // Our own port address, no service: the kernel's business (ssh to the box, say).
    assert_eq!(
        harness.decide(&tcp(client(1, false), 1000, ip("10.0.0.1"), 22, SYN)),
        Action::ToKernel
    );
}

#[test]
fn arp_and_echo_are_answered_and_only_honest_neighbours_learned() {
    let mut harness = Harness::new(&spec(
        vec![service(ForwardingMode::Dr, SchedulerKind::Mh, false, &[1])],
        1,
    ));
    let arp = |operation: u16, sender: &str, target: &str| FrameLayout {
        l3: L3::Arp,
        arp: Some(ArpFacts {
            operation,
            sender_mac: [2, 9, 9, 9, 9, 9],
            sender_ip: sender.parse().unwrap(),
            target_ip: target.parse().unwrap(),
        }),
        ..tcp(client(0, false), 0, vip(false), 0, 0)
    };
    assert_eq!(
        harness.decide_on(&arp(1, "10.0.0.7", "10.0.0.100"), CLIENT_PORT),
        Action::AnswerArp
    );
    // Asking for us is no reason to be remembered: 10.0.0.7 is no next hop of ours.
    assert_eq!(
        harness
            .state
            .neighbors
            .lookup(CLIENT_PORT, ip("10.0.0.7"), NOW),
        Neighbor::Unresolved
    );
    assert_eq!(
        harness.decide_on(&arp(1, "10.0.0.8", "10.0.0.200"), CLIENT_PORT),
        Action::Drop(DropReason::NeighborNotForUs)
    );
    // A sender outside the connected subnets (a router numbered elsewhere) is answered, and not learned.
    assert_eq!(
        harness.decide_on(&arp(1, "192.0.2.7", "10.0.0.100"), CLIENT_PORT),
        Action::AnswerArp
    );
    // A reply nobody asked for fills nothing.
    let backend = ip("10.1.0.11");
    assert_eq!(
        harness.decide_on(&arp(2, "10.1.0.11", "10.1.0.1"), BACKEND_PORT),
        Action::Drop(DropReason::NeighborUnwanted)
    );
    assert_eq!(
        harness.state.neighbors.lookup(BACKEND_PORT, backend, NOW),
        Neighbor::Unresolved
    );
    // The answer to our own request is learned, on the backend's port.
    harness
        .state
        .neighbors
        .expect(BACKEND_PORT, backend, NOW)
        .unwrap();
    assert_eq!(
        harness.decide_on(&arp(2, "10.1.0.11", "10.1.0.1"), BACKEND_PORT),
        Action::Consumed
    );
    assert_eq!(
        harness.state.neighbors.lookup(BACKEND_PORT, backend, NOW),
        Neighbor::Reachable([2, 9, 9, 9, 9, 9])
    );
    // The same claims from the client side, as a reply or as a request: refused, the entry unchanged.
    let mut poison = arp(2, "10.1.0.11", "10.0.0.1");
    poison.arp.as_mut().unwrap().sender_mac = [6, 6, 6, 6, 6, 6];
    assert_eq!(
        harness.decide_on(&poison, CLIENT_PORT),
        Action::Drop(DropReason::NeighborWrongSide)
    );
    poison.arp.as_mut().unwrap().operation = 1;
    poison.arp.as_mut().unwrap().target_ip = "10.0.0.100".parse().unwrap();
    assert_eq!(
        harness.decide_on(&poison, CLIENT_PORT),
        Action::Drop(DropReason::NeighborWrongSide)
    );
    assert_eq!(
        harness.state.neighbors.lookup(BACKEND_PORT, backend, NOW),
        Neighbor::Reachable([2, 9, 9, 9, 9, 9])
    );
    // A neighbour advertisement is taken only with hop limit 255.
    let v6_backend: std::net::Ipv6Addr = "fd01::b".parse().unwrap();
    harness
        .state
        .neighbors
        .expect(BACKEND_PORT, IpAddr::V6(v6_backend), NOW)
        .unwrap();
    let mut advertisement = transport(IpAddr::V6(v6_backend), 0, ip("fd01::1"), 0, 58, 0);
    advertisement.icmp = IcmpKind::NeighborAdvertisement {
        target: v6_backend,
        target_mac: Some([6, 6, 6, 6, 6, 6]),
    };
    advertisement.ttl = 50;
    assert_eq!(
        harness.decide_on(&advertisement, BACKEND_PORT),
        Action::Drop(DropReason::NeighborRouted)
    );
    advertisement.ttl = 255;
    assert_eq!(
        harness.decide_on(&advertisement, CLIENT_PORT),
        Action::Drop(DropReason::NeighborWrongSide)
    );
    assert_eq!(
        harness
            .state
            .neighbors
            .lookup(BACKEND_PORT, IpAddr::V6(v6_backend), NOW),
        Neighbor::Unresolved
    );
    assert_eq!(
        harness.decide_on(&advertisement, BACKEND_PORT),
        Action::Consumed
    );
    assert_eq!(
        harness
            .state
            .neighbors
            .lookup(BACKEND_PORT, IpAddr::V6(v6_backend), NOW),
        Neighbor::Reachable([6, 6, 6, 6, 6, 6])
    );

    let mut echo = transport(client(1, false), 77, vip(false), 77, ICMP, 0);
    echo.icmp = IcmpKind::EchoRequest;
    assert_eq!(harness.decide(&echo), Action::AnswerEcho);
    echo.flow.dst_addr = ip("192.0.2.1");
    assert_eq!(harness.decide(&echo), Action::Drop(DropReason::NotOurs));
}

#[test]
fn a_removed_backend_loses_its_flows_and_a_drained_one_keeps_them() {
    let mut spec = spec(
        vec![service(
            ForwardingMode::Dr,
            SchedulerKind::Mh,
            false,
            &[1, 1, 1],
        )],
        1,
    );
    let mut harness = Harness::new(&spec);
    let flows: Vec<_> = (0..300)
        .map(|i| (client(i, false), 2000 + i as u16))
        .collect();
    let before: Vec<_> = flows
        .iter()
        .map(|&(src, port)| {
            forwarded(harness.decide(&tcp(src, port, vip(false), 80, SYN)))
                .backend
                .unwrap()
        })
        .collect();

    // Drain backend 1: its flows stay, new flows avoid it.
    spec.services[0].backends[0].weight = 0;
    harness.publish(&spec, 2);
    for (&(src, port), &backend) in flows.iter().zip(&before) {
        assert_eq!(
            forwarded(harness.decide(&tcp(src, port, vip(false), 80, ACK))).backend,
            Some(backend)
        );
    }
    for i in 1000..1100 {
        let new = forwarded(harness.decide(&tcp(client(i, false), 9, vip(false), 80, SYN)));
        assert_ne!(new.backend, Some(BackendId(1)));
    }

    // Remove it: nothing more goes there; flows elsewhere do not move.
    spec.services[0].backends.remove(0);
    harness.publish(&spec, 3);
    for (&(src, port), &backend) in flows.iter().zip(&before) {
        let now = forwarded(harness.decide(&tcp(src, port, vip(false), 80, ACK)))
            .backend
            .unwrap();
        assert_ne!(now, BackendId(1));
        if backend != BackendId(1) {
            assert_eq!(now, backend, "a flow on a surviving backend moved");
        }
    }
}

#[test]
fn persistence_sends_a_client_back_to_its_backend() {
    let mut persistent = service(ForwardingMode::Dr, SchedulerKind::Rr, false, &[1, 1, 1]);
    persistent.persistence = Some(PersistenceSpec {
        timeout_ms: 300_000,
        prefix_v4: 32,
        prefix_v6: 128,
    });
    let mut harness = Harness::new(&spec(vec![persistent], 1));
    let src = client(5, false);
    let first = forwarded(harness.decide(&tcp(src, 1000, vip(false), 80, SYN))).backend;
    for port in 1001..1010 {
        assert_eq!(
            forwarded(harness.decide(&tcp(src, port, vip(false), 80, SYN))).backend,
            first
        );
    }
    // Other clients still rotate.
    let others: std::collections::HashSet<_> = (10..16)
        .map(|i| {
            forwarded(harness.decide(&tcp(client(i, false), 1000, vip(false), 80, SYN))).backend
        })
        .collect();
    assert!(others.len() > 1);
}

/// A fragment of datagram `id` of the UDP flow `src:5000 -> dst:80`: the first carries the ports, a later one none.
fn fragment(src: IpAddr, dst: IpAddr, id: u32, first: bool) -> FrameLayout {
    let mut layout = if first {
        transport(src, 5000, dst, 80, UDP, 0)
    } else {
        transport(src, 0, dst, 0, UDP, 0)
    };
    layout.fragment = if first {
        Fragment::First { id }
    } else {
        Fragment::Later { id }
    };
    layout
}

impl Harness {
    fn decide_fragment(
        &mut self,
        fragments: &mut FragmentTable,
        layout: &FrameLayout,
        handed_off: bool,
    ) -> FragmentAction {
        let staged = self.state.stage(&layout.flow);
        let ingress = self
            .tables
            .snapshot
            .route(layout.flow.src_addr)
            .map_or(0, |route| route.port);
        self.state.decide_fragment(
            fragments,
            &mut self.tables,
            layout,
            Some(&staged),
            ingress,
            handed_off,
            NOW,
        )
    }
}

fn acted(action: FragmentAction) -> Action {
    match action {
        FragmentAction::Act(action) => action,
        FragmentAction::Hold(datagram) => panic!("held {datagram:?}"),
    }
}

/// Every mode, both families: the first fragment of a datagram is decided through the flow's connection (so it
/// goes where the flow's whole datagrams go, with the same rewrite), and the later ones get the same forward; a
/// later fragment that comes before its first is held, and forwarded like the others once the first was decided.
#[test]
fn fragments_of_a_datagram_follow_their_flow() {
    for mode in ForwardingMode::ALL {
        for v6 in [false, true] {
            let mut udp = service(mode, SchedulerKind::Rr, v6, &[1, 1, 1, 1]);
            udp.key.protocol = UDP;
            let mut harness = Harness::new(&spec(vec![udp], 1));
            let mut fragments = FragmentTable::new(64, 2000);
            for i in 0..20 {
                let src = client(i, v6);
                let whole = forwarded(harness.decide(&transport(src, 5000, vip(v6), 80, UDP, 0)));
                // Round robin: only the connection keeps the fragmented datagram with its flow.
                let _ = harness.decide(&transport(client(i + 100, v6), 5000, vip(v6), 80, UDP, 0));
                let early = harness.decide_fragment(
                    &mut fragments,
                    &fragment(src, vip(v6), 7, false),
                    false,
                );
                assert!(
                    matches!(early, FragmentAction::Hold(_)),
                    "{mode:?}: {early:?}"
                );
                let first = forwarded(acted(harness.decide_fragment(
                    &mut fragments,
                    &fragment(src, vip(v6), 7, true),
                    false,
                )));
                let later = forwarded(acted(harness.decide_fragment(
                    &mut fragments,
                    &fragment(src, vip(v6), 7, false),
                    false,
                )));
                assert_eq!(first.backend, whole.backend, "{mode:?} v6={v6}");
                assert_eq!(first.rewrite, whole.rewrite, "{mode:?} v6={v6}");
                assert_eq!(later.backend, whole.backend, "{mode:?} v6={v6}");
                assert_eq!(later.rewrite, whole.rewrite, "{mode:?} v6={v6}");
                assert!(!later.opened);
            }
        }
    }
}

#[test]
fn a_later_fragment_is_dropped_by_the_decision_without_a_fragment_table() {
    let mut udp = service(ForwardingMode::Dr, SchedulerKind::Mh, false, &[1, 1]);
    udp.key.protocol = UDP;
    let mut harness = Harness::new(&spec(vec![udp], 1));
    assert_eq!(
        harness.decide(&fragment(client(1, false), vip(false), 3, false)),
        Action::Drop(DropReason::FragmentUnsupported)
    );
}

/// Delivers `layout` to worker `arrival` and follows its handoffs until a worker forwards it; returns the forward,
/// that worker and the handoffs it took.
fn follow_handoffs(
    workers: &mut [Harness],
    tables: &mut [FragmentTable],
    layout: &FrameLayout,
    arrival: usize,
) -> (Forward, usize, u32) {
    let (mut at, mut handoffs) = (arrival, 0);
    loop {
        match acted(workers[at].decide_fragment(&mut tables[at], layout, handoffs > 0)) {
            Action::Handoff { worker } => {
                at = usize::from(worker);
                handoffs += 1;
                assert!(handoffs <= 2, "a fragment crosses at most two handoffs");
            }
            Action::Forward(forward) => return (forward, at, handoffs),
            other => panic!("{other:?}"),
        }
    }
}

/// Two workers: a fragment meets its datagram's keeper (the owner of its addresses alone); the keeper passes the
/// first fragment and the later ones to the flow's owner when that is another worker, which forwards them.
#[test]
fn two_workers_bring_the_fragments_of_a_datagram_to_the_owner_of_its_flow() {
    let mut udp = service(ForwardingMode::Nat, SchedulerKind::Mh, false, &[1, 1]);
    udp.key.protocol = UDP;
    let spec = spec(vec![udp], 2);
    let mut workers = [
        Harness::worker(&spec, 0, 2, true),
        Harness::worker(&spec, 1, 2, true),
    ];
    let mut tables = [FragmentTable::new(64, 2000), FragmentTable::new(64, 2000)];
    let mut passed_twice = 0;
    for i in 0..64 {
        let src = client(i, false);
        // Source ports vary: with one pair of ports, the symmetric hash would add the same bits to every flow.
        let port = 5000 + i as u16 * 7;
        let owner = match workers[0].decide(&transport(src, port, vip(false), 80, UDP, 0)) {
            Action::Handoff { worker } => usize::from(worker),
            _ => 0,
        };
        let mut first = fragment(src, vip(false), i, true);
        first.flow.src_port = port;
        let later = fragment(src, vip(false), i, false);
        let (first_forward, first_at, handoffs) =
            follow_handoffs(&mut workers, &mut tables, &first, 0);
        let (later_forward, later_at, _) = follow_handoffs(&mut workers, &mut tables, &later, 0);
        assert_eq!(
            first_at, owner,
            "the first fragment reaches its flow's owner"
        );
        assert_eq!(later_at, owner, "the later fragment follows it");
        assert_eq!(first_forward.backend, later_forward.backend);
        assert_eq!(first_forward.rewrite, later_forward.rewrite);
        if handoffs == 2 {
            passed_twice += 1;
        }
    }
    assert!(passed_twice > 0, "some datagrams cross two handoffs");
}

#[test]
fn two_workers_steer_requests_and_fullnat_replies_to_their_owner() {
    let spec = spec(
        vec![service(
            ForwardingMode::FullNat,
            SchedulerKind::Mh,
            false,
            &[1, 1],
        )],
        2,
    );
    let mut workers = [
        Harness::worker(&spec, 0, 2, true),
        Harness::worker(&spec, 1, 2, true),
    ];
    let mut handoffs = 0;
    for i in 0..64 {
        let syn = tcp(client(i, false), 3000, vip(false), 80, SYN);
        let (owner, action) = match workers[0].decide(&syn) {
            Action::Handoff { worker } => {
                handoffs += 1;
                assert_eq!(worker, 1);
                (
                    1usize,
                    workers[1]
                        .state
                        .decide(&mut workers[1].tables, &syn, None, 0, true, NOW),
                )
            }
            action => (0, action),
        };
        let request = forwarded(action);
        let Rewrite::SourceAndDestination {
            src, src_port, dst, ..
        } = request.rewrite
        else {
            panic!()
        };
        let (src, dst) = (src.ip(), dst.ip());
        assert_eq!(spec.local_ports.owner_of(src_port), Some(owner as u16));
        // The reply, wherever it lands, ends on the owner.
        let reply = tcp(dst, 8080, src, src_port, SYN | ACK);
        let other = 1 - owner;
        assert_eq!(
            workers[other].decide(&reply),
            Action::Handoff {
                worker: owner as u16
            }
        );
        forwarded(workers[owner].decide(&reply));
    }
    assert!(
        handoffs > 10 && handoffs < 54,
        "software RSS should split flows: {handoffs} of 64 handed off"
    );
}

#[test]
fn icmp_errors_follow_the_flow_they_quote() {
    let mut harness = Harness::new(&spec(
        vec![service(
            ForwardingMode::Nat,
            SchedulerKind::Mh,
            false,
            &[1, 1],
        )],
        1,
    ));
    let src = client(4, false);
    let request = forwarded(harness.decide(&tcp(src, 40000, vip(false), 80, SYN)));
    let Rewrite::Destination { addr: backend, .. } = request.rewrite else {
        panic!()
    };
    let backend = backend.ip();

    // A router towards the client cannot pass our reply (VIP:80 -> client:40000): it tells the VIP.
    let mut to_vip = transport(ip("192.0.2.254"), 0, vip(false), 0, ICMP, 0);
    to_vip.icmp = IcmpKind::Error {
        inner: FlowKey {
            src_addr: vip(false),
            dst_addr: src,
            src_port: 80,
            dst_port: 40000,
            protocol: TCP,
        },
        inner_l3_offset: 42,
        inner_l4_offset: 62,
    };
    let mapped = forwarded(harness.decide(&to_vip));
    assert_eq!(
        mapped.rewrite,
        Rewrite::IcmpError {
            destination: Some((backend, 8080)),
            source: None
        }
    );
    assert_eq!(mapped.port, BACKEND_PORT);

    // The backend refuses our forwarded request (client -> backend:8080): the client hears it from the VIP.
    let mut from_backend = transport(backend, 0, src, 0, ICMP, 0);
    from_backend.icmp = IcmpKind::Error {
        inner: FlowKey {
            src_addr: src,
            dst_addr: backend,
            src_port: 40000,
            dst_port: 8080,
            protocol: TCP,
        },
        inner_l3_offset: 42,
        inner_l4_offset: 62,
    };
    let mapped = forwarded(harness.decide(&from_backend));
    assert_eq!(
        mapped.rewrite,
        Rewrite::IcmpError {
            destination: None,
            source: Some((vip(false), 80))
        }
    );
    assert_eq!(mapped.port, CLIENT_PORT);

    // An error about a flow we never saw goes nowhere.
    let mut unknown = to_vip;
    unknown.icmp = IcmpKind::Error {
        inner: FlowKey {
            src_addr: vip(false),
            dst_addr: src,
            src_port: 80,
            dst_port: 1,
            protocol: TCP,
        },
        inner_l3_offset: 42,
        inner_l4_offset: 62,
    };
    assert_eq!(
        harness.decide(&unknown),
        Action::Drop(DropReason::IcmpErrorUnknownFlow)
    );
}

#[test]
fn a_full_table_keeps_dr_forwarding_and_refuses_nat() {
    for (mode, expect_forward) in [(ForwardingMode::Dr, true), (ForwardingMode::Nat, false)] {
        let spec = spec(vec![service(mode, SchedulerKind::Mh, false, &[1, 1])], 1);
        let snapshot = Arc::new(Snapshot::build(&spec, 1).unwrap());
        let mut harness = Harness {
            state: WorkerState {
                place: WorkerPlace {
                    index: 0,
                    workers: 1,
                    software_steering: false,
                },
                conns: ConnTable::new(4, Timeouts::default()).unwrap(),
                load: LoadTable::new(64),
                persistence: PersistenceTable::new(64),
                neighbors: Arc::new(NeighborTable::new(64)),
                exceptions: balancer::exceptions::ExceptionTable::disabled(),
            },
            tables: WorkerTables::new(snapshot),
        };
        // Fill the table with established flows.
        for i in 0..4 {
            let src = client(i, false);
            forwarded(harness.decide(&tcp(src, 1, vip(false), 80, SYN)));
            if mode == ForwardingMode::Nat {
                let backend = harness
                    .state
                    .conns
                    .iter()
                    .find(|(_, c)| c.client.src_addr == src)
                    .unwrap()
                    .1
                    .backend_endpoint;
                forwarded(harness.decide(&tcp(backend.addr, backend.port, src, 1, SYN | ACK)));
                forwarded(harness.decide(&tcp(src, 1, vip(false), 80, ACK)));
                // Established only once the backend speaks after its SYN-ACK (secure_tcp).
                forwarded(harness.decide(&tcp(backend.addr, backend.port, src, 1, ACK)));
            } else {
                forwarded(harness.decide(&tcp(src, 1, vip(false), 80, ACK)));
            }
        }
        let overflow = harness.decide(&tcp(client(99, false), 1, vip(false), 80, SYN));
        match overflow {
            Action::Forward(forward) => assert!(expect_forward && forward.untracked),
            Action::Drop(DropReason::TableFull) => assert!(!expect_forward),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Two NAT services (VIP:80 and VIP:8443) with the same two backends: each reply leaves from the VIP and port its
/// client connected to, told by the connection, not by the backend's address; with two workers a reply landing on
/// either worker reaches the owner of its connection.
#[test]
fn one_nat_backend_serves_two_services_and_replies_map_back_right() {
    let mut second = service(ForwardingMode::Nat, SchedulerKind::Mh, false, &[1, 1]);
    second.key.port = 8443;
    for backend in &mut second.backends {
        backend.id = BackendId(backend.id.0 + 50);
    }
    let services = vec![
        service(ForwardingMode::Nat, SchedulerKind::Mh, false, &[1, 1]),
        second,
    ];
    // One worker.
    let mut harness = Harness::new(&spec(services.clone(), 1));
    for i in 0..32 {
        // Two connections of one client to one backend must differ in the client's port (the reply key), as in IPVS.
        for (vport, sport) in [(80u16, 40000u16), (8443, 40001)] {
            let src = client(i, false);
            let request = forwarded(harness.decide(&tcp(src, sport, vip(false), vport, SYN)));
            let Rewrite::Destination { addr, port } = request.rewrite else {
                panic!("{request:?}");
            };
            assert_eq!(port, 8080);
            let reply = forwarded(harness.decide(&tcp(addr.ip(), 8080, src, sport, SYN | ACK)));
            assert_eq!(
                reply.rewrite,
                Rewrite::Source {
                    addr: vip(false).into(),
                    port: vport
                },
                "client {i} to port {vport}"
            );
        }
    }
    assert_eq!(
        harness.decide(&tcp(ip("10.1.0.11"), 8080, client(99, false), 1, ACK)),
        Action::Drop(DropReason::NoConnection)
    );

    // Two workers: the request is decided by its owner; its reply is tried on the services' owners in turn.
    let spec = spec(services, 2);
    let mut workers = [
        Harness::worker(&spec, 0, 2, true),
        Harness::worker(&spec, 1, 2, true),
    ];
    let mut hops = 0;
    for i in 0..64 {
        let vport = if i % 2 == 0 { 80 } else { 8443 };
        let src = client(i, false);
        let syn = tcp(src, 3000 + i as u16, vip(false), vport, SYN);
        let request = match workers[0].decide(&syn) {
            Action::Handoff { worker } => workers[usize::from(worker)].state.decide(
                &mut workers[usize::from(worker)].tables,
                &syn,
                None,
                0,
                true,
                NOW,
            ),
            action => action,
        };
        let Rewrite::Destination { addr, port } = forwarded(request).rewrite else {
            panic!()
        };
        let reply = tcp(addr.ip(), port, src, 3000 + i as u16, SYN | ACK);
        for landing in 0..2usize {
            let (mut at, mut handed_off) = (landing, false);
            let answer = loop {
                let ingress = BACKEND_PORT;
                let action = workers[at].state.decide(
                    &mut workers[at].tables,
                    &reply,
                    None,
                    ingress,
                    handed_off,
                    NOW,
                );
                match action {
                    Action::Handoff { worker } => {
                        hops += 1;
                        assert!(hops < 10_000);
                        (at, handed_off) = (usize::from(worker), true);
                    }
                    action => break action,
                }
            };
            assert_eq!(
                forwarded(answer).rewrite,
                Rewrite::Source {
                    addr: vip(false).into(),
                    port: vport
                },
                "client {i} to port {vport}, reply landing on worker {landing}"
            );
        }
    }
    assert!(hops > 0, "the replies were never steered");
}

/// A TCP frame from `src:src_port` to `dst:dst_port` with `flags`, its IPv4 header checksum right (the TCP
/// checksum is left zero: the rewrites update it incrementally, whatever it is).
fn tcp_frame(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut frame = vec![0u8; 14];
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame[12..14].copy_from_slice(&[0x08, 0x00]);
            let mut header = [0u8; 20];
            header[0] = 0x45;
            header[2..4].copy_from_slice(&40u16.to_be_bytes());
            header[8] = 64;
            header[9] = TCP;
            header[12..16].copy_from_slice(&src.octets());
            header[16..20].copy_from_slice(&dst.octets());
            let checksum = ipv4_header_checksum(&header);
            header[10..12].copy_from_slice(&checksum.to_be_bytes());
            frame.extend_from_slice(&header);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            frame[12..14].copy_from_slice(&[0x86, 0xdd]);
            let mut header = [0u8; 40];
            header[0] = 0x60;
            header[4..6].copy_from_slice(&20u16.to_be_bytes());
            header[6] = TCP;
            header[7] = 64;
            header[8..24].copy_from_slice(&src.octets());
            header[24..40].copy_from_slice(&dst.octets());
            frame.extend_from_slice(&header);
        }
        _ => panic!("one family"),
    }
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    frame.extend_from_slice(&tcp);
    frame
}

/// The checksum of an IPv4 `header` whose checksum field is zero.
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let sum = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    !(folded as u16)
}

/// The frame a plain TCP `layout` (untagged, no options) describes, its payload zero: what `parse_plain` reads
/// back as `layout`.
fn frame_of(layout: &FrameLayout) -> Vec<u8> {
    let flow = layout.flow;
    let mut frame = tcp_frame(
        flow.src_addr,
        flow.src_port,
        flow.dst_addr,
        flow.dst_port,
        layout.tcp_flags,
    );
    frame.resize(14 + usize::from(layout.l3_len), 0);
    if layout.l3 == L3::Ipv4 {
        frame[16..18].copy_from_slice(&layout.l3_len.to_be_bytes());
        frame[20] = if layout.dont_fragment { 0x40 } else { 0 };
        frame[22] = layout.ttl;
        frame[24..26].fill(0);
        let checksum = ipv4_header_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    } else {
        frame[18..20].copy_from_slice(&(layout.l3_len - 40).to_be_bytes());
        frame[21] = layout.ttl;
    }
    frame
}

/// A plain frame at the end of its TTL is left to the full decision, as its layout is, which drops it; one a hop
/// further is forwarded from its entry.
#[test]
fn a_plain_frame_at_the_end_of_its_ttl_takes_the_full_decision() {
    for v6 in [false, true] {
        let mut harness = Harness::new(&spec(
            vec![service(ForwardingMode::Dr, SchedulerKind::Mh, v6, &[1, 1])],
            1,
        ));
        forwarded(harness.decide(&tcp(client(3, v6), 40000, vip(v6), 80, SYN)));
        for (ttl, fast) in [(1, false), (2, true)] {
            let ack = FrameLayout {
                ttl,
                ..tcp(client(3, v6), 40000, vip(v6), 80, ACK)
            };
            let split = harness.decide_plain_split_on(&ack, CLIENT_PORT);
            assert_eq!(split.is_ok(), fast, "v6={v6} ttl={ttl}: {split:?}");
            let mut whole = Harness::new(&spec(
                vec![service(ForwardingMode::Dr, SchedulerKind::Mh, v6, &[1, 1])],
                1,
            ));
            forwarded(whole.decide(&tcp(client(3, v6), 40000, vip(v6), 80, SYN)));
            if let Err(action) = split {
                assert_eq!(action, whole.decide(&ack), "v6={v6} ttl={ttl}");
            }
        }
    }
}

/// An established NAT or FULLNAT client frame decided through staging, as the worker decides it, gets a rewrite
/// that refers to its connection; `decide` gives the rewrite that stands for; and rewriting a frame through the
/// connection writes exactly the bytes the concrete rewrite writes.
#[test]
fn a_connection_rewrite_stands_for_the_concrete_rewrite_byte_for_byte() {
    for mode in [ForwardingMode::Nat, ForwardingMode::FullNat] {
        for v6 in [false, true] {
            let mut harness = Harness::new(&spec(
                vec![service(mode, SchedulerKind::Mh, v6, &[1, 1])],
                1,
            ));
            let src = client(11, v6);
            let syn = tcp(src, 40000, vip(v6), 80, SYN);
            forwarded(harness.decide(&syn));
            let frame = tcp_frame(src, 40000, vip(v6), 80, ACK);
            let layout = packet::parse_frame(&frame).expect("a plain frame");
            let verdict = harness.decide_in_worker(&layout);
            let Rewrite::Connection(id) = forwarded(verdict).rewrite else {
                panic!("{mode:?} v6={v6}: the fast path refers to the connection: {verdict:?}");
            };
            assert_rewrites_alike(
                &mut harness,
                mode,
                &frame,
                &layout,
                verdict,
                |state, frame| state.rewrite_client(id, frame, &layout),
            );
        }
    }
}

/// A backend's reply of an established NAT or FULLNAT connection, decided through staging as the worker decides it,
/// gets a rewrite that refers to its connection; `decide` gives the rewrite that stands for; and rewriting the
/// reply through the connection writes exactly the bytes the concrete rewrite writes.
#[test]
fn a_reply_rewrite_stands_for_the_concrete_rewrite_byte_for_byte() {
    for mode in [ForwardingMode::Nat, ForwardingMode::FullNat] {
        for v6 in [false, true] {
            let mut harness = Harness::new(&spec(
                vec![service(mode, SchedulerKind::Mh, v6, &[1, 1])],
                1,
            ));
            let request = tcp(client(11, v6), 40000, vip(v6), 80, SYN);
            let opened = harness.decide(&request);
            let answer = reply_of(Some(&opened), &request.flow, SYN | ACK);
            forwarded(harness.decide(&answer));
            let flow = &answer.flow;
            let frame = tcp_frame(
                flow.src_addr,
                flow.src_port,
                flow.dst_addr,
                flow.dst_port,
                ACK,
            );
            let layout = packet::parse_frame(&frame).expect("a plain frame");
            let verdict = harness.decide_in_worker(&layout);
            let Rewrite::Reply(id) = forwarded(verdict).rewrite else {
                panic!("{mode:?} v6={v6}: the fast path refers to the connection: {verdict:?}");
            };
            assert_rewrites_alike(
                &mut harness,
                mode,
                &frame,
                &layout,
                verdict,
                |state, frame| state.rewrite_reply(id, frame, &layout),
            );
        }
    }
}

/// `verdict`, whose rewrite refers to a connection (the worker's), stands for the concrete rewrite `decide` gives
/// for `frame` (parsed as `layout`) in NAT or FULLNAT `mode`; and `through_entry`, the worker's rewrite from the
/// connection, writes exactly the bytes the concrete rewrite writes.
fn assert_rewrites_alike(
    harness: &mut Harness,
    mode: ForwardingMode,
    frame: &[u8],
    layout: &FrameLayout,
    verdict: Action,
    through_entry: impl Fn(&WorkerState, &mut [u8]) -> Result<(), packet::ParseError>,
) {
    let concrete = forwarded(harness.decide(layout)).rewrite;
    assert_eq!(
        harness
            .state
            .concrete_rewrite(&harness.tables.snapshot, forwarded(verdict).rewrite),
        Some(concrete),
        "{mode:?}"
    );
    assert_eq!(
        matches!(concrete, Rewrite::SourceAndDestination { .. }),
        mode == ForwardingMode::FullNat
    );
    let (mut through_connection, mut through_concrete) = (frame.to_vec(), frame.to_vec());
    through_entry(&harness.state, &mut through_connection).unwrap();
    rewrite_by(&concrete, &mut through_concrete, layout);
    assert_ne!(through_connection, frame, "{mode:?}: rewritten");
    assert_eq!(through_connection, through_concrete, "{mode:?}");
}

/// Applies a concrete NAT or FULLNAT `rewrite` to `frame` (parsed as `layout`) as the data plane does.
fn rewrite_by(rewrite: &Rewrite, frame: &mut [u8], layout: &FrameLayout) {
    match *rewrite {
        Rewrite::Destination { addr, port } => {
            packet::rewrite_destination(frame, layout, &addr, port)
        }
        Rewrite::Source { addr, port } => packet::rewrite_source(frame, layout, &addr, port),
        Rewrite::SourceAndDestination {
            src,
            src_port,
            dst,
            dst_port,
        } => packet::rewrite_source_and_destination(frame, layout, &src, src_port, &dst, dst_port),
        other => panic!("not an address rewrite: {other:?}"),
    }
    .unwrap();
}
