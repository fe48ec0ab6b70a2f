//! Classification and the per-mode rewrites on 64-byte TCP frames.

use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use etherparse::PacketBuilder;
use packet::WireAddr;

fn frame(v6: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    if v6 {
        eth.ipv6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            64,
        )
        .tcp(40000, 80, 1, 1000)
        .ack(1)
        .write(&mut out, &[])
        .unwrap();
    } else {
        eth.ipv4([198, 51, 100, 1], [10, 0, 0, 100], 64)
            .tcp(40000, 80, 1, 1000)
            .ack(1)
            .write(&mut out, &[0; 6])
            .unwrap();
    }
    out
}

fn bench(c: &mut Criterion) {
    for v6 in [false, true] {
        let family = if v6 { "ipv6" } else { "ipv4" };
        let original = frame(v6);
        let layout = packet::parse_frame(&original).unwrap();
        let (backend, local): (IpAddr, IpAddr) = if v6 {
            ("fd01::b".parse().unwrap(), "fd01::5".parse().unwrap())
        } else {
            ("10.1.0.11".parse().unwrap(), "10.1.0.5".parse().unwrap())
        };
        let (backend, local) = (WireAddr::from(backend), WireAddr::from(local));
        c.bench_function(&format!("parse_frame/{family}_tcp"), |b| {
            b.iter(|| packet::parse_frame(std::hint::black_box(&original)))
        });
        let mut work = original.clone();
        c.bench_function(&format!("rewrite_dr_macs/{family}"), |b| {
            b.iter(|| packet::set_macs(&mut work, [2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8]))
        });
        c.bench_function(&format!("rewrite_nat_destination/{family}"), |b| {
            b.iter(|| packet::rewrite_destination(&mut work, &layout, &backend, 8080))
        });
        c.bench_function(&format!("rewrite_fullnat_both/{family}"), |b| {
            b.iter(|| {
                packet::rewrite_source(&mut work, &layout, &local, 1025).unwrap();
                packet::rewrite_destination(&mut work, &layout, &backend, 8080)
            })
        });
        let outer = if v6 { 40 } else { 20 };
        let mut room = vec![0u8; outer + original.len()];
        c.bench_function(&format!("encapsulate_tun/{family}"), |b| {
            b.iter(|| {
                room[outer..].copy_from_slice(&original);
                packet::encapsulate(&mut room, &layout, &local, &backend)
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
