//! The kernel exception path through the real binary, the real EAL and a real `net_tap`, in two network
//! namespaces of its own: a node running sluice on a `net_af_packet` link, and a peer (a router) on the other end.
//! The node's kernel gets the port's MAC and address on its tap; TCP to the node's address on the BGP port reaches
//! a socket in the node's kernel, the kernel's own ARP and pings work through the port, the VIP is on the tap while
//! its service has a backend and off when it has none, and the tap goes when sluice stops or is killed.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::running_sluice::RunningSluice;

const NODE_ADDR: &str = "10.77.0.1";
const PEER_ADDR: &str = "10.77.0.254";
const VIP: &str = "10.77.0.100";
const VIP6: &str = "fd77::100";
const TAP: &str = "slc-up";

/// Two namespaces joined by a veth pair made inside them; removed on drop. A sluice started in them is dropped
/// (and so stopped) before its bed, as declared after it.
struct Bed {
    node: String,
    peer: String,
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let id = std::process::id();
        let bed = Bed {
            node: format!("slc-kp{tag}{id}n"),
            peer: format!("slc-kp{tag}{id}p"),
        };
        for ns in [&bed.node, &bed.peer] {
            ok(&["ip", "netns", "add", ns]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (node, peer) = (bed.node.as_str(), bed.peer.as_str());
        ok(&[
            "ip", "-n", node, "link", "add", "cxa", "type", "veth", "peer", "name", "cxb",
        ]);
        ok(&["ip", "-n", node, "link", "set", "cxb", "netns", peer]);
        ok(&["ip", "-n", node, "link", "set", "cxa", "up"]);
        ok(&["ip", "-n", peer, "link", "set", "cxb", "up"]);
        for (ns, dev) in [(node, "cxa"), (peer, "cxb")] {
            let _ = run(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "rx", "off",
            ]);
        }
        // sluice owns cxa through net_af_packet; the node's kernel must not answer on it for the addresses it has
        // on the tap (on a real NIC bound to DPDK there is no such kernel interface).
        ok(&[
            "ip",
            "netns",
            "exec",
            node,
            "sysctl",
            "-qw",
            "net.ipv4.conf.cxa.arp_ignore=8",
            "net.ipv4.conf.cxa.rp_filter=1",
            "net.ipv6.conf.cxa.disable_ipv6=1",
        ]);
        ok(&[
            "ip",
            "-n",
            peer,
            "addr",
            "add",
            &format!("{PEER_ADDR}/24"),
            "dev",
            "cxb",
        ]);
        bed
    }

    fn node(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["ip", "netns", "exec", self.node.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    fn peer(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["ip", "netns", "exec", self.peer.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    fn tap_addresses(&self) -> Option<String> {
        let out = self.node(&["ip", "-br", "addr", "show", "dev", TAP]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_sluice(&self, dir: &Path) -> RunningSluice {
        self.start_sluice_with(dir, "")
    }

    /// sluice with `network` added to its `[network]` table.
    fn start_sluice_with(&self, dir: &Path, network: &str) -> RunningSluice {
        let prefix = self.node.clone();
        let config = format!(
            r#"[eal]
args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry", "--file-prefix", "{prefix}"]
[[port]]
name = "up"
device = "net_af_packet0,iface=cxa"
addresses = ["{NODE_ADDR}/24", "fd77::1/64"]
kernel_interface = "{TAP}"
[workers]
cores = [{core}]
idle = "adaptive"
[network]
kernel_exception_path = true
{network}
[control]
socket = "{socket}"
metrics = "127.0.0.1:9100"
[[service]]
vip = "{VIP}"
port = 80
mode = "dr"
[[service.backend]]
address = "10.77.0.11"
[[service]]
vip = "{VIP6}"
port = 80
mode = "dr"
[[service.backend]]
address = "fd77::11"
"#,
            core = if num_cores() > 1 { 1 } else { 0 },
            socket = dir.join("ctl.sock").display()
        );
        let path = dir.join("node.toml");
        std::fs::write(&path, config).unwrap();
        // `ip netns exec` execs the program: the child is sluice itself, and its stdout and stderr are read.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node,
                env!("CARGO_BIN_EXE_sluice"),
                "run",
                "--config",
            ])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        RunningSluice::adopt(child)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for ns in [&self.node, &self.peer] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.node));
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Waits up to `limit` for `condition`; returns how long it took.
fn within(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn ctl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ctl", "--socket"])
        .arg(dir.join("ctl.sock"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Prometheus text from sluice's metrics endpoint in the node's namespace.
fn metrics(bed: &Bed) -> String {
    let out = bed.node(&[
        "python3",
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9100/metrics',timeout=5).read().decode())",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample named exactly `series` in `text`.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// A one-shot TCP echo server in the node's kernel on the BGP port, and a client in the peer that talks to it.
fn bgp_like_exchange(bed: &Bed) {
    let server = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{NODE_ADDR}',179))\ns.listen(1)\nprint('listening',flush=True)\ns.settimeout(10)\n\
         c,_=s.accept()\nd=c.recv(100)\nc.sendall(b'OPEN '+d)\nc.close()\n"
    );
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &bed.node, "python3", "-c", &server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(listener.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "listening");
    let client = format!(
        "import socket\ns=socket.create_connection(('{NODE_ADDR}',179),timeout=5)\ns.sendall(b'keepalive')\n\
         print(s.recv(100).decode())\n"
    );
    let out = bed.peer(&["python3", "-c", &client]);
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "OPEN keepalive"
    );
}

#[test]
fn the_node_talks_through_its_tap_and_the_vip_shares_fate_with_sluice() {
    let dir = tempfile::tempdir().unwrap();
    let bed = Bed::new("a");
    let mut sluice = bed.start_sluice(dir.path());
    sluice.wait_for(&format!("announced {VIP}"), Duration::from_secs(20));

    // The tap has the port's MAC and address, and the VIP as a /32.
    let addresses = bed.tap_addresses().expect("the tap exists");
    assert!(
        addresses.contains(&format!("{NODE_ADDR}/24")),
        "{addresses}"
    );
    assert!(addresses.contains(&format!("{VIP}/32")), "{addresses}");
    assert!(addresses.contains(&format!("{VIP6}/128")), "{addresses}");
    assert!(addresses.contains("fd77::1/64"), "{addresses}");
    let port_mac = ok(&["ip", "-n", &bed.node, "-br", "link", "show", "dev", "cxa"]);
    let tap_mac = ok(&["ip", "-n", &bed.node, "-br", "link", "show", "dev", TAP]);
    let mac_of = |line: &str| {
        line.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(mac_of(&port_mac), mac_of(&tap_mac));

    // Ping to the node's address (answered by sluice), TCP to the BGP port (the kernel's socket, through the
    // tap), and the kernel's own ping of its peer (its ARP request out, the answer copied back in).
    let ping = bed.peer(&["ping", "-c", "2", "-W", "2", NODE_ADDR]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    bgp_like_exchange(&bed);
    let ping = bed.node(&["ping", "-c", "2", "-W", "2", PEER_ADDR]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let neighbours =
        String::from_utf8_lossy(&bed.node(&["ip", "neigh", "show", "dev", TAP]).stdout)
            .into_owned();
    assert!(
        neighbours.contains(PEER_ADDR),
        "the kernel resolved its peer: {neighbours}"
    );

    // `ctl list` shows the digest of the service's Maglev table, to compare nodes at a glance.
    let list = ctl(dir.path(), &["list"]);
    let digest = list
        .split_whitespace()
        .skip_while(|word| *word != "maglev")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in {list}"));
    assert!(
        digest.len() == 16 && digest.chars().all(|c| c.is_ascii_hexdigit()),
        "{list}"
    );

    // The metrics show the exception path's traffic, the announced VIPs and the Maglev digest.
    let text = metrics(&bed);
    let announced = format!("sluice_vip_announced{{vip=\"{VIP}\"}}");
    assert_eq!(sample(&text, &announced), Some(1), "{text}");
    let to_kernel = "sluice_kernel_frames_total{worker=\"0\",direction=\"to_kernel\"}";
    assert!(sample(&text, to_kernel).unwrap_or(0) >= 3, "{text}");
    let from_kernel = "sluice_kernel_frames_total{worker=\"0\",direction=\"from_kernel\"}";
    assert!(sample(&text, from_kernel).unwrap_or(0) >= 3, "{text}");
    assert!(text.contains(&format!("digest=\"{digest}\"")), "{text}");

    // The service loses its only backend: the VIP comes off the tap; a backend again: it goes back.
    ctl(
        dir.path(),
        &[
            "remove-backend",
            &format!("{VIP}:80"),
            "tcp",
            "10.77.0.11:80",
        ],
    );
    let gone = within(Duration::from_secs(1), || {
        bed.tap_addresses()
            .is_some_and(|a| !a.contains(&format!("{VIP}/32")))
    });
    assert!(gone.is_some(), "the VIP stayed: {:?}", bed.tap_addresses());
    assert_eq!(sample(&metrics(&bed), &announced), Some(0));
    ctl(
        dir.path(),
        &["add-backend", &format!("{VIP}:80"), "tcp", "10.77.0.12:80"],
    );
    let back = within(Duration::from_secs(1), || {
        bed.tap_addresses()
            .is_some_and(|a| a.contains(&format!("{VIP}/32")))
    });
    assert!(
        back.is_some(),
        "the VIP did not come back: {:?}",
        bed.tap_addresses()
    );

    // The IPv6 service too: its VIP leaves while the IPv4 one stays.
    ctl(
        dir.path(),
        &[
            "remove-backend",
            &format!("[{VIP6}]:80"),
            "tcp",
            "[fd77::11]:80",
        ],
    );
    let gone = within(Duration::from_secs(1), || {
        bed.tap_addresses()
            .is_some_and(|a| !a.contains(&format!("{VIP6}/128")))
    });
    assert!(
        gone.is_some(),
        "the IPv6 VIP stayed: {:?}",
        bed.tap_addresses()
    );
    assert!(bed.tap_addresses().unwrap().contains(&format!("{VIP}/32")));

    // Killed outright, sluice takes the tap (and so the VIP and the node's address) with it.
    sluice.child.kill().unwrap();
    let removed = within(Duration::from_secs(1), || bed.tap_addresses().is_none());
    assert!(
        removed.is_some(),
        "the tap outlived sluice: {:?}",
        bed.tap_addresses()
    );
}

#[test]
fn a_clean_stop_withdraws_the_vip_and_counts_the_kernel_path() {
    let dir = tempfile::tempdir().unwrap();
    let bed = Bed::new("b");
    let mut sluice = bed.start_sluice(dir.path());
    sluice.wait_for(&format!("announced {VIP}"), Duration::from_secs(20));
    bgp_like_exchange(&bed);
    sluice.signal("TERM");
    // The withdrawal is logged on stderr and the counters printed on stdout: two pipes read by two threads
    // give no order between them, so both are looked for in the whole log once sluice has exited.
    let stopped = sluice.wait_exit(Duration::from_secs(20));
    assert!(stopped.status.success(), "{}", stopped.log);
    assert!(
        stopped.log.contains(&format!("stopping: withdrew {VIP}")),
        "{}",
        stopped.log
    );
    let counted = stopped
        .stdout
        .lines()
        .find(|line| line.contains("kernel path: to_kernel"))
        .unwrap_or_else(|| panic!("no kernel path counters in:\n{}", stopped.log))
        .to_string();
    let value = |name: &str| -> u64 {
        counted
            .split_whitespace()
            .skip_while(|word| *word != name)
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {counted}"))
    };
    assert!(
        value("to_kernel") >= 3,
        "the TCP exchange went to the kernel: {counted}"
    );
    assert!(value("copied") >= 1, "ARP was copied: {counted}");
    assert!(
        value("from_kernel") >= 3,
        "the kernel's answers went out: {counted}"
    );
    assert_eq!(value("from_kernel_dropped"), 0, "{counted}");
    assert!(
        bed.tap_addresses().is_none(),
        "the tap is gone after a clean stop"
    );
}

#[test]
fn check_warns_about_services_that_hold_per_node_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(
        &path,
        r#"[[port]]
name = "lan"
device = "net_null0"
addresses = ["10.0.0.1/24"]
[network]
kernel_exception_path = true
[[service]]
vip = "10.0.0.100"
port = 80
mode = "dr"
[[service.backend]]
address = "10.0.0.11"
[[service]]
vip = "10.0.0.101"
port = 80
mode = "nat"
scheduler = "rr"
[[service.backend]]
address = "10.0.0.12"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("only mh services"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("10.0.0.101:80"), "{text}");
    assert!(
        warnings[0].contains("scheduler rr") && warnings[0].contains("NAT"),
        "{text}"
    );
}

#[test]
fn virtio_user_kernel_interfaces_need_vhost_net() {
    let dir = tempfile::tempdir().unwrap();
    let bed = Bed::new("c");
    let mut sluice = bed.start_sluice_with(dir.path(), "kernel_device = \"virtio_user\"");
    if Path::new("/dev/vhost-net").exists() {
        // Where vhost-net exists, the kernel interface is a virtio_user one, and the node's traffic goes through it.
        sluice.wait_for(&format!("announced {VIP}"), Duration::from_secs(20));
        assert!(bed
            .tap_addresses()
            .is_some_and(|a| a.contains(&format!("{NODE_ADDR}/24"))));
        bgp_like_exchange(&bed);
    } else {
        sluice.wait_for("needs /dev/vhost-net", Duration::from_secs(20));
        let stopped = sluice.wait_exit(Duration::from_secs(20));
        assert!(!stopped.status.success(), "{}", stopped.log);
        assert!(bed.tap_addresses().is_none());
    }
}
