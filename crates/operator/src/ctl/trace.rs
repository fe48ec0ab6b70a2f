//! `trace`: which backend a new flow would get, and what each worker holds for it (asked between their bursts).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use balancer::maglev::flow_hash;
use balancer::service::SchedulerKind;
use balancer::snapshot::{describe_endpoint, describe_service};
use packet::FlowKey;

use crate::control_loop::ControlLoop;

/// Which backend a new flow from `client` to `vip` goes to, and why.
pub(super) fn trace(
    control: &mut ControlLoop,
    client: SocketAddr,
    vip: SocketAddr,
    protocol: u8,
) -> String {
    if client.is_ipv4() != vip.is_ipv4() {
        return format!(
            "error: client {client} and VIP {vip} are of different address families: no such flow reaches sluice\n"
        );
    }
    let Some(snapshot) = control.current_snapshot() else {
        return "error: no snapshot published yet\n".into();
    };
    let Some((_, service)) = snapshot.service_for(vip.ip(), vip.port(), protocol) else {
        return format!("no service at {vip} for that protocol: the frame would be dropped (no_service or not_ours)\n");
    };
    let flow = FlowKey {
        src_addr: client.ip(),
        dst_addr: vip.ip(),
        src_port: client.port(),
        dst_port: vip.port(),
        protocol,
    };
    let hash = flow_hash(&flow);
    let mut out = format!(
        "service {} ({:?}, {:?})\n",
        describe_service(&service.key),
        service.mode,
        service.scheduler
    );
    match service.maglev.lookup(hash) {
        Some(index) => {
            let backend = &service.backends[index];
            let slot = hash % u64::from(service.maglev.size().get());
            out.push_str(&format!(
                "new flow: Maglev slot {slot} of {} -> backend {} (weight {})\n",
                service.maglev.size().get(),
                describe_endpoint(backend.addr, backend.port),
                backend.weight
            ));
        }
        None => out.push_str("new flow: no backend available (all removed or drained)\n"),
    }
    if service.scheduler != SchedulerKind::Mh {
        out.push_str("the service's IPVS scheduler decides new TCP flows per worker; Maglev places fragments\n");
    }
    if service.persistence.is_some() {
        out.push_str("persistence: a client with a live affinity entry keeps its backend\n");
    }
    // Ask every worker what it holds for this flow.
    let persistence = service.persistence.map(|spec| {
        (
            balancer::snapshot::mask_address(flow.src_addr, spec.prefix_v4, spec.prefix_v6),
            service.key,
        )
    });
    while control.trace_answers.try_recv().is_ok() {}
    let query = dataplane::worker::TraceQuery { flow, persistence };
    let asked = control
        .trace_queries
        .iter()
        .filter(|queries| queries.try_send(query).is_ok())
        .count();
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut answers = Vec::new();
    while answers.len() < asked {
        match control.trace_answers.recv_deadline(deadline) {
            Ok(answer) => answers.push(answer),
            Err(_) => break,
        }
    }
    answers.sort_by_key(|answer| answer.worker);
    let name_of = |id: balancer::service::BackendId| {
        snapshot
            .backend(id)
            .map_or(format!("backend id {} (removed)", id.0), |(_, b, _)| {
                describe_endpoint(b.addr, b.port)
            })
    };
    let mut held = false;
    for answer in &answers {
        if let Some((backend, state, left_ms)) = answer.connection {
            held = true;
            out.push_str(&format!(
                "worker {}: connection entry -> {} (state {state}, expires in {} s): the flow stays there\n",
                answer.worker,
                name_of(backend),
                left_ms / 1000
            ));
        }
        if let Some(backend) = answer.persistent_backend {
            out.push_str(&format!(
                "worker {}: persistence entry for the client -> {}: new connections go there\n",
                answer.worker,
                name_of(backend)
            ));
        }
    }
    if !held {
        out.push_str(&format!(
            "no worker holds a connection entry for it ({} of {} answered)\n",
            answers.len(),
            asked
        ));
    }
    out
}
