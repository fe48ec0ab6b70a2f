//! `sluice run`: EAL and ports from the configuration, one pinned worker per configured core (rx and tx queue k of
//! every port), either a plain port-to-port pipe or the balancer, until ctrl-c, a packet count or an idle timeout.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::conntrack::EdgeHooks;
use balancer::decision::{DropReason, WorkerPlace};
use balancer::neighbor::NeighborTable;
use balancer::port_alloc::PortAllocator;
use control::config::{BackendIdRegistry, Config};
use control::health::HealthChecker;
use control::vip_owner::VipOwner;

use control::backend_state::health_specs;
use crossbeam::channel::bounded;
use dataplane::build::WorkerPlan;
use dataplane::io::Burst;
use dataplane::worker::{handoff_mesh, PortQueues, TraceChannel, WorkerConfig, WorkerStats};
use dpdk::{spawn_worker, Eal, Mempool, Port, PortConfig, DEFAULT_DATA_ROOM, SOCKET_ANY};
use operator::control_loop::{reload_signal, ControlLoop};
use operator::ctl::Endpoints;
use operator::serve::Listeners;
use operator::service_stats::service_stats;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The configuration file (see config/README.md).
    #[arg(long, short)]
    config: PathBuf,
    /// Stop after the workers have received this many frames in all.
    #[arg(long)]
    max_packets: Option<u64>,
    /// Stop once no frame has arrived for this many milliseconds (pcap-driven runs end this way).
    #[arg(long)]
    idle_exit_ms: Option<u64>,
    /// Stop after this many milliseconds (benchmarks).
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Draw FULLNAT local ports from this seed instead of the OS's randomness, so that a replay can predict them
    /// (tests); never in production, where the ports must not be guessable.
    #[arg(long, hide = true)]
    local_port_seed: Option<u64>,
}

/// Handoff ring size per worker.
const HANDOFF_RING: usize = 4096;
/// Per-backend tables are sized for ids below this many beyond the configured ones (room for reloads).
const BACKEND_ID_HEADROOM: u32 = 1024;

/// Counters the main thread watches to decide when to stop.
struct Progress {
    received: Vec<Arc<AtomicU64>>,
}

impl Progress {
    fn total(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum()
    }
}

fn eal_arguments(config: &Config) -> Result<Vec<String>, String> {
    let mut args = config.eal_args.clone();
    let has_cores = args
        .iter()
        .any(|arg| arg.starts_with("-l") || arg == "-c" || arg.starts_with("--lcores"));
    if !has_cores {
        // The main thread (lcore 0) only watches; it shares the first worker's CPU. Each worker gets an EAL lcore
        // of its own on its CPU (lcore i + 1 on cores[i]): EAL lcores, unlike registered threads, leave the
        // multi-process channel open for dpdk-dumpcap and dpdk-proc-info.
        let mut lcores = format!("0@{}", config.workers.cores[0]);
        for (index, cpu) in config.workers.cores.iter().enumerate() {
            lcores.push_str(&format!(",{}@{cpu}", index + 1));
        }
        args.push("--lcores".into());
        args.push(lcores);
    }
    // Hugepage files are unlinked as soon as they are mapped: nothing is left in hugetlbfs after any exit, kill -9
    // included. `--huge-unlink=never` keeps them, for secondary processes (dpdk-dumpcap, dpdk-proc-info).
    let chosen = |name: &str| args.iter().any(|arg| arg.starts_with(name));
    if !chosen("--no-huge") && !chosen("--in-memory") && !chosen("--huge-unlink") {
        args.push("--huge-unlink".into());
    }
    for port in &config.ports {
        if port.is_vdev() {
            args.push(format!("--vdev={}", port.device));
        } else {
            args.push("-a".into());
            args.push(port.device.clone());
        }
    }
    args.extend(operator::exception::tap_vdev_arguments(config)?);
    Ok(args)
}

/// Lets dpdk-dumpcap and dpdk-proc-info attach when the EAL arguments leave them something to attach to, and says
/// in the log which way it is.
fn allow_secondary_processes(eal: &Eal, eal_args: &[String]) {
    if let Some(reason) = dpdk::secondary_attach_blocked_by(eal_args) {
        log::info!("secondary processes (dpdk-dumpcap, dpdk-proc-info) cannot attach: {reason}");
        return;
    }
    let prefix = eal_args
        .iter()
        .position(|arg| arg == "--file-prefix")
        .and_then(|at| eal_args.get(at + 1).cloned())
        .or_else(|| {
            eal_args
                .iter()
                .find_map(|arg| arg.strip_prefix("--file-prefix=").map(str::to_owned))
        })
        .unwrap_or_else(|| "rte".into());
    match eal.allow_packet_capture() {
        Ok(()) => log::info!(
            "secondary processes can attach: dpdk-dumpcap --file-prefix {prefix} -i PORT_DEVICE, \
             dpdk-proc-info --file-prefix {prefix}"
        ),
        Err(error) => log::warn!("dpdk-dumpcap cannot capture: {error}"),
    }
}

pub fn run(args: RunArgs) -> Result<(), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    // What `sluice check` refuses is refused here, in its words, before any device or worker exists; so is a
    // control socket or metrics address that cannot be bound.
    operator::validate::validate_for_run(&config)?;
    let listeners = match config.pipe {
        Some(_) => None,
        None => Some(Listeners::bind(
            config.control.socket.as_deref(),
            config.control.metrics,
        )?),
    };
    let eal_args = eal_arguments(&config)?;
    let eal = Eal::init(&eal_args).map_err(|e| e.to_string())?;
    allow_secondary_processes(&eal, &eal_args);
    let workers = config.workers.cores.len();
    let pool = Arc::new(
        Mempool::new(
            "sluice",
            config.workers.mempool_size,
            256.min(config.workers.mempool_size / 4),
            DEFAULT_DATA_ROOM,
            SOCKET_ANY,
        )
        .map_err(|e| e.to_string())?,
    );
    let result = {
        let mut ports = Vec::new();
        for port in &config.ports {
            let id = eal.port_by_name(port.device_name()).ok_or_else(|| {
                format!(
                    "port {}: device {} did not become a DPDK port",
                    port.name,
                    port.device_name()
                )
            })?;
            let port_config = PortConfig {
                rx_queues: workers as u16,
                tx_queues: workers as u16,
                rx_descriptors: port.rx_descriptors,
                tx_descriptors: port.tx_descriptors,
                rss_key: (workers > 1).then_some(balancer::rss::SYMMETRIC_KEY),
                mtu: None,
                promiscuous: true,
            };
            let mut opened = Port::configure(&eal, id, &port_config, &pool)
                .map_err(|e| format!("port {} ({}): {e}", port.name, port.device))?;
            log_port_mac(port, &mut opened)?;
            log::info!(
                "port {} = {} (dpdk port {id}, {} rx/tx queues, rss {})",
                port.name,
                port.device_name(),
                workers,
                if opened.has_rss() { "on" } else { "off" }
            );
            ports.push(opened);
        }
        let taps = if operator::exception::enabled(&config) {
            Some(open_taps(&eal, &config, &ports, &pool)?)
        } else {
            None
        };
        let outcome = match &config.pipe {
            Some(pipe) => run_pipe(&config, &args, &ports, &pool, pipe),
            None => run_balancer(
                &config,
                &args,
                &ports,
                &pool,
                taps.as_ref(),
                listeners.expect("bound when there is no pipe"),
            ),
        };
        if let Some(taps) = &taps {
            for (tap, interface) in taps.ports.iter().zip(&taps.interfaces) {
                if let Ok(stats) = tap.stats() {
                    println!(
                        "kernel interface {}: to kernel {} from kernel {} tx_errors {}",
                        interface.name, stats.tx_packets, stats.rx_packets, stats.tx_errors
                    );
                }
            }
        }
        // The taps close before the data ports: the kernel interfaces and their addresses go.
        drop(taps);
        for (port, settings) in ports.iter().zip(&config.ports) {
            if let Ok(stats) = port.stats() {
                println!(
                    "port {}: rx {} tx {} rx_missed {} rx_errors {} tx_errors {} rx_no_mbuf {}",
                    settings.name,
                    stats.rx_packets,
                    stats.tx_packets,
                    stats.rx_missed,
                    stats.rx_errors,
                    stats.tx_errors,
                    stats.rx_no_mbuf
                );
            }
        }
        outcome
        // Ports drop here: stopped and closed (net_pcap writes its output file).
    };
    println!("mempool: {} buffers in use", pool.in_use());
    drop(pool);
    drop(eal);
    result
}

/// The taps of a running balancer: their DPDK ports (closing them removes the interfaces) and the interfaces.
pub struct Taps {
    pub ports: Vec<dpdk::Port>,
    pub interfaces: Vec<operator::exception::KernelInterface>,
}

type WorkerHandle<T> = std::thread::JoinHandle<Result<T, dpdk::DpdkError>>;

/// Worker threads that are stopped and joined however `run` returns: an error after the first one started must not
/// leave a worker polling ports that are about to close.
struct Workers<T> {
    stop: Arc<AtomicBool>,
    handles: Vec<WorkerHandle<T>>,
}

impl<T> Workers<T> {
    fn new(stop: &Arc<AtomicBool>) -> Workers<T> {
        Workers {
            stop: Arc::clone(stop),
            handles: Vec::new(),
        }
    }

    fn push(&mut self, handle: WorkerHandle<T>) {
        self.handles.push(handle);
    }

    /// Stops every worker and waits for each.
    fn join(mut self) -> Vec<std::thread::Result<Result<T, dpdk::DpdkError>>> {
        self.stop.store(true, Ordering::SeqCst);
        self.handles.drain(..).map(|handle| handle.join()).collect()
    }
}

impl<T> Drop for Workers<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Opens each data port's tap (created by the EAL), one queue pair per worker, and gives its kernel side the
/// port's MAC and addresses.
fn open_taps(
    eal: &Eal,
    config: &Config,
    ports: &[Port],
    pool: &Arc<Mempool>,
) -> Result<Taps, String> {
    let workers = config.workers.cores.len() as u16;
    let mut taps = Vec::new();
    let mut macs = Vec::new();
    for (index, (port, settings)) in ports.iter().zip(&config.ports).enumerate() {
        let name = operator::exception::tap_device_name(config, index);
        let id = eal.port_by_name(&name).ok_or_else(|| {
            format!(
                "port {}: the kernel interface {} ({name}) did not become a DPDK port",
                settings.name, settings.kernel_interface
            )
        })?;
        let tap_config = PortConfig {
            rx_queues: workers,
            tx_queues: workers,
            rx_descriptors: 512,
            tx_descriptors: 512,
            rss_key: None,
            mtu: None,
            promiscuous: false,
        };
        taps.push(
            Port::configure(eal, id, &tap_config, pool)
                .map_err(|e| format!("port {}: kernel interface {name}: {e}", settings.name))?,
        );
        macs.push(port.mac_address().map_err(|e| e.to_string())?);
    }
    let mut netlink = operator::netlink::Netlink::open()?;
    let interfaces = operator::exception::set_up(config, &macs, &mut netlink)?;
    Ok(Taps {
        ports: taps,
        interfaces,
    })
}

/// The conditions `run` stops on besides ctrl-c: a frame count, an idle time, a duration.
struct StopConditions<'a> {
    args: &'a RunArgs,
    progress: &'a Progress,
    started: Instant,
    last_total: u64,
    last_change: Instant,
}

impl<'a> StopConditions<'a> {
    fn new(args: &'a RunArgs, progress: &'a Progress) -> StopConditions<'a> {
        let now = Instant::now();
        StopConditions {
            args,
            progress,
            started: now,
            last_total: 0,
            last_change: now,
        }
    }

    fn reached(&mut self) -> bool {
        let total = self.progress.total();
        if total != self.last_total {
            self.last_total = total;
            self.last_change = Instant::now();
        }
        let args = self.args;
        args.max_packets.is_some_and(|max| total >= max)
            || args
                .duration_ms
                .is_some_and(|limit| self.started.elapsed() >= Duration::from_millis(limit))
            || args
                .idle_exit_ms
                .is_some_and(|idle| self.last_change.elapsed() >= Duration::from_millis(idle))
    }
}

/// ctrl-c (SIGINT) and SIGTERM set `stop`; SIGHUP is left to the reload handler.
fn install_stop_handler(stop: &Arc<AtomicBool>) {
    let signal = Arc::clone(stop);
    if let Err(error) = ctrlc::set_handler(move || signal.store(true, Ordering::SeqCst)) {
        log::warn!("no ctrl-c handler: {error}");
    }
    if let Err(error) = signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(stop))
    {
        log::warn!("no SIGTERM handler: {error}");
    }
}

/// Waits until ctrl-c, SIGTERM or one of the stop conditions.
fn wait_for_stop(args: &RunArgs, progress: &Progress, stop: &Arc<AtomicBool>) {
    install_stop_handler(stop);
    let mut conditions = StopConditions::new(args, progress);
    while !stop.load(Ordering::SeqCst) && !conditions.reached() {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
}

fn millisecond_clock() -> impl FnMut() -> u64 {
    let hz = dpdk::tsc_hz().max(1);
    let per_ms = (hz / 1000).max(1);
    move || dpdk::tsc() / per_ms
}

fn run_pipe(
    config: &Config,
    args: &RunArgs,
    ports: &[Port],
    pool: &Arc<Mempool>,
    pipe: &control::config::PipeConfig,
) -> Result<(), String> {
    let from = config
        .port_index(&pipe.from)
        .ok_or("pipe: unknown from port")?;
    let to = config.port_index(&pipe.to).ok_or("pipe: unknown to port")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Workers::new(&stop);
    let mut progress = Progress { received: vec![] };
    let started = Instant::now();
    for (index, &cpu) in config.workers.cores.iter().enumerate() {
        let mut rx = ports[from]
            .rx_queue(index as u16)
            .map_err(|e| e.to_string())?;
        let mut tx = ports[to]
            .tx_queue(index as u16, pool)
            .map_err(|e| e.to_string())?;
        let received = Arc::new(AtomicU64::new(0));
        progress.received.push(Arc::clone(&received));
        let stop = Arc::clone(&stop);
        let burst_size = config.workers.burst;
        let handle = spawn_worker(cpu, &format!("pipe-{index}"), move || {
            let mut burst = Burst::new();
            let (mut rx_total, mut tx_total, mut dropped) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let got = rx.rx_burst(&mut burst, burst_size);
                if got == 0 {
                    continue;
                }
                rx_total += got as u64;
                received.store(rx_total, Ordering::Relaxed);
                for _ in 0..4 {
                    if burst.is_empty() {
                        break;
                    }
                    tx_total += tx.tx_burst(&mut burst) as u64;
                }
                dropped += burst.len() as u64;
                burst.clear();
            }
            (rx_total, tx_total, dropped)
        })
        .map_err(|e| e.to_string())?;
        log::info!("worker {index} polling on CPU {cpu}");
        handles.push(handle);
    }
    wait_for_stop(args, &progress, &stop);
    let elapsed = started.elapsed().as_secs_f64();
    let mut failure = None;
    let mut total_rx = 0;
    for (index, handle) in handles.join().into_iter().enumerate() {
        match handle {
            Ok(Ok((rx, tx, dropped))) => {
                total_rx += rx;
                println!("worker {index}: rx {rx} tx {tx} dropped tx_full={dropped}");
            }
            Ok(Err(error)) => failure = Some(error.to_string()),
            Err(_) => failure = Some(format!("worker {index} panicked")),
        }
    }
    println!(
        "sluice: pipe {} -> {} stopped after {elapsed:.2} s: rx {total_rx} rate {:.3} Mpps",
        pipe.from,
        pipe.to,
        total_rx as f64 / elapsed / 1e6
    );
    failure.map_or(Ok(()), Err)
}

fn run_balancer(
    config: &Config,
    args: &RunArgs,
    ports: &[Port],
    pool: &Arc<Mempool>,
    taps: Option<&Taps>,
    listeners: Listeners,
) -> Result<(), String> {
    // Everything the workers and the control loop depend on is opened before the first worker polls; from the
    // moment the socket file exists, ctrl-c and SIGTERM end the run through the path that removes it.
    let mut endpoints = Endpoints::start(listeners)?;
    let stop = Arc::new(AtomicBool::new(false));
    install_stop_handler(&stop);
    let stop_signals = crate::lifecycle::StopSignals::watch();
    let mut registry = BackendIdRegistry::new();
    let macs: Vec<[u8; 6]> = ports
        .iter()
        .map(|port| port.mac_address().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    // Backends with alpha start down; a service whose quorum is lost from the start serves from its sorry server.
    let drained = operator::control_loop::drained_in_file(config, &mut registry);
    let down: HashSet<_> = control::backend_state::alpha_newcomers(None, config, &mut registry)
        .into_iter()
        .collect();
    let mut quorums = control::backend_state::Quorums::default();
    let (spec, quorum_changes) = control::backend_state::effective_spec(
        config,
        &macs,
        &mut registry,
        &down,
        &drained,
        &mut quorums,
    )?;
    for change in &quorum_changes {
        change.log();
    }
    // With VRRP no VIP is answered before keepalived is seen to have put it on the kernel interface.
    let withheld = operator::vip_owner::vrrp_vips(config);
    let snapshot = Arc::new(
        operator::vip_owner::build_snapshot(&spec, 1, &withheld)
            .map_err(|e| format!("{}: {e}", config.origin))?,
    );
    let workers = config.workers.cores.len();
    let software_steering = workers > 1 && !ports.iter().all(Port::has_rss);
    let neighbors = Arc::new(NeighborTable::new(65536));
    let mut handles = Workers::new(&stop);
    let mut stats: Vec<Arc<WorkerStats>> = Vec::new();
    let mut progress = Progress { received: vec![] };
    // The senders stay here: the control thread will publish through them.
    let mut publishers = Vec::new();
    let mut retired_receivers = Vec::new();
    let mut trace_queries = Vec::new();
    let (trace_answers_tx, trace_answers) = bounded(64);
    let mut listing_queries = Vec::new();
    let (listing_answers_tx, listing_answers) = bounded(64);
    let mut beats = Vec::new();
    let mut kernel_stats = Vec::new();
    let started = Instant::now();
    let mesh = handoff_mesh(workers, HANDOFF_RING);
    let (mut sync, mut exception_links) = operator::sync::open(config, workers)?;
    let mut exception_stats = Vec::new();
    for ((index, &cpu), handoffs) in config.workers.cores.iter().enumerate().zip(mesh) {
        let local_ports = if spec.local_addresses.is_empty() {
            None
        } else {
            Some(
                match args.local_port_seed {
                    Some(seed) => PortAllocator::with_seed(
                        spec.local_ports,
                        index as u16,
                        &spec.local_addresses,
                        seed,
                    ),
                    None => {
                        PortAllocator::new(spec.local_ports, index as u16, &spec.local_addresses)
                    }
                }
                .map_err(|e| format!("FULLNAT local ports: {e}"))?,
            )
        };
        let mut queues = Vec::new();
        for (port, port_config) in ports.iter().zip(&config.ports) {
            queues.push(PortQueues {
                rx: port.rx_queue(index as u16).map_err(|e| e.to_string())?,
                tx: port
                    .tx_queue(index as u16, pool)
                    .map_err(|e| e.to_string())?,
                mac: port.mac_address().map_err(|e| e.to_string())?,
                vlan: port_config.vlan,
            });
        }
        let plan = WorkerPlan {
            place: WorkerPlace {
                index: index as u16,
                workers: workers as u16,
                software_steering,
            },
            conntrack_capacity: config.network.conntrack_capacity,
            two_entry_connections: config.network.conntrack_reply_entries,
            timeouts: config.network.timeouts,
            local_ports,
            hooks: EdgeHooks {
                advise_memory: Some(dpdk::advise_huge_pages),
                prefetch: Some(dpdk::prefetch_line),
            },
            backend_ids: (registry.id_bound() + BACKEND_ID_HEADROOM) as usize,
            persistence_entries: 65536,
            neighbors: Arc::clone(&neighbors),
            exceptions: balancer::exceptions::ExceptionTable::new(
                config.sync.as_ref().map_or(0, |sync| sync.side_table),
            ),
            config: WorkerConfig {
                burst: config.workers.burst,
                overload_bursts: config.workers.overload_bursts,
                previous_table_grace_ms: config.network.previous_table_grace.as_millis() as u64,
                ..WorkerConfig::default()
            },
        };
        let (mut worker, tables) = plan.build(Arc::clone(&snapshot), queues, handoffs)?;
        publishers.push(tables.publish);
        retired_receivers.push(tables.retired);
        if let Some(taps) = taps {
            let mut kernel_queues = Vec::new();
            for tap in &taps.ports {
                kernel_queues.push(Some(dataplane::kernel::KernelQueues {
                    rx: tap.rx_queue(index as u16).map_err(|e| e.to_string())?,
                    tx: tap
                        .tx_queue(index as u16, pool)
                        .map_err(|e| e.to_string())?,
                }));
            }
            worker.attach_kernel_path(dataplane::kernel::KernelPath::new(kernel_queues));
            kernel_stats.extend(worker.kernel_stats());
        }
        if let Some(links) = exception_links.get_mut(index).and_then(Option::take) {
            exception_stats.push(worker.share_exceptions(links));
        }
        let (query_tx, query_rx) = bounded(8);
        trace_queries.push(query_tx);
        worker.answer_traces(TraceChannel {
            queries: query_rx,
            answers: trace_answers_tx.clone(),
        });
        let (listing_tx, listing_rx) = bounded(1);
        listing_queries.push(listing_tx);
        worker.answer_listings(dataplane::listing::ListingChannel {
            queries: listing_rx,
            answers: listing_answers_tx.clone(),
        });
        let worker_stats = worker.stats();
        stats.push(Arc::clone(&worker_stats));
        let received = Arc::new(AtomicU64::new(0));
        progress.received.push(Arc::clone(&received));
        let stop = Arc::clone(&stop);
        let beat = Arc::new(AtomicU64::new(0));
        beats.push(Arc::clone(&beat));
        let idle_policy = idle_policy(&config.workers.idle);
        let handle = spawn_worker(cpu, &format!("worker-{index}"), move || {
            let mut clock = millisecond_clock();
            let mut idle = dataplane::idle::Idle::new(idle_policy);
            let mut turns = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let found = worker.poll(clock());
                received.store(worker_stats.rx.load(Ordering::Relaxed), Ordering::Relaxed);
                turns += 1;
                beat.store(turns, Ordering::Relaxed);
                idle.after_poll(found);
            }
            // One last turn flushes what is pending and drains the handoff ring.
            worker.poll(clock());
            worker.drop_waiting_frames(clock());
            worker.stats()
        })
        .map_err(|e| e.to_string())?;
        log::info!("worker {index} polling on CPU {cpu}");
        handles.push(handle);
    }
    let mut control = ControlLoop {
        config: config.clone(),
        registry,
        port_macs: macs,
        generation: snapshot.generation,
        publishers,
        retired: retired_receivers,
        stats: stats.clone(),
        down,
        drained,
        snapshot: Some(Arc::clone(&snapshot)),
        zeroed: Vec::new(),
        health: None,
        trace_queries,
        trace_answers,
        listing_queries,
        listing_answers,
        cluster: operator::cluster::ClusterView {
            kernel: kernel_stats.clone(),
            announced: Default::default(),
            announcing: taps.is_some() && config.network.vip_owner == VipOwner::Bgp,
        },
        sync: sync.take().map(|mut node| {
            node.set_snapshot(&snapshot);
            node.watch_workers(exception_stats);
            node
        }),
        withheld,
        observed: control::observe::Observed::new(
            crate::build_info::current(),
            Some(crate::platform::reader(ports, config, pool)),
        ),
        quorums,
    };
    let checks = health_specs(&control.config, &mut control.registry);
    if !checks.is_empty() {
        log::info!("health checks: {} backends", checks.len());
        control.health = Some(HealthChecker::start(checks));
    }
    let mut vrrp_watch = match taps {
        Some(taps) if config.network.vip_owner == VipOwner::Vrrp => Some(
            operator::vip_owner::quiet_kernel_arp(&taps.interfaces)
                .and_then(|()| operator::vip_owner::TapAddressWatch::open(&taps.interfaces))
                .inspect_err(|_| stop.store(true, Ordering::SeqCst))
                .map_err(|error| format!("following keepalived's VIPs: {error}"))?,
        ),
        _ => None,
    };
    let mut vrrp_ownership = operator::vip_owner::Ownership::default();
    let bgp_taps = taps.filter(|_| config.network.vip_owner == VipOwner::Bgp);
    let mut announcer = bgp_taps.map(|taps| {
        let reserved = config
            .ports
            .iter()
            .flat_map(|port| port.addresses.iter().map(|prefix| prefix.addr))
            .collect();
        match operator::netlink::Netlink::open() {
            Ok(netlink) => Ok(operator::announce::Announcer::new(
                netlink,
                taps.interfaces.clone(),
                reserved,
            )),
            Err(error) => Err(error),
        }
    });
    let mut announcer = match announcer.take() {
        Some(Ok(announcer)) => Some(announcer),
        Some(Err(error)) => {
            stop.store(true, Ordering::SeqCst);
            return Err(format!("VIP announcement: {error}"));
        }
        None => None,
    };
    let first_turns = beats.clone();
    let mut liveness = operator::announce::Liveness::new(beats);
    let reload = reload_signal();
    log::info!(
        "forwarding with {workers} workers; SIGHUP reloads {}, ctrl-c stops",
        args.config.display()
    );
    crate::lifecycle::forwarding(&first_turns, workers);
    // The rate is taken over the forwarding window alone: building the workers' tables (a large connection table
    // is zeroed page by page) can take a second that forwards nothing, and would be counted as a slow forwarder.
    let window = ForwardingWindow::open(progress.total());
    let mut conditions = StopConditions::new(args, &progress);
    while !stop.load(Ordering::SeqCst) && !conditions.reached() {
        if reload.swap(false, Ordering::SeqCst) {
            log::info!("SIGHUP: reloading {}", args.config.display());
            crate::lifecycle::reloading();
            let outcome = control.reload(&args.config);
            control.observed.count_reload(&outcome);
            match &outcome {
                Ok(message) => log::info!("{message}"),
                Err(error) => log::error!("{error}"),
            }
            crate::lifecycle::reloaded(&outcome);
        }
        endpoints.serve(&mut control, &args.config);
        control.apply_health_events();
        control.collect_retired();
        if let Some(sync) = &mut control.sync {
            sync.turn(Instant::now());
        }
        if let Some(watch) = &mut vrrp_watch {
            operator::vip_owner::follow(watch, &mut vrrp_ownership, &mut control);
        }
        if let Some(announcer) = &mut announcer {
            let wanted = match (&control.snapshot, liveness.all_alive(Instant::now())) {
                (Some(snapshot), true) => operator::announce::servable_vips(snapshot),
                _ => Default::default(),
            };
            for change in announcer.update(&wanted) {
                log::info!("{change}");
            }
            if announcer.announced() != &control.cluster.announced {
                control.cluster.announced = announcer.announced().clone();
            }
        }
    }
    stop_signals.stopping();
    if let Some(announcer) = &mut announcer {
        for change in announcer.withdraw_all() {
            log::info!("stopping: {change}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let window = window.close(progress.total());
    let mut failure = None;
    for (index, handle) in handles.join().into_iter().enumerate() {
        match handle {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => failure = Some(format!("worker {index}: {error}")),
            Err(_) => failure = Some(format!("worker {index} panicked")),
        }
    }
    // Frames still in handoff rings went back to the pool when the workers (the rings' two ends) were dropped.
    print_worker_stats(&stats, elapsed, window);
    for (index, kernel) in kernel_stats.iter().enumerate() {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        println!(
            "worker {index} kernel path: to_kernel {} copied {} from_kernel {} to_kernel_dropped {} \
             from_kernel_dropped {}",
            load(&kernel.to_kernel),
            load(&kernel.copied),
            load(&kernel.from_kernel),
            load(&kernel.to_kernel_dropped),
            load(&kernel.from_kernel_dropped)
        );
    }
    print!(
        "{}",
        service_stats(&control.config, &mut control.registry, &stats, &[])
    );
    drop(endpoints);
    drop(control);
    failure.map_or(Ok(()), Err)
}

fn idle_policy(idle: &control::config::IdleConfig) -> dataplane::idle::IdlePolicy {
    match idle.mode {
        control::config::IdleMode::Poll => dataplane::idle::IdlePolicy::Poll,
        control::config::IdleMode::Adaptive => dataplane::idle::IdlePolicy::Adaptive {
            polls: idle.polls,
            sleep: Duration::from_micros(idle.sleep_us),
        },
    }
}

/// The frames received while every worker was forwarding, and how long that lasted.
#[derive(Clone, Copy, Debug)]
struct ForwardingWindow {
    opened: Instant,
    received_before: u64,
}

impl ForwardingWindow {
    fn open(received: u64) -> ForwardingWindow {
        ForwardingWindow {
            opened: Instant::now(),
            received_before: received,
        }
    }

    /// (frames received in the window, its length in seconds).
    fn close(self, received: u64) -> (u64, f64) {
        (
            received.saturating_sub(self.received_before),
            self.opened.elapsed().as_secs_f64(),
        )
    }
}

/// Prints each worker's counters and the totals; the rate is the frames received in the forwarding window over
/// its length (`window`).
fn print_worker_stats(stats: &[Arc<WorkerStats>], elapsed: f64, window: (u64, f64)) {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut total_rx = 0;
    let mut total_tx = 0;
    for (index, worker) in stats.iter().enumerate() {
        total_rx += load(&worker.rx);
        total_tx += load(&worker.tx);
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|reason| worker.drops(**reason) > 0)
            .map(|reason| format!("{}={}", reason.name(), worker.drops(*reason)))
            .collect();
        println!(
            "worker {index}: rx {} tx {} forwarded {} answered {} handed_off {} handoffs_received {} untracked {} \
             resolutions_sent {} fragments_held {} connections {} drops {}",
            load(&worker.rx),
            load(&worker.tx),
            load(&worker.forwarded),
            load(&worker.answered),
            load(&worker.handed_off),
            load(&worker.handoffs_received),
            load(&worker.untracked),
            load(&worker.resolutions_sent),
            load(&worker.fragments_held),
            load(&worker.connections),
            if drops.is_empty() { "none".into() } else { drops.join(" ") }
        );
    }
    println!(
        "sluice: stopped after {elapsed:.2} s: rx {total_rx} tx {total_tx} rate {:.3} Mpps \
         (rx {} in the {:.2} s all workers forwarded)",
        window.0 as f64 / window.1.max(f64::MIN_POSITIVE) / 1e6,
        window.0,
        window.1
    );
}

/// Gives `opened` the MAC the configuration sets for `port`, and logs the MAC the port answers to: the only
/// unicast destination its frames may have (frames to another host's MAC are dropped as not_our_mac).
fn log_port_mac(port: &control::config::PortConfig, opened: &mut Port) -> Result<(), String> {
    let show = |mac: [u8; 6]| {
        mac.iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    match port.mac {
        Some(mac) if opened.set_mac_address(mac) => {
            log::info!("port {}: MAC {} (configured)", port.name, show(mac))
        }
        Some(mac) => log::info!(
            "port {}: MAC {} (configured; the device keeps its own, the port being promiscuous sluice uses \
             this one)",
            port.name,
            show(mac)
        ),
        None => {
            let mac = opened.mac_address().map_err(|e| e.to_string())?;
            log::info!("port {}: MAC {} (the device's)", port.name, show(mac))
        }
    }
    if let Some(vlan) = port.vlan {
        log::info!(
            "port {}: on VLAN {vlan} (takes only frames tagged {vlan}, tags all it sends)",
            port.name
        );
    }
    Ok(())
}
