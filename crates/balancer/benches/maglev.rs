//! Maglev table build time for realistic table sizes and backend counts, and per-packet lookup cost.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use balancer::maglev::{flow_hash, MaglevTable, TableSize};
use balancer::service::{Backend, BackendId};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use packet::{ip_protocol, FlowKey};

fn backends(n: u32) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            id: BackendId(i),
            addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            port: 80,
            weight: 1 + i % 4,
            mac: None,
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(10);
    for (m, n) in [
        (65_537u32, 10u32),
        (65_537, 100),
        (65_537, 1000),
        (655_373, 1000),
    ] {
        let list = backends(n);
        let size = TableSize::new(m).expect("prime table size");
        group.bench_with_input(
            BenchmarkId::new(format!("M={m}"), format!("N={n}")),
            &list,
            |b, list| b.iter(|| MaglevTable::build(black_box(list), size).expect("valid backends")),
        );
    }
    // Worst case of the cumulative-weight scheme: turns grow with max weight / mean weight (here about 500).
    let mut skewed = backends(1000);
    for backend in skewed.iter_mut() {
        backend.weight = 1;
    }
    skewed[0].weight = 1000;
    group.bench_function("M=65537/N=1000 one of weight 1000, rest 1", |b| {
        b.iter(|| {
            MaglevTable::build(black_box(&skewed), TableSize::default()).expect("valid backends")
        })
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let list = backends(100);
    let table = MaglevTable::build(&list, TableSize::default()).expect("valid backends");
    // 4096 distinct flows, cycled, so that the table access pattern is not a single cached slot.
    let flows: Vec<FlowKey> = (0..4096u32)
        .map(|i| FlowKey {
            src_addr: IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)),
            dst_addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            src_port: 1024 + (i as u16).wrapping_mul(7),
            dst_port: 80,
            protocol: ip_protocol::TCP,
        })
        .collect();
    let mut group = c.benchmark_group("maglev_lookup");
    group.bench_function("flow_hash+lookup M=65537 N=100", |b| {
        let mut next = 0usize;
        b.iter(|| {
            let flow = &flows[next & 4095];
            next = next.wrapping_add(1);
            table.lookup(flow_hash(black_box(flow)))
        })
    });
    group.bench_function("lookup only M=65537 N=100", |b| {
        let mut hash = 0x9e37_79b9_7f4a_7c15u64;
        b.iter(|| {
            hash = hash
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            table.lookup(black_box(hash))
        })
    });
    group.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
