//! The table views: `list` (ipvsadm -Ln, with the weights the workers use and why) and `conns` (connection-table
//! entries per worker).

use std::sync::atomic::Ordering;

use balancer::snapshot::describe_endpoint;
use dataplane::worker::WorkerStats;

use crate::control_loop::ControlLoop;

/// `ipvsadm -Ln`: services, schedulers, backends, forwarding method and weight as the workers use them.
pub(super) fn list(control: &mut ControlLoop) -> String {
    let mut out = String::from("IP Virtual Server (sluice), generation ");
    out.push_str(&format!("{}\n", control.generation));
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State\n");
    // The workers' scheduler counts, asked between their bursts.
    let load = crate::connections::load(control, control.registry.id_bound() as usize);
    for service in &control.config.services {
        let protocol = crate::service_stats::protocol_name(service.key.protocol);
        let persistent = service.persistence.map_or(String::new(), |p| {
            format!(" persistent {}", p.timeout_ms / 1000)
        });
        let digest = control
            .snapshot
            .as_deref()
            .and_then(|snapshot| crate::cluster::maglev_digest(snapshot, &service.key))
            .map_or(String::new(), |digest| format!(" maglev {digest}"));
        out.push_str(&format!(
            "{protocol}  {} {}{persistent}{digest}\n",
            describe_endpoint(service.key.vip, service.key.port),
            format!("{:?}", service.scheduler).to_lowercase()
        ));
        let method = match service.mode {
            balancer::service::ForwardingMode::Dr => "Route",
            balancer::service::ForwardingMode::Nat => "Masq",
            balancer::service::ForwardingMode::FullNat => "FullNat",
            balancer::service::ForwardingMode::Tun => "Tunnel",
        };
        if service.quorum > 1 || service.sorry_server.is_some() {
            out.push_str(&format!(
                "  quorum {} hysteresis {}: {} (healthy weight {})\n",
                service.quorum,
                service.hysteresis,
                if control.quorums.is_lost(&service.key) {
                    "lost"
                } else {
                    "held"
                },
                control::backend_state::healthy_weight(
                    service,
                    &mut control.registry,
                    &control.down,
                    &control.drained
                )
            ));
        }
        // The weight the workers use (0 while drained or inhibited); a backend out of the table shows "-". The
        // state says why.
        let decisions = control::backend_state::decide(
            service,
            &mut control.registry,
            &control.down,
            &control.drained,
            &control.quorums,
        );
        for decision in decisions {
            let weight = decision
                .weight
                .map_or_else(|| "-".to_owned(), |weight| weight.to_string());
            let id = control
                .registry
                .id(service.key, decision.address, decision.port);
            let (active, inactive) = match &load {
                Some(load) => {
                    let (active, inactive) = load.get(id.0 as usize).copied().unwrap_or_default();
                    (active.to_string(), inactive.to_string())
                }
                None => ("?".into(), "?".into()),
            };
            out.push_str(&format!(
                "  -> {:<28}{method:<8}{weight:<7}{active:<11}{inactive:<10}{}\n",
                describe_endpoint(decision.address, decision.port),
                decision.state.name()
            ));
        }
    }
    out
}

/// `conns`: the entries of each worker's connection table and the generation it uses.
pub(super) fn connection_counts(stats: &[std::sync::Arc<WorkerStats>]) -> String {
    let mut out = String::new();
    let mut total = 0;
    for (index, worker) in stats.iter().enumerate() {
        let count = worker.connections.load(Ordering::Relaxed);
        total += count;
        out.push_str(&format!(
            "worker {index}: {count} connections, generation {}\n",
            worker.generation.load(Ordering::Relaxed)
        ));
    }
    out.push_str(&format!("total: {total} connections\n"));
    out
}
