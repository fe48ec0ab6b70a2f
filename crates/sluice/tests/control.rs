//! The control thread through the real binary: SIGHUP reloads (a broken file is refused and the running
//! configuration stays; a good one is applied and adopted by the workers), and a failing health check takes its
//! backend out of the table.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::running_sluice::RunningSluice;
use common::{dr_service_on_two_pcap_ports, write_empty_pcap};

/// A two-port DR configuration on pcap vdevs with `backends` appended after the service.
fn config(dir: &Path, backends: &str) -> String {
    dr_service_on_two_pcap_ports(dir, backends)
}

const TWO_BACKENDS: &str =
    "[[service.backend]]\naddress = \"10.1.0.11\"\n[[service.backend]]\naddress = \"10.1.0.12\"\n";

#[test]
fn sighup_reload_refuses_a_broken_file_and_applies_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(dir.path(), TWO_BACKENDS)).unwrap();
    let mut sluice = RunningSluice::start_with_stdout(&path);
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(20));
    std::fs::write(
        &path,
        config(
            dir.path(),
            "[[service.backend]]\naddress = \"10.1.0.11\"\nweight = -3\n",
        ),
    )
    .unwrap();
    sluice.signal("HUP");
    sluice.wait_for(
        "reload refused, the running configuration stays",
        Duration::from_secs(20),
    );
    assert!(
        sluice.log.contains("sluice.toml:20") && sluice.log.contains("weight"),
        "{}",
        sluice.log
    );
    let three = format!("{TWO_BACKENDS}[[service.backend]]\naddress = \"10.1.0.13\"\n");
    std::fs::write(&path, config(dir.path(), &three)).unwrap();
    sluice.signal("HUP");
    sluice.wait_for(
        "reload: generation 2 with 1 services in use after",
        Duration::from_secs(20),
    );
    // SIGTERM stops it cleanly.
    let stopped = sluice.terminate();
    assert!(stopped.status.success(), "{}", stopped.log);
    assert!(
        stopped.stdout.contains("mempool: 0 buffers in use"),
        "{}",
        stopped.stdout
    );
}

#[test]
fn health_checks_take_backends_out_and_back() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    // Backend 10.1.0.11 is checked on a listener this test opens, closes and reopens; 10.1.0.12 on a closed port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backends = format!(
        "[[service.backend]]\naddress = \"10.1.0.11\"\n[service.backend.health_check]\ntype = \"tcp\"\nconnect_ip = \"127.0.0.1\"\n\
         connect_port = {port}\nconnect_timeout = 0.2\ndelay_loop = 0.1\nretry = 2\ndelay_before_retry = 0.05\n\
         [[service.backend]]\naddress = \"10.1.0.12\"\n[service.backend.health_check]\ntype = \"http\"\nconnect_ip = \"127.0.0.1\"\n\
         connect_port = {closed}\nconnect_timeout = 0.2\ndelay_loop = 0.1\non_failure = \"inhibit\"\n"
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(dir.path(), &backends)).unwrap();
    let mut sluice = RunningSluice::start_with_stdout(&path);
    sluice.wait_for("health checks: 2 backends", Duration::from_secs(20));
    sluice.wait_for("(id 1): down", Duration::from_secs(20));
    assert!(!sluice.log.contains("(id 0): down"), "{}", sluice.log);
    drop(listener);
    sluice.wait_for("(id 0): down", Duration::from_secs(20));
    assert!(
        sluice.log.contains("2 consecutive failures"),
        "{}",
        sluice.log
    );
    let _reopened = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    sluice.wait_for("(id 0): up", Duration::from_secs(20));
    assert!(
        sluice
            .log
            .contains("published after a health change, in use after"),
        "{}",
        sluice.log
    );
    let stopped = sluice.terminate();
    assert!(stopped.status.success(), "{}", stopped.log);
}

fn ctl(socket: &Path, command: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(command)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn ctl_and_metrics_through_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let traffic = dir.path().join("traffic.pcap");
    let generated = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["generate", "--out"])
        .arg(&traffic)
        .args([
            "--flows",
            "50",
            "--frames",
            "500",
            "--client",
            "198.51.100.1",
        ])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let socket = dir.path().join("ctl.sock");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backends = "[[service.backend]]\naddress = \"10.1.0.11\"\nmac = \"02:be:00:00:00:0b\"\n\
                    [[service.backend]]\naddress = \"10.1.0.12\"\nmac = \"02:be:00:00:00:0c\"\n";
    // The client port answers to the MAC `sluice generate` sends to by default.
    let text = config(dir.path(), backends)
        .replace(
            &format!("net_pcap0,rx_pcap={}/empty.pcap", dir.path().display()),
            &format!("net_pcap0,rx_pcap={}", traffic.display()),
        )
        .replacen(
            "addresses = [\"10.0.0.1/24\"]\n",
            "addresses = [\"10.0.0.1/24\"]\nmac = \"02:00:00:00:00:01\"\n",
            1,
        )
        + &format!(
            "[control]\nsocket = \"{}\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n",
            socket.display()
        );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &text).unwrap();
    let mut sluice = RunningSluice::start_with_stdout(&path);
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(20));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (ok, list) = ctl(&socket, &["list"]);
    assert!(ok, "{list}");
    assert!(
        list.contains("TCP  10.0.0.100:80 mh")
            && list.contains("10.1.0.11:80")
            && list.contains("Route"),
        "{list}"
    );
    // All 500 frames are in before the counters are read.
    let mut stats = String::new();
    for _ in 0..100 {
        stats = ctl(&socket, &["stats"]).1;
        if stats.contains("     50      500") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        stats.contains("TCP  10.0.0.100:80") && stats.contains("     50      500"),
        "{stats}"
    );
    // ipvsadm -L --timeout and --set (0 leaves one as it is), validated as the file's values.
    assert!(ctl(&socket, &["timeout"])
        .1
        .starts_with("Timeout (tcp tcpfin udp): 900 120 300"));
    let (ok, set) = ctl(&socket, &["set-timeout", "600", "0", "60"]);
    assert!(
        ok && set.contains("timeouts (tcp tcpfin udp) now 600 120 60"),
        "{set}"
    );
    assert!(ctl(&socket, &["timeout"])
        .1
        .starts_with("Timeout (tcp tcpfin udp): 600 120 60"));
    // As with IPVS, a connection takes the new timeouts at its next packet: with no frame since, the established
    // ones keep the expiry their last packet gave them (900 s then), beyond the new 600 s.
    let listing = ctl(&socket, &["connections"]).1;
    let established: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(" ESTABLISHED "))
        .collect();
    assert!(!established.is_empty(), "{listing}");
    for row in established {
        let expiry = row.split_whitespace().nth(1).unwrap();
        let (minutes, seconds) = expiry.split_once(':').unwrap();
        let left = minutes.parse::<u64>().unwrap() * 60 + seconds.parse::<u64>().unwrap();
        assert!(left > 600, "{row}");
    }
    assert!(ctl(&socket, &["save"])
        .1
        .contains("tcp_established = 600\n"));
    let (ok, refused) = ctl(&socket, &["set-timeout", "99999999999", "0", "0"]);
    assert!(!ok && refused.contains("tcp_established"), "{refused}");
    // ipvsadm -Z: stats count from now; the metrics' counters do not go back.
    let (ok, zeroed) = ctl(&socket, &["zero"]);
    assert!(ok && zeroed.contains("statistics zeroed"), "{zeroed}");
    let stats = ctl(&socket, &["stats"]).1;
    assert!(
        stats.contains(
            "TCP  10.0.0.100:80                         0        0        0        0        0"
        ),
        "{stats}"
    );
    // Rates over a fixed 2 s window, in ipvsadm's columns (bytes, not bits).
    let mut rate = ctl(&socket, &["rate"]).1;
    for _ in 0..60 {
        if !rate.starts_with("no complete window") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        rate = ctl(&socket, &["rate"]).1;
    }
    assert!(
        rate.contains("CPS    InPPS   OutPPS    InBPS   OutBPS") && rate.contains(" s ending "),
        "{rate}"
    );
    assert!(ctl(&socket, &["conns"]).1.contains("total: 50 connections"));
    let (ok, trace) = ctl(&socket, &["trace", "198.51.100.1:10000", "10.0.0.100:80"]);
    assert!(
        ok && trace.contains("Maglev slot") && trace.contains("-> backend 10.1.0.1"),
        "{trace}"
    );
    // The generator's first flow (client 198.51.100.1, port 10000) is in worker 0's table, on the Maglev backend.
    assert!(
        trace.contains("worker 0: connection entry -> 10.1.0.1"),
        "{trace}"
    );
    // ipvsadm -Ln: ActiveConn and InActConn of the backends add up to the 50 connections.
    let (_, list) = ctl(&socket, &["list"]);
    assert!(
        list.contains("Forward Weight ActiveConn InActConn State"),
        "{list}"
    );
    let held: u64 = list
        .lines()
        .filter(|line| line.starts_with("  -> 10."))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[4].parse::<u64>().unwrap() + fields[5].parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(held, 50, "{list}");
    // ipvsadm -Lnc: the generator's first flow is listed with its state, expiry and three endpoints.
    let (ok, listing) = ctl(&socket, &["connections"]);
    assert!(
        ok && listing.starts_with("IPVS connection entries"),
        "{listing}"
    );
    let row = listing
        .lines()
        .find(|line| line.contains("198.51.100.1:10000 "))
        .unwrap_or_else(|| panic!("the first flow is not listed:\n{listing}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[0], "TCP", "{row}");
    assert!(
        fields[1].len() == 5 && fields[1].as_bytes()[2] == b':',
        "expiry as MM:SS: {row}"
    );
    assert!(
        ["ESTABLISHED", "SYN_RECV", "NONE"].contains(&fields[2]),
        "{row}"
    );
    assert_eq!(fields[4], "10.0.0.100:80", "{row}");
    assert!(fields[5].starts_with("10.1.0.1"), "{row}");
    assert_eq!(listing.lines().count(), 2 + 50, "{listing}");
    // Paged and filtered.
    let (_, page) = ctl(&socket, &["connections", "limit", "10", "offset", "45"]);
    assert_eq!(page.lines().count(), 2 + 5, "{page}");
    let (_, first) = ctl(&socket, &["connections", "limit", "10"]);
    assert!(
        first.contains("10 shown; more: connections ... offset 10"),
        "{first}"
    );
    let backend = fields[5];
    let (_, one_backend) = ctl(&socket, &["connections", "backend", backend]);
    assert!(
        one_backend
            .lines()
            .skip(2)
            .all(|line| line.ends_with(backend)),
        "{one_backend}"
    );
    let (_, other_service) = ctl(&socket, &["connections", "service", "10.0.0.100:81", "tcp"]);
    assert_eq!(other_service.lines().count(), 2, "{other_service}");
    let (ok, refused) = ctl(&socket, &["connections", "limit", "0"]);
    assert!(!ok && refused.contains("limit 1 to"), "{refused}");
    let (ok, mixed) = ctl(&socket, &["trace", "[2001:db8::1]:999", "10.0.0.100:80"]);
    assert!(
        !ok && mixed.contains("different address families"),
        "{mixed}"
    );
    let (ok, untracked) = ctl(&socket, &["trace", "198.51.100.1:999", "10.0.0.100:80"]);
    assert!(
        ok && untracked.contains("no worker holds a connection entry"),
        "{untracked}"
    );
    let (ok, drained) = ctl(&socket, &["drain", "10.1.0.11:80"]);
    assert!(
        ok && drained.contains("drained 10.1.0.11:80 in 1 services: generation "),
        "{drained}"
    );
    let list = ctl(&socket, &["list"]).1;
    let drained_row: Vec<&str> = list
        .lines()
        .find(|line| line.contains("10.1.0.11:80"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!((drained_row[3], drained_row[6]), ("0", "drained"), "{list}");
    // Drained: no new flow goes to it, and the connections it had stay on it.
    for port in 20000..20040 {
        let (_, trace) = ctl(
            &socket,
            &["trace", &format!("198.51.100.200:{port}"), "10.0.0.100:80"],
        );
        assert!(
            trace.contains("-> backend 10.1.0.12:80") && !trace.contains("-> backend 10.1.0.11"),
            "{trace}"
        );
    }
    let (_, kept) = ctl(&socket, &["connections", "backend", "10.1.0.11:80"]);
    assert!(
        kept.lines().count() > 2,
        "the drained backend's connections went:\n{kept}"
    );
    let (ok, _) = ctl(&socket, &["drain", "10.9.9.9:80"]);
    assert!(!ok, "an unknown backend is refused");
    // ipvsadm's edits on the running configuration.
    let (ok, added) = ctl(
        &socket,
        &["add-backend", "10.0.0.100:80", "tcp", "10.1.0.13:80", "3"],
    );
    assert!(
        ok && added.contains("added 10.1.0.13:80 to tcp://10.0.0.100:80 with weight 3"),
        "{added}"
    );
    assert!(ctl(&socket, &["list"]).1.contains("10.1.0.13:80"));
    // ipvsadm -S: the running configuration, edits included, as a file `sluice check` accepts.
    let (ok, saved) = ctl(&socket, &["save"]);
    assert!(
        ok && saved.contains("address = \"10.1.0.13\"\nport = 80\nweight = 3"),
        "{saved}"
    );
    let saved_path = dir.path().join("saved.toml");
    std::fs::write(&saved_path, &saved).unwrap();
    let checked = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&saved_path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // An edit gets the file's validation: a backend that is the VIP is refused as in a file.
    let (ok, refused) = ctl(
        &socket,
        &["add-backend", "10.0.0.100:80", "tcp", "10.0.0.100:80"],
    );
    assert!(
        !ok && refused
            .contains("service vip: 10.0.0.100 is a backend of service tcp://10.0.0.100:80"),
        "{refused}"
    );
    let (ok, refused) = ctl(
        &socket,
        &["add-backend", "10.0.0.100:80", "tcp", "10.1.0.14:8080"],
    );
    assert!(!ok && refused.contains("cannot map ports"), "{refused}");
    let (ok, refused) = ctl(
        &socket,
        &["add-backend", "10.0.0.100:80", "tcp", "[fd01::1]:80"],
    );
    assert!(!ok && refused.contains("nothing changed"), "{refused}");
    assert!(
        ctl(
            &socket,
            &["set-weight", "10.0.0.100:80", "tcp", "10.1.0.13:80", "5"]
        )
        .0
    );
    assert!(ctl(&socket, &["list"])
        .1
        .contains("10.1.0.13:80                Route   5      0          0         up"));
    assert!(
        ctl(
            &socket,
            &["remove-backend", "10.0.0.100:80", "tcp", "10.1.0.13:80"]
        )
        .0
    );
    assert!(!ctl(&socket, &["list"]).1.contains("10.1.0.13:80"));
    let (ok, added) = ctl(
        &socket,
        &["add-service", "10.0.0.101:53", "udp", "dr", "wrr"],
    );
    assert!(
        ok && added.contains("added service udp://10.0.0.101:53"),
        "{added}"
    );
    assert!(ctl(&socket, &["list"]).1.contains("UDP  10.0.0.101:53 wrr"));
    assert!(ctl(&socket, &["remove-service", "10.0.0.101:53", "udp"]).0);
    assert!(!ctl(&socket, &["remove-service", "10.0.0.101:53", "udp"]).0);
    let (ok, reloaded) = ctl(&socket, &["reload"]);
    assert!(ok && reloaded.contains("reload: generation"), "{reloaded}");

    let mut scrape = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    std::io::Write::write_all(&mut scrape, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut scrape, &mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(
        body.contains("sluice_worker_rx_packets_total{worker=\"0\"} 500"),
        "{body}"
    );
    assert!(body.contains(
        "sluice_backend_in_packets_total{service=\"tcp://10.0.0.100:80\",backend=\"10.1.0.11:80\"}"
    ));
    assert!(body.contains("sluice_worker_drops_total{worker=\"0\",reason=\"malformed\"} 0"));

    let stopped = sluice.terminate();
    assert!(stopped.status.success());
    assert!(stopped.stdout.contains("mempool: 0 buffers in use"));
    assert!(!socket.exists(), "the control socket is removed at exit");
}

/// `ctl save` keeps drains: a drained backend is saved as `drained = true`, a reload of the saved file keeps it
/// drained (weight 0, state drained, no new flow) with its weight for `undrain` to restore, and the saved file says
/// what it does not keep (comments).
#[test]
fn save_keeps_drains_through_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    write_empty_pcap(&dir.path().join("empty.pcap"));
    let socket = dir.path().join("ctl.sock");
    let backends = "# the web tier\n[[service.backend]]\naddress = \"10.1.0.11\"\nweight = 3\n\
                    [[service.backend]]\naddress = \"10.1.0.12\"\n";
    let text =
        config(dir.path(), backends) + &format!("[control]\nsocket = \"{}\"\n", socket.display());
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, &text).unwrap();
    let mut sluice = RunningSluice::start(&path);
    sluice.wait_for("SIGHUP reloads", Duration::from_secs(20));
    let row = |list: &str, backend: &str| -> Vec<String> {
        list.lines()
            .find(|line| line.contains(backend))
            .unwrap_or_else(|| panic!("no {backend} in {list}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };

    assert!(ctl(&socket, &["drain", "10.1.0.11:80"]).0);
    let (ok, saved) = ctl(&socket, &["save"]);
    assert!(ok, "{saved}");
    assert!(
        saved.contains("address = \"10.1.0.11\"\nport = 80\nweight = 3\ndrained = true\n"),
        "{saved}"
    );
    assert!(
        !saved.contains("the web tier") && saved.contains("Not kept: the comments"),
        "{saved}"
    );
    assert_eq!(saved.matches("drained = true").count(), 1, "{saved}");
    // The saved file replaces the original and is reloaded: the drain holds.
    std::fs::write(&path, &saved).unwrap();
    let (ok, reloaded) = ctl(&socket, &["reload"]);
    assert!(ok, "{reloaded}");
    let list = ctl(&socket, &["list"]).1;
    let drained = row(&list, "10.1.0.11:80");
    assert_eq!(
        (drained[3].as_str(), drained[6].as_str()),
        ("0", "drained"),
        "{list}"
    );
    for port in 20000..20020 {
        let (_, trace) = ctl(
            &socket,
            &["trace", &format!("198.51.100.200:{port}"), "10.0.0.100:80"],
        );
        assert!(trace.contains("-> backend 10.1.0.12:80"), "{trace}");
    }
    // Undrained, it has its weight back; saved again, it is no longer marked.
    assert!(ctl(&socket, &["undrain", "10.1.0.11:80"]).0);
    let list = ctl(&socket, &["list"]).1;
    let undrained = row(&list, "10.1.0.11:80");
    assert_eq!(
        (undrained[3].as_str(), undrained[6].as_str()),
        ("3", "up"),
        "{list}"
    );
    assert!(!ctl(&socket, &["save"]).1.contains("drained = true"));

    assert!(sluice.terminate().status.success());
}
