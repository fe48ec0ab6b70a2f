//! The operator's view of a running sluice that needs no DPDK: the Prometheus families for the build, the reloads,
//! the backends' state, weight and health, the ports' device counters and the mempools' use, written in the text
//! exposition format (every family with its HELP and TYPE, its samples together, label values escaped) so that
//! `promtool check metrics` accepts them. The binary gathers the samples (device counters come from DPDK there)
//! and this module only writes them.

use std::collections::HashSet;
use std::fmt::Write as _;

use balancer::service::BackendId;
use balancer::snapshot::{describe_endpoint, describe_service};

use crate::backend_state::{decide, healthy_weight, Quorums};
use crate::config::{BackendIdRegistry, Config};

/// What the binary is: `sluice --version` and `sluice_build_info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    pub commit: String,
    pub rustc: String,
    pub profile: String,
    /// `rte_version()` of the library loaded at run time.
    pub dpdk: String,
    /// The libdpdk pkg-config version at build time.
    pub dpdk_built_against: String,
}

/// Reloads (SIGHUP or `ctl reload`) since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadCounters {
    pub applied: u64,
    pub refused: u64,
    /// Unix time of the last applied reload, or of the start.
    pub last_applied_unix_seconds: u64,
}

/// One port's device counters (`rte_eth_stats_get`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSample {
    /// The port's name in the configuration.
    pub name: String,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_no_mbuf: u64,
}

/// One mempool's buffers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MempoolSample {
    pub name: String,
    pub in_use: u64,
    pub available: u64,
}

/// What the data-path devices report, read when the metrics are asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformSample {
    pub ports: Vec<PortSample>,
    pub mempools: Vec<MempoolSample>,
}

/// A backend as the control loop sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// `tcp://VIP:PORT`, as every other sluice metric labels a service.
    pub service: String,
    /// `ADDR:PORT`.
    pub backend: String,
    /// The weight of the configuration (or of the last `ctl set-weight`).
    pub configured_weight: u32,
    /// The weight the workers use now: 0 when drained, held down with `inhibit`, or out of the table.
    pub effective_weight: u32,
    /// In the workers' table at all (a backend that is down without `inhibit` is removed).
    pub in_table: bool,
    /// The health checks' verdict (true without checks).
    pub healthy: bool,
    pub drained: bool,
    /// The service's sorry server (in the table only while the quorum is lost).
    pub sorry: bool,
}

/// A service's quorum as the control loop sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub service: String,
    /// The sum of the weights of the healthy backends.
    pub healthy_weight: u64,
    pub quorum: u64,
    /// The quorum is held (the real backends take traffic).
    pub quorum_up: bool,
    /// The sorry server takes the traffic now.
    pub sorry_active: bool,
}

/// The backends (the sorry servers included) and services of `config` with the weights the workers' table has for
/// them, from the same decisions the table is built from ([`crate::backend_state::decide`]).
pub fn backend_views(
    config: &Config,
    registry: &mut BackendIdRegistry,
    down: &HashSet<BackendId>,
    drained: &HashSet<BackendId>,
    quorums: &Quorums,
) -> (Vec<BackendView>, Vec<ServiceView>) {
    let mut backends = Vec::new();
    let mut services = Vec::new();
    for service in &config.services {
        let name = describe_service(&service.key);
        for decision in decide(service, registry, down, drained, quorums) {
            backends.push(BackendView {
                service: name.clone(),
                backend: describe_endpoint(decision.address, decision.port),
                configured_weight: decision.configured_weight,
                effective_weight: decision.weight.unwrap_or(0),
                in_table: decision.weight.is_some(),
                healthy: decision.healthy,
                drained: decision.drained,
                sorry: decision.sorry,
            });
        }
        let lost = quorums.is_lost(&service.key);
        services.push(ServiceView {
            service: name,
            healthy_weight: healthy_weight(service, registry, down, drained),
            quorum: u64::from(service.quorum),
            quorum_up: !lost,
            sorry_active: lost && service.sorry_server.is_some(),
        });
    }
    (backends, services)
}

/// Reads the device counters and mempool use (the binary provides it: it needs DPDK).
pub type PlatformReader = Box<dyn Fn() -> PlatformSample>;

/// What the control loop keeps for the operator besides the configuration: the build, the reload counters, and
/// where the device counters come from.
#[derive(Default)]
pub struct Observed {
    pub build: BuildInfo,
    pub reloads: ReloadCounters,
    pub platform: Option<PlatformReader>,
}

impl Observed {
    pub fn new(build: BuildInfo, platform: Option<PlatformReader>) -> Observed {
        Observed {
            build,
            reloads: ReloadCounters {
                last_applied_unix_seconds: unix_now(),
                ..ReloadCounters::default()
            },
            platform,
        }
    }

    /// Counts a reload's outcome.
    pub fn count_reload<T, E>(&mut self, outcome: &Result<T, E>) {
        match outcome {
            Ok(_) => {
                self.reloads.applied += 1;
                self.reloads.last_applied_unix_seconds = unix_now();
            }
            Err(_) => self.reloads.refused += 1,
        }
    }

    /// The families of this module: the process, the backends and services given, the devices read now.
    pub fn render(&self, backends: &[BackendView], services: &[ServiceView]) -> String {
        let mut out = Exposition::new();
        write_process(&mut out, &self.build, &self.reloads);
        write_backends(&mut out, backends, services);
        if let Some(platform) = &self.platform {
            write_platform(&mut out, &platform());
        }
        out.finish()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Metric families written with their HELP and TYPE, samples checked to follow their family.
pub struct Exposition {
    out: String,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition { out: String::new() }
    }

    /// Starts a family: `kind` is `counter`, `gauge` or `info`-style `gauge`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {kind}",
            escape_help(help)
        );
    }

    /// One sample of the family started last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `sluice_build_info` and the reload counters.
pub fn write_process(out: &mut Exposition, build: &BuildInfo, reloads: &ReloadCounters) {
    out.family(
        "sluice_build_info",
        "gauge",
        "Always 1: the version, commit, compiler and the DPDK library (rte_version) of this sluice as labels.",
    );
    out.sample(
        "sluice_build_info",
        &[
            ("version", &build.version),
            ("commit", &build.commit),
            ("rustc", &build.rustc),
            ("dpdk", &build.dpdk),
        ],
        1,
    );
    out.family(
        "sluice_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP or ctl reload) by result: applied, or refused with the running one kept.",
    );
    out.sample(
        "sluice_config_reloads_total",
        &[("result", "applied")],
        reloads.applied,
    );
    out.sample(
        "sluice_config_reloads_total",
        &[("result", "refused")],
        reloads.refused,
    );
    out.family(
        "sluice_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last applied reload, or of the start.",
    );
    out.sample(
        "sluice_config_last_reload_success_timestamp_seconds",
        &[],
        reloads.last_applied_unix_seconds,
    );
}

/// The backends' health, drain state and weights, and the services' quorum.
pub fn write_backends(out: &mut Exposition, backends: &[BackendView], services: &[ServiceView]) {
    type Pick = fn(&BackendView) -> u64;
    let families: [(&str, &str, Pick); 5] = [
        (
            "sluice_backend_healthy",
            "1 when the backend's health checks pass (or it has none), 0 while they hold it down.",
            |b| u64::from(b.healthy),
        ),
        (
            "sluice_backend_drained",
            "1 while the backend is drained by ctl drain.",
            |b| u64::from(b.drained),
        ),
        (
            "sluice_backend_in_table",
            "1 when the backend is in the workers' table (a down backend without inhibit is removed; a sorry \
             server is in it only while the quorum is lost).",
            |b| u64::from(b.in_table),
        ),
        (
            "sluice_backend_weight",
            "The backend's configured weight.",
            |b| u64::from(b.configured_weight),
        ),
        (
            "sluice_backend_effective_weight",
            "The weight the workers use: 0 when drained, inhibited or out of the table.",
            |b| u64::from(b.effective_weight),
        ),
    ];
    for (name, help, pick) in families {
        out.family(name, "gauge", help);
        for backend in backends {
            let role = if backend.sorry { "sorry" } else { "real" };
            out.sample(
                name,
                &[
                    ("service", &backend.service),
                    ("backend", &backend.backend),
                    ("role", role),
                ],
                pick(backend),
            );
        }
    }
    type PickService = fn(&ServiceView) -> u64;
    let families: [(&str, &str, PickService); 4] = [
        (
            "sluice_service_healthy_weight",
            "The sum of the weights of the service's healthy backends, compared with its quorum.",
            |s| s.healthy_weight,
        ),
        (
            "sluice_service_quorum",
            "The service's quorum (keepalived's quorum; 1 unless configured).",
            |s| s.quorum,
        ),
        (
            "sluice_service_quorum_up",
            "1 while the service's healthy weight holds its quorum.",
            |s| u64::from(s.quorum_up),
        ),
        (
            "sluice_service_sorry_active",
            "1 while the service's sorry server takes its traffic.",
            |s| u64::from(s.sorry_active),
        ),
    ];
    for (name, help, pick) in families {
        out.family(name, "gauge", help);
        for service in services {
            out.sample(name, &[("service", &service.service)], pick(service));
        }
    }
}

/// The ports' device counters and the mempools' use.
pub fn write_platform(out: &mut Exposition, platform: &PlatformSample) {
    type Pick = fn(&PortSample) -> u64;
    let families: [(&str, &str, Pick); 8] = [
        (
            "sluice_port_rx_packets_total",
            "Frames the port received (rte_eth_stats ipackets).",
            |p| p.rx_packets,
        ),
        (
            "sluice_port_tx_packets_total",
            "Frames the port sent (opackets).",
            |p| p.tx_packets,
        ),
        (
            "sluice_port_rx_bytes_total",
            "Bytes the port received (ibytes).",
            |p| p.rx_bytes,
        ),
        (
            "sluice_port_tx_bytes_total",
            "Bytes the port sent (obytes).",
            |p| p.tx_bytes,
        ),
        (
            "sluice_port_rx_missed_total",
            "Frames the device dropped because no receive descriptor was free (imissed).",
            |p| p.rx_missed,
        ),
        (
            "sluice_port_rx_errors_total",
            "Erroneous frames received (ierrors).",
            |p| p.rx_errors,
        ),
        (
            "sluice_port_tx_errors_total",
            "Frames the device failed to send (oerrors).",
            |p| p.tx_errors,
        ),
        (
            "sluice_port_rx_nombuf_total",
            "Receive buffer allocation failures: the mempool was empty (rx_nombuf).",
            |p| p.rx_no_mbuf,
        ),
    ];
    for (name, help, pick) in families {
        out.family(name, "counter", help);
        for port in &platform.ports {
            out.sample(name, &[("port", &port.name)], pick(port));
        }
    }
    out.family(
        "sluice_mempool_buffers_in_use",
        "gauge",
        "Packet buffers handed out and not yet returned to the mempool.",
    );
    for pool in &platform.mempools {
        out.sample(
            "sluice_mempool_buffers_in_use",
            &[("pool", &pool.name)],
            pool.in_use,
        );
    }
    out.family(
        "sluice_mempool_buffers_available",
        "gauge",
        "Packet buffers free in the mempool (per-core caches included).",
    );
    for pool in &platform.mempools {
        out.sample(
            "sluice_mempool_buffers_available",
            &[("pool", &pool.name)],
            pool.available,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::new();
        out.family("x_total", "counter", "a \\ help\nline");
        out.sample("x_total", &[("a", "q\"b\\c\nd")], 3);
        assert_eq!(
            out.finish(),
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\nx_total{a=\"q\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let mut out = Exposition::new();
        write_process(
            &mut out,
            &BuildInfo {
                version: "0.1.0".into(),
                dpdk: "DPDK 22.11.11".into(),
                ..Default::default()
            },
            &ReloadCounters::default(),
        );
        write_backends(
            &mut out,
            &[BackendView {
                service: "tcp://10.0.0.100:80".into(),
                backend: "10.1.0.11:80".into(),
                configured_weight: 3,
                effective_weight: 0,
                in_table: true,
                healthy: false,
                drained: false,
                sorry: false,
            }],
            &[ServiceView {
                service: "tcp://10.0.0.100:80".into(),
                healthy_weight: 0,
                quorum: 1,
                quorum_up: false,
                sorry_active: true,
            }],
        );
        write_platform(
            &mut out,
            &PlatformSample {
                ports: vec![PortSample {
                    name: "client".into(),
                    rx_packets: 5,
                    ..Default::default()
                }],
                mempools: vec![MempoolSample {
                    name: "sluice".into(),
                    in_use: 7,
                    available: 9,
                }],
            },
        );
        let text = out.finish();
        let mut declared = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(declared.insert(name.clone()), "{name} declared twice");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample {line} outside its family");
            }
        }
        assert!(text.contains(
            "sluice_build_info{version=\"0.1.0\",commit=\"\",rustc=\"\",dpdk=\"DPDK 22.11.11\"} 1"
        ));
        assert!(text.contains("sluice_port_rx_packets_total{port=\"client\"} 5"));
        assert!(text.contains("sluice_mempool_buffers_in_use{pool=\"sluice\"} 7"));
        assert!(text.contains(
            "sluice_backend_effective_weight{service=\"tcp://10.0.0.100:80\",backend=\"10.1.0.11:80\",role=\"real\"} 0"
        ));
        assert!(text.contains("sluice_service_sorry_active{service=\"tcp://10.0.0.100:80\"} 1"));
    }
}
