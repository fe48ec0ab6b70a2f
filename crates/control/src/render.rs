//! A configuration written back as a file [`Config::parse`] reads into the same configuration: what `sluice ctl
//! save` prints (ipvsadm -S), and how a `ctl` edit is put through exactly the validation a file gets. Comments
//! and the order of keys in the original file are not kept; every value is.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{
    BackendConfig, CheckKind, Config, HealthCheckConfig, IdleMode, KernelDevice, OnFailure,
};
use crate::keepalived::toml_string;

/// `config` as a configuration file.
pub fn render(config: &Config) -> String {
    let mut out = String::new();
    let strings = |values: &mut dyn Iterator<Item = String>| {
        values
            .map(|value| toml_string(&value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "[eal]\nargs = [{}]\n",
        strings(&mut config.eal_args.iter().cloned())
    );
    for port in &config.ports {
        let _ = writeln!(
            out,
            "[[port]]\nname = {}\ndevice = {}\nmtu = {}\nrx_descriptors = {}\ntx_descriptors = {}\naddresses = [{}]\n\
             kernel_interface = {}\n",
            toml_string(&port.name),
            toml_string(&port.device),
            port.mtu,
            port.rx_descriptors,
            port.tx_descriptors,
            strings(
                &mut port
                    .addresses
                    .iter()
                    .map(|prefix| format!("{}/{}", prefix.addr, prefix.len))
            ),
            toml_string(&port.kernel_interface)
        );
        if let Some(vlan) = port.vlan {
            let _ = writeln!(out, "vlan = {vlan}");
        }
        if let Some(mac) = port.mac {
            let _ = writeln!(out, "mac = \"{}\"\n", mac_text(mac));
        }
    }
    let workers = &config.workers;
    let _ = writeln!(
        out,
        "[workers]\ncores = [{}]\nburst = {}\nmempool_size = {}",
        workers
            .cores
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        workers.burst,
        workers.mempool_size
    );
    // idle_polls and idle_sleep_us are refused beside idle = "poll".
    match workers.idle.mode {
        IdleMode::Poll => {
            let _ = writeln!(out, "idle = \"poll\"\n");
        }
        IdleMode::Adaptive => {
            let _ = writeln!(
                out,
                "idle = \"adaptive\"\nidle_polls = {}\nidle_sleep_us = {}\n",
                workers.idle.polls, workers.idle.sleep_us
            );
        }
    }
    render_network(config, &mut out);
    for service in &config.services {
        let _ = writeln!(
            out,
            "[[service]]\nvip = {}\nport = {}\nprotocol = \"{}\"\nmode = \"{}\"\nscheduler = \"{}\"",
            address(service.key.vip),
            service.key.port,
            if service.key.protocol == 17 {
                "udp"
            } else {
                "tcp"
            },
            format!("{:?}", service.mode).to_lowercase(),
            format!("{:?}", service.scheduler).to_lowercase()
        );
        let _ = writeln!(
            out,
            "quorum = {}\nhysteresis = {}",
            service.quorum, service.hysteresis
        );
        if let Some(persistence) = service.persistence {
            let _ = writeln!(
                out,
                "persistence_timeout = {}\npersistence_netmask = {}",
                persistence.timeout_ms / 1000,
                if service.key.vip.is_ipv4() {
                    persistence.prefix_v4
                } else {
                    persistence.prefix_v6
                }
            );
        }
        let _ = writeln!(out);
        for backend in &service.backends {
            let _ = writeln!(out, "[[service.backend]]");
            render_backend(backend, &mut out);
            if backend.alpha {
                let _ = writeln!(out, "alpha = true");
            }
            if backend.drained {
                let _ = writeln!(out, "drained = true");
            }
            if let Some(command) = &backend.notify.up {
                let _ = writeln!(out, "notify_up = {}", toml_string(command));
            }
            if let Some(command) = &backend.notify.down {
                let _ = writeln!(out, "notify_down = {}", toml_string(command));
            }
            let _ = writeln!(out, "notify_timeout = {}", seconds(backend.notify.timeout));
            for check in &backend.health_checks {
                let _ = writeln!(out, "[[service.backend.health_check]]");
                render_check(check, &mut out);
            }
            let _ = writeln!(out);
        }
        if let Some(sorry) = &service.sorry_server {
            let _ = writeln!(out, "[service.sorry_server]");
            render_backend(sorry, &mut out);
            let _ = writeln!(out);
        }
    }
    if let Some(pipe) = &config.pipe {
        let _ = writeln!(
            out,
            "[pipe]\nfrom = {}\nto = {}\n",
            toml_string(&pipe.from),
            toml_string(&pipe.to)
        );
    }
    if config.control.socket.is_some() || config.control.metrics.is_some() {
        let _ = writeln!(out, "[control]");
        if let Some(socket) = &config.control.socket {
            let _ = writeln!(out, "socket = {}", toml_string(socket));
        }
        if let Some(metrics) = config.control.metrics {
            let _ = writeln!(out, "metrics = {}", toml_string(&metrics.to_string()));
        }
        let _ = writeln!(out);
    }
    if let Some(sync) = &config.sync {
        let key: String = sync.key.iter().map(|byte| format!("{byte:02x}")).collect();
        let _ = writeln!(
            out,
            "[sync]\nlisten = {}\npeers = [{}]\nkey = \"{key}\"\nresend_interval = {}\nresend_max_interval = {}\n\
             side_table = {}\nscan_budget = {}\n",
            toml_string(&sync.listen.to_string()),
            strings(&mut sync.peers.iter().map(ToString::to_string)),
            seconds(sync.resend_interval),
            seconds(sync.resend_max_interval),
            sync.side_table,
            sync.scan_budget
        );
    }
    out
}

/// A backend's own keys (a sorry server has only these).
fn render_backend(backend: &BackendConfig, out: &mut String) {
    let _ = writeln!(
        out,
        "address = {}\nport = {}\nweight = {}",
        address(backend.address),
        backend.port,
        backend.weight
    );
    if let Some(mac) = backend.mac {
        let _ = writeln!(out, "mac = \"{}\"", mac_text(mac));
    }
}

fn render_check(check: &HealthCheckConfig, out: &mut String) {
    match &check.kind {
        CheckKind::Tcp => {
            let _ = writeln!(out, "type = \"tcp\"");
        }
        CheckKind::Http {
            path,
            expected_status,
        } => {
            let _ = writeln!(
                out,
                "type = \"http\"\npath = {}\nstatus = {expected_status}",
                toml_string(path)
            );
        }
        CheckKind::Misc { command, timeout } => {
            let _ = writeln!(
                out,
                "type = \"misc\"\nmisc_path = {}\nmisc_timeout = {}",
                toml_string(command),
                seconds(*timeout)
            );
        }
    }
    if let Some(ip) = check.connect_ip {
        let _ = writeln!(out, "connect_ip = {}", address(ip));
    }
    if let Some(port) = check.connect_port {
        let _ = writeln!(out, "connect_port = {port}");
    }
    let _ = writeln!(
        out,
        "connect_timeout = {}\ndelay_loop = {}\nretry = {}\ndelay_before_retry = {}\nwarmup = {}\non_failure = \"{}\"",
        seconds(check.connect_timeout),
        seconds(check.delay_loop),
        check.retry,
        seconds(check.delay_before_retry),
        seconds(check.warmup),
        match check.on_failure {
            OnFailure::Remove => "remove",
            OnFailure::Inhibit => "inhibit",
        }
    );
}

fn render_network(config: &Config, out: &mut String) {
    let network = &config.network;
    let timeouts = &network.timeouts;
    let _ = writeln!(out, "[network]");
    if let Some(source) = network.tunnel_source_v4 {
        let _ = writeln!(out, "tunnel_source_v4 = {}", address(source));
    }
    if let Some(source) = network.tunnel_source_v6 {
        let _ = writeln!(out, "tunnel_source_v6 = {}", address(source));
    }
    let _ = writeln!(
        out,
        "local_addresses = [{}]\nlocal_port_range = [{}, {}]\nconntrack_capacity = {}\nconntrack_reply_entries = {}\n\
         maglev_table_size = {}\nkernel_exception_path = {}\nkernel_device = \"{}\"\nprevious_table_grace = {}\n\
         vip_owner = \"{}\"",
        network
            .local_addresses
            .iter()
            .map(|addr| address(*addr))
            .collect::<Vec<_>>()
            .join(", "),
        network.local_port_range.0,
        network.local_port_range.1,
        network.conntrack_capacity,
        network.conntrack_reply_entries,
        network.maglev_table_size.get(),
        network.kernel_exception_path,
        match network.kernel_device {
            KernelDevice::Tap => "tap",
            KernelDevice::VirtioUser => "virtio_user",
        },
        seconds(network.previous_table_grace),
        format!("{:?}", network.vip_owner).to_lowercase()
    );
    for gateway in &network.gateways {
        let _ = writeln!(
            out,
            "[[network.gateways]]\nport = {}\naddress = {}",
            toml_string(&gateway.port),
            address(gateway.address)
        );
        if let Some(mac) = gateway.mac {
            let _ = writeln!(out, "mac = \"{}\"", mac_text(mac));
        }
    }
    let _ = writeln!(
        out,
        "[network.timeouts]\ntcp_established = {}\ntcp_syn_sent = {}\ntcp_syn_recv = {}\ntcp_fin_wait = {}\n\
         tcp_time_wait = {}\ntcp_close = {}\ntcp_close_wait = {}\ntcp_last_ack = {}\ntcp_listen = {}\n\
         tcp_syn_ack = {}\nudp = {}\nicmp = {}\n",
        timeouts.established / 1000,
        timeouts.syn_sent / 1000,
        timeouts.syn_recv / 1000,
        timeouts.fin_wait / 1000,
        timeouts.time_wait / 1000,
        timeouts.close / 1000,
        timeouts.close_wait / 1000,
        timeouts.last_ack / 1000,
        timeouts.listen / 1000,
        timeouts.synack / 1000,
        timeouts.udp / 1000,
        timeouts.icmp / 1000
    );
}

fn address(addr: IpAddr) -> String {
    toml_string(&addr.to_string())
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Seconds as a TOML float that reads back to the same duration.
fn seconds(duration: Duration) -> String {
    format!("{:?}", duration.as_secs_f64())
}
