//! The connection table against a plain HashMap model over random operation sequences: lookups in both
//! directions, TCP states, expiry times, eviction order, capacity, FULLNAT port ownership and what every removal
//! reports.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use balancer::conntrack::{
    Conn, ConnTable, Direction, Endpoint, InsertError, Target, TcpState, Timeouts, TrackedPath,
};
use balancer::port_alloc::{LocalEndpoint, PortAllocator, PortError, PortPartition};
use balancer::service::{BackendId, ForwardingMode};
use packet::flow::ip_protocol;
use packet::FlowKey;
use proptest::prelude::*;

const CAPACITY: usize = 8;
const BACKEND: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1));
const BACKEND_PORT: u16 = 8080;
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1));

#[derive(Clone, Debug)]
enum Op {
    Insert { key: usize, mode: usize, flags: u8 },
    Packet { key: usize, reply: bool, flags: u8 },
    Lookup { key: usize },
    Advance { ms: u64 },
    Expire { budget: usize },
    Remove { key: usize },
}

fn flags() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x18, 0x00])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..24usize, 0..3usize, flags()).prop_map(|(key, mode, flags)| Op::Insert { key, mode, flags }),
        4 => (0..24usize, any::<bool>(), flags()).prop_map(|(key, reply, flags)| Op::Packet { key, reply, flags }),
        1 => (0..24usize).prop_map(|key| Op::Lookup { key }),
        2 => prop_oneof![0..5_000u64, 0..400_000u64, Just(900_000u64)].prop_map(|ms| Op::Advance { ms }),
        2 => (0..12usize).prop_map(|budget| Op::Expire { budget }),
        1 => (0..24usize).prop_map(|key| Op::Remove { key }),
    ]
}

fn client_key(index: usize) -> FlowKey {
    let src = Ipv4Addr::new(10, 0, 0, 1 + (index % 2) as u8);
    let src_port = 1000 + ((index / 2) % 3) as u16;
    let protocol = if (index / 6).is_multiple_of(2) {
        ip_protocol::TCP
    } else {
        ip_protocol::UDP
    };
    let vip = Ipv4Addr::new(192, 0, 2, 1 + ((index / 12) % 2) as u8);
    FlowKey {
        src_addr: IpAddr::V4(src),
        dst_addr: IpAddr::V4(vip),
        src_port,
        dst_port: 80,
        protocol,
    }
}

const MODES: [ForwardingMode; 3] = [
    ForwardingMode::Nat,
    ForwardingMode::FullNat,
    ForwardingMode::Dr,
];

#[derive(Clone, Debug)]
struct ModelConn {
    mode: ForwardingMode,
    reply: Option<FlowKey>,
    local: Option<Endpoint>,
    state: TcpState,
    expires_at: u64,
}

impl ModelConn {
    fn evictable(&self, protocol: u8) -> bool {
        protocol != ip_protocol::TCP || self.state != TcpState::Established
    }
}

struct Model {
    conns: HashMap<FlowKey, ModelConn>,
    /// Client keys of sacrificable connections, in the order they became sacrificable.
    evictable: Vec<FlowKey>,
    timeouts: Timeouts,
}

impl Model {
    fn find(&self, key: &FlowKey) -> Option<(FlowKey, Direction)> {
        if self.conns.contains_key(key) {
            return Some((*key, Direction::Original));
        }
        self.conns
            .iter()
            .find(|(_, conn)| conn.reply.as_ref() == Some(key))
            .map(|(client, _)| (*client, Direction::Reply))
    }

    fn remove(&mut self, client: &FlowKey) -> ModelConn {
        self.evictable.retain(|k| k != client);
        self.conns.remove(client).expect("model holds the key")
    }

    fn path(mode: ForwardingMode, direction: Direction) -> TrackedPath {
        match (direction, mode) {
            (Direction::Reply, _) => TrackedPath::Output,
            (_, ForwardingMode::Dr | ForwardingMode::Tun) => TrackedPath::InputOnly,
            _ => TrackedPath::Input,
        }
    }
}

fn check_removed(
    model: &mut Model,
    removed: &[Conn],
    now: u64,
    must_be_dead: bool,
) -> Result<(), TestCaseError> {
    for conn in removed {
        let expected = model.conns.get(&conn.client).cloned();
        prop_assert!(
            expected.is_some(),
            "removed a connection the model does not have: {:?}",
            conn.client
        );
        let expected = expected.unwrap();
        if must_be_dead {
            prop_assert!(expected.expires_at <= now, "removed a live connection");
        }
        prop_assert_eq!(conn.local, expected.local);
        model.remove(&conn.client);
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let timeouts = Timeouts::default();
    let partition = PortPartition::new(20000, 20009, 2).unwrap();
    let ports = PortAllocator::new(partition, 1, &[LOCAL]).unwrap();
    let total_ports = ports.available();
    let mut table = ConnTable::with_local_ports(CAPACITY, timeouts, ports).unwrap();
    let index_capacity = table.index_capacity_reserved();
    let mut model = Model {
        conns: HashMap::new(),
        evictable: Vec::new(),
        timeouts,
    };
    let mut now = 0u64;

    for op in ops {
        let mut removed: Vec<Conn> = Vec::new();
        match op {
            Op::Insert { key, mode, flags } => {
                let client = client_key(key);
                let mode = MODES[mode];
                let target = Target {
                    backend: BackendId(1),
                    addr: BACKEND,
                    port: BACKEND_PORT,
                    mode,
                };
                let result = table.insert(now, client, target, flags, |c| removed.push(c.conn()));
                let live_same_key = model.conns.get(&client).is_some_and(|c| c.expires_at > now);
                if live_same_key {
                    prop_assert!(
                        matches!(result, Err(InsertError::Exists(_))),
                        "{:?}",
                        result
                    );
                    prop_assert!(removed.is_empty());
                    continue;
                }
                // A dead connection with the same key goes first, whatever happens next.
                let mut expected_removed = Vec::new();
                if model.conns.contains_key(&client) {
                    model.remove(&client);
                    expected_removed.push(client);
                }
                let fullnat_in_use = model.conns.values().filter(|c| c.local.is_some()).count();
                if mode == ForwardingMode::FullNat && fullnat_in_use == total_ports {
                    prop_assert_eq!(result, Err(InsertError::LocalPort(PortError::Exhausted)));
                    prop_assert_eq!(
                        removed.iter().map(|c| c.client).collect::<Vec<_>>(),
                        expected_removed
                    );
                    continue;
                }
                let nat_reply = FlowKey {
                    src_addr: BACKEND,
                    dst_addr: client.src_addr,
                    src_port: BACKEND_PORT,
                    dst_port: client.src_port,
                    protocol: client.protocol,
                };
                if mode == ForwardingMode::Nat {
                    if let Some((holder, _)) = model.find(&nat_reply) {
                        // A finished TCP holder (both sides closed, or reset) gives its reply key up.
                        let held = &model.conns[&holder];
                        let finished = client.protocol == ip_protocol::TCP
                            && matches!(held.state, TcpState::TimeWait | TcpState::Close);
                        if held.expires_at > now && !finished {
                            prop_assert!(
                                matches!(result, Err(InsertError::ReplyKeyInUse(_))),
                                "{:?}",
                                result
                            );
                            prop_assert_eq!(
                                removed.iter().map(|c| c.client).collect::<Vec<_>>(),
                                expected_removed
                            );
                            continue;
                        }
                        model.remove(&holder);
                        expected_removed.push(holder);
                    }
                }
                if model.conns.len() == CAPACITY {
                    match model.evictable.first().copied() {
                        Some(victim) => {
                            model.remove(&victim);
                            expected_removed.push(victim);
                        }
                        None => {
                            prop_assert_eq!(result, Err(InsertError::TableFull));
                            prop_assert_eq!(
                                removed.iter().map(|c| c.client).collect::<Vec<_>>(),
                                expected_removed
                            );
                            continue;
                        }
                    }
                }
                prop_assert_eq!(
                    removed.iter().map(|c| c.client).collect::<Vec<_>>(),
                    expected_removed
                );
                let id = match result {
                    Ok(id) => id,
                    Err(error) => {
                        return Err(TestCaseError::fail(format!("insert failed: {error}")));
                    }
                };
                let conn = table.get(id).unwrap();
                let state = if client.protocol == ip_protocol::TCP {
                    TcpState::None.next(Model::path(mode, Direction::Original), flags)
                } else {
                    TcpState::None
                };
                let reply = match mode {
                    ForwardingMode::Nat => Some(nat_reply),
                    ForwardingMode::FullNat => {
                        let local = conn.local.expect("FULLNAT connection has a local endpoint");
                        prop_assert_eq!(local.addr, LOCAL);
                        prop_assert_eq!(partition.owner_of(local.port), Some(1));
                        Some(FlowKey {
                            src_addr: BACKEND,
                            dst_addr: local.addr,
                            src_port: BACKEND_PORT,
                            dst_port: local.port,
                            protocol: client.protocol,
                        })
                    }
                    _ => None,
                };
                prop_assert_eq!(conn.reply_key(), reply);
                let modelled = ModelConn {
                    mode,
                    reply,
                    local: conn.local,
                    state,
                    expires_at: now + timeouts.for_protocol(client.protocol, state),
                };
                if modelled.evictable(client.protocol) {
                    model.evictable.push(client);
                }
                model.conns.insert(client, modelled);
            }
            Op::Packet { key, reply, flags } => {
                let mut probe = client_key(key);
                if reply {
                    // Some connection's reply key, if any connection has one; else the plain key.
                    if let Some(r) = model.conns.values().filter_map(|c| c.reply).nth(key % 4) {
                        probe = r;
                    }
                }
                let expected = model
                    .find(&probe)
                    .filter(|(client, _)| model.conns[client].expires_at > now);
                let hit = table.lookup(&probe, now);
                prop_assert_eq!(hit.map(|h| h.direction), expected.map(|(_, d)| d));
                if let (Some(hit), Some((client, direction))) = (hit, expected) {
                    prop_assert_eq!(table.get(hit.id).unwrap().client, client);
                    let transition = table.touch(hit.id, direction, flags, now).unwrap();
                    let protocol = client.protocol;
                    let timeouts = model.timeouts;
                    let conn = model.conns.get_mut(&client).unwrap();
                    let was_evictable = conn.evictable(protocol);
                    if protocol == ip_protocol::TCP {
                        conn.state = conn.state.next(Model::path(conn.mode, direction), flags);
                    }
                    conn.expires_at = now + timeouts.for_protocol(protocol, conn.state);
                    prop_assert_eq!(transition.to, conn.state);
                    let now_evictable = conn.evictable(protocol);
                    if was_evictable && !now_evictable {
                        model.evictable.retain(|k| *k != client);
                    } else if !was_evictable && now_evictable {
                        model.evictable.push(client);
                    }
                }
            }
            Op::Lookup { key } => {
                let probe = client_key(key);
                let expected = model.conns.get(&probe).is_some_and(|c| c.expires_at > now);
                prop_assert_eq!(table.lookup(&probe, now).is_some(), expected);
            }
            Op::Advance { ms } => now += ms,
            Op::Expire { budget } => {
                let count = table.expire(now, budget, |c| removed.push(c.conn()));
                prop_assert!(count <= budget);
                prop_assert_eq!(count, removed.len());
                check_removed(&mut model, &removed, now, true)?;
            }
            Op::Remove { key } => {
                let probe = client_key(key);
                if let Some((client, _)) = model
                    .find(&probe)
                    .filter(|(_, d)| *d == Direction::Original)
                {
                    // Find the id through a lookup far in the past, when everything was alive.
                    let id = table.lookup(&client, 0).map(|h| h.id);
                    prop_assert!(id.is_some());
                    let conn = table.remove(id.unwrap()).unwrap();
                    prop_assert_eq!(conn.client, client);
                    model.remove(&client);
                }
            }
        }

        // Invariants after every operation.
        prop_assert_eq!(table.len(), model.conns.len());
        prop_assert!(table.len() <= CAPACITY);
        prop_assert_eq!(table.index_capacity_reserved(), index_capacity);
        let mut locals = HashSet::new();
        for (_, conn) in table.iter() {
            let expected = model.conns.get(&conn.client);
            prop_assert!(expected.is_some());
            let expected = expected.unwrap();
            prop_assert_eq!(conn.tcp_state, expected.state);
            prop_assert_eq!(conn.expires_at, expected.expires_at);
            prop_assert_eq!(conn.mode, expected.mode);
            if let Some(local) = conn.local {
                prop_assert!(
                    locals.insert(local),
                    "local endpoint held twice: {:?}",
                    local
                );
                let endpoint = LocalEndpoint {
                    addr: local.addr,
                    port: local.port,
                };
                prop_assert!(table.ports().unwrap().is_allocated(endpoint));
            }
        }
        prop_assert_eq!(
            table.ports().unwrap().available(),
            total_ports - locals.len()
        );
    }

    // A full sweep at the end removes exactly the dead connections.
    let dead: HashSet<FlowKey> = model
        .conns
        .iter()
        .filter(|(_, c)| c.expires_at <= now)
        .map(|(k, _)| *k)
        .collect();
    let mut removed = Vec::new();
    let mut total = 0;
    for _ in 0..CAPACITY.div_ceil(3) {
        total += table.expire(now, 3, |c| removed.push(c.conn().client));
    }
    prop_assert_eq!(total, dead.len());
    prop_assert_eq!(removed.into_iter().collect::<HashSet<_>>(), dead);
    prop_assert_eq!(table.len(), model.conns.len() - total);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}

#[test]
fn ports_return_when_every_fullnat_connection_expires() {
    let timeouts = Timeouts::default();
    let partition = PortPartition::new(30000, 30999, 4).unwrap();
    let ports = PortAllocator::new(partition, 3, &[LOCAL]).unwrap();
    let total = ports.available();
    let mut table = ConnTable::with_local_ports(total, timeouts, ports).unwrap();
    let target = Target {
        backend: BackendId(1),
        addr: BACKEND,
        port: BACKEND_PORT,
        mode: ForwardingMode::FullNat,
    };
    for round in 0..3u64 {
        let start = round * timeouts.udp;
        for n in 0..total {
            let client = FlowKey {
                src_addr: IpAddr::V4(Ipv4Addr::new(172, 16, (n >> 8) as u8, n as u8)),
                dst_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                src_port: 40000,
                dst_port: 53,
                protocol: ip_protocol::UDP,
            };
            let id = table.insert(start, client, target, 0, |_| {}).unwrap();
            let port = table.get(id).unwrap().local.unwrap().port;
            assert_eq!(partition.owner_of(port), Some(3));
        }
        assert_eq!(table.ports().unwrap().available(), 0);
        // One full sweep of the clock hand, in bursts of 64 slots.
        let mut expired = 0;
        for _ in 0..total.div_ceil(64) {
            expired += table.expire(start + timeouts.udp, 64, |_| {});
        }
        assert_eq!(expired, total);
        assert!(table.is_empty());
        assert_eq!(table.ports().unwrap().available(), total);
    }
}
