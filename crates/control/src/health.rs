//! Backend health checks with keepalived's knobs: TCP connect, HTTP GET or a command (MISC_CHECK) every
//! `delay_loop`, `retry` consecutive failures (spaced by `delay_before_retry`) before a checker says down, one
//! success to bring it back; several checkers per backend, all of which must pass; the first probe delayed at random
//! within `warmup`; with `alpha` a backend starts down until its checks pass, without it a backend starts up and
//! receives traffic until the checks prove it down.
//!
//! The schedule is a pure state machine ([`CheckState`]) driven by results and instants, so it is tested without
//! sockets. [`HealthChecker`] schedules every check from one thread and runs each probe on a short-lived thread of
//! its own, bounded as a whole (connect, request, status line; or the command) by its timeout: a backend that hangs
//! or dribbles delays no other backend's verdict. Changes of a backend's verdict are reported over a channel.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{CheckKind, HealthCheckConfig};

/// What to check on one backend, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub target: SocketAddr,
    /// Every checker must pass for the backend to be up.
    pub checks: Vec<HealthCheckConfig>,
    /// Start down, up once every checker passed (keepalived's `alpha`).
    pub alpha: bool,
}

impl HealthCheckSpec {
    /// One checker, starting up.
    pub fn single(target: SocketAddr, config: HealthCheckConfig) -> HealthCheckSpec {
        HealthCheckSpec {
            target,
            checks: vec![config],
            alpha: false,
        }
    }
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
        CheckState::starting(now, true)
    }

    /// A check whose verdict starts as `up` (false with `alpha`), first probed at `first_check`.
    pub fn starting(first_check: Instant, up: bool) -> CheckState {
        CheckState {
            up,
            consecutive_failures: 0,
            next_check: first_check,
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

/// Runs one probe of `config` against the backend `backend`; `Err` says why it failed. The whole probe (connect,
/// send the request, read the status line) is bounded by `connect_timeout`, whatever the backend does: a backend
/// dribbling one byte at a time fails it. A misc check runs its command, bounded by `misc_timeout`, with the
/// backend in `SLUICE_BACKEND_ADDRESS` and `SLUICE_BACKEND_PORT`.
pub fn probe(backend: SocketAddr, config: &HealthCheckConfig) -> Result<(), String> {
    if let CheckKind::Misc { command, timeout } = &config.kind {
        let env = [
            ("SLUICE_BACKEND_ADDRESS", backend.ip().to_string()),
            ("SLUICE_BACKEND_PORT", backend.port().to_string()),
        ];
        return crate::script::run(command, &env, *timeout)
            .map_err(|error| format!("misc check {command:?}: {error}"));
    }
    let target = SocketAddr::new(
        config.connect_ip.unwrap_or(backend.ip()),
        config.connect_port.unwrap_or(backend.port()),
    );
    let timeout = config.connect_timeout.max(Duration::from_millis(1));
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
    match &config.kind {
        CheckKind::Tcp | CheckKind::Misc { .. } => Ok(()),
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
    /// A probe finished: the backend's key, the checker's index, the round it was started for, and its result.
    Probed(u32, usize, u64, Result<(), String>),
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

    /// Replaces the set of checks; a backend whose spec is unchanged keeps its state and schedule, one whose spec
    /// changed keeps its verdict until its new checks say otherwise.
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

/// One checker of a backend.
struct Check {
    config: HealthCheckConfig,
    state: CheckState,
    /// Bumped when a probe starts; a result for an older round (or a replaced spec) is ignored.
    round: u64,
    in_flight: bool,
}

/// A backend's checkers and the verdict last reported for it.
struct Backend {
    spec: HealthCheckSpec,
    checks: Vec<Check>,
    up: bool,
    /// Up at some point (an alpha backend is not, until its first checks pass).
    was_up: bool,
}

/// Probe threads get a small stack: they only connect, write and read a status line, or wait for a command.
const PROBE_STACK: usize = 64 * 1024;

fn run(
    specs: Vec<(u32, HealthCheckSpec)>,
    messages: Receiver<Message>,
    probes: Sender<Message>,
    events: Sender<HealthEvent>,
) {
    let mut backends: HashMap<u32, Backend> = HashMap::new();
    let mut rounds = 0u64;
    apply(&mut backends, specs, Instant::now());
    loop {
        let now = Instant::now();
        // Start every probe that is due and not already running.
        let mut next: Option<Instant> = None;
        for (&key, backend) in backends.iter_mut() {
            for index in 0..backend.checks.len() {
                let check = &mut backend.checks[index];
                if check.in_flight {
                    continue;
                }
                if check.state.next_check > now {
                    next = Some(
                        next.map_or(check.state.next_check, |n| n.min(check.state.next_check)),
                    );
                    continue;
                }
                rounds += 1;
                check.round = rounds;
                check.in_flight = true;
                let config = check.config.clone();
                let target = backend.spec.target;
                let results = probes.clone();
                let round = rounds;
                let spawned = std::thread::Builder::new()
                    .name("health-probe".into())
                    .stack_size(PROBE_STACK)
                    .spawn(move || {
                        let _ = results.send(Message::Probed(
                            key,
                            index,
                            round,
                            probe(target, &config),
                        ));
                    });
                if let Err(error) = spawned {
                    // Out of threads: count it as a failed probe rather than stop checking.
                    backend.checks[index].in_flight = false;
                    let reason = format!("cannot start a probe: {error}");
                    if !record(key, backend, index, Err(reason), &events) {
                        return;
                    }
                }
            }
        }
        let wait = next.map_or(Duration::from_secs(1), |when| {
            when.saturating_duration_since(Instant::now())
        });
        match messages.recv_timeout(wait) {
            Ok(Message::Update(specs)) => apply(&mut backends, specs, Instant::now()),
            Ok(Message::Probed(key, index, round, result)) => {
                let Some(backend) = backends.get_mut(&key) else {
                    continue;
                };
                let current = backend
                    .checks
                    .get(index)
                    .is_some_and(|check| check.round == round);
                if current {
                    backend.checks[index].in_flight = false;
                    if !record(key, backend, index, result, &events) {
                        return;
                    }
                }
            }
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn describe_check(check: &HealthCheckConfig) -> &'static str {
    match check.kind {
        CheckKind::Tcp => "tcp",
        CheckKind::Http { .. } => "http",
        CheckKind::Misc { .. } => "misc",
    }
}

/// Records checker `index`'s result; sends an event when the backend's verdict (all checkers up) changed. `false`
/// when nobody listens any more.
fn record(
    key: u32,
    backend: &mut Backend,
    index: usize,
    result: Result<(), String>,
    events: &Sender<HealthEvent>,
) -> bool {
    let check = &mut backend.checks[index];
    if check
        .state
        .record(result.is_ok(), &check.config, Instant::now())
        .is_none()
    {
        return true;
    }
    let up = backend.checks.iter().all(|check| check.state.up);
    if up == backend.up {
        return true;
    }
    backend.up = up;
    let first = up && !backend.was_up;
    backend.was_up |= up;
    let check = &backend.checks[index];
    let which = if backend.checks.len() > 1 {
        format!(
            "{} check {} of {}: ",
            describe_check(&check.config),
            index + 1,
            backend.checks.len()
        )
    } else {
        String::new()
    };
    let reason = match &result {
        Ok(()) if backend.checks.len() > 1 => format!(
            "all {} checks pass{}",
            backend.checks.len(),
            if first { " (alpha: first time)" } else { "" }
        ),
        Ok(()) if first => format!("{} passes its first check (alpha)", backend.spec.target),
        Ok(()) => format!("{} answers again", backend.spec.target),
        Err(error) => format!(
            "{which}{error} ({} consecutive failures)",
            check.state.consecutive_failures()
        ),
    };
    // The control loop logs the change once, with the service (it knows which backend the key is).
    log::debug!(
        "probe of {}: {} ({reason})",
        backend.spec.target,
        if up { "up" } else { "down" }
    );
    events.send(HealthEvent { key, up, reason }).is_ok()
}

/// A random delay below `warmup` (keepalived's warmup), so that checks configured together do not probe together.
fn warmup_delay(warmup: Duration, key: u32, index: usize) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    if warmup.is_zero() {
        return Duration::ZERO;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(key);
    hasher.write_usize(index);
    let fraction = (hasher.finish() % 1_000_000) as f64 / 1_000_000.0;
    warmup.mul_f64(fraction)
}

fn apply(backends: &mut HashMap<u32, Backend>, specs: Vec<(u32, HealthCheckSpec)>, now: Instant) {
    let mut next: HashMap<u32, Backend> = HashMap::with_capacity(specs.len());
    for (key, spec) in specs {
        let backend = match backends.remove(&key) {
            Some(existing) if existing.spec == spec => existing,
            existing => {
                // A backend new to the checker starts as alpha says; one whose checks changed keeps its verdict.
                let (up, was_up) = existing.map_or((!spec.alpha, !spec.alpha), |existing| {
                    (existing.up, existing.was_up)
                });
                let checks = spec
                    .checks
                    .iter()
                    .enumerate()
                    .map(|(index, config)| Check {
                        config: config.clone(),
                        state: CheckState::starting(
                            now + warmup_delay(config.warmup, key, index),
                            up,
                        ),
                        round: 0,
                        in_flight: false,
                    })
                    .collect();
                Backend {
                    spec,
                    checks,
                    up,
                    was_up,
                }
            }
        };
        next.insert(key, backend);
    }
    *backends = next;
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
            warmup: Duration::ZERO,
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
    fn warmup_delays_the_first_probe_at_random_below_it() {
        assert_eq!(warmup_delay(Duration::ZERO, 1, 0), Duration::ZERO);
        let warmup = Duration::from_secs(10);
        let delays: Vec<Duration> = (0..64).map(|key| warmup_delay(warmup, key, 0)).collect();
        assert!(delays.iter().all(|delay| *delay < warmup), "{delays:?}");
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 32, "not spread: {delays:?}");
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
