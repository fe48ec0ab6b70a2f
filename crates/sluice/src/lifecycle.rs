//! How a running sluice tells the outside that it has started, is reloading and is stopping: systemd's
//! notifications (`Type=notify`: READY=1 only once every worker is polling its queues) and the log line that says
//! why it stops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait for the workers' first turn before saying ready anyway (a worker that never turns is the
/// liveness check's business, not a reason to hold systemd's start job).
const FIRST_TURN_WAIT: Duration = Duration::from_secs(5);

fn tell_systemd(state: &str) {
    match control::systemd::notify(state) {
        Ok(_) => {}
        Err(error) => log::warn!("systemd notification {state:?} not sent: {error}"),
    }
}

/// Waits until every worker has turned its loop once (it is polling its queues), then tells systemd it is ready.
pub fn forwarding(beats: &[Arc<AtomicU64>], workers: usize) {
    let deadline = Instant::now() + FIRST_TURN_WAIT;
    while beats.iter().any(|beat| beat.load(Ordering::Relaxed) == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    tell_systemd(&format!(
        "READY=1\nSTATUS=forwarding with {workers} workers"
    ));
}

/// A reload starts: systemd shows the unit reloading until [`reloaded`].
pub fn reloading() {
    tell_systemd("RELOADING=1\nSTATUS=reloading");
}

pub fn reloaded(outcome: &Result<String, String>) {
    let status = match outcome {
        Ok(_) => "forwarding; last reload applied",
        Err(_) => "forwarding; last reload refused",
    };
    tell_systemd(&format!("READY=1\nSTATUS={status}"));
}

/// Which signal asked sluice to stop, remembered beside the stop flag the workers watch.
pub struct StopSignals {
    term: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
}

impl StopSignals {
    /// Records SIGTERM and SIGINT (the handlers that set the stop flag stay as they are).
    pub fn watch() -> StopSignals {
        let signals = StopSignals {
            term: Arc::new(AtomicBool::new(false)),
            interrupt: Arc::new(AtomicBool::new(false)),
        };
        for (signal, flag) in [
            (signal_hook::consts::SIGTERM, &signals.term),
            (signal_hook::consts::SIGINT, &signals.interrupt),
        ] {
            if let Err(error) = signal_hook::flag::register(signal, Arc::clone(flag)) {
                log::warn!(
                    "signal {signal} will stop sluice without being named in the log: {error}"
                );
            }
        }
        signals
    }

    /// Logs why the run ends and tells systemd it is stopping.
    pub fn stopping(&self) {
        let why = if self.term.load(Ordering::SeqCst) {
            "SIGTERM received"
        } else if self.interrupt.load(Ordering::SeqCst) {
            "SIGINT (ctrl-c) received"
        } else {
            "a limit of the command line was reached (--max-packets, --idle-exit-ms or --duration-ms)"
        };
        log::info!("stopping: {why}; the workers finish their last burst");
        tell_systemd(&format!("STOPPING=1\nSTATUS=stopping: {why}"));
    }
}
