//! `sluice bench`: the real worker path (parse, connection table, scheduler, rewrite, burst tx) fed by an
//! in-process traffic generator on one pinned core, without a device, reporting Mpps and ns per packet.

use std::time::Instant;

use balancer::conntrack::EdgeHooks;
use balancer::service::ForwardingMode;

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
    let mut worker = dataplane::traffic::bench_worker(
        mode,
        args.v6,
        args.flows,
        args.frame_len,
        args.new_connections,
        args.burst,
        // The connection table gets what `sluice run` lends it: huge-page advice and the CPU's prefetch.
        EdgeHooks {
            prefetch: Some(dpdk::prefetch_line),
            advise_memory: Some(dpdk::advise_huge_pages),
        },
    )?;
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
