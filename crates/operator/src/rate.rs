//! `sluice ctl rate` (ipvsadm -L --rate): connections, packets and bytes per second per backend and service, over
//! a fixed window: the control loop samples the workers' counters every [`WINDOW`], and the answer is the rate
//! between the last two samples, whoever asks and however often.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::snapshot::describe_endpoint;
use dataplane::worker::WorkerStats;

use crate::control_loop::ControlLoop;
use crate::service_stats::{column_totals, protocol_name};

/// The window rates are measured over (IPVS's estimator uses 2 s too).
pub const WINDOW: Duration = Duration::from_secs(2);

/// Per backend id: connections, packets in, packets out, bytes in, bytes out.
type Sample = Vec<[u64; 5]>;

/// The last two samples of the counters.
#[derive(Default)]
pub struct RateWindow {
    previous: Option<(Instant, Sample)>,
    latest: Option<(Instant, Sample)>,
}

impl RateWindow {
    /// Takes a sample when the window has passed since the last one (called every turn of the control loop).
    pub fn tick(&mut self, stats: &[Arc<WorkerStats>], now: Instant) {
        if self
            .latest
            .as_ref()
            .is_some_and(|(when, _)| now.duration_since(*when) < WINDOW)
        {
            return;
        }
        self.previous = self.latest.take();
        self.latest = Some((now, sample(stats)));
    }

    /// The rates over the last complete window, laid out as ipvsadm's --rate (bytes per second, as ipvsadm).
    pub fn answer(&self, control: &mut ControlLoop) -> String {
        let (Some((before, old)), Some((after, new))) = (&self.previous, &self.latest) else {
            return format!(
                "no complete window yet: rates are measured over {} s; ask again shortly\n",
                WINDOW.as_secs()
            );
        };
        let seconds = after.duration_since(*before).as_secs_f64().max(1e-3);
        let mut out = String::from(
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\n",
        );
        for service in &control.config.services {
            let rows: Vec<(String, [u64; 5])> = service
                .all_backends()
                .map(|backend| {
                    let id = control
                        .registry
                        .id(service.key, backend.address, backend.port)
                        .0 as usize;
                    let mut rates = [0u64; 5];
                    for (column, rate) in rates.iter_mut().enumerate() {
                        let delta = new
                            .get(id)
                            .map_or(0, |counts| counts[column])
                            .saturating_sub(old.get(id).map_or(0, |counts| counts[column]));
                        *rate = (delta as f64 / seconds).round() as u64;
                    }
                    (describe_endpoint(backend.address, backend.port), rates)
                })
                .collect();
            let total = column_totals(&rows);
            let protocol = protocol_name(service.key.protocol);
            let _ = writeln!(
                out,
                "{protocol}  {:<33}{:>8} {:>8} {:>8} {:>8} {:>8}",
                describe_endpoint(service.key.vip, service.key.port),
                total[0],
                total[1],
                total[2],
                total[3],
                total[4]
            );
            for (name, rates) in rows {
                let _ = writeln!(
                    out,
                    "  -> {name:<33}{:>6} {:>8} {:>8} {:>8} {:>8}",
                    rates[0], rates[1], rates[2], rates[3], rates[4]
                );
            }
        }
        let _ = writeln!(
            out,
            "(over {seconds:.1} s ending {:.1} s ago)",
            after.elapsed().as_secs_f64()
        );
        out
    }
}

fn sample(stats: &[Arc<WorkerStats>]) -> Sample {
    let mut sums = vec![[0u64; 5]; dataplane::worker::COUNTED_BACKENDS];
    for worker in stats {
        for (sum, counters) in sums.iter_mut().zip(worker.backends.iter()) {
            for (total, counter) in sum.iter_mut().zip([
                &counters.connections,
                &counters.packets_in,
                &counters.packets_out,
                &counters.bytes_in,
                &counters.bytes_out,
            ]) {
                *total += counter.load(Ordering::Relaxed);
            }
        }
    }
    sums
}
