//! The staged burst lookup against one-at-a-time lookups: over random inserts (every mode, both families),
//! packets, removals, clock advances and expiry sweeps, `lookup_burst` of a random batch of client keys, reply
//! keys and unknown keys answers exactly what `lookup` answers for each, whatever the batch length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer::conntrack::{ConnKey, ConnTable, Direction, Target, Timeouts};
use balancer::port_alloc::{PortAllocator, PortPartition};
use balancer::service::{BackendId, ForwardingMode};
use packet::flow::ip_protocol;
use packet::FlowKey;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const CAPACITY: usize = 48;

#[derive(Clone, Debug)]
enum Op {
    Insert { key: u16, mode: u8, v6: bool },
    Packet { key: u16, flags: u8 },
    Remove { key: u16 },
    Advance { ms: u64 },
    Expire { budget: usize },
    Burst { picks: Vec<u16>, now_back: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..96u16, 0..4u8, any::<bool>()).prop_map(|(key, mode, v6)| Op::Insert { key, mode, v6 }),
        2 => (0..96u16, prop::sample::select(vec![0x02u8, 0x10, 0x11, 0x04, 0x12])).prop_map(|(key, flags)| Op::Packet { key, flags }),
        1 => (0..96u16).prop_map(|key| Op::Remove { key }),
        2 => prop_oneof![0..3_000u64, 0..200_000u64].prop_map(|ms| Op::Advance { ms }),
        1 => (0..32usize).prop_map(|budget| Op::Expire { budget }),
        3 => (proptest::collection::vec(0..400u16, 0..150), prop_oneof![Just(0u64), 0..100_000u64])
            .prop_map(|(picks, now_back)| Op::Burst { picks, now_back }),
    ]
}

fn client(n: u16, v6: bool) -> FlowKey {
    let (src, dst) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n % 7)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, (n % 7) as u8)),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        )
    };
    FlowKey {
        src_addr: src,
        dst_addr: dst,
        src_port: 1000 + n,
        dst_port: 80,
        protocol: if n.is_multiple_of(3) {
            ip_protocol::UDP
        } else {
            ip_protocol::TCP
        },
    }
}

fn target(mode: u8, v6: bool) -> Target {
    let addr = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))
    };
    Target {
        backend: BackendId(1),
        addr,
        port: 8080,
        mode: ForwardingMode::ALL[usize::from(mode)],
    }
}

/// Runs `ops`, checking every burst; returns how many burst answers were hits.
fn run(ops: Vec<Op>) -> Result<usize, TestCaseError> {
    let partition = PortPartition::new(20000, 20031, 1).unwrap();
    let ports = PortAllocator::new(
        partition,
        0,
        &[
            IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 200, 0, 0, 0, 0, 1)),
        ],
    )
    .unwrap();
    let mut table = ConnTable::with_local_ports(CAPACITY, Timeouts::default(), ports).unwrap();
    let mut now = 0u64;
    // Every key ever inserted, and every reply key ever seen, so batches probe dead and removed keys too.
    let mut seen: Vec<FlowKey> = Vec::new();
    let mut hits = 0usize;
    for op in ops {
        match op {
            Op::Insert { key, mode, v6 } => {
                let flow = client(key, v6);
                if let Ok(id) = table.insert(now, flow, target(mode, v6), 0x02, |_| {}) {
                    seen.push(flow);
                    if let Some(reply) = table.get(id).unwrap().reply_key() {
                        seen.push(reply);
                    }
                }
            }
            Op::Packet { key, flags } => {
                let Some(&probe) = seen.get(usize::from(key) % seen.len().max(1)) else {
                    continue;
                };
                if let Some(hit) = table.lookup(&probe, now) {
                    table.touch(hit.id, hit.direction, flags, now).unwrap();
                }
            }
            Op::Remove { key } => {
                let Some(&probe) = seen.get(usize::from(key) % seen.len().max(1)) else {
                    continue;
                };
                if let Some(hit) = table.lookup(&probe, 0) {
                    if hit.direction == Direction::Original {
                        table.remove(hit.id).unwrap();
                    }
                }
            }
            Op::Advance { ms } => now += ms,
            Op::Expire { budget } => {
                table.expire(now, budget, |_| {});
            }
            Op::Burst { picks, now_back } => {
                let at = now.saturating_sub(now_back);
                // Mostly keys seen before, a fifth never inserted.
                let range = seen.len() + seen.len() / 4 + 1;
                let flows: Vec<FlowKey> = picks
                    .iter()
                    .map(|&p| match seen.get(usize::from(p) % range) {
                        Some(flow) => *flow,
                        // Never inserted.
                        None => client(500 + p, p % 2 == 0),
                    })
                    .collect();
                let keys: Vec<ConnKey> = flows.iter().map(ConnKey::from).collect();
                let hashes: Vec<u32> = keys.iter().map(|k| table.hash(k)).collect();
                let mut out = vec![None; keys.len()];
                table.lookup_burst(&keys, &hashes, at, &mut out);
                hits += out.iter().filter(|hit| hit.is_some()).count();
                for ((flow, key), burst) in flows.iter().zip(&keys).zip(&out) {
                    let single = table.lookup(flow, at);
                    prop_assert_eq!(*burst, single, "{:?}", flow);
                    prop_assert_eq!(table.lookup_key(key, table.hash(key), at), single);
                }
            }
        }
    }
    Ok(hits)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn burst_lookup_equals_single_lookups(ops in proptest::collection::vec(op(), 1..200)) {
        run(ops)?;
    }
}

/// The random operations leave enough live connections that bursts compare hits, not only misses.
#[test]
fn bursts_compare_hits_too() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(op(), 100..200);
    let mut hits = 0;
    for _ in 0..32 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        hits += run(ops).unwrap();
    }
    assert!(hits > 100, "{hits} hits");
}
