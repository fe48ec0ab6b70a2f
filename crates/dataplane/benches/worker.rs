//! Parse + decide + rewrite + transmit per packet, for each forwarding mode, through the real worker loop fed by the
//! in-process generator (its cost included). One iteration is one poll: a burst of 32 frames.

use balancer::conntrack::EdgeHooks;
use balancer::service::ForwardingMode;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::traffic::bench_worker;

fn modes(c: &mut Criterion) {
    let mut group = c.benchmark_group("worker_burst_of_32");
    group.throughput(Throughput::Elements(32));
    for (name, mode) in [
        ("dr", ForwardingMode::Dr),
        ("nat", ForwardingMode::Nat),
        ("fullnat", ForwardingMode::FullNat),
        ("tun", ForwardingMode::Tun),
    ] {
        for v6 in [false, true] {
            for flows in [1_000u32, 1_000_000] {
                let mut worker = bench_worker(mode, v6, flows, 60, false, 32, EdgeHooks::default())
                    .expect("bench worker");
                let label = format!("{name}/{}/{flows}_flows", if v6 { "ipv6" } else { "ipv4" });
                let mut now = 0;
                // Warm up: every flow in the connection table.
                while worker.state().conns.len() < flows as usize {
                    worker.poll(now);
                }
                group.bench_function(label, |b| {
                    b.iter(|| {
                        now += 1;
                        worker.poll(now / 1000)
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, modes);
criterion_main!(benches);
