//! Connection table cost: single-key hit and miss lookups at 1M and 10M connections, a staged burst lookup of 32
//! random keys, insert plus budgeted expiry under churn, and the memory a connection takes (computed from the
//! layout and measured as resident set growth).
//!
//! The lookup tables hold one-entry connections (DR to IPv4 backends) in a table sized for them
//! (`with_two_entry_limit(n, 0)`); the churn table is a default one holding two-entry NAT connections.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use balancer::conntrack::{ConnKey, ConnTable, EdgeHooks, Hit, Target, Timeouts};
use balancer::service::{BackendId, ForwardingMode};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use packet::flow::ip_protocol;
use packet::FlowKey;

/// Keys probed per lookup measurement, drawn across the whole table so most probes miss the CPU caches.
const PROBES: usize = 1 << 16;
/// Keys per staged burst: a receive burst.
const BURST: usize = 32;

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

fn target(mode: ForwardingMode) -> Target {
    Target {
        backend: BackendId(1),
        addr: IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)),
        port: 8443,
        mode,
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

/// Anonymous memory of this process backed by transparent huge pages, in bytes (0 where unavailable).
fn huge_page_bytes() -> usize {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("AnonHugePages:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

/// Scrambles `i` so consecutive probes land far apart (a bijection on 64 bits).
fn scramble(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x
}

/// A table of `connections` filled to capacity with `mode` connections, its memory reported per connection.
fn filled_table(connections: usize, mode: ForwardingMode) -> ConnTable {
    let before = resident_bytes();
    let two_entry = match mode {
        ForwardingMode::Dr | ForwardingMode::Tun => 0,
        ForwardingMode::Nat | ForwardingMode::FullNat => connections,
    };
    // As `sluice run` builds it: with the DPDK layer's huge-page advice and prefetch instruction.
    let hooks = EdgeHooks {
        advise_memory: Some(dpdk::advise_huge_pages),
        prefetch: Some(dpdk::prefetch_line),
    };
    let mut table = ConnTable::with_hooks(connections, two_entry, Timeouts::default(), None, hooks)
        .expect("table");
    for n in 0..connections as u64 {
        table
            .insert(0, key(n), target(mode), 0x02, |_| {})
            .expect("insert below capacity");
    }
    let after = resident_bytes();
    eprintln!(
        "conntrack {connections} {mode:?} connections at capacity: entry {} B, computed {:.1} B/connection \
         (entries + index + links + bitmap), measured RSS growth {:.1} B/connection, {} MiB of the process \
         on transparent huge pages",
        ConnTable::ENTRY_BYTES,
        table.memory_bytes() as f64 / connections as f64,
        after.saturating_sub(before) as f64 / connections as f64,
        huge_page_bytes() >> 20,
    );
    table
}

fn lookups(c: &mut Criterion) {
    drop(filled_table(1_000_000, ForwardingMode::Nat));
    for connections in [1_000_000usize, 10_000_000] {
        let table = filled_table(connections, ForwardingMode::Dr);
        let hits: Vec<FlowKey> = (0..PROBES as u64)
            .map(|i| key(scramble(i) % connections as u64))
            .collect();
        let misses: Vec<FlowKey> = (0..PROBES as u64)
            .map(|i| key(connections as u64 + scramble(i) % (1 << 40)))
            .collect();
        let mut group = c.benchmark_group(format!("conntrack/{}M", connections / 1_000_000));
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
        // As a worker would: build each key of the burst and its hash, then one staged lookup of all of them.
        group.bench_function("lookup_burst_32_hit", |b| {
            b.iter(|| {
                let mut found = 0usize;
                let mut keys = [ConnKey::default(); BURST];
                let mut hashes = [0u32; BURST];
                let mut out: [Option<Hit>; BURST] = [None; BURST];
                for burst in black_box(&hits).chunks(BURST) {
                    for ((key, hash), flow) in keys.iter_mut().zip(hashes.iter_mut()).zip(burst) {
                        *key = ConnKey::from_flow(flow);
                        *hash = table.hash(key);
                    }
                    table.lookup_burst(&keys, &hashes, 1, &mut out);
                    found += out.iter().filter(|hit| hit.is_some()).count();
                }
                assert_eq!(found, PROBES);
                found
            })
        });
        // The key build and hash alone, for every probe.
        group.bench_function("key_and_hash", |b| {
            b.iter(|| {
                let mut sum = 0u32;
                for flow in black_box(&hits) {
                    sum = sum.wrapping_add(table.hash(&ConnKey::from_flow(flow)));
                }
                sum
            })
        });
        // The table's part alone: keys and hashes staged beforehand, as the parse stage of a worker leaves them.
        let staged: Vec<ConnKey> = hits.iter().map(ConnKey::from_flow).collect();
        let staged_hashes: Vec<u32> = staged.iter().map(|key| table.hash(key)).collect();
        group.bench_function("lookup_burst_32_hit_staged", |b| {
            b.iter(|| {
                let mut found = 0usize;
                let mut out: [Option<Hit>; BURST] = [None; BURST];
                for (keys, hashes) in black_box(&staged)
                    .chunks(BURST)
                    .zip(black_box(&staged_hashes).chunks(BURST))
                {
                    table.lookup_burst(keys, hashes, 1, &mut out);
                    found += out.iter().filter(|hit| hit.is_some()).count();
                }
                assert_eq!(found, PROBES);
                found
            })
        });
        group.finish();
        drop(table);
    }
}

/// Steady churn on a 1M table: 1000 new connections per millisecond of the caller's clock, each dead 500 ms
/// after its SYN (SYN_RECV timeout lowered to 500 ms), and one expiry call with a budget of 4 slots after each
/// insert, as a worker would do once per burst. About 500k NAT connections (two entries each) are alive at any
/// time.
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
        let _ = table.insert(
            now,
            key(next_key),
            target(ForwardingMode::Nat),
            0x02,
            |_| {},
        );
        table.expire(now, 4, |_| {});
        next_key += 1;
    }
    eprintln!(
        "conntrack churn steady state: {} of {} connections in use, {:?}",
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
                    let _ = table.insert(
                        now,
                        key(next_key),
                        target(ForwardingMode::Nat),
                        0x02,
                        |_| removed += 1,
                    );
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
