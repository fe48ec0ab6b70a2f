//! What an operator and a service manager see of a running sluice: systemd's READY=1 once the workers forward and
//! STOPPING=1 with the reason logged on SIGTERM; `--version` naming DPDK; the metrics endpoint's families (build,
//! reloads, backends' health and weights, ports' device counters, mempool use), which `promtool check metrics`
//! accepts (when promtool is installed: scripts/setup.sh installs it); ctl's changes in the log.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::running_sluice::RunningSluice;
use common::{dr_service_on_two_pcap_ports, free_port, write_empty_pcap};

/// A two-port DR configuration on pcap vdevs with `rest` appended after the service.
fn config(dir: &Path, rest: &str) -> String {
    dr_service_on_two_pcap_ports(dir, rest)
}

fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{answer}");
    body.to_owned()
}

#[test]
fn systemd_hears_ready_once_forwarding_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        config(dir.path(), "[[service.backend]]\naddress = \"10.1.0.11\"\n"),
    )
    .unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sluice = RunningSluice::adopt(
        RunningSluice::command(&path)
            .env("NOTIFY_SOCKET", &notify_path)
            .spawn()
            .unwrap(),
    );
    let mut buffer = [0u8; 512];
    let n = notify
        .recv(&mut buffer)
        .expect("no notification within 30 s");
    let ready = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(
        ready.starts_with("READY=1\n") && ready.contains("STATUS=forwarding with 1 workers"),
        "{ready}"
    );
    // READY=1 comes after the workers started polling, so the forwarding line is already in the log.
    sluice.wait_for("forwarding with 1 workers", Duration::from_secs(5));
    sluice.signal("TERM");
    let n = notify
        .recv(&mut buffer)
        .expect("no STOPPING=1 after SIGTERM");
    let stopping = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
    sluice.wait_for("stopping: SIGTERM received", Duration::from_secs(10));
    assert!(sluice.child.wait().unwrap().success());
}

#[test]
fn version_names_the_dpdk_library_and_the_build() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("sluice {}", env!("CARGO_PKG_VERSION")));
    assert!(lines[1].starts_with("DPDK "), "{text}");
    assert!(lines[2].starts_with("commit "), "{text}");
    assert!(lines[3].starts_with("rustc "), "{text}");
}

fn ctl(socket: &Path, command: &str) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// `promtool check metrics` on `body`; `None` when promtool is not installed.
fn promtool(body: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("promtool: {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

#[test]
fn metrics_name_backends_ports_pools_and_reloads_and_promtool_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    // 10.1.0.11 is checked on a listener that stays open, 10.1.0.12 on a closed port (down, inhibited).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = free_port();
    let socket = dir.path().join("ctl.sock");
    let metrics = free_port();
    let rest = format!(
        "[[service.backend]]\naddress = \"10.1.0.11\"\nweight = 3\n[service.backend.health_check]\ntype = \"tcp\"\n\
         connect_ip = \"127.0.0.1\"\nconnect_port = {open}\nconnect_timeout = 0.2\ndelay_loop = 0.1\n\
         [[service.backend]]\naddress = \"10.1.0.12\"\nweight = 2\n[service.backend.health_check]\ntype = \"tcp\"\n\
         connect_ip = \"127.0.0.1\"\nconnect_port = {closed}\nconnect_timeout = 0.2\ndelay_loop = 0.1\n\
         on_failure = \"inhibit\"\n\
         [control]\nsocket = \"{}\"\nmetrics = \"{metrics}\"\n",
        socket.display()
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(dir.path(), &rest)).unwrap();
    let mut sluice = RunningSluice::start(&path);
    sluice.wait_for(
        "health: service tcp://10.0.0.100:80 backend 10.1.0.12:80 (id 1): down (connect to 127.0.0.1",
        Duration::from_secs(20),
    );
    // One line per change, naming the service: no second line for the same change.
    sluice.wait_for("published after a health change", Duration::from_secs(5));
    assert_eq!(
        sluice.log.matches("10.1.0.12:80").count(),
        1,
        "{}",
        sluice.log
    );

    let answer = ctl(&socket, "reload");
    assert!(answer.starts_with("reload: generation"), "{answer}");
    let answer = ctl(&socket, "drain 10.1.0.11:80");
    assert!(answer.starts_with("drained 10.1.0.11:80"), "{answer}");
    sluice.wait_for(
        "ctl: drained 10.1.0.11:80 in 1 services",
        Duration::from_secs(5),
    );
    let answer = ctl(&socket, "set-weight 10.0.0.100:80 tcp 10.1.0.9:80 4");
    assert!(answer.starts_with("error:"), "{answer}");
    sluice.wait_for(
        "ctl: refused: 10.1.0.9:80 is not in tcp://10.0.0.100:80",
        Duration::from_secs(5),
    );

    // ctl list shows the weights the workers use: 0 for the inhibited backend and for the drained one.
    // (Columns: "->", backend, method, weight, ..., state.)
    let list = ctl(&socket, "list");
    let row = |backend: &str| -> Vec<String> {
        list.lines()
            .find(|line| line.contains(backend))
            .unwrap_or_else(|| panic!("no {backend} in:\n{list}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    for (backend, state) in [
        ("10.1.0.11:80", "drained"),
        ("10.1.0.12:80", "down-inhibited"),
    ] {
        let row = row(backend);
        assert_eq!(row[3], "0", "{list}");
        assert_eq!(row.last().unwrap(), state, "{list}");
    }

    let body = scrape(metrics);
    let service = "service=\"tcp://10.0.0.100:80\"";
    for expected in [
        format!(
            "sluice_build_info{{version=\"{}\",",
            env!("CARGO_PKG_VERSION")
        ),
        "sluice_config_reloads_total{result=\"applied\"} 1".into(),
        "sluice_config_reloads_total{result=\"refused\"} 0".into(),
        format!("sluice_backend_healthy{{{service},backend=\"10.1.0.11:80\",role=\"real\"}} 1"),
        format!("sluice_backend_healthy{{{service},backend=\"10.1.0.12:80\",role=\"real\"}} 0"),
        format!("sluice_backend_drained{{{service},backend=\"10.1.0.11:80\",role=\"real\"}} 1"),
        format!("sluice_backend_weight{{{service},backend=\"10.1.0.11:80\",role=\"real\"}} 3"),
        format!(
            "sluice_backend_effective_weight{{{service},backend=\"10.1.0.12:80\",role=\"real\"}} 0"
        ),
        format!("sluice_backend_in_table{{{service},backend=\"10.1.0.12:80\",role=\"real\"}} 1"),
        format!("sluice_backend_in_packets_total{{{service},backend=\"10.1.0.11:80\"}} 0"),
        "sluice_port_rx_packets_total{port=\"client\"} 0".into(),
        "sluice_port_rx_nombuf_total{port=\"backend\"} 0".into(),
        "sluice_mempool_buffers_in_use{pool=\"sluice\"} ".into(),
        "sluice_mempool_buffers_available{pool=\"sluice\"} ".into(),
    ] {
        assert!(body.contains(&expected), "no {expected:?} in:\n{body}");
    }
    assert!(!body.contains("bytes_in_total"), "{body}");
    assert!(body.contains("dpdk=\"DPDK "), "{body}");
    match promtool(&body) {
        Some((ok, report)) => assert!(ok, "promtool check metrics: {report}\n{body}"),
        None => eprintln!("promtool is not installed (scripts/setup.sh installs it): not checked"),
    }
    drop(listener);
}
