//! Health checks against real servers started here: a TCP listener and a small HTTP server, stopped and restarted
//! on the same port; the backend leaves within delay_loop x retry plus a margin and rejoins within delay_loop plus a
//! margin. Bounds are generous: these are behaviour checks, not timings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use control::config::{CheckKind, HealthCheckConfig, OnFailure};
use control::health::{HealthCheckSpec, HealthChecker, HealthEvent};

const DELAY_LOOP: Duration = Duration::from_millis(100);
const MARGIN: Duration = Duration::from_millis(1500);

fn config(kind: CheckKind, retry: u32) -> HealthCheckConfig {
    HealthCheckConfig {
        kind,
        connect_ip: None,
        connect_port: None,
        connect_timeout: Duration::from_millis(200),
        delay_loop: DELAY_LOOP,
        retry,
        delay_before_retry: Duration::from_millis(50),
        on_failure: OnFailure::Remove,
        warmup: Duration::ZERO,
    }
}

/// A server on `addr` until `stop` is set; HTTP servers answer `status` (0: accept and never answer).
fn serve(
    listener: TcpListener,
    http: bool,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    if !http {
                        continue;
                    }
                    let code = status.load(Ordering::SeqCst);
                    if code == 0 {
                        held.push(stream);
                        continue;
                    }
                    stream.set_nonblocking(false).unwrap();
                    let mut request = [0u8; 512];
                    let _ = stream.read(&mut request);
                    let _ = write!(stream, "HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n");
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

fn wait_for(events: &Receiver<HealthEvent>, up: bool, within: Duration) -> (HealthEvent, Duration) {
    let started = Instant::now();
    loop {
        let left = within.checked_sub(started.elapsed()).unwrap_or_else(|| {
            panic!(
                "no {} event within {within:?}",
                if up { "up" } else { "down" }
            )
        });
        let event = events.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no {} event within {within:?}",
                if up { "up" } else { "down" }
            )
        });
        if event.up == up {
            return (event, started.elapsed());
        }
    }
}

#[test]
fn tcp_backend_leaves_and_rejoins() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(
        listener,
        false,
        Arc::new(AtomicU16::new(0)),
        Arc::clone(&stop),
    );
    let (checker, events) = HealthChecker::start(vec![(
        7,
        HealthCheckSpec::single(addr, config(CheckKind::Tcp, 3)),
    )]);
    // Up and answering: no event.
    assert!(events.recv_timeout(DELAY_LOOP * 4).is_err());
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    let (event, took) = wait_for(&events, false, DELAY_LOOP * 3 + MARGIN);
    assert_eq!(event.key, 7);
    assert!(
        event.reason.contains("connect to") && event.reason.contains("3 consecutive failures"),
        "{}",
        event.reason
    );
    // At least retry probes had to fail: not before two delay_before_retry gaps.
    assert!(
        took >= Duration::from_millis(100),
        "down too early: {took:?}"
    );
    let listener = TcpListener::bind(addr).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(
        listener,
        false,
        Arc::new(AtomicU16::new(0)),
        Arc::clone(&stop),
    );
    let (event, _) = wait_for(&events, true, DELAY_LOOP + MARGIN);
    assert!(event.reason.contains("answers again"));
    checker.stop();
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn http_checks_want_the_expected_status_in_time() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(listener, true, Arc::clone(&status), Arc::clone(&stop));
    let kind = CheckKind::Http {
        path: "/health".into(),
        expected_status: 200,
    };
    let (checker, events) =
        HealthChecker::start(vec![(1, HealthCheckSpec::single(addr, config(kind, 1)))]);
    assert!(events.recv_timeout(DELAY_LOOP * 4).is_err());
    status.store(503, Ordering::SeqCst);
    let (event, _) = wait_for(&events, false, DELAY_LOOP + MARGIN);
    assert!(
        event.reason.contains("HTTP status 503") && event.reason.contains("expected 200"),
        "{}",
        event.reason
    );
    status.store(200, Ordering::SeqCst);
    wait_for(&events, true, DELAY_LOOP + MARGIN);
    // A server that accepts and never answers fails on the timeout.
    status.store(0, Ordering::SeqCst);
    let (event, _) = wait_for(&events, false, DELAY_LOOP + MARGIN);
    assert!(event.reason.contains("HTTP answer"), "{}", event.reason);
    checker.stop();
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn updates_keep_unchanged_checks_and_stop_is_prompt() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let spec = HealthCheckSpec::single(addr, config(CheckKind::Tcp, 1));
    let mut slow = spec.checks[0].clone();
    slow.delay_loop = Duration::from_secs(3600);
    let (checker, events) =
        HealthChecker::start(vec![(1, HealthCheckSpec::single(addr, slow.clone()))]);
    wait_for(&events, false, MARGIN);
    // Unchanged spec: the state (down) is kept, no new event.
    checker.update(vec![(1, HealthCheckSpec::single(addr, slow))]);
    assert!(events.recv_timeout(Duration::from_millis(300)).is_err());
    // A second backend is added and checked.
    checker.update(vec![(2, spec)]);
    let (event, _) = wait_for(&events, false, MARGIN);
    assert_eq!(event.key, 2);
    let started = Instant::now();
    checker.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop waited {:?}",
        started.elapsed()
    );
}

#[test]
fn stop_is_prompt_even_when_slow_probes_keep_checks_due() {
    // A server that accepts and never answers: every HTTP probe waits out its timeout, longer than the delays, so
    // some check is always due.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop_server = Arc::new(AtomicBool::new(false));
    let server = serve(
        listener,
        true,
        Arc::new(AtomicU16::new(0)),
        Arc::clone(&stop_server),
    );
    let http = CheckKind::Http {
        path: "/".into(),
        expected_status: 200,
    };
    let specs = (1..=4)
        .map(|key| (key, HealthCheckSpec::single(addr, config(http.clone(), 1))))
        .collect();
    let (checker, events) = HealthChecker::start(specs);
    wait_for(&events, false, Duration::from_secs(5));
    let (done_tx, done) = std::sync::mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        checker.stop();
        let _ = done_tx.send(());
    });
    let stopped = done.recv_timeout(Duration::from_secs(3));
    stop_server.store(true, Ordering::SeqCst);
    let _ = server.join();
    assert!(
        stopped.is_ok(),
        "stop still waiting after {:?}",
        started.elapsed()
    );
}

fn misc(command: &str) -> CheckKind {
    CheckKind::Misc {
        command: command.into(),
        timeout: Duration::from_millis(500),
    }
}

#[test]
fn alpha_starts_down_and_comes_up_only_once_every_checker_passes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(
        listener,
        false,
        Arc::new(AtomicU16::new(0)),
        Arc::clone(&stop),
    );
    let flag = tempfile::NamedTempFile::new().unwrap();
    let flag_path = flag.path().to_owned();
    std::fs::remove_file(&flag_path).unwrap();
    // The misc checker passes once the flag file exists; it gets the backend in its environment.
    let command = format!(
        "test -e {} && test \"$SLUICE_BACKEND_PORT\" = {}",
        flag_path.display(),
        addr.port()
    );
    let spec = HealthCheckSpec {
        target: addr,
        checks: vec![config(CheckKind::Tcp, 1), config(misc(&command), 1)],
        alpha: true,
    };
    let (checker, events) = HealthChecker::start(vec![(3, spec)]);
    // Down from the start (the caller holds it down): no event while the misc checker fails, though tcp passes.
    assert!(events.recv_timeout(DELAY_LOOP * 5).is_err());
    std::fs::write(&flag_path, b"").unwrap();
    let (event, _) = wait_for(&events, true, DELAY_LOOP + MARGIN);
    assert_eq!(event.key, 3);
    assert!(
        event.reason.contains("all 2 checks pass"),
        "{}",
        event.reason
    );
    // One failing checker is enough to take it down, and the reason names it.
    std::fs::remove_file(&flag_path).unwrap();
    let (event, _) = wait_for(&events, false, DELAY_LOOP + MARGIN);
    assert!(
        event.reason.contains("misc check 2 of 2") && event.reason.contains("exited with status 1"),
        "{}",
        event.reason
    );
    checker.stop();
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn a_misc_check_that_hangs_fails_at_its_timeout() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let started = Instant::now();
    let result = control::health::probe(addr, &config(misc("sleep 10"), 1));
    assert_eq!(
        result,
        Err("misc check \"sleep 10\": killed after its timeout of 500 ms".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
