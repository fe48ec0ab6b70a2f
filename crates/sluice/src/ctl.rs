//! Operating a running sluice: the control socket (a Unix socket, mode 0600, one text command per connection) that
//! `sluice ctl` talks to, and the Prometheus text endpoint. Both are served by the control thread between its other
//! duties, never by a worker.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use balancer::maglev::flow_hash;
use balancer::snapshot::{describe_endpoint, describe_service};
use dataplane::worker::WorkerStats;
use packet::FlowKey;

use crate::control_loop::ControlLoop;

/// The listening sockets of the control thread.
pub struct Endpoints {
    socket: Option<(UnixListener, PathBuf)>,
    metrics: Option<TcpListener>,
    /// (when, per backend id: packets in, packets out, bytes in, bytes out) for --rate.
    last_sample: Option<(Instant, Vec<[u64; 4]>)>,
}

impl Endpoints {
    /// Opens the control socket and the metrics listener the configuration names.
    pub fn open(socket: Option<&str>, metrics: Option<&str>) -> Result<Endpoints, String> {
        let socket = match socket {
            Some(path) => {
                let path = PathBuf::from(path);
                if UnixStream::connect(&path).is_ok() {
                    return Err(format!(
                        "control socket {}: another sluice is listening there",
                        path.display()
                    ));
                }
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path)
                    .map_err(|e| format!("control socket {}: {e}", path.display()))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("control socket {}: {e}", path.display()))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                Some((listener, path))
            }
            None => None,
        };
        let metrics = match metrics {
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .map_err(|e| format!("metrics listener {address}: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                Some(listener)
            }
            None => None,
        };
        Ok(Endpoints {
            socket,
            metrics,
            last_sample: None,
        })
    }

    /// Serves whatever is waiting; never blocks for long (each client gets a short timeout).
    pub fn serve(&mut self, control: &mut ControlLoop, config_path: &Path) {
        while let Some(Ok((stream, _))) =
            self.socket.as_ref().map(|(listener, _)| listener.accept())
        {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let answer = self.command(line.trim(), control, config_path);
            let _ = (&stream).write_all(answer.as_bytes());
        }
        if let Some(listener) = &self.metrics {
            while let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let body = metrics(control);
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    }

    fn command(&mut self, line: &str, control: &mut ControlLoop, config_path: &Path) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["list"] => list(control),
            ["stats"] => crate::run::service_stats(&control.config, &mut control.registry, &control.stats),
            ["rate"] => self.rate(control),
            ["conns"] => connections(&control.stats),
            ["reload"] => match control.reload(config_path) {
                Ok(message) => format!("{message}\n"),
                Err(error) => format!("error: {error}\n"),
            },
            ["drain", backend] | ["undrain", backend] => match backend.parse::<SocketAddr>() {
                Ok(address) => match control.set_drained(address, words[0] == "drain") {
                    Ok(message) => format!("{message}\n"),
                    Err(error) => format!("error: {error}\n"),
                },
                Err(_) => format!("error: {backend:?} is not ADDRESS:PORT (write IPv6 as [addr]:port)\n"),
            },
            ["trace", client, vip, rest @ ..] => trace(control, client, vip, rest.first().copied()),
            [verb @ ("add-service" | "remove-service" | "add-backend" | "remove-backend" | "set-weight"), rest @ ..] => {
                match edit(control, verb, rest) {
                    Ok(message) => format!("{message}\n"),
                    Err(error) => format!("error: {error}\n"),
                }
            }
            _ => "error: commands are list, stats, rate, conns, reload, drain ADDR:PORT, undrain ADDR:PORT, \
                  trace CLIENT:PORT VIP:PORT [tcp|udp], add-service VIP:PORT tcp|udp MODE [SCHEDULER], \
                  remove-service VIP:PORT tcp|udp, add-backend VIP:PORT tcp|udp ADDR:PORT [WEIGHT], \
                  remove-backend VIP:PORT tcp|udp ADDR:PORT, set-weight VIP:PORT tcp|udp ADDR:PORT WEIGHT\n"
                .into(),
        }
    }

    fn rate(&mut self, control: &mut ControlLoop) -> String {
        let now = Instant::now();
        let sample = sample(&control.stats);
        let answer = match &self.last_sample {
            Some((when, previous)) => {
                let seconds = now.duration_since(*when).as_secs_f64().max(1e-3);
                let mut out = String::from(
                    "Prot LocalAddress:Port                 InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\n",
                );
                for service in &control.config.services {
                    out.push_str(&format!("{}\n", describe_service(&service.key)));
                    for backend in &service.backends {
                        let id = control
                            .registry
                            .id(service.key, backend.address, backend.port)
                            .0 as usize;
                        let (now_counts, before) = (sample.get(id), previous.get(id));
                        let rate = |i: usize| {
                            let delta = now_counts
                                .map_or(0, |c| c[i])
                                .saturating_sub(before.map_or(0, |c| c[i]));
                            (delta as f64 / seconds) as u64
                        };
                        out.push_str(&format!(
                            "  -> {:<33}{:>8} {:>8} {:>8} {:>8}\n",
                            describe_endpoint(backend.address, backend.port),
                            rate(0),
                            rate(1),
                            rate(2) * 8,
                            rate(3) * 8
                        ));
                    }
                }
                out.push_str(&format!("(over the last {seconds:.2} s)\n"));
                out
            }
            None => "first sample taken: ask again for rates since now\n".into(),
        };
        self.last_sample = Some((now, sample));
        answer
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
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

fn parse_service(vip: &str, protocol: &str) -> Result<balancer::service::ServiceKey, String> {
    let vip: SocketAddr = vip
        .parse()
        .map_err(|_| format!("{vip:?} is not VIP:PORT"))?;
    let protocol = match protocol {
        "tcp" => 6,
        "udp" => 17,
        other => return Err(format!("protocol {other:?}: tcp or udp")),
    };
    Ok(balancer::service::ServiceKey {
        vip: vip.ip(),
        port: vip.port(),
        protocol,
    })
}

/// ipvsadm's -A/-D/-a/-d/-e on the running configuration.
fn edit(control: &mut ControlLoop, verb: &str, args: &[&str]) -> Result<String, String> {
    use balancer::service::{ForwardingMode, SchedulerKind};
    use control::config::{BackendConfig, ServiceConfig};
    let (Some(vip), Some(protocol)) = (args.first(), args.get(1)) else {
        return Err(format!("{verb}: give VIP:PORT and tcp|udp first"));
    };
    let key = parse_service(vip, protocol)?;
    let name = describe_service(&key);
    let backend_at = |index: usize| -> Result<SocketAddr, String> {
        let text = args
            .get(index)
            .ok_or_else(|| format!("{verb}: give the backend as ADDR:PORT"))?;
        text.parse()
            .map_err(|_| format!("{text:?} is not ADDR:PORT"))
    };
    let weight_at = |index: usize, default: u32| -> Result<u32, String> {
        match args.get(index) {
            None => Ok(default),
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|w| *w <= 65535)
                .ok_or_else(|| format!("weight {text:?}: 0 to 65535")),
        }
    };
    match verb {
        "add-service" => {
            let mode = args
                .get(2)
                .and_then(|name| ForwardingMode::from_name(name))
                .ok_or("the mode is dr, nat, fullnat or tun")?;
            let scheduler_name = args.get(3).copied().unwrap_or("mh");
            let scheduler = SchedulerKind::from_name(scheduler_name).ok_or_else(|| {
                format!("scheduler {scheduler_name:?}: use {}", SchedulerKind::NAMES)
            })?;
            control.edit(|config| {
                if config.services.iter().any(|s| s.key == key) {
                    return Err(format!("service {name} exists"));
                }
                config.services.push(ServiceConfig {
                    key,
                    mode,
                    scheduler,
                    persistence: None,
                    backends: vec![],
                });
                Ok(format!("added service {name}"))
            })
        }
        "remove-service" => control.edit(|config| {
            let before = config.services.len();
            config.services.retain(|s| s.key != key);
            if config.services.len() == before {
                return Err(format!("no service {name}"));
            }
            Ok(format!("removed service {name}"))
        }),
        "add-backend" | "remove-backend" | "set-weight" => {
            let backend = backend_at(2)?;
            let weight = weight_at(3, 1)?;
            if verb == "set-weight" && args.get(3).is_none() {
                return Err("set-weight: give the weight".into());
            }
            control.edit(|config| {
                let service = config
                    .services
                    .iter_mut()
                    .find(|s| s.key == key)
                    .ok_or_else(|| format!("no service {name}"))?;
                let position = service
                    .backends
                    .iter()
                    .position(|b| b.address == backend.ip() && b.port == backend.port());
                match (verb, position) {
                    ("add-backend", Some(_)) => Err(format!("{backend} is already in {name}")),
                    ("add-backend", None) => {
                        let maps_ports =
                            matches!(service.mode, ForwardingMode::Nat | ForwardingMode::FullNat);
                        if !maps_ports && backend.port() != key.port {
                            return Err(format!(
                                "{:?} cannot map ports: the backend port must be {}",
                                service.mode, key.port
                            ));
                        }
                        service.backends.push(BackendConfig {
                            address: backend.ip(),
                            port: backend.port(),
                            weight,
                            mac: None,
                            health_check: None,
                        });
                        Ok(format!("added {backend} to {name} with weight {weight}"))
                    }
                    ("remove-backend", Some(index)) => {
                        service.backends.remove(index);
                        Ok(format!("removed {backend} from {name}"))
                    }
                    ("set-weight", Some(index)) => {
                        service.backends[index].weight = weight;
                        Ok(format!("{backend} in {name} now has weight {weight}"))
                    }
                    _ => Err(format!("{backend} is not in {name}")),
                }
            })
        }
        _ => Err(format!("unknown command {verb}")),
    }
}

/// `ipvsadm -Ln`: services, schedulers, backends, forwarding method and weight as the workers use them.
fn list(control: &mut ControlLoop) -> String {
    let mut out = String::from("IP Virtual Server (sluice), generation ");
    out.push_str(&format!("{}\n", control.generation));
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight State\n");
    for service in &control.config.services {
        let protocol = if service.key.protocol == 17 {
            "UDP"
        } else {
            "TCP"
        };
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
        for backend in &service.backends {
            let id = control
                .registry
                .id(service.key, backend.address, backend.port);
            let state = if control.down.contains(&id) {
                "down"
            } else if control.drained.contains(&id) {
                "drained"
            } else {
                "up"
            };
            let weight = if control.drained.contains(&id) {
                0
            } else {
                backend.weight
            };
            out.push_str(&format!(
                "  -> {:<28}{method:<8}{weight:<7}{state}\n",
                describe_endpoint(backend.address, backend.port)
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
fn trace(control: &mut ControlLoop, client: &str, vip: &str, protocol: Option<&str>) -> String {
    let (Ok(client), Ok(vip)) = (client.parse::<SocketAddr>(), vip.parse::<SocketAddr>()) else {
        return "error: trace CLIENT:PORT VIP:PORT [tcp|udp]\n".into();
    };
    let protocol = match protocol.unwrap_or("tcp") {
        "tcp" => 6,
        "udp" => 17,
        other => return format!("error: protocol {other:?}: tcp or udp\n"),
    };
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
    if service.scheduler != balancer::service::SchedulerKind::Mh {
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
            "sluice_backend_packets_in_total",
            0,
            "Frames from clients forwarded to a backend.",
        ),
        (
            "sluice_backend_packets_out_total",
            1,
            "Frames from a backend mapped back to clients.",
        ),
        (
            "sluice_backend_bytes_in_total",
            2,
            "Bytes from clients forwarded to a backend.",
        ),
        (
            "sluice_backend_bytes_out_total",
            3,
            "Bytes from a backend mapped back to clients.",
        ),
    ];
    for (name, column, help) in names {
        counter(&mut out, name, help);
        for service in &control.config.services {
            for backend in &service.backends {
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
