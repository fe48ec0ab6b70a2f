//! What an operator and a service manager see of a running sluice: systemd's READY=1 once the workers forward and
//! STOPPING=1 with the reason logged on SIGTERM; `--version` naming DPDK.

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn write_empty_pcap(path: &Path) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(65535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    std::fs::write(path, out).unwrap();
}

/// A two-port DR configuration on pcap vdevs with `rest` appended after the service.
fn config(dir: &Path, rest: &str) -> String {
    format!(
        r#"[eal]
args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry"]

[[port]]
name = "client"
device = "net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/c.pcap"
addresses = ["10.0.0.1/24"]

[[port]]
name = "backend"
device = "net_pcap1,rx_pcap={d}/empty.pcap,tx_pcap={d}/b.pcap"
addresses = ["10.1.0.1/24"]

[[service]]
vip = "10.0.0.100"
port = 80
mode = "dr"
{rest}
"#,
        d = dir.display()
    )
}

struct Sluice {
    child: Child,
    lines: Receiver<String>,
    log: String,
}

impl Sluice {
    fn start(config: &Path, notify: Option<&Path>) -> Sluice {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(socket) = notify {
            command.env("NOTIFY_SOCKET", socket);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Sluice {
            child,
            lines,
            log: String::new(),
        }
    }

    #[track_caller]
    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                    if line.contains(needle) {
                        return;
                    }
                }
                Err(_) => panic!("no {needle:?} within {within:?} in:\n{}", self.log),
            }
        }
    }

    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut sluice = Sluice::start(&path, Some(&notify_path));
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
    sluice.terminate();
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
