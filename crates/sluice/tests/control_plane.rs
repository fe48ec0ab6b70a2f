//! The control plane of the running binary cannot be stopped from outside: a file with out-of-range values is
//! refused on reload while the workers keep forwarding; idle and trickling clients of the control socket and the
//! metrics endpoint delay no answer; a dribbling backend is marked down within its timeout without delaying another
//! backend's verdict; SIGTERM ends it all in bounded time; a failed start leaves no worker and no file behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::running_sluice::{RunningSluice, Stopped};
use common::{dr_service_on_two_pcap_ports, free_hugepages, free_port, write_empty_pcap};

/// A two-port DR configuration on pcap vdevs with `rest` appended after the service.
fn config(dir: &Path, rest: &str) -> String {
    dr_service_on_two_pcap_ports(dir, rest)
}

/// One request on the control socket: the answer and how long it took.
fn ctl(socket: &Path, command: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    (answer, started.elapsed())
}

fn http(port: u16, request: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    (answer, started.elapsed())
}

#[test]
fn reloads_with_out_of_range_values_are_refused_and_forwarding_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    // The client port is a null device: frames arrive without end, so the worker's rx counter shows it polling.
    let config = |dir: &Path, rest: &str| {
        config(dir, rest).replace(
            &format!(
                "net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/c.pcap",
                d = dir.display()
            ),
            "net_null0",
        )
    };
    let socket = dir.path().join("ctl.sock");
    let metrics = free_port();
    let control = format!(
        "[control]\nsocket = \"{}\"\nmetrics = \"{metrics}\"\n",
        socket.display()
    );
    let received = || {
        let (scrape, _) = http(metrics, "GET /metrics HTTP/1.0\r\n\r\n");
        scrape
            .lines()
            .find_map(|line| line.strip_prefix("sluice_worker_rx_packets_total{worker=\"0\"} "))
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no rx counter in {scrape}"))
    };
    let backend = "[[service.backend]]\naddress = \"10.1.0.11\"\n";
    let good = config(dir.path(), &format!("{backend}{control}"));
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &good).unwrap();
    let mut sluice = RunningSluice::start(&path);
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(20));
    let before = received();
    let check = "[service.backend.health_check]\ntype = \"tcp\"\nconnect_ip = \"127.0.0.1\"\nconnect_port = 9\n";
    let bad: Vec<(String, &str)> = vec![
        (format!("{backend}{check}delay_loop = 1e30\n"), "delay_loop"),
        (
            format!("{backend}{check}connect_timeout = 1e30\n"),
            "connect_timeout",
        ),
        (
            format!("{backend}{check}delay_before_retry = 1e30\n"),
            "delay_before_retry",
        ),
        (format!("{backend}{check}delay_loop = nan\n"), "delay_loop"),
        (format!("{backend}{check}retry = 0\n"), "retry"),
        (format!("{backend}weight = 65536\n"), "weight"),
        (
            format!("{backend}[network.timeouts]\ntcp_established = 0\n"),
            "tcp_established",
        ),
        (
            format!("persistence_timeout = 99999999999\n{backend}"),
            "persistence_timeout",
        ),
    ];
    for (rest, field) in &bad {
        std::fs::write(&path, config(dir.path(), &format!("{rest}{control}"))).unwrap();
        // `sluice check` names the field and exits non-zero, no panic.
        let checked = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert_eq!(checked.status.code(), Some(1), "{field}: {stderr}");
        assert!(
            stderr.contains(field) && !stderr.contains("panicked"),
            "{field}: {stderr}"
        );
        // SIGHUP: refused, logged with the field.
        sluice.signal("HUP");
        sluice.wait_for(
            "sluice::run] reload refused, the running configuration stays",
            Duration::from_secs(5),
        );
        assert!(
            sluice.log.lines().last().unwrap().contains(field),
            "{field}:\n{}",
            sluice.log
        );
        // ctl reload: refused too, and the answer says why.
        let (answer, _) = ctl(&socket, "reload");
        assert!(
            answer.starts_with("error: reload refused") && answer.contains(field),
            "{answer}"
        );
    }
    // Still running, still on generation 1, the worker still receiving, and it still takes new tables: a good
    // reload is adopted.
    let after = received();
    assert!(
        after > before,
        "the worker stopped receiving: {before} then {after}"
    );
    let (list, _) = ctl(&socket, "list");
    assert!(
        list.contains("generation 1") && list.contains("10.1.0.11:80"),
        "{list}"
    );
    // A file `check` warns about: the warnings are logged and answered, with what was applied.
    std::fs::write(
        &path,
        config(
            dir.path(),
            &format!(
                "[[service.backend]]\naddress = \"10.1.0.12\"\nweight = 4\n\
        [[service]]\nvip = \"10.0.0.101\"\nport = 80\nmode = \"dr\"\n{control}"
            ),
        ),
    )
    .unwrap();
    let (answer, _) = ctl(&socket, "reload");
    assert!(
        answer.contains("reload: generation 2 with 2 services in use after"),
        "{answer}"
    );
    for needle in [
        "applied: backend 10.1.0.12:80 added to tcp://10.0.0.100:80 (weight 4)",
        "backend 10.1.0.11:80 removed from tcp://10.0.0.100:80",
        "service tcp://10.0.0.101:80 added with 0 backends",
        "warning: service tcp://10.0.0.101:80 has no backends",
    ] {
        assert!(answer.contains(needle), "{needle:?} not in {answer}");
    }
    sluice.wait_for(
        "reload: service tcp://10.0.0.101:80 has no backends",
        Duration::from_secs(5),
    );
    let (conns, _) = ctl(&socket, "conns");
    assert!(
        conns.contains("worker 0: 0 connections, generation 2"),
        "{conns}"
    );
    let Stopped {
        took, status, log, ..
    } = sluice.terminate();
    assert!(status.success(), "{log}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Keeps `idle` silent and `trickling` one-byte-at-a-time connections open to `connect` until `stop`, reopening
/// those the server closes.
fn pester<S: Read + Write + Send + 'static>(
    connect: impl Fn() -> std::io::Result<S> + Send + 'static,
    set_nonblocking: fn(&S) -> std::io::Result<()>,
    idle: usize,
    trickling: usize,
    trickle: &'static [u8],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut opened = 0;
        let open = |opened: &mut usize| -> Option<S> {
            let stream = connect().ok()?;
            set_nonblocking(&stream).ok()?;
            *opened += 1;
            Some(stream)
        };
        let mut streams: Vec<(Option<S>, usize)> = (0..idle + trickling)
            .map(|_| (open(&mut opened), 0))
            .collect();
        let started = Instant::now();
        // Bounded in time whatever happens to the test.
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
            for (index, (slot, sent)) in streams.iter_mut().enumerate() {
                let mut closed = slot.is_none();
                if let Some(stream) = slot {
                    let mut scratch = [0u8; 512];
                    match stream.read(&mut scratch) {
                        Ok(_) => closed = true, // an answer (a timeout) or the end: the server let go.
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => closed = true,
                    }
                    if !closed && index >= idle {
                        let byte = trickle[*sent % trickle.len()];
                        if stream.write(&[byte]).is_err() {
                            closed = true;
                        }
                        *sent += 1;
                    }
                }
                if closed {
                    *slot = open(&mut opened);
                    *sent = 0;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        opened
    })
}

/// Accepts connections and sends one byte a second on each, never a full line, until `stop`.
fn dribbling_backend(stop: Arc<AtomicBool>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let mut streams: Vec<TcpStream> = Vec::new();
        let mut last = Instant::now();
        let started = Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
            while let Ok((stream, _)) = listener.accept() {
                let _ = (&stream).write(b"H");
                streams.push(stream);
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                streams.retain(|mut stream| stream.write(b"T").is_ok());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (port, handle)
}

#[test]
fn idle_trickling_clients_and_a_dribbling_backend_stop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let socket = dir.path().join("ctl.sock");
    let metrics = free_port();
    let stop = Arc::new(AtomicBool::new(false));
    let (dribbling, dribbler) = dribbling_backend(Arc::clone(&stop));
    let healthy = TcpListener::bind("127.0.0.1:0").unwrap();
    let healthy_port = healthy.local_addr().unwrap().port();
    // Backend 0 is checked over HTTP on the dribbler: each probe must fail at its 1 s deadline, down after 2 of
    // them (about 2.2 s). Backend 1 is checked over TCP every 0.2 s on a listener the test closes.
    let rest = format!(
        "[[service.backend]]\naddress = \"10.1.0.11\"\n[service.backend.health_check]\ntype = \"http\"\n\
         connect_ip = \"127.0.0.1\"\nconnect_port = {dribbling}\nconnect_timeout = 1.0\nretry = 2\n\
         delay_before_retry = 0.2\ndelay_loop = 0.5\n\
         [[service.backend]]\naddress = \"10.1.0.12\"\n[service.backend.health_check]\ntype = \"tcp\"\n\
         connect_ip = \"127.0.0.1\"\nconnect_port = {healthy_port}\nconnect_timeout = 0.3\nretry = 1\ndelay_loop = 0.2\n\
         [control]\nsocket = \"{}\"\nmetrics = \"{metrics}\"\n",
        socket.display()
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(dir.path(), &rest)).unwrap();
    let mut sluice = RunningSluice::start(&path);
    let (checks_started, _) =
        sluice.wait_for_timed("health checks: 2 backends", Duration::from_secs(20));
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(5));

    // 100 idle and 100 trickling connections on each endpoint, held open (reopened when sluice lets go).
    let ctl_socket = socket.clone();
    let ctl_pest = pester(
        move || UnixStream::connect(&ctl_socket),
        |s: &UnixStream| s.set_nonblocking(true),
        100,
        100,
        b"lis",
        Arc::clone(&stop),
    );
    let metrics_pest = pester(
        move || TcpStream::connect(("127.0.0.1", metrics)),
        |s: &TcpStream| s.set_nonblocking(true),
        100,
        100,
        b"GET /metrics HTTP/1.1\r\n",
        Arc::clone(&stop),
    );
    std::thread::sleep(Duration::from_millis(500));

    // The dribbling backend is down within connect_timeout x retry + delay_before_retry (2.2 s), plus slack.
    let (down, _) = sluice.wait_for_timed("(id 0): down", Duration::from_secs(10));
    let dribbler_verdict = down - checks_started;
    assert!(
        dribbler_verdict < Duration::from_millis(3200),
        "the dribbling backend took {dribbler_verdict:?}:\n{}",
        sluice.log
    );
    assert!(
        sluice
            .log
            .contains("not complete within connect_timeout (1000 ms)"),
        "{}",
        sluice.log
    );
    // The other backend's failure is seen on its own schedule while the dribbler's probes hang.
    let closed = Instant::now();
    drop(healthy);
    let other_down = sluice
        .wait_for_timed("(id 1): down", Duration::from_secs(10))
        .0
        - closed;
    assert!(
        other_down < Duration::from_millis(800),
        "backend 1 took {other_down:?} to be marked down:\n{}",
        sluice.log
    );

    // ctl answers within 100 ms, a reload within 1 s, metrics answer, all with 400 pests connected.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let (answer, took) = ctl(&socket, "list");
        assert!(answer.contains("10.1.0.12:80"), "{answer}");
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_millis(100),
        "slowest ctl answer {slowest:?}"
    );
    let (answer, took) = ctl(&socket, "reload");
    assert!(answer.contains("reload: generation"), "{answer}");
    assert!(took < Duration::from_secs(1), "ctl reload took {took:?}");
    sluice.signal("HUP");
    let hup = Instant::now();
    let (reloaded, _) = sluice.wait_for_timed("SIGHUP: reloading", Duration::from_secs(2));
    sluice.wait_for("reload: generation", Duration::from_secs(2));
    assert!(
        reloaded - hup < Duration::from_secs(1),
        "SIGHUP waited {:?}",
        reloaded - hup
    );
    let (scrape, took) = http(metrics, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        scrape.starts_with("HTTP/1.0 200 OK") && scrape.contains("sluice_worker_rx_packets_total"),
        "{scrape}"
    );
    assert!(took < Duration::from_millis(100), "scrape took {took:?}");
    let (head, _) = http(metrics, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.0 200 OK") && !head.contains("sluice_worker"),
        "{head}"
    );
    let (missing, _) = http(metrics, "GET / HTTP/1.0\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.0 404 Not Found"), "{missing}");
    let (post, _) = http(
        metrics,
        "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        post.starts_with("HTTP/1.0 405 Method Not Allowed") && post.contains("Allow: GET, HEAD"),
        "{post}"
    );
    let (garbage, _) = http(metrics, "\x16\x03\x01 hello\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.0 400 Bad Request"), "{garbage}");

    // SIGTERM with the pests connected and the dribbler's probes in flight: out within 2 s, socket removed.
    let Stopped {
        took, status, log, ..
    } = sluice.terminate();
    stop.store(true, Ordering::SeqCst);
    let ctl_connections = ctl_pest.join().unwrap();
    let metrics_connections = metrics_pest.join().unwrap();
    dribbler.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM took {took:?}:\n{log}"
    );
    assert!(!socket.exists(), "the control socket is removed at exit");
    assert!(ctl_connections >= 200 && metrics_connections >= 200);
    eprintln!(
        "dribbler down after {dribbler_verdict:?}, other backend after {other_down:?}, slowest ctl {slowest:?}, \
         SIGTERM {took:?}, pest connections opened: ctl {ctl_connections}, metrics {metrics_connections}"
    );
}

#[test]
fn a_failed_metrics_bind_at_start_leaves_no_worker_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let socket = dir.path().join("ctl.sock");
    let rest = format!(
        "[[service.backend]]\naddress = \"10.1.0.11\"\n[control]\nsocket = \"{}\"\nmetrics = \"127.0.0.1:{port}\"\n",
        socket.display()
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(dir.path(), &rest)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("metrics listener 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("polling on CPU"),
        "a worker started:\n{stderr}"
    );
    assert!(
        !stderr.contains("not ready port") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!socket.exists(), "the control socket file is left behind");
    // A stale socket file from a killed run does not stop the next start.
    std::fs::write(&socket, b"").unwrap();
    drop(taken);
    let mut sluice = RunningSluice::start(&path);
    sluice.wait_for("polling on CPU", Duration::from_secs(20));
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(5));
    let (answer, _) = ctl(&socket, "list");
    assert!(answer.contains("10.1.0.11:80"), "{answer}");
    let Stopped { status, log, .. } = sluice.terminate();
    assert!(status.success(), "{log}");
    assert!(!socket.exists());
}

#[test]
fn hugepage_files_are_gone_even_after_kill_9() {
    // Needs 2 MiB hugepages mounted at /dev/hugepages (scripts/setup.sh reserves them).
    if free_hugepages() < 64 || !Path::new("/dev/hugepages").is_dir() {
        eprintln!("skipped: fewer than 64 free hugepages or no /dev/hugepages");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let prefix = format!("sluice-test-{}", std::process::id());
    let text = config(dir.path(), "[[service.backend]]\naddress = \"10.1.0.11\"\n").replace(
        r#"args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry"]"#,
        &format!(
            r#"args = ["-m", "64", "--no-pci", "--no-telemetry", "--file-prefix", "{prefix}"]"#
        ),
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let mut sluice = RunningSluice::start(&path);
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(20));
    let ours = || {
        std::fs::read_dir("/dev/hugepages")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    };
    assert_eq!(ours(), 0, "hugepage files while running");
    sluice.child.kill().unwrap();
    sluice.child.wait().unwrap();
    assert_eq!(ours(), 0, "hugepage files after kill -9");
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
}

#[test]
fn connections_beyond_the_bound_are_refused_at_once_and_service_resumes() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let metrics = free_port();
    let rest = format!("[[service.backend]]\naddress = \"10.1.0.11\"\n[control]\nmetrics = \"127.0.0.1:{metrics}\"\n");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(dir.path(), &rest)).unwrap();
    let mut sluice = RunningSluice::start(&path);
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(20));
    // 512 (the bound) idle connections are held; the next one is answered 503 at once instead of waiting.
    // In batches, so that the listen backlog (128) never overflows and every one of them is accepted.
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..8 {
        idle.extend((0..64).map(|_| TcpStream::connect(("127.0.0.1", metrics)).unwrap()));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (refused, took) = http(metrics, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        refused.starts_with("HTTP/1.0 503 Service Unavailable"),
        "{refused}"
    );
    assert!(took < Duration::from_millis(100), "{took:?}");
    drop(idle);
    // The slots free as the held connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (answer, _) = http(metrics, "GET /metrics HTTP/1.0\r\n\r\n");
        if answer.starts_with("HTTP/1.0 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {answer}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let Stopped {
        took, status, log, ..
    } = sluice.terminate();
    assert!(
        status.success() && took < Duration::from_secs(2),
        "{took:?} {log}"
    );
}
