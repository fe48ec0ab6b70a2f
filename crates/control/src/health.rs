//! Backend health checks with keepalived's knobs: TCP connect or HTTP GET every `delay_loop`, `retry` consecutive
//! failures (spaced by `delay_before_retry`) before a backend is declared down, one success to bring it back.
//!
//! The schedule is a pure state machine ([`CheckState`]) driven by results and instants, so it is tested without
//! sockets. [`HealthChecker`] runs every check from one thread (a queue ordered by due time; each probe is a short
//! blocking connect bounded by `connect_timeout`), so hundreds of backends cost one thread, and reports changes over
//! a channel. A backend starts up: it receives traffic until the checks prove it down (keepalived without `alpha`).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
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

/// Runs one probe; `Err` says why it failed.
pub fn probe(spec: &HealthCheckSpec) -> Result<(), String> {
    let target = SocketAddr::new(
        spec.config.connect_ip.unwrap_or(spec.target.ip()),
        spec.config.connect_port.unwrap_or(spec.target.port()),
    );
    let timeout = spec.config.connect_timeout.max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .map_err(|error| format!("connect to {target}: {error}"))?;
    match &spec.config.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http {
            path,
            expected_status,
        } => {
            stream
                .set_read_timeout(Some(timeout))
                .and_then(|()| stream.set_write_timeout(Some(timeout)))
                .map_err(|error| error.to_string())?;
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target.ip()
            );
            stream
                .write_all(request.as_bytes())
                .map_err(|error| format!("HTTP request to {target}: {error}"))?;
            // The status line is all we need; read at most 1 KiB.
            let mut head = [0u8; 1024];
            let mut filled = 0;
            let deadline = Instant::now() + timeout;
            while filled < head.len() && !head[..filled].contains(&b'\n') {
                match stream.read(&mut head[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    // A signal to the process (DPDK's tap driver raises SIGIO for every frame the kernel sends
                    // it) interrupts a read with a timeout: read again for what is left of the timeout.
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(format!("HTTP answer from {target}: timed out"));
                        }
                        stream
                            .set_read_timeout(Some(left))
                            .map_err(|error| error.to_string())?;
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

enum Command {
    Update(Vec<(u32, HealthCheckSpec)>),
    Stop,
}

/// The checking thread.
pub struct HealthChecker {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecker {
    /// Starts checking `specs` (keyed by the caller's backend key); changes arrive on the returned receiver.
    pub fn start(specs: Vec<(u32, HealthCheckSpec)>) -> (HealthChecker, Receiver<HealthEvent>) {
        let (commands, command_rx) = mpsc::channel();
        let (events, event_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("health".into())
            .spawn(move || run(specs, command_rx, events))
            .expect("spawning the health-check thread");
        (
            HealthChecker {
                commands,
                thread: Some(thread),
            },
            event_rx,
        )
    }

    /// Replaces the set of checks; a check whose spec is unchanged keeps its state and schedule.
    pub fn update(&self, specs: Vec<(u32, HealthCheckSpec)>) {
        let _ = self.commands.send(Command::Update(specs));
    }

    /// Stops the thread and waits for it (at most one probe's connect timeout).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.commands.send(Command::Stop);
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
}

fn run(
    specs: Vec<(u32, HealthCheckSpec)>,
    commands: Receiver<Command>,
    events: Sender<HealthEvent>,
) {
    let mut checks: HashMap<u32, Check> = HashMap::new();
    apply(&mut checks, specs, Instant::now());
    loop {
        let now = Instant::now();
        // Due checks, earliest first.
        let mut due: BTreeMap<Instant, Vec<u32>> = BTreeMap::new();
        for (&key, check) in &checks {
            due.entry(check.state.next_check).or_default().push(key);
        }
        let next = due.keys().next().copied();
        if let Some(when) = next.filter(|&when| when <= now) {
            for key in due.remove(&when).unwrap_or_default() {
                let Some(check) = checks.get_mut(&key) else {
                    continue;
                };
                let result = probe(&check.spec);
                let config = check.spec.config.clone();
                if let Some(up) = check.state.record(result.is_ok(), &config, Instant::now()) {
                    let reason = match &result {
                        Ok(()) => format!("{} answers again", check.spec.target),
                        Err(error) => format!(
                            "{error} ({} consecutive failures)",
                            check.state.consecutive_failures()
                        ),
                    };
                    log::info!(
                        "backend {}: {} ({reason})",
                        check.spec.target,
                        if up { "up" } else { "down" }
                    );
                    if events.send(HealthEvent { key, up, reason }).is_err() {
                        return;
                    }
                }
            }
            // Probes that time out can keep checks due back to back: look at the commands between rounds, or a
            // stop would wait for a quiet moment that never comes.
            match commands.try_recv() {
                Ok(Command::Update(specs)) => apply(&mut checks, specs, Instant::now()),
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            continue;
        }
        let wait = next.map_or(Duration::from_secs(1), |when| {
            when.saturating_duration_since(now)
        });
        match commands.recv_timeout(wait) {
            Ok(Command::Update(specs)) => apply(&mut checks, specs, Instant::now()),
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
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
