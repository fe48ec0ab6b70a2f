//! The services and backends with their traffic summed over the workers (`sluice ctl stats` and what `sluice run`
//! prints when it stops).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use control::config::{BackendIdRegistry, Config};
use dataplane::worker::WorkerStats;

/// The services and backends with their traffic summed over the workers, in the layout of `ipvsadm -Ln --stats`.
/// `baseline` (per backend id, as [`counter_sums`] gives them) is subtracted: the counts since `sluice ctl zero`.
pub fn service_stats(
    config: &Config,
    registry: &mut BackendIdRegistry,
    stats: &[Arc<WorkerStats>],
    baseline: &[[u64; 5]],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "IP Virtual Server (sluice)");
    let _ = writeln!(
        out,
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"
    );
    let _ = writeln!(out, "  -> RemoteAddress:Port");
    for service in &config.services {
        let rows: Vec<(String, [u64; 5])> = service
            .all_backends()
            .map(|backend| {
                let id = registry.id(service.key, backend.address, backend.port);
                let mut sums = counter_sums(stats, id.0 as usize);
                if let Some(zero) = baseline.get(id.0 as usize) {
                    for (sum, zero) in sums.iter_mut().zip(zero) {
                        *sum = sum.saturating_sub(*zero);
                    }
                }
                (
                    balancer::snapshot::describe_endpoint(backend.address, backend.port),
                    sums,
                )
            })
            .collect();
        let total = column_totals(&rows);
        let protocol = protocol_name(service.key.protocol);
        let vip = balancer::snapshot::describe_endpoint(service.key.vip, service.key.port);
        let _ = writeln!(
            out,
            "{protocol}  {vip:<33}{:>6} {:>8} {:>8} {:>8} {:>8}",
            total[0], total[1], total[2], total[3], total[4]
        );
        for (name, sums) in rows {
            let _ = writeln!(
                out,
                "  -> {name:<33}{:>6} {:>8} {:>8} {:>8} {:>8}",
                sums[0], sums[1], sums[2], sums[3], sums[4]
            );
        }
    }
    out
}

/// Backend `id`'s connections, packets in and out, bytes in and out, summed over the workers.
/// A protocol as ipvsadm prints it.
pub fn protocol_name(protocol: u8) -> &'static str {
    if protocol == packet::ip_protocol::UDP {
        "UDP"
    } else {
        "TCP"
    }
}

/// The column sums of a service's backend rows (name, counters).
pub fn column_totals<T>(rows: &[(T, [u64; 5])]) -> [u64; 5] {
    let mut total = [0u64; 5];
    for (_, row) in rows {
        for (sum, value) in total.iter_mut().zip(row) {
            *sum += value;
        }
    }
    total
}

pub fn counter_sums(stats: &[Arc<WorkerStats>], id: usize) -> [u64; 5] {
    let mut sums = [0u64; 5];
    for worker in stats {
        if let Some(counters) = worker.backends.get(id) {
            for (sum, counter) in sums.iter_mut().zip([
                &counters.connections,
                &counters.packets_in,
                &counters.packets_out,
                &counters.bytes_in,
                &counters.bytes_out,
            ]) {
                *sum += counter.load(Ordering::Relaxed);
            }
        }
    }
    sums
}
