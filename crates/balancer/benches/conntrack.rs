//! Connection table cost: hit and miss lookups at 1M and 10M connections, insert plus budgeted expiry under churn,
//! and the memory a connection takes (computed from the layout and measured as resident set growth).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use balancer::conntrack::{ConnTable, Target, Timeouts};
use balancer::service::{BackendId, ForwardingMode};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use packet::flow::ip_protocol;
use packet::FlowKey;

/// Keys probed per lookup measurement, drawn across the whole table so most probes miss the CPU caches.
const PROBES: usize = 1 << 16;

/// A distinct client key per `n` (48 bits of address and port).
fn key(n: u64) -> FlowKey {
    FlowKey {
        src_addr: IpAddr::V4(Ipv4Addr::from((n >> 16) as u32 ^ 0x0a00_0000)),
        dst_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        src_port: n as u16,
        dst_port: 443,
        protocol: ip_protocol::TCP,
    }
}

fn target() -> Target {
    Target {
        backend: BackendId(1),
        addr: IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)),
        port: 8443,
        mode: ForwardingMode::Nat,
    }
}

/// Resident set size of this process in bytes, from /proc/self/statm (0 where unavailable).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Scrambles `i` so consecutive probes land far apart (a bijection on 64 bits).
fn scramble(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x
}

fn filled_table(entries: usize) -> ConnTable {
    let before = resident_bytes();
    let mut table = ConnTable::new(entries, Timeouts::default()).expect("table");
    for n in 0..entries as u64 {
        table
            .insert(0, key(n), target(), 0x02, |_| {})
            .expect("insert below capacity");
    }
    let after = resident_bytes();
    eprintln!(
        "conntrack {entries} entries: entry {} B, computed {:.1} B/entry (slab + index), measured RSS growth {:.1} B/entry",
        ConnTable::ENTRY_BYTES,
        table.memory_bytes() as f64 / entries as f64,
        after.saturating_sub(before) as f64 / entries as f64,
    );
    table
}

fn lookups(c: &mut Criterion) {
    for entries in [1_000_000usize, 10_000_000] {
        let table = filled_table(entries);
        let hits: Vec<FlowKey> = (0..PROBES as u64)
            .map(|i| key(scramble(i) % entries as u64))
            .collect();
        let misses: Vec<FlowKey> = (0..PROBES as u64)
            .map(|i| key(entries as u64 + scramble(i) % (1 << 40)))
            .collect();
        let mut group = c.benchmark_group(format!("conntrack/{}M", entries / 1_000_000));
        group.throughput(Throughput::Elements(PROBES as u64));
        group.bench_function("lookup_hit", |b| {
            b.iter(|| {
                let mut found = 0usize;
                for probe in &hits {
                    found += usize::from(table.lookup(black_box(probe), 1).is_some());
                }
                assert_eq!(found, PROBES);
                found
            })
        });
        group.bench_function("lookup_miss", |b| {
            b.iter(|| {
                let mut found = 0usize;
                for probe in &misses {
                    found += usize::from(table.lookup(black_box(probe), 1).is_some());
                }
                assert_eq!(found, 0);
                found
            })
        });
        group.finish();
        drop(table);
    }
}

/// Steady churn on a 1M table: 1000 new connections per millisecond of the caller's clock, each dead 500 ms
/// after its SYN (SYN_RECV timeout lowered to 500 ms), and one expiry call with a budget of 4 slots after each
/// insert, as a worker would do once per burst. About 500k connections are alive at any time.
fn churn(c: &mut Criterion) {
    const CAPACITY: usize = 1_000_000;
    const BATCH: u64 = 4096;
    let timeouts = Timeouts {
        syn_recv: 500,
        ..Timeouts::default()
    };
    let mut table = ConnTable::new(CAPACITY, timeouts).expect("table");
    let mut next_key = 0u64;
    let mut now = 0u64;
    // Warm to steady state.
    while next_key < 2 * CAPACITY as u64 {
        now = next_key / 1000;
        let _ = table.insert(now, key(next_key), target(), 0x02, |_| {});
        table.expire(now, 4, |_| {});
        next_key += 1;
    }
    eprintln!(
        "conntrack churn steady state: {} of {} slots in use, {:?}",
        table.len(),
        CAPACITY,
        table.stats()
    );
    let mut group = c.benchmark_group("conntrack/1M");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("insert_then_expire_budget_4", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut removed = 0usize;
                for _ in 0..BATCH {
                    now = next_key / 1000;
                    let _ = table.insert(now, key(next_key), target(), 0x02, |_| removed += 1);
                    removed += table.expire(now, 4, |_| {});
                    next_key += 1;
                }
                removed
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, lookups, churn);
criterion_main!(benches);
