//! `sluice bench`: the real worker path (parse, connection table, scheduler, rewrite, burst tx) fed by an
//! in-process traffic generator on one pinned core, without a device, reporting Mpps and ns per packet.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use balancer::conntrack::{ConnTable, Timeouts};
use balancer::decision::{WorkerPlace, WorkerState, WorkerTables};
use balancer::maglev::TableSize;
use balancer::neighbor::NeighborTable;
use balancer::persistence::PersistenceTable;
use balancer::port_alloc::{PortAllocator, PortPartition};
use balancer::scheduler::LoadTable;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{PortSpec, ServiceSpec, Snapshot, SnapshotSpec};
use crossbeam::channel::bounded;
use crossbeam::queue::ArrayQueue;
use dataplane::traffic::{frame_pool, CountingSink, TrafficSource, TrafficSpec};
use dataplane::worker::{PortQueues, TableUpdates, Worker, WorkerConfig};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// dr, nat, fullnat or tun.
    #[arg(long, default_value = "dr")]
    mode: String,
    /// IPv6 instead of IPv4.
    #[arg(long)]
    v6: bool,
    /// Concurrent flows.
    #[arg(long, default_value_t = 1000)]
    flows: u32,
    /// Ethernet frame length without FCS (60 = the 64-byte minimum on the wire).
    #[arg(long, default_value_t = 60)]
    frame_len: usize,
    /// Every frame a SYN of a new flow (connections per second).
    #[arg(long)]
    new_connections: bool,
    /// Measured seconds (after every flow has been seen once).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// CPU to run on.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Frames per burst.
    #[arg(long, default_value_t = 32)]
    burst: usize,
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("literal address")
}

pub fn bench(args: BenchArgs) -> Result<(), String> {
    let mode = match args.mode.as_str() {
        "dr" => ForwardingMode::Dr,
        "nat" => ForwardingMode::Nat,
        "fullnat" => ForwardingMode::FullNat,
        "tun" => ForwardingMode::Tun,
        other => return Err(format!("--mode {other:?}: use dr, nat, fullnat or tun")),
    };
    if !core_pin(args.cpu) {
        log::warn!("could not pin to CPU {}", args.cpu);
    }
    let (vip, client, backend_net) = if args.v6 {
        (ip("fd00::100"), ip("2001:db8::1"), "fd01::")
    } else {
        (ip("10.0.0.100"), ip("198.18.0.1"), "10.1.0.")
    };
    let backend_port = if matches!(mode, ForwardingMode::Nat | ForwardingMode::FullNat) {
        8080
    } else {
        80
    };
    let backends = (0..8u32)
        .map(|i| Backend {
            id: BackendId(i),
            addr: ip(&format!("{backend_net}{}", 11 + i)),
            port: backend_port,
            weight: 1,
            mac: Some([2, 0xbe, 0, 0, 0, 11 + i as u8]),
        })
        .collect();
    let spec = SnapshotSpec {
        ports: vec![
            PortSpec {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                addresses: vec![(ip("10.0.0.1"), 24), (ip("fd00::1"), 64)],
            },
            PortSpec {
                mac: [2, 0, 0, 0, 0, 2],
                mtu: 1500,
                addresses: vec![(ip("10.1.0.1"), 24), (ip("fd01::1"), 64)],
            },
        ],
        gateways: vec![
            balancer::snapshot::GatewaySpec {
                port: 0,
                addr: ip("10.0.0.254"),
                mac: Some([2, 0, 0, 0, 0, 0xfe]),
            },
            balancer::snapshot::GatewaySpec {
                port: 0,
                addr: ip("fd00::fe"),
                mac: Some([2, 0, 0, 0, 0, 0xfe]),
            },
        ],
        tunnel_source_v4: Some(ip("10.1.0.1")),
        tunnel_source_v6: Some(ip("fd01::1")),
        local_addresses: (0..16)
            .map(|i| ip(&format!("{backend_net}{}", 200 + i)))
            .collect(),
        local_ports: PortPartition::new(1024, 65535, 1).map_err(|e| e.to_string())?,
        maglev_size: TableSize::default(),
        services: vec![ServiceSpec {
            key: ServiceKey {
                vip,
                port: 80,
                protocol: 6,
            },
            mode,
            scheduler: SchedulerKind::Mh,
            persistence: None,
            backends,
        }],
        kernel_exception_path: false,
    };
    let snapshot = Arc::new(Snapshot::build(&spec, 1).map_err(|e| e.to_string())?);
    let capacity = if args.new_connections {
        1 << 20
    } else {
        (args.flows as usize * 2).max(1 << 16)
    };
    let local_ports = PortAllocator::new(spec.local_ports, 0, &spec.local_addresses)
        .map_err(|e| e.to_string())?;
    let state = WorkerState {
        place: WorkerPlace {
            index: 0,
            workers: 1,
            software_steering: false,
        },
        conns: ConnTable::with_local_ports(capacity, Timeouts::default(), local_ports)
            .map_err(|e| e.to_string())?,
        load: LoadTable::new(64),
        persistence: PersistenceTable::new(16),
        neighbors: Arc::new(NeighborTable::new(64)),
    };
    let pool = frame_pool(4096);
    let traffic = TrafficSpec {
        client_base: client,
        vip,
        vip_port: 80,
        protocol: 6,
        flows: args.flows.max(1),
        frame_len: args.frame_len,
        new_connections: args.new_connections,
        src_mac: [2, 0, 0, 0, 0, 0xfe],
        dst_mac: [2, 0, 0, 0, 0, 1],
    };
    let mut idle_source = TrafficSource::new(traffic, Arc::clone(&pool));
    idle_source.limit = 0;
    let ports = vec![
        PortQueues {
            rx: TrafficSource::new(traffic, Arc::clone(&pool)),
            tx: CountingSink::new(Arc::clone(&pool)),
            mac: [2, 0, 0, 0, 0, 1],
        },
        PortQueues {
            rx: idle_source,
            tx: CountingSink::new(Arc::clone(&pool)),
            mac: [2, 0, 0, 0, 0, 2],
        },
    ];
    let (_publish, incoming) = bounded(1);
    let (retired, _retired_rx) = bounded(1);
    let ring = Arc::new(ArrayQueue::new(64));
    let mut worker = Worker::new(
        state,
        WorkerTables::new(snapshot),
        ports,
        None,
        Arc::clone(&ring),
        vec![ring],
        TableUpdates { incoming, retired },
        WorkerConfig {
            burst: args.burst,
            ..WorkerConfig::default()
        },
    );
    let stats = worker.stats();
    let clock_start = Instant::now();
    let now = || clock_start.elapsed().as_millis() as u64;
    // Warm up: every flow seen once (its connection is in the table).
    let warm = if args.new_connections {
        100_000
    } else {
        u64::from(args.flows)
    };
    while stats.rx.load(std::sync::atomic::Ordering::Relaxed) < warm {
        worker.poll(now());
    }
    let rx_before = stats.rx.load(std::sync::atomic::Ordering::Relaxed);
    let tx_before = stats.tx.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut polls = 0u64;
    loop {
        worker.poll(now());
        polls += 1;
        if polls.is_multiple_of(1024) && started.elapsed().as_secs_f64() >= args.seconds {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rx = stats.rx.load(std::sync::atomic::Ordering::Relaxed) - rx_before;
    let tx = stats.tx.load(std::sync::atomic::Ordering::Relaxed) - tx_before;
    let drops = stats.total_drops();
    let mpps = rx as f64 / elapsed / 1e6;
    println!(
        "bench mode={} family={} flows={} frame={} new_connections={} burst={}: {:.2} Mpps, {:.1} ns/packet, \
         forwarded {:.4} of received, drops {}, connections {}",
        args.mode,
        if args.v6 { "ipv6" } else { "ipv4" },
        args.flows,
        args.frame_len,
        args.new_connections,
        args.burst,
        mpps,
        1e3 / mpps,
        tx as f64 / rx.max(1) as f64,
        drops,
        worker.state().conns.len()
    );
    Ok(())
}

fn core_pin(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}
