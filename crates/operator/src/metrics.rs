//! The Prometheus text exposition (`GET /metrics`): the workers' and backends' counters, and the families the
//! cluster view, the sync node and `control::observe` render.

use std::sync::atomic::Ordering;
use std::time::Instant;

use balancer::snapshot::{describe_endpoint, describe_service};
use dataplane::worker::WorkerStats;

use crate::control_loop::ControlLoop;

/// The backends' counters summed over the workers: packets in, packets out, bytes in, bytes out.
fn sample(stats: &[std::sync::Arc<WorkerStats>]) -> Vec<[u64; 4]> {
    let mut sums = vec![[0u64; 4]; dataplane::worker::COUNTED_BACKENDS];
    for worker in stats {
        for (sum, counters) in sums.iter_mut().zip(worker.backends.iter()) {
            sum[0] += counters.packets_in.load(Ordering::Relaxed);
            sum[1] += counters.packets_out.load(Ordering::Relaxed);
            sum[2] += counters.bytes_in.load(Ordering::Relaxed);
            sum[3] += counters.bytes_out.load(Ordering::Relaxed);
        }
    }
    sums
}

/// The Prometheus text exposition of the workers' and backends' counters.
pub fn metrics(control: &mut ControlLoop) -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    };
    counter(
        &mut out,
        "sluice_worker_rx_packets_total",
        "Frames received by a worker.",
    );
    for (index, worker) in control.stats.iter().enumerate() {
        out.push_str(&format!(
            "sluice_worker_rx_packets_total{{worker=\"{index}\"}} {}\n",
            worker.rx.load(Ordering::Relaxed)
        ));
    }
    counter(
        &mut out,
        "sluice_worker_tx_packets_total",
        "Frames transmitted by a worker.",
    );
    for (index, worker) in control.stats.iter().enumerate() {
        out.push_str(&format!(
            "sluice_worker_tx_packets_total{{worker=\"{index}\"}} {}\n",
            worker.tx.load(Ordering::Relaxed)
        ));
    }
    counter(
        &mut out,
        "sluice_worker_drops_total",
        "Frames dropped, by reason.",
    );
    for (index, worker) in control.stats.iter().enumerate() {
        for reason in balancer::decision::DropReason::ALL {
            out.push_str(&format!(
                "sluice_worker_drops_total{{worker=\"{index}\",reason=\"{}\"}} {}\n",
                reason.name(),
                worker.drops(reason)
            ));
        }
    }
    out.push_str("# HELP sluice_worker_connections Entries in a worker's connection table.\n# TYPE sluice_worker_connections gauge\n");
    for (index, worker) in control.stats.iter().enumerate() {
        out.push_str(&format!(
            "sluice_worker_connections{{worker=\"{index}\"}} {}\n",
            worker.connections.load(Ordering::Relaxed)
        ));
    }
    let sums = sample(&control.stats);
    let names = [
        (
            "sluice_backend_in_packets_total",
            0,
            "Frames from clients forwarded to a backend.",
        ),
        (
            "sluice_backend_out_packets_total",
            1,
            "Frames from a backend mapped back to clients.",
        ),
        (
            "sluice_backend_in_bytes_total",
            2,
            "Bytes from clients forwarded to a backend.",
        ),
        (
            "sluice_backend_out_bytes_total",
            3,
            "Bytes from a backend mapped back to clients.",
        ),
    ];
    for (name, column, help) in names {
        counter(&mut out, name, help);
        for service in &control.config.services {
            for backend in service.all_backends() {
                let id = control
                    .registry
                    .id(service.key, backend.address, backend.port)
                    .0 as usize;
                out.push_str(&format!(
                    "{name}{{service=\"{}\",backend=\"{}\"}} {}\n",
                    describe_service(&service.key),
                    describe_endpoint(backend.address, backend.port),
                    sums.get(id).map_or(0, |s| s[column])
                ));
            }
        }
    }
    if let Some(snapshot) = control.snapshot.as_deref() {
        out.push_str(&crate::cluster::digest_metrics(snapshot));
    }
    let vips = control
        .config
        .services
        .iter()
        .map(|service| service.key.vip)
        .collect();
    out.push_str(&control.cluster.metrics(&vips));
    if let Some(sync) = &control.sync {
        out.push_str(&sync.metrics(Instant::now()));
    }
    let (backends, services) = control::observe::backend_views(
        &control.config,
        &mut control.registry,
        &control.down,
        &control.drained,
        &control.quorums,
    );
    out.push_str(&control.observed.render(&backends, &services));
    out
}
