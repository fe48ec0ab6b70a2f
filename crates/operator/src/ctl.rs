//! Operating a running sluice: the control socket (a Unix socket, mode 0600, one text command per connection) that
//! `sluice ctl` talks to, and the Prometheus text endpoint. Connections are read and written off the control thread
//! (see `serve.rs`), each within its deadlines; the control thread gets complete requests over a queue and answers
//! them between its other duties, never by a worker and never waiting for a client.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use balancer::maglev::flow_hash;
use balancer::service::{ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{describe_endpoint, describe_service};
use control::protocol::Request;
use crossbeam::channel::{Receiver, RecvTimeoutError};
use dataplane::worker::WorkerStats;
use packet::FlowKey;

use crate::control_loop::ControlLoop;
use crate::serve::{Job, Listeners, Server, Work};

/// Requests handled per turn of the control loop before it looks at its other duties again.
const JOBS_PER_TURN: usize = 64;

/// The control socket and the metrics endpoint of a running sluice.
pub struct Endpoints {
    /// Dropping it stops the accepting threads and removes the socket file.
    _server: Server,
    jobs: Receiver<Job>,
    /// The counters sampled over fixed windows, for `rate`.
    rate: crate::rate::RateWindow,
}

impl Endpoints {
    /// Binds the control socket and the metrics listener the configuration names and starts accepting: requests
    /// wait in a queue until the control loop's first [`Endpoints::serve`].
    pub fn open(socket: Option<&str>, metrics: Option<SocketAddr>) -> Result<Endpoints, String> {
        Endpoints::start(Listeners::bind(socket, metrics)?)
    }

    /// Starts accepting on listeners bound earlier (`sluice run` binds them before the EAL starts, so that an
    /// address it cannot use stops it before any device is touched).
    pub fn start(listeners: Listeners) -> Result<Endpoints, String> {
        let (server, jobs) = listeners.start()?;
        Ok(Endpoints {
            _server: server,
            jobs,
            rate: Default::default(),
        })
    }

    /// Answers the requests that are complete, waiting up to 5 ms for the first: the control loop's pause.
    pub fn serve(&mut self, control: &mut ControlLoop, config_path: &Path) {
        self.rate.tick(&control.stats, Instant::now());
        let pause = Duration::from_millis(5);
        let first = match self.jobs.recv_timeout(pause) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => return,
            // Neither endpoint is configured: nothing will ever come.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(pause);
                return;
            }
        };
        let mut job = Some(first);
        for _ in 0..JOBS_PER_TURN {
            let Some(Job { work, reply }) = job.take() else {
                break;
            };
            let answer = match work {
                Work::Control(request) => self.command(request, control, config_path),
                Work::Metrics => metrics(control),
            };
            // A channel of one, for this answer only: never blocks; a client that gave up is not waited for.
            let _ = reply.try_send(answer);
            job = self.jobs.try_recv().ok();
        }
    }

    fn command(
        &mut self,
        request: Request,
        control: &mut ControlLoop,
        config_path: &Path,
    ) -> String {
        let outcome = |result: Result<String, String>| match result {
            Ok(message) => format!("{message}\n"),
            Err(error) => format!("error: {error}\n"),
        };
        match request {
            Request::List => list(control),
            Request::Stats => crate::service_stats::service_stats(
                &control.config,
                &mut control.registry,
                &control.stats,
                &control.zeroed,
            ),
            Request::Timeouts => {
                let t = control.config.network.timeouts;
                format!(
                    "Timeout (tcp tcpfin udp): {} {} {}\n\
                     all (seconds): established {} syn_sent {} syn_recv {} fin_wait {} time_wait {} close {} \
                     close_wait {} last_ack {} listen {} syn_ack {} udp {} icmp {}\n",
                    t.established / 1000,
                    t.fin_wait / 1000,
                    t.udp / 1000,
                    t.established / 1000,
                    t.syn_sent / 1000,
                    t.syn_recv / 1000,
                    t.fin_wait / 1000,
                    t.time_wait / 1000,
                    t.close / 1000,
                    t.close_wait / 1000,
                    t.last_ack / 1000,
                    t.listen / 1000,
                    t.synack / 1000,
                    t.udp / 1000,
                    t.icmp / 1000
                )
            }
            Request::SetTimeouts { tcp, tcpfin, udp } => {
                outcome(set_timeouts(control, tcp, tcpfin, udp))
            }
            Request::Zero => {
                control.zeroed = (0..dataplane::worker::COUNTED_BACKENDS)
                    .map(|id| crate::service_stats::counter_sums(&control.stats, id))
                    .collect();
                log::info!("ctl: statistics zeroed");
                "statistics zeroed: stats counts from now (the metrics' counters keep counting)\n"
                    .into()
            }
            Request::Rate => self.rate.answer(control),
            Request::Conns => connections(&control.stats),
            Request::Connections {
                filter,
                offset,
                limit,
            } => crate::connections::list(control, filter, offset, limit),
            Request::Save => {
                let running = crate::control_loop::running_config(control);
                format!(
                    "# The running configuration of sluice (generation {}), written by `sluice ctl save`: ctl edits,\n\
                     # set-timeout and drains (a backend's `drained` key) included. Not kept: the comments and\n\
                     # key order of the file it came from, and what is state rather than configuration (health,\n\
                     # counters, connections).\n\n{}",
                    control.generation,
                    control::render::render(&running)
                )
            }
            Request::Sync => match &control.sync {
                Some(sync) => sync.describe(Instant::now()),
                None => "sync: not configured (no [sync] section)\n".into(),
            },
            Request::Reload => {
                let result = control.reload(config_path);
                control.observed.count_reload(&result);
                match &result {
                    Ok(message) => log::info!("ctl: {message}"),
                    Err(error) => log::error!("ctl: {error}"),
                }
                outcome(result)
            }
            Request::Drain(address) => outcome(logged(control.set_drained(address, true))),
            Request::Undrain(address) => outcome(logged(control.set_drained(address, false))),
            Request::Trace {
                client,
                vip,
                protocol,
            } => trace(control, client, vip, protocol),
            edit_request => outcome(logged(edit(control, edit_request))),
        }
    }
}

/// A change asked over the control socket goes to the log as well as to the caller.
fn logged(result: Result<String, String>) -> Result<String, String> {
    match &result {
        Ok(message) => log::info!("ctl: {message}"),
        Err(error) => log::warn!("ctl: refused: {error}"),
    }
    result
}

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

/// ipvsadm's -A/-D/-a/-d/-e on the running configuration.
fn edit(control: &mut ControlLoop, request: Request) -> Result<String, String> {
    use control::config::{BackendConfig, ServiceConfig};
    match request {
        Request::AddService {
            key,
            mode,
            scheduler,
        } => {
            let name = describe_service(&key);
            if key.port == 0 && !matches!(mode, ForwardingMode::Dr | ForwardingMode::Tun) {
                return Err(format!(
                    "service {name}: port 0 (all ports) is allowed in dr and tun modes only"
                ));
            }
            control.edit(|config| {
                if config.services.iter().any(|s| s.key == key) {
                    return Err(format!("service {name} exists"));
                }
                config
                    .services
                    .push(ServiceConfig::plain(key, mode, scheduler));
                Ok(format!("added service {name}"))
            })
        }
        Request::RemoveService { key } => {
            let name = describe_service(&key);
            control.edit(|config| {
                let before = config.services.len();
                config.services.retain(|s| s.key != key);
                if config.services.len() == before {
                    return Err(format!("no service {name}"));
                }
                Ok(format!("removed service {name}"))
            })
        }
        Request::AddBackend {
            key,
            backend,
            weight,
        } => edit_backend(control, key, backend, |service, position| {
            let name = describe_service(&key);
            if position.is_some() {
                return Err(format!("{backend} is already in {name}"));
            }
            let maps_ports = matches!(service.mode, ForwardingMode::Nat | ForwardingMode::FullNat);
            if !maps_ports && backend.port() != key.port {
                return Err(format!(
                    "{:?} cannot map ports: the backend port must be {}",
                    service.mode, key.port
                ));
            }
            if maps_ports && backend.port() == 0 {
                return Err("nat and fullnat backends need a port".into());
            }
            if backend.is_ipv4() != key.vip.is_ipv4() {
                return Err(format!(
                    "{backend} is not of the family of VIP {}; nothing changed",
                    key.vip
                ));
            }
            service
                .backends
                .push(BackendConfig::plain(backend.ip(), backend.port(), weight));
            Ok(format!("added {backend} to {name} with weight {weight}"))
        }),
        Request::RemoveBackend { key, backend } => {
            edit_backend(control, key, backend, |service, position| {
                let name = describe_service(&key);
                let index = position.ok_or_else(|| format!("{backend} is not in {name}"))?;
                service.backends.remove(index);
                Ok(format!("removed {backend} from {name}"))
            })
        }
        Request::SetWeight {
            key,
            backend,
            weight,
        } => edit_backend(control, key, backend, |service, position| {
            let name = describe_service(&key);
            let index = position.ok_or_else(|| format!("{backend} is not in {name}"))?;
            service.backends[index].weight = weight;
            Ok(format!("{backend} in {name} now has weight {weight}"))
        }),
        other => Err(format!("{other:?} is not an edit")),
    }
}

/// ipvsadm --set: the running configuration's timeouts (validated as the file's), then every worker's.
fn set_timeouts(
    control: &mut ControlLoop,
    tcp: u64,
    tcpfin: u64,
    udp: u64,
) -> Result<String, String> {
    let message = control.edit(|config| {
        let timeouts = &mut config.network.timeouts;
        for (seconds, field) in [
            (tcp, &mut timeouts.established),
            (tcpfin, &mut timeouts.fin_wait),
            (udp, &mut timeouts.udp),
        ] {
            if seconds > 0 {
                *field = seconds.saturating_mul(1000);
            }
        }
        Ok(format!(
            "timeouts (tcp tcpfin udp) now {} {} {}",
            timeouts.established / 1000,
            timeouts.fin_wait / 1000,
            timeouts.udp / 1000
        ))
    })?;
    control.push_timeouts()?;
    log::info!("ctl: {message}");
    Ok(message)
}

/// Applies `change` to the service `key`, given the position of `backend` in it.
fn edit_backend(
    control: &mut ControlLoop,
    key: ServiceKey,
    backend: SocketAddr,
    change: impl FnOnce(&mut control::config::ServiceConfig, Option<usize>) -> Result<String, String>,
) -> Result<String, String> {
    control.edit(|config| {
        let service = config
            .services
            .iter_mut()
            .find(|s| s.key == key)
            .ok_or_else(|| format!("no service {}", describe_service(&key)))?;
        let position = service
            .backends
            .iter()
            .position(|b| b.address == backend.ip() && b.port == backend.port());
        change(service, position)
    })
}

/// `ipvsadm -Ln`: services, schedulers, backends, forwarding method and weight as the workers use them.
fn list(control: &mut ControlLoop) -> String {
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

fn connections(stats: &[std::sync::Arc<WorkerStats>]) -> String {
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

/// Which backend a new flow from `client` to `vip` goes to, and why.
fn trace(control: &mut ControlLoop, client: SocketAddr, vip: SocketAddr, protocol: u8) -> String {
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

/// The Prometheus text exposition of the workers' and backends' counters.
fn metrics(control: &mut ControlLoop) -> String {
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

/// `sluice ctl`: sends one command to the control socket and prints the answer.
pub fn client(socket: &Path, command: &[String]) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "control socket {}: {e} (is sluice running with [control] socket?)",
            socket.display()
        )
    })?;
    // sluice answers within its own deadlines (a reload within a few seconds); this bounds a stuck peer.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(format!("{}\n", command.join(" ")).as_bytes())
        .map_err(|e| e.to_string())?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    print!("{answer}");
    if answer.starts_with("error:") {
        return Err("the command was refused".into());
    }
    Ok(())
}
