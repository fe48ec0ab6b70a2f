//! Backend health checks with keepalived's knobs: TCP connect or HTTP GET every `delay_loop`, `retry` consecutive
//! failures (spaced by `delay_before_retry`) before a backend is declared down, one success to bring it back.
//!
//! The schedule is a pure state machine ([`CheckState`]) driven by results and instants, so it is tested without
//! sockets. [`HealthChecker`] schedules every check from one thread and runs each probe on a short-lived thread of
//! its own, bounded as a whole (connect, request, status line) by `connect_timeout`: a backend that hangs or dribbles
//! delays no other backend's verdict. Changes are reported over a channel. A backend starts up: it receives traffic
//! until the checks prove it down (keepalived without `alpha`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{CheckKind, HealthCheckConfig};

/// What to check, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub target: SocketAddr,
    pub config: HealthCheckConfig,
}

/// A change of a backend's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// The caller's key for the backend.
    pub key: u32,
    pub up: bool,
    pub reason: String,
}

/// One backend's check schedule and verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckState {
    pub up: bool,
    consecutive_failures: u32,
    pub next_check: Instant,
}

impl CheckState {
    /// A backend assumed up, first checked at `now`.
    pub fn new(now: Instant) -> CheckState {
        CheckState {
            up: true,
            consecutive_failures: 0,
            next_check: now,
        }
    }

    /// Records one probe result at `now`; returns `Some(up)` when the verdict changed.
    pub fn record(
        &mut self,
        success: bool,
        config: &HealthCheckConfig,
        now: Instant,
    ) -> Option<bool> {
        if success {
            self.consecutive_failures = 0;
            self.next_check = now + config.delay_loop;
            if !self.up {
                self.up = true;
                return Some(true);
            }
            return None;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let retries = config.retry.max(1);
        if self.consecutive_failures >= retries {
            self.next_check = now + config.delay_loop;
            if self.up {
                self.up = false;
                return Some(false);
            }
            None
        } else {
            // Not yet proven down: try again soon.
            self.next_check = now + config.delay_before_retry;
            None
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

/// Runs one probe; `Err` says why it failed. The whole probe (connect, send the request, read the status line) is
/// bounded by `connect_timeout`, whatever the backend does: a backend dribbling one byte at a time fails it.
pub fn probe(spec: &HealthCheckSpec) -> Result<(), String> {
    let target = SocketAddr::new(
        spec.config.connect_ip.unwrap_or(spec.target.ip()),
        spec.config.connect_port.unwrap_or(spec.target.port()),
    );
    let timeout = spec.config.connect_timeout.max(Duration::from_millis(1));
    let deadline = Instant::now() + timeout;
    let left = |phase: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| {
                format!(
                    "{phase} {target}: not complete within connect_timeout ({} ms)",
                    timeout.as_millis()
                )
            })
    };
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .map_err(|error| format!("connect to {target}: {error}"))?;
    match &spec.config.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http {
            path,
            expected_status,
        } => {
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target.ip()
            );
            let mut sent = 0;
            let bytes = request.as_bytes();
            while sent < bytes.len() {
                stream
                    .set_write_timeout(Some(left("HTTP request to")?))
                    .map_err(|error| error.to_string())?;
                match stream.write(&bytes[sent..]) {
                    Ok(0) => return Err(format!("HTTP request to {target}: connection closed")),
                    Ok(n) => sent += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(format!("HTTP request to {target}: {error}")),
                }
            }
            // The status line is all we need; read at most 1 KiB, all of it before the deadline.
            let mut head = [0u8; 1024];
            let mut filled = 0;
            while filled < head.len() && !head[..filled].contains(&b'\n') {
                stream
                    .set_read_timeout(Some(left("HTTP answer from")?))
                    .map_err(|error| error.to_string())?;
                match stream.read(&mut head[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        left("HTTP answer from")?;
                    }
                    Err(error) => return Err(format!("HTTP answer from {target}: {error}")),
                }
            }
            let line = String::from_utf8_lossy(&head[..filled]);
            let status = line
                .lines()
                .next()
                .and_then(|first| first.split_whitespace().nth(1))
                .and_then(|code| code.parse::<u16>().ok())
                .ok_or_else(|| format!("HTTP answer from {target} has no status line"))?;
            if status == *expected_status {
                Ok(())
            } else {
                Err(format!(
                    "HTTP status {status} from {target}{path}, expected {expected_status}"
                ))
            }
        }
    }
}

enum Message {
    Update(Vec<(u32, HealthCheckSpec)>),
    Stop,
    /// A probe finished: the check's key, the round it was started for, and its result.
    Probed(u32, u64, Result<(), String>),
}

/// The scheduling thread. Every probe runs on a thread of its own, so a backend that hangs delays only its own
/// verdict; the scheduler never waits for a probe, and stopping it never waits for one either (a probe that is still
/// running ends by its own deadline and its result is dropped).
pub struct HealthChecker {
    messages: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecker {
    /// Starts checking `specs` (keyed by the caller's backend key); changes arrive on the returned receiver.
    pub fn start(specs: Vec<(u32, HealthCheckSpec)>) -> (HealthChecker, Receiver<HealthEvent>) {
        let (messages, message_rx) = mpsc::channel();
        let (events, event_rx) = mpsc::channel();
        let probes = messages.clone();
        let thread = std::thread::Builder::new()
            .name("health".into())
            .spawn(move || run(specs, message_rx, probes, events))
            .expect("spawning the health-check thread");
        (
            HealthChecker {
                messages,
                thread: Some(thread),
            },
            event_rx,
        )
    }

    /// Replaces the set of checks; a check whose spec is unchanged keeps its state and schedule.
    pub fn update(&self, specs: Vec<(u32, HealthCheckSpec)>) {
        let _ = self.messages.send(Message::Update(specs));
    }

    /// Stops the scheduler and waits for it; it does not wait for probes in flight.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.messages.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Check {
    spec: HealthCheckSpec,
    state: CheckState,
    /// Bumped when a probe starts; a result for an older round (or a replaced spec) is ignored.
    round: u64,
    in_flight: bool,
}

/// Probe threads get a small stack: they only connect, write and read a status line.
const PROBE_STACK: usize = 64 * 1024;

fn run(
    specs: Vec<(u32, HealthCheckSpec)>,
    messages: Receiver<Message>,
    probes: Sender<Message>,
    events: Sender<HealthEvent>,
) {
    let mut checks: HashMap<u32, Check> = HashMap::new();
    let mut rounds = 0u64;
    apply(&mut checks, specs, Instant::now());
    loop {
        let now = Instant::now();
        // Start every probe that is due and not already running.
        let mut next: Option<Instant> = None;
        for (&key, check) in checks.iter_mut() {
            if check.in_flight {
                continue;
            }
            if check.state.next_check <= now {
                rounds += 1;
                check.round = rounds;
                check.in_flight = true;
                let spec = check.spec.clone();
                let results = probes.clone();
                let round = rounds;
                let spawned = std::thread::Builder::new()
                    .name("health-probe".into())
                    .stack_size(PROBE_STACK)
                    .spawn(move || {
                        let _ = results.send(Message::Probed(key, round, probe(&spec)));
                    });
                if let Err(error) = spawned {
                    // Out of threads: count it as a failed probe rather than stop checking.
                    check.in_flight = false;
                    let reason = format!("cannot start a probe: {error}");
                    record(key, check, Err(reason), &events);
                }
            } else {
                next = Some(next.map_or(check.state.next_check, |n| n.min(check.state.next_check)));
            }
        }
        let wait = next.map_or(Duration::from_secs(1), |when| {
            when.saturating_duration_since(Instant::now())
        });
        match messages.recv_timeout(wait) {
            Ok(Message::Update(specs)) => apply(&mut checks, specs, Instant::now()),
            Ok(Message::Probed(key, round, result)) => {
                if let Some(check) = checks.get_mut(&key).filter(|check| check.round == round) {
                    check.in_flight = false;
                    if !record(key, check, result, &events) {
                        return;
                    }
                }
            }
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Records a probe's result; sends an event when the verdict changed. `false` when nobody listens any more.
fn record(
    key: u32,
    check: &mut Check,
    result: Result<(), String>,
    events: &Sender<HealthEvent>,
) -> bool {
    let config = &check.spec.config;
    let Some(up) = check.state.record(result.is_ok(), config, Instant::now()) else {
        return true;
    };
    let reason = match &result {
        Ok(()) => format!("{} answers again", check.spec.target),
        Err(error) => format!(
            "{error} ({} consecutive failures)",
            check.state.consecutive_failures()
        ),
    };
    // The control loop logs the change once, with the service (it knows which backend the key is).
    log::debug!(
        "probe of {}: {} ({reason})",
        check.spec.target,
        if up { "up" } else { "down" }
    );
    events.send(HealthEvent { key, up, reason }).is_ok()
}

/// The one log line of a health change: the service and backend by name, the backend's id, the verdict and why.
/// A backend going down is a warning; coming back is information.
pub fn log_change(event: &HealthEvent, registry: &crate::config::BackendIdRegistry) {
    use balancer::snapshot::{describe_endpoint, describe_service};
    let id = balancer::service::BackendId(event.key);
    let name = registry.ids().get(&id).map_or_else(
        || "a removed backend".to_owned(),
        |(service, address, port)| {
            format!(
                "service {} backend {}",
                describe_service(service),
                describe_endpoint(*address, *port)
            )
        },
    );
    if event.up {
        log::info!("health: {name} (id {}): up ({})", event.key, event.reason);
    } else {
        log::warn!("health: {name} (id {}): down ({})", event.key, event.reason);
    }
}

fn apply(checks: &mut HashMap<u32, Check>, specs: Vec<(u32, HealthCheckSpec)>, now: Instant) {
    let mut next: HashMap<u32, Check> = HashMap::with_capacity(specs.len());
    for (key, spec) in specs {
        let check = match checks.remove(&key) {
            Some(existing) if existing.spec == spec => existing,
            _ => Check {
                spec,
                state: CheckState::new(now),
                round: 0,
                in_flight: false,
            },
        };
        next.insert(key, check);
    }
    *checks = next;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnFailure;
    use proptest::prelude::*;

    fn config(retry: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: CheckKind::Tcp,
            connect_ip: None,
            connect_port: None,
            connect_timeout: Duration::from_millis(200),
            delay_loop: Duration::from_secs(10),
            retry,
            delay_before_retry: Duration::from_secs(1),
            on_failure: OnFailure::Remove,
        }
    }

    #[test]
    fn down_after_retry_failures_up_after_one_success() {
        let start = Instant::now();
        let config = config(3);
        let mut state = CheckState::new(start);
        assert_eq!(state.record(false, &config, start), None);
        assert_eq!(
            state.next_check,
            start + Duration::from_secs(1),
            "retry after delay_before_retry"
        );
        assert_eq!(state.record(false, &config, start), None);
        assert_eq!(state.record(false, &config, start), Some(false));
        assert_eq!(
            state.next_check,
            start + Duration::from_secs(10),
            "then back to delay_loop"
        );
        assert_eq!(state.record(false, &config, start), None, "already down");
        assert_eq!(state.record(true, &config, start), Some(true));
        assert_eq!(state.record(true, &config, start), None);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let start = Instant::now();
        let config = config(2);
        let mut state = CheckState::new(start);
        state.record(false, &config, start);
        state.record(true, &config, start);
        assert_eq!(state.record(false, &config, start), None);
        assert_eq!(state.record(false, &config, start), Some(false));
    }

    proptest! {
        #[test]
        fn never_down_before_retry_consecutive_failures(retry in 1u32..6, results in proptest::collection::vec(any::<bool>(), 1..60)) {
            let start = Instant::now();
            let config = config(retry);
            let mut state = CheckState::new(start);
            let mut run = 0u32;
            let mut model_up = true;
            for success in results {
                let change = state.record(success, &config, start);
                run = if success { 0 } else { run + 1 };
                let was_up = model_up;
                if success {
                    model_up = true;
                } else if run >= retry {
                    model_up = false;
                }
                prop_assert_eq!(state.up, model_up);
                prop_assert_eq!(change, (was_up != model_up).then_some(model_up));
            }
        }
    }
}
