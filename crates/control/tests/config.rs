//! The example files parse, and each kind of mistake is an error naming the line and the field.

use std::path::Path;

use balancer::service::{ForwardingMode, SchedulerKind};
use control::config::{BackendIdRegistry, Config};
use proptest::prelude::*;

fn examples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_validates() {
    let files = examples();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.ports.is_empty());
        let macs = vec![[2, 0, 0, 0, 0, 1]; config.ports.len()];
        let spec = config
            .snapshot_spec(&macs, &mut BackendIdRegistry::new())
            .unwrap();
        balancer::snapshot::Snapshot::build(&spec, 1)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

const BASE: &str = r#"[[port]]
name = "a"
device = "net_ring0"
addresses = ["10.0.0.1/24", "fd00::1/64"]
"#;

fn error_of(text: &str) -> String {
    Config::parse(text, "test.toml").unwrap_err().to_string()
}

#[track_caller]
fn assert_error(text: &str, line: usize, needles: &[&str]) {
    let error = error_of(text);
    assert!(error.starts_with(&format!("test.toml:{line}:")), "{error}");
    for needle in needles {
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    }
}

#[test]
fn mistakes_name_the_line_and_the_field() {
    assert_error(&format!("{BASE}bogus = 1\n"), 5, &["bogus"]);
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"direct\"\n"),
        8,
        &["mode", "dr, nat, fullnat or tun"],
    );
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\nscheduler = \"fastest\"\n"),
        9,
        &["scheduler", "wlc"],
    );
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.300\"\nport = 80\nmode = \"dr\"\n"),
        6,
        &["vip", "10.0.0.300"],
    );
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n[[service.backend]]\naddress = \"fd00::5\"\n"),
        10,
        &["family"],
    );
    assert_error(
        &format!(
            "{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n[[service.backend]]\naddress = \"10.0.0.5\"\nport = 8080\n"
        ),
        11,
        &["backend port", "cannot map ports"],
    );
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 0\nmode = \"nat\"\n"),
        7,
        &["port 0"],
    );
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"fullnat\"\n"),
        8,
        &["local_addresses"],
    );
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"fd00::100\"\nport = 80\nmode = \"tun\"\n"),
        8,
        &["tunnel_source_v6"],
    );
    assert_error(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n[[service.backend]]\naddress = \"10.0.0.5\"\nweight = 70000\n"),
        11,
        &["weight", "65535"],
    );
    assert_error(&format!("{BASE}[workers]\ncores = [1, 1]\n"), 6, &["cores"]);
    assert_error(
        &format!("{BASE}[network]\nmaglev_table_size = 1000\n"),
        6,
        &["maglev_table_size"],
    );
    assert_error(
        &format!("{BASE}[pipe]\nfrom = \"a\"\nto = \"z\"\n"),
        5,
        &["\"z\""],
    );
    let duplicate = format!(
        "{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n"
    );
    assert!(error_of(&duplicate).contains("configured twice"));
    assert!(error_of(BASE).contains("nothing to do"));
}

#[test]
fn defaults_apply() {
    let config = Config::parse(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"nat\"\n[[service.backend]]\naddress = \"10.0.0.5\"\n"),
        "test.toml",
    )
    .unwrap();
    let service = &config.services[0];
    assert_eq!(service.scheduler, SchedulerKind::Mh);
    assert_eq!(service.mode, ForwardingMode::Nat);
    assert_eq!(service.backends[0].port, 80);
    assert_eq!(service.backends[0].weight, 1);
    assert_eq!(config.workers.cores, vec![0]);
    assert_eq!(config.network.maglev_table_size.get(), 65537);
    assert_eq!(config.network.timeouts.established, 900_000);
    assert_eq!(config.network.local_port_range, (1024, 65535));
}

#[test]
fn backend_ids_survive_reloads() {
    let text = |backends: &[&str]| {
        let mut text =
            format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n");
        for backend in backends {
            text.push_str(&format!("[[service.backend]]\naddress = \"{backend}\"\n"));
        }
        text
    };
    let mut registry = BackendIdRegistry::new();
    let macs = [[0u8; 6]];
    let ids = |spec: &balancer::snapshot::SnapshotSpec| -> Vec<(std::net::IpAddr, u32)> {
        spec.services[0]
            .backends
            .iter()
            .map(|b| (b.addr, b.id.0))
            .collect()
    };
    let first = Config::parse(&text(&["10.0.0.5", "10.0.0.6"]), "a").unwrap();
    let before = ids(&first.snapshot_spec(&macs, &mut registry).unwrap());
    let second = Config::parse(&text(&["10.0.0.6", "10.0.0.7"]), "a").unwrap();
    let after = ids(&second.snapshot_spec(&macs, &mut registry).unwrap());
    let id_of = |list: &[(std::net::IpAddr, u32)], addr: &str| {
        list.iter()
            .find(|(a, _)| *a == addr.parse::<std::net::IpAddr>().unwrap())
            .unwrap()
            .1
    };
    assert_eq!(
        id_of(&before, "10.0.0.6"),
        id_of(&after, "10.0.0.6"),
        "kept backend keeps its id"
    );
    let new = id_of(&after, "10.0.0.7");
    assert!(
        new != id_of(&before, "10.0.0.5") && new != id_of(&before, "10.0.0.6"),
        "removed ids are not reused"
    );
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = Config::parse(&text, "fuzz.toml");
    }

    #[test]
    fn arbitrary_values_in_a_valid_shape_never_panic(vip in "\\PC{0,20}", port in any::<i64>(), weight in any::<i64>(), mode in "[a-z]{0,8}") {
        let text = format!("{BASE}[[service]]\nvip = {vip:?}\nport = {port}\nmode = {mode:?}\n[[service.backend]]\naddress = \"10.0.0.5\"\nweight = {weight}\n");
        let _ = Config::parse(&text, "fuzz.toml");
    }
}

const SERVICE: &str = "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\n";

#[test]
fn the_kernel_exception_path_names_one_interface_per_port() {
    let text = format!("{BASE}[network]\nkernel_exception_path = true\n{SERVICE}");
    let config = Config::parse(&text, "ok.toml").unwrap();
    assert!(config.network.kernel_exception_path);
    assert_eq!(config.ports[0].kernel_interface, "sl-a");
    let named = BASE.replace(
        "device = \"net_ring0\"",
        "device = \"net_ring0\"\nkernel_interface = \"exc0\"",
    );
    assert_eq!(
        Config::parse(&format!("{named}{SERVICE}"), "ok.toml")
            .unwrap()
            .ports[0]
            .kernel_interface,
        "exc0"
    );
    // A long port name is cut to the 15 bytes Linux allows.
    let long = BASE.replace("name = \"a\"", "name = \"a-very-long-port-name\"");
    assert_eq!(
        Config::parse(&format!("{long}{SERVICE}"), "ok.toml")
            .unwrap()
            .ports[0]
            .kernel_interface,
        "sl-a-very-long-"
    );
    let bad = BASE.replace(
        "device = \"net_ring0\"",
        "device = \"net_ring0\"\nkernel_interface = \"no/slash\"",
    );
    assert_error(&bad, 4, &["kernel_interface", "no/slash"]);
    let twice = format!(
        "{BASE}kernel_interface = \"x\"\n[[port]]\nname = \"b\"\ndevice = \"net_ring1\"\nkernel_interface = \"x\"\n"
    );
    assert_error(&twice, 7, &["kernel_interface", "two ports"]);
}

#[test]
fn the_kernel_device_is_tap_or_virtio_user() {
    use control::config::KernelDevice;
    let parse = |extra: &str| {
        Config::parse(
            &format!("{BASE}[network]\nkernel_exception_path = true\n{extra}{SERVICE}"),
            "ok.toml",
        )
    };
    assert_eq!(parse("").unwrap().network.kernel_device, KernelDevice::Tap);
    assert_eq!(
        parse("kernel_device = \"virtio_user\"\n")
            .unwrap()
            .network
            .kernel_device,
        KernelDevice::VirtioUser
    );
    assert_error(
        &format!("{BASE}[network]\nkernel_device = \"vhost\"\n"),
        6,
        &["kernel_device", "virtio_user"],
    );
}

#[test]
fn the_idle_mode_is_poll_or_adaptive() {
    let config = Config::parse(&format!("{BASE}{SERVICE}"), "ok.toml").unwrap();
    assert_eq!(config.workers.idle.mode, control::config::IdleMode::Poll);
    let adaptive = format!(
        "{BASE}[workers]\nidle = \"adaptive\"\nidle_polls = 10\nidle_sleep_us = 50\n{SERVICE}"
    );
    let idle = Config::parse(&adaptive, "ok.toml").unwrap().workers.idle;
    assert_eq!(
        (idle.mode, idle.polls, idle.sleep_us),
        (control::config::IdleMode::Adaptive, 10, 50)
    );
    assert_error(
        &format!("{BASE}[workers]\nidle = \"nap\"\n"),
        6,
        &["idle", "adaptive"],
    );
    assert_error(
        &format!("{BASE}[workers]\nidle = \"adaptive\"\nidle_sleep_us = 0\n"),
        7,
        &["idle_sleep_us", "1 to 10000"],
    );
    assert_error(
        &format!("{BASE}[workers]\nidle_polls = 5\n"),
        6,
        &["only apply"],
    );
}

#[test]
fn overload_bursts_defaults_to_16_and_is_bounded() {
    let config = Config::parse(&format!("{BASE}{SERVICE}"), "ok.toml").unwrap();
    assert_eq!(config.workers.overload_bursts, 16);
    let never = format!("{BASE}[workers]\noverload_bursts = 0\n{SERVICE}");
    assert_eq!(
        Config::parse(&never, "ok.toml")
            .unwrap()
            .workers
            .overload_bursts,
        0
    );
    assert_error(
        &format!("{BASE}[workers]\noverload_bursts = 257\n"),
        6,
        &["overload_bursts", "0 (never shed) to 256"],
    );
}

/// A service whose one backend has a health check with `settings` (one per line, after the type).
fn with_check(settings: &str) -> String {
    format!(
        "{BASE}{SERVICE}[[service.backend]]\naddress = \"10.0.0.5\"\n[service.backend.health_check]\ntype = \"http\"\n{settings}\n"
    )
}

#[test]
fn every_value_is_checked_against_its_range() {
    // The values that used to reach Duration::from_secs_f64 and abort sluice.
    for (setting, needle) in [
        ("delay_loop = 1e30", "delay_loop"),
        ("delay_loop = 0", "delay_loop"),
        ("delay_loop = -1", "delay_loop"),
        ("delay_loop = inf", "delay_loop"),
        ("delay_loop = nan", "delay_loop"),
        ("connect_timeout = 1e30", "connect_timeout"),
        ("connect_timeout = 0", "connect_timeout"),
        ("connect_timeout = 3601", "connect_timeout"),
        ("delay_before_retry = 1e30", "delay_before_retry"),
        ("delay_before_retry = -0.5", "delay_before_retry"),
        ("retry = 0", "retry"),
        ("retry = 101", "retry"),
        ("connect_port = 0", "connect_port"),
        ("status = 99", "status"),
        ("status = 600", "status"),
        ("path = \"health\"", "path"),
        ("path = \"/a b\"", "path"),
        ("path = \"/a\\r\\nX: y\"", "path"),
    ] {
        let error = error_of(&with_check(setting));
        assert!(
            error.starts_with("test.toml:11:") && error.contains(needle),
            "{setting}: {error}"
        );
    }
    let accepted = Config::parse(
        &with_check(
            "delay_loop = 0.01\nconnect_timeout = 3600\ndelay_before_retry = 0\nretry = 100",
        ),
        "ok.toml",
    )
    .unwrap();
    let check = accepted.services[0].backends[0].health_checks[0].clone();
    assert_eq!(check.delay_loop, std::time::Duration::from_millis(10));
    assert_eq!(check.connect_timeout, std::time::Duration::from_secs(3600));

    for (text, line, needles) in [
        (format!("{BASE}{SERVICE}[network.timeouts]\ntcp_established = 0\n"), 10, &["tcp_established", "1 to"][..]),
        (format!("{BASE}{SERVICE}[network.timeouts]\nudp = 18446744073709551615\n"), 10, &["udp"][..]),
        (
            format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\npersistence_timeout = 9999999999\n"),
            9,
            &["persistence_timeout"][..],
        ),
        (format!("{BASE}rx_descriptors = 0\n{SERVICE}"), 5, &["rx_descriptors"][..]),
        (format!("{BASE}tx_descriptors = 65535\n{SERVICE}"), 5, &["tx_descriptors"][..]),
        (format!("{BASE}{SERVICE}[workers]\nmempool_size = 0\n"), 10, &["mempool_size"][..]),
        (format!("{BASE}{SERVICE}[workers]\ncores = [4096]\n"), 10, &["cores", "4096"][..]),
        (format!("{BASE}{SERVICE}[control]\nmetrics = \"nowhere\"\n"), 10, &["metrics"][..]),
        (format!("{BASE}{SERVICE}[control]\nmetrics = \"127.0.0.1:99999\"\n"), 10, &["metrics"][..]),
        (format!("{BASE}{SERVICE}[control]\nsocket = \"\"\n"), 10, &["socket"][..]),
        (format!("{BASE}{SERVICE}[control]\nsocket = \"/{}\"\n", "s".repeat(200)), 10, &["socket"][..]),
    ] {
        assert_error(&text, line, needles);
    }
}

#[test]
fn metrics_default_to_loopback_and_wildcards_are_warned_about() {
    let config = Config::parse(
        &format!("{BASE}{SERVICE}[control]\nmetrics = \"9100\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        config.control.metrics,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert!(
        !config.warnings.iter().any(|w| w.contains("metrics")),
        "{:?}",
        config.warnings
    );
    for wildcard in ["0.0.0.0:9100", "[::]:9100"] {
        let config = Config::parse(
            &format!("{BASE}{SERVICE}[control]\nmetrics = \"{wildcard}\"\n"),
            "t.toml",
        )
        .unwrap();
        assert!(
            config.warnings.iter().any(|w| w.contains("wildcard")),
            "{wildcard}: {:?}",
            config.warnings
        );
    }
    let config = Config::parse(
        &format!("{BASE}[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"dr\"\npersistence_netmask = 24\n"),
        "t.toml",
    )
    .unwrap();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("persistence_netmask")),
        "{:?}",
        config.warnings
    );
}

proptest! {
    /// Any number in any health-check duration, and any integer in any timeout, is accepted or refused: never a
    /// panic, and what is accepted builds a snapshot.
    #[test]
    fn any_number_in_a_duration_is_an_answer_not_a_panic(
        field in prop_oneof![Just("delay_loop"), Just("connect_timeout"), Just("delay_before_retry")],
        value in prop_oneof![any::<f64>(), -1e3f64..1e5],
        timeout in any::<u64>(),
    ) {
        let value = if value.is_nan() { "nan".to_owned() } else if value.is_infinite() {
            if value > 0.0 { "inf".to_owned() } else { "-inf".to_owned() }
        } else { format!("{value:?}") };
        let text = format!(
            "{BASE}{SERVICE}[[service.backend]]\naddress = \"10.0.0.5\"\n[service.backend.health_check]\ntype = \"tcp\"\n{field} = {value}\n[network.timeouts]\nudp = {timeout}\n"
        );
        if let Ok(config) = Config::parse(&text, "fuzz.toml") {
            let spec = config.snapshot_spec(&[[2, 0, 0, 0, 0, 1]], &mut BackendIdRegistry::new()).unwrap();
            balancer::snapshot::Snapshot::build(&spec, 1).unwrap();
        }
    }
}

#[test]
fn reply_entries_are_bounded_by_the_capacity_and_a_shortage_is_warned_about() {
    let network = |settings: &str| {
        format!("{BASE}[network]\nconntrack_capacity = 1000\n{settings}\n[[service]]\nvip = \"10.0.0.100\"\nport = 80\nmode = \"nat\"\n[[service.backend]]\naddress = \"10.0.0.11\"\n")
    };
    let error = error_of(&network("conntrack_reply_entries = 1001"));
    assert!(error.contains("conntrack_reply_entries"), "{error}");
    let full = Config::parse(&network(""), "t.toml").unwrap();
    assert_eq!(full.network.conntrack_reply_entries, 1000);
    assert!(!full
        .warnings
        .iter()
        .any(|w| w.contains("conntrack_reply_entries")));
    let short = Config::parse(&network("conntrack_reply_entries = 0"), "t.toml").unwrap();
    assert_eq!(short.network.conntrack_reply_entries, 0);
    assert!(
        short
            .warnings
            .iter()
            .any(|w| w.contains("conntrack_reply_entries 0")),
        "{:?}",
        short.warnings
    );
}

#[test]
fn the_previous_table_grace_is_held_to_its_range() {
    assert_error(
        &format!("{BASE}[network]\nprevious_table_grace = 601.0\n"),
        6,
        &["previous_table_grace", "0 to 600"],
    );
}

#[test]
fn vip_owner_defaults_to_bgp_with_a_kernel_interface_and_vrrp_needs_one() {
    use control::vip_owner::VipOwner;
    let parse =
        |network: &str| Config::parse(&format!("{BASE}[network]\n{network}{SERVICE}"), "t.toml");
    assert_eq!(
        parse("kernel_exception_path = true\n")
            .unwrap()
            .network
            .vip_owner,
        VipOwner::Bgp
    );
    assert_eq!(parse("").unwrap().network.vip_owner, VipOwner::Static);
    assert_eq!(
        parse("kernel_exception_path = true\nvip_owner = \"vrrp\"\n")
            .unwrap()
            .network
            .vip_owner,
        VipOwner::Vrrp
    );
    let error = parse("vip_owner = \"vrrp\"\n").unwrap_err().to_string();
    assert!(error.contains("kernel_exception_path = true"), "{error}");
    let error = parse("kernel_exception_path = true\nvip_owner = \"carp\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"static\", \"bgp\" or \"vrrp\""), "{error}");
}

/// A service on `vip` (line 6 of the text), with `network` before it and a backend after it.
fn service_on(vip: &str, network: &str) -> String {
    format!(
        "{BASE}[[service]]\nvip = \"{vip}\"\nport = 80\nmode = \"dr\"\n[[service.backend]]\naddress = \"10.0.0.5\"\n\
         [[service]]\nvip = \"10.0.0.101\"\nport = 80\nmode = \"dr\"\n[[service.backend]]\naddress = \"10.0.0.6\"\n{network}"
    )
}

#[test]
fn a_vip_that_is_no_single_reachable_host_is_refused() {
    for (vip, class) in [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
    ] {
        let backend = if vip.contains(':') {
            "fd00::5"
        } else {
            "10.0.0.5"
        };
        let text = format!(
            "{BASE}[[service]]\nvip = \"{vip}\"\nport = 80\nmode = \"dr\"\n[[service.backend]]\naddress = \"{backend}\"\n"
        );
        assert_error(&text, 6, &["service vip", vip, class]);
    }
}

#[test]
fn a_vip_that_is_another_role_s_address_is_refused() {
    // Port addresses of BASE: 10.0.0.1 and fd00::1.
    assert_error(&service_on("10.0.0.1", ""), 6, &["10.0.0.1", "port \"a\""]);
    let network = "[network]\ngateways = [{ port = \"a\", address = \"10.0.0.254\" }]\n\
                   local_addresses = [\"10.0.0.50\"]\ntunnel_source_v4 = \"10.0.0.60\"\n";
    assert_error(&service_on("10.0.0.254", network), 6, &["gateway"]);
    assert_error(&service_on("10.0.0.50", network), 6, &["local_addresses"]);
    assert_error(&service_on("10.0.0.60", network), 6, &["tunnel source"]);
    // 10.0.0.6 is the backend of the second service.
    assert_error(&service_on("10.0.0.6", network), 6, &["backend of service"]);
    // Its own backend too.
    assert_error(&service_on("10.0.0.5", network), 6, &["backend of service"]);
    assert!(Config::parse(&service_on("10.0.0.100", network), "test.toml").is_ok());
}

/// Every example configuration, written back by `render`, reads into the same configuration: `sluice ctl save`
/// loses nothing, and a `ctl` edit is validated as the file would be.
#[test]
fn rendered_configurations_read_back_the_same() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let text = control::render::render(&config);
        let again = Config::parse(&text, &config.origin)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
        assert_eq!(
            Config {
                warnings: vec![],
                ..again
            },
            Config {
                warnings: vec![],
                ..config
            },
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} example configurations");
    // And what the examples do not show.
    let text = r#"
[[port]]
name = "wan"
device = "net_null0"
addresses = ["10.0.0.1/24", "fd00::1/64"]
[workers]
cores = [0, 1]
idle = "adaptive"
idle_polls = 7
idle_sleep_us = 250
[network]
previous_table_grace = 1.5
[network.timeouts]
udp = 42
[control]
socket = "/run/x.sock"
metrics = "127.0.0.1:9101"
[sync]
listen = "10.0.0.1:8472"
peers = ["10.0.0.2:8472"]
key = "00112233445566778899aabbccddeeff"
[[service]]
vip = "fd00::100"
port = 53
protocol = "udp"
mode = "nat"
scheduler = "wlc"
persistence_timeout = 30
persistence_netmask = 64
[[service.backend]]
address = "fd00::11"
port = 5353
weight = 0
[service.backend.health_check]
type = "tcp"
connect_ip = "fd00::99"
connect_port = 99
retry = 3
"#;
    let config = Config::parse(text, "t").unwrap();
    let again = Config::parse(&control::render::render(&config), "t").unwrap();
    assert_eq!(
        Config {
            warnings: vec![],
            ..again
        },
        Config {
            warnings: vec![],
            ..config
        }
    );
}

#[test]
fn a_port_vlan_is_read_rendered_and_must_be_1_to_4094() {
    let with_vlan = |vlan: &str| {
        BASE.replace(
            "device = \"net_ring0\"\n",
            &format!("device = \"net_ring0\"\nvlan = {vlan}\n"),
        ) + SERVICE
    };
    let config = Config::parse(&with_vlan("10"), "vlan.toml").unwrap();
    assert_eq!(config.ports[0].vlan, Some(10));
    let again = Config::parse(&control::render::render(&config), "again.toml").unwrap();
    assert_eq!(again.ports[0].vlan, Some(10));
    assert_eq!(
        Config::parse(&with_vlan("4094"), "t").unwrap().ports[0].vlan,
        Some(4094)
    );
    assert_eq!(
        Config::parse(&format!("{BASE}{SERVICE}"), "none.toml")
            .unwrap()
            .ports[0]
            .vlan,
        None
    );
    for bad in ["0", "4095"] {
        assert_error(&with_vlan(bad), 4, &["port vlan", "1 to 4094"]);
    }
    assert!(Config::parse(&with_vlan("70000"), "t").is_err());
    assert!(Config::parse(&with_vlan("\"ten\""), "t").is_err());
}

#[test]
fn a_port_mac_is_read_and_must_be_unicast() {
    let with_mac = |mac: &str| {
        BASE.replace(
            "device = \"net_ring0\"\n",
            &format!("device = \"net_ring0\"\nmac = \"{mac}\"\n"),
        ) + SERVICE
    };
    let config = Config::parse(&with_mac("02:00:00:00:00:0a"), "mac.toml").unwrap();
    assert_eq!(config.ports[0].mac, Some([2, 0, 0, 0, 0, 0x0a]));
    assert_eq!(
        Config::parse(&format!("{BASE}{SERVICE}"), "none.toml")
            .unwrap()
            .ports[0]
            .mac,
        None
    );
    for bad in ["01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00"] {
        assert_error(&with_mac(bad), 4, &["port mac"]);
    }
}
