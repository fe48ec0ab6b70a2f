//! `zero` (ipvsadm -Z): the baseline `stats` counts from; the workers' own counters, and so the metrics, keep
//! counting.

use crate::control_loop::ControlLoop;

pub(super) fn zero(control: &mut ControlLoop) -> String {
    control.zeroed = (0..dataplane::worker::COUNTED_BACKENDS)
        .map(|id| crate::service_stats::counter_sums(&control.stats, id))
        .collect();
    log::info!("ctl: statistics zeroed");
    "statistics zeroed: stats counts from now (the metrics' counters keep counting)\n".into()
}
