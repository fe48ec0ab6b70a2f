//! The TOML configuration: what a network engineer writes, parsed strictly (unknown keys are errors), validated
//! with errors that name the file, the line and the field and say what is allowed, and turned into the balancer's
//! types. Backend ids stay stable across reloads through [`BackendIdRegistry`].
//!
//! The reference of every key, with defaults, is `config/README.md`; `config/*.toml` are commented examples.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use balancer::conntrack::Timeouts;
use balancer::maglev::TableSize;
use balancer::port_alloc::PortPartition;
use balancer::service::{Backend, BackendId, ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{GatewaySpec, PersistenceSpec, PortSpec, ServiceSpec, SnapshotSpec};
use packet::ip_protocol;
use serde::Deserialize;
use toml::Spanned;

/// A configuration that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.origin, line, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// An address with a prefix length (`10.0.0.1/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, len) = text.split_once('/').ok_or_else(|| {
            format!("{text:?} needs a prefix length, as in 10.0.0.1/24 or fd00::1/64")
        })?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        Ok(Prefix { addr, len })
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "{text:?} is not a MAC address (write it as 02:00:00:00:00:01)"
        ));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte =
            u8::from_str_radix(part, 16).map_err(|_| format!("{text:?} is not a MAC address"))?;
    }
    Ok(mac)
}

// ---- the file as written -------------------------------------------------------------------------------------

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    eal: RawEal,
    #[serde(default)]
    port: Vec<Spanned<RawPort>>,
    #[serde(default)]
    workers: RawWorkers,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    pipe: Option<Spanned<RawPipe>>,
    #[serde(default)]
    control: RawControl,
    sync: Option<Spanned<crate::sync_config::RawSync>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawEal {
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: Spanned<String>,
    device: Spanned<String>,
    mtu: Option<Spanned<u16>>,
    rx_descriptors: Option<Spanned<u16>>,
    tx_descriptors: Option<Spanned<u16>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    kernel_interface: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
    vlan: Option<Spanned<u16>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    cores: Option<Spanned<Vec<usize>>>,
    burst: Option<Spanned<usize>>,
    mempool_size: Option<Spanned<u32>>,
    idle: Option<Spanned<String>>,
    idle_polls: Option<Spanned<u32>>,
    idle_sleep_us: Option<Spanned<u64>>,
    overload_bursts: Option<Spanned<usize>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    gateways: Vec<Spanned<RawGateway>>,
    tunnel_source_v4: Option<Spanned<String>>,
    tunnel_source_v6: Option<Spanned<String>>,
    #[serde(default)]
    local_addresses: Vec<Spanned<String>>,
    local_port_range: Option<Spanned<[u16; 2]>>,
    conntrack_capacity: Option<Spanned<usize>>,
    conntrack_reply_entries: Option<Spanned<usize>>,
    maglev_table_size: Option<Spanned<u32>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    kernel_exception_path: Option<Spanned<bool>>,
    kernel_device: Option<Spanned<String>>,
    previous_table_grace: Option<Spanned<f64>>,
    vip_owner: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    port: String,
    address: String,
    mac: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_established: Option<Spanned<u64>>,
    tcp_syn_sent: Option<Spanned<u64>>,
    tcp_syn_recv: Option<Spanned<u64>>,
    tcp_fin_wait: Option<Spanned<u64>>,
    tcp_time_wait: Option<Spanned<u64>>,
    tcp_close: Option<Spanned<u64>>,
    tcp_close_wait: Option<Spanned<u64>>,
    tcp_last_ack: Option<Spanned<u64>>,
    tcp_listen: Option<Spanned<u64>>,
    tcp_syn_ack: Option<Spanned<u64>>,
    udp: Option<Spanned<u64>>,
    icmp: Option<Spanned<u64>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawService {
    vip: Spanned<String>,
    port: Spanned<u16>,
    #[serde(default = "default_protocol")]
    protocol: Spanned<String>,
    mode: Spanned<String>,
    #[serde(default = "default_scheduler")]
    scheduler: Spanned<String>,
    persistence_timeout: Option<Spanned<u64>>,
    persistence_netmask: Option<Spanned<u8>>,
    /// keepalived's quorum: the healthy weight below which the sorry server takes over.
    quorum: Option<Spanned<i64>>,
    hysteresis: Option<Spanned<i64>>,
    sorry_server: Option<Spanned<RawBackend>>,
    /// The default of the backends' `alpha`.
    alpha: Option<bool>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

fn default_protocol() -> Spanned<String> {
    Spanned::new(0..0, "tcp".to_owned())
}

fn default_scheduler() -> Spanned<String> {
    Spanned::new(0..0, "mh".to_owned())
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    port: Option<Spanned<u16>>,
    weight: Option<Spanned<i64>>,
    mac: Option<Spanned<String>>,
    /// One table, or an array of tables for several checkers (`[[service.backend.health_check]]`).
    health_check: Option<Spanned<toml::Value>>,
    alpha: Option<bool>,
    /// Drained (weight 0, its connections kept) from the start, as `sluice ctl drain` leaves it; what `ctl save`
    /// writes for a drained backend.
    drained: Option<bool>,
    notify_up: Option<Spanned<String>>,
    notify_down: Option<Spanned<String>>,
    notify_timeout: Option<Spanned<f64>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: String,
    connect_ip: Option<String>,
    connect_port: Option<u16>,
    connect_timeout: Option<f64>,
    delay_loop: Option<f64>,
    retry: Option<u32>,
    delay_before_retry: Option<f64>,
    path: Option<String>,
    status: Option<u16>,
    on_failure: Option<String>,
    misc_path: Option<String>,
    misc_timeout: Option<f64>,
    warmup: Option<f64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawPipe {
    from: String,
    to: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
}

// ---- the validated configuration ------------------------------------------------------------------------------

/// One DPDK port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub name: String,
    /// A PCI address or a vdev string (`net_pcap0,rx_pcap=in.pcap,...`).
    pub device: String,
    pub mtu: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    pub addresses: Vec<Prefix>,
    /// The kernel interface (a `net_tap`) of the exception path: `kernel_interface`, or `sl-<name>`.
    pub kernel_interface: String,
    /// The port's MAC, when the configuration sets it (otherwise the device's own): the only unicast address
    /// the port accepts frames for.
    pub mac: Option<[u8; 6]>,
    /// The 802.1Q VLAN the port is on (1..=4094): it takes only frames tagged with it and tags all it sends.
    pub vlan: Option<u16>,
}

impl PortConfig {
    /// The name DPDK gives the device: the vdev name before the first comma, or the PCI address.
    pub fn device_name(&self) -> &str {
        self.device.split(',').next().unwrap_or_default().trim()
    }

    /// Whether the device is a virtual device (created from `--vdev`).
    pub fn is_vdev(&self) -> bool {
        self.device_name().starts_with("net_") || self.device_name().starts_with("virtio_user")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkersConfig {
    pub cores: Vec<usize>,
    pub burst: usize,
    pub mempool_size: u32,
    pub idle: IdleConfig,
    /// Bursts a worker behind on a port with a kernel interface reads on in one turn, keeping the control frames
    /// and shedding the data; 0: never shed.
    pub overload_bursts: usize,
}

/// The default of `[workers] overload_bursts`.
pub const DEFAULT_OVERLOAD_BURSTS: usize = 16;

/// What a worker does when its queues are empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleMode {
    /// Spin: the lowest latency, a whole core per worker.
    Poll,
    /// After `polls` empty polls in a row, a CPU pause per empty poll, then sleeps of `sleep_us`.
    Adaptive,
}

/// `[workers] idle`, `idle_polls`, `idle_sleep_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleConfig {
    pub mode: IdleMode,
    pub polls: u32,
    pub sleep_us: u64,
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig {
            mode: IdleMode::Poll,
            polls: 256,
            sleep_us: 100,
        }
    }
}

/// The default kernel interface name of a port: `sl-` and the port's name, cut to the 15 bytes Linux allows.
pub fn default_kernel_interface(port: &str) -> String {
    let mut name = format!("sl-{port}");
    while name.len() > MAX_INTERFACE_NAME {
        name.pop();
    }
    name
}

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    pub port: String,
    pub address: IpAddr,
    pub mac: Option<[u8; 6]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub gateways: Vec<GatewayConfig>,
    pub tunnel_source_v4: Option<IpAddr>,
    pub tunnel_source_v6: Option<IpAddr>,
    pub local_addresses: Vec<IpAddr>,
    pub local_port_range: (u16, u16),
    pub conntrack_capacity: usize,
    /// How many of a worker's connections may hold a second entry (NAT and FULLNAT reply keys, IPv6 DR/TUN
    /// backends); at most `conntrack_capacity`.
    pub conntrack_reply_entries: usize,
    pub maglev_table_size: TableSize,
    pub timeouts: Timeouts,
    pub kernel_exception_path: bool,
    /// The device of the kernel interfaces.
    pub kernel_device: KernelDevice,
    /// After a Maglev table changes, how long the previous table answers for non-SYN frames without a connection
    /// (for nodes without `[sync]` peers; zero: off).
    pub previous_table_grace: Duration,
    /// Who puts the VIPs on the node (`crate::vip_owner`).
    pub vip_owner: crate::vip_owner::VipOwner,
}

/// What DPDK device makes a port's kernel interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelDevice {
    /// `net_tap`: works everywhere.
    Tap,
    /// `virtio_user` over vhost-net: faster, needs `/dev/vhost-net`.
    VirtioUser,
}

/// How a failed backend is taken out (keepalived: remove, or `inhibit_on_failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    Remove,
    Inhibit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http {
        path: String,
        expected_status: u16,
    },
    /// keepalived's MISC_CHECK: a command run with `/bin/sh -c`; exit status 0 passes. Bounded by `timeout`
    /// (the process group is killed then).
    Misc {
        command: String,
        timeout: Duration,
    },
}

/// A backend's health check, with keepalived's knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: CheckKind,
    /// Check this address instead of the backend's (keepalived's `connect_ip`).
    pub connect_ip: Option<IpAddr>,
    pub connect_port: Option<u16>,
    pub connect_timeout: Duration,
    pub delay_loop: Duration,
    pub retry: u32,
    pub delay_before_retry: Duration,
    pub on_failure: OnFailure,
    /// The first probe waits a random time below this (keepalived's `warmup`), so that checks started together
    /// do not probe together.
    pub warmup: Duration,
}

/// Commands run when a backend's health changes (keepalived's `notify_up`/`notify_down`), each with `/bin/sh -c`
/// off the control thread and killed after `timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyConfig {
    pub up: Option<String>,
    pub down: Option<String>,
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            up: None,
            down: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub mac: Option<[u8; 6]>,
    /// Every checker must pass for the backend to be up.
    pub health_checks: Vec<HealthCheckConfig>,
    /// keepalived's `alpha`: the backend starts down and takes traffic only once all its checks passed.
    pub alpha: bool,
    /// Starts drained (weight 0 in the table, its connections kept) until `sluice ctl undrain`: `ctl save` writes a
    /// drained backend so.
    pub drained: bool,
    pub notify: NotifyConfig,
}

impl BackendConfig {
    /// A backend without checks or scripts (as `ctl add-backend` makes one).
    pub fn plain(address: IpAddr, port: u16, weight: u32) -> BackendConfig {
        BackendConfig {
            address,
            port,
            weight,
            mac: None,
            health_checks: Vec::new(),
            alpha: false,
            drained: false,
            notify: NotifyConfig::default(),
        }
    }

    /// A failed check takes the backend to weight 0 instead of out of the table when any of its checkers says
    /// `on_failure = "inhibit"` (keepalived's `inhibit_on_failure`).
    pub fn inhibit_on_failure(&self) -> bool {
        self.health_checks
            .iter()
            .any(|check| check.on_failure == OnFailure::Inhibit)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub key: ServiceKey,
    pub mode: ForwardingMode,
    pub scheduler: SchedulerKind,
    pub persistence: Option<PersistenceSpec>,
    pub backends: Vec<BackendConfig>,
    /// keepalived's quorum: while the weights of the healthy backends sum to less, the quorum is lost.
    pub quorum: u32,
    /// The quorum is lost below `quorum - hysteresis` and regained at `quorum + hysteresis`.
    pub hysteresis: u32,
    /// Takes all the traffic while the quorum is lost (the real backends leave the table then), and gives it
    /// back when the quorum returns.
    pub sorry_server: Option<BackendConfig>,
}

impl ServiceConfig {
    /// A service without backends, quorum 1, no sorry server (as `ctl add-service` makes one).
    pub fn plain(key: ServiceKey, mode: ForwardingMode, scheduler: SchedulerKind) -> ServiceConfig {
        ServiceConfig {
            key,
            mode,
            scheduler,
            persistence: None,
            backends: Vec::new(),
            quorum: 1,
            hysteresis: 0,
            sorry_server: None,
        }
    }

    /// The real backends and the sorry server.
    pub fn all_backends(&self) -> impl Iterator<Item = &BackendConfig> {
        self.backends.iter().chain(self.sorry_server.as_ref())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeConfig {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ControlConfig {
    /// The control socket's path.
    pub socket: Option<String>,
    /// Where the metrics endpoint listens (a bare port means 127.0.0.1).
    pub metrics: Option<SocketAddr>,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub origin: String,
    pub eal_args: Vec<String>,
    pub ports: Vec<PortConfig>,
    pub workers: WorkersConfig,
    pub network: NetworkConfig,
    pub services: Vec<ServiceConfig>,
    pub pipe: Option<PipeConfig>,
    pub control: ControlConfig,
    /// Connection exceptions shared with peers (`crate::sync_config`); `None` when the section is absent.
    pub sync: Option<crate::sync_config::SyncConfig>,
    /// Accepted but worth a look (empty services, a small Maglev table, ...).
    pub warnings: Vec<String>,
}

/// Builds errors with line numbers from spans of one text.
struct Locator<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn error_at(&self, span: &std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_owned(),
            line: (span.end > 0).then(|| self.line(span.start)),
            message: message.into(),
        }
    }

    fn parse<T: FromStr<Err = String>>(
        &self,
        value: &Spanned<String>,
        field: &str,
    ) -> Result<T, ConfigError> {
        value
            .get_ref()
            .parse()
            .map_err(|error| self.error_at(&value.span(), format!("{field}: {error}")))
    }

    fn address(&self, value: &Spanned<String>, field: &str) -> Result<IpAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.error_at(
                &value.span(),
                format!(
                    "{field}: {:?} is not an IPv4 or IPv6 address",
                    value.get_ref()
                ),
            )
        })
    }
}

/// The ranges of the values that are numbers of seconds or counts; `config/README.md` lists the same.
pub mod limits {
    /// Connection-table and persistence timeouts, in seconds (IPVS's own limit: INT_MAX jiffies at HZ=1000).
    pub const TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 1..=2_147_483;
    /// A health check's `connect_timeout`: the whole probe (connect, send, status line).
    pub const CONNECT_TIMEOUT: std::ops::RangeInclusive<f64> = 0.001..=3600.0;
    /// A health check's `delay_loop`.
    pub const DELAY_LOOP: std::ops::RangeInclusive<f64> = 0.01..=86_400.0;
    /// A health check's `delay_before_retry`.
    pub const DELAY_BEFORE_RETRY: std::ops::RangeInclusive<f64> = 0.0..=3600.0;
    /// A health check's `retry`.
    pub const RETRY: std::ops::RangeInclusive<u32> = 1..=100;
    /// An HTTP check's expected status.
    pub const STATUS: std::ops::RangeInclusive<u16> = 100..=599;
    /// A misc check's `misc_timeout` and a backend's `notify_timeout`.
    pub const SCRIPT_TIMEOUT: std::ops::RangeInclusive<f64> = 0.01..=3600.0;
    /// A health check's `warmup`.
    pub const WARMUP: std::ops::RangeInclusive<f64> = 0.0..=3600.0;
    /// The longest command line of `misc_path`, `notify_up` and `notify_down`.
    pub const COMMAND_BYTES: usize = 4096;
    /// Checkers per backend.
    pub const CHECKERS: usize = 16;
    /// The longest HTTP check path.
    pub const PATH_BYTES: usize = 1024;
    /// Ring sizes.
    pub const DESCRIPTORS: std::ops::RangeInclusive<u16> = 32..=32_768;
    /// Mbufs in the shared pool.
    pub const MEMPOOL_SIZE: std::ops::RangeInclusive<u32> = 1023..=16_777_215;
    /// Worker CPUs are lcore ids below DPDK's RTE_MAX_LCORE.
    pub const MAX_CORE: usize = 127;
    /// Seconds the previous Maglev table may be remembered after a change.
    pub const PREVIOUS_TABLE_GRACE: std::ops::RangeInclusive<f64> = 0.0..=600.0;
    /// A Unix socket path fits `sun_path` (108 bytes with its terminating zero).
    pub const SOCKET_PATH_BYTES: usize = 107;
}

/// `value` seconds as a duration, refused outside `range` (and never NaN or infinite).
fn seconds(
    value: f64,
    field: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Duration, String> {
    if !(value.is_finite() && range.contains(&value)) {
        return Err(format!(
            "{field} = {value}: allowed {} to {} seconds",
            range.start(),
            range.end()
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|error| format!("{field} = {value}: {error}"))
}

fn describe(key: &ServiceKey) -> String {
    balancer::snapshot::describe_service(key)
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            origin: origin.clone(),
            line: None,
            message: format!("cannot read the configuration: {error}"),
        })?;
        Config::parse(&text, &origin)
    }

    /// Parses and validates `text`, naming it `origin` in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let locator = Locator { origin, text };
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError {
            origin: origin.to_owned(),
            line: error.span().map(|span| locator.line(span.start)),
            message: error.message().trim().to_owned(),
        })?;
        let mut warnings = Vec::new();

        let mut ports = Vec::new();
        let mut port_names = HashSet::new();
        let mut kernel_interfaces = HashSet::new();
        for spanned in &raw.port {
            let port = spanned.get_ref();
            let name = port.name.get_ref().trim().to_owned();
            if name.is_empty() || !port_names.insert(name.clone()) {
                return Err(locator.error_at(
                    &port.name.span(),
                    format!("port name: {name:?} is empty or used twice; give every [[port]] its own name"),
                ));
            }
            if port.device.get_ref().trim().is_empty() {
                return Err(locator.error_at(
                    &port.device.span(),
                    "port device: give a PCI address or a vdev string",
                ));
            }
            let mtu = port.mtu.as_ref().map_or(1500, |mtu| *mtu.get_ref());
            if let Some(spanned_mtu) = &port.mtu {
                if !(68..=9000).contains(&mtu) {
                    return Err(
                        locator.error_at(&spanned_mtu.span(), "port mtu: allowed 68 to 9000")
                    );
                }
            }
            let mut addresses = Vec::new();
            for address in &port.addresses {
                addresses.push(locator.parse::<Prefix>(address, "port addresses")?);
            }
            let descriptors = |value: &Option<Spanned<u16>>, field: &str| match value {
                Some(spanned) if !limits::DESCRIPTORS.contains(spanned.get_ref()) => Err(locator
                    .error_at(
                        &spanned.span(),
                        format!(
                            "port {field}: allowed {} to {}",
                            limits::DESCRIPTORS.start(),
                            limits::DESCRIPTORS.end()
                        ),
                    )),
                Some(spanned) => Ok(*spanned.get_ref()),
                None => Ok(1024),
            };
            let kernel_interface = match &port.kernel_interface {
                Some(spanned) => {
                    let name = spanned.get_ref().trim();
                    if !valid_interface_name(name) {
                        return Err(locator.error_at(
                            &spanned.span(),
                            format!(
                                "port kernel_interface: {name:?} is not a Linux interface name (1 to \
                                 {MAX_INTERFACE_NAME} letters, digits, '-', '_' or '.')"
                            ),
                        ));
                    }
                    name.to_owned()
                }
                None => default_kernel_interface(&name),
            };
            if !kernel_interfaces.insert(kernel_interface.clone()) {
                return Err(locator.error_at(
                    &port.name.span(),
                    format!("port kernel_interface: {kernel_interface:?} is used by two ports"),
                ));
            }
            if !valid_interface_name(&kernel_interface) {
                return Err(locator.error_at(
                    &port.name.span(),
                    format!(
                        "port name: {name:?} does not make a kernel interface name ({kernel_interface:?}); \
                         set kernel_interface"
                    ),
                ));
            }
            let mac = match &port.mac {
                Some(spanned) => {
                    let mac = parse_mac(spanned.get_ref())
                        .map_err(|e| locator.error_at(&spanned.span(), format!("port mac: {e}")))?;
                    if mac[0] & 1 != 0 || mac == [0; 6] {
                        return Err(locator.error_at(
                            &spanned.span(),
                            "port mac: a port's own address is unicast (the low bit of the first byte clear) \
                             and not all zeros",
                        ));
                    }
                    Some(mac)
                }
                None => None,
            };
            let vlan = match &port.vlan {
                Some(spanned) if !(1..=4094).contains(spanned.get_ref()) => {
                    return Err(locator.error_at(
                        &spanned.span(),
                        format!(
                            "port vlan: {} is not a VLAN id a port can be on (1 to 4094; 0 and 4095 are \
                             reserved)",
                            spanned.get_ref()
                        ),
                    ));
                }
                Some(spanned) => Some(*spanned.get_ref()),
                None => None,
            };
            ports.push(PortConfig {
                mac,
                vlan,
                name,
                device: port.device.get_ref().trim().to_owned(),
                mtu,
                rx_descriptors: descriptors(&port.rx_descriptors, "rx_descriptors")?,
                tx_descriptors: descriptors(&port.tx_descriptors, "tx_descriptors")?,
                addresses,
                kernel_interface,
            });
        }

        let cores = raw
            .workers
            .cores
            .as_ref()
            .map_or(vec![0], |cores| cores.get_ref().clone());
        if let Some(spanned) = &raw.workers.cores {
            let unique: HashSet<_> = cores.iter().collect();
            if cores.is_empty() || unique.len() != cores.len() {
                return Err(locator.error_at(
                    &spanned.span(),
                    "workers cores: list each CPU once, at least one (e.g. cores = [1, 2])",
                ));
            }
            if let Some(core) = cores.iter().find(|core| **core > limits::MAX_CORE) {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "workers cores: CPU {core} is beyond DPDK's lcore ids (0 to {})",
                        limits::MAX_CORE
                    ),
                ));
            }
        }
        let burst = raw.workers.burst.as_ref().map_or(32, |b| *b.get_ref());
        if let Some(spanned) = &raw.workers.burst {
            if !(1..=dataplane_max_burst()).contains(&burst) {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!("workers burst: allowed 1 to {}", dataplane_max_burst()),
                ));
            }
        }
        let mempool_size = match &raw.workers.mempool_size {
            Some(spanned) if !limits::MEMPOOL_SIZE.contains(spanned.get_ref()) => {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "workers mempool_size: allowed {} to {} buffers",
                        limits::MEMPOOL_SIZE.start(),
                        limits::MEMPOOL_SIZE.end()
                    ),
                ))
            }
            Some(spanned) => *spanned.get_ref(),
            None => 16383,
        };
        let overload_bursts = match &raw.workers.overload_bursts {
            Some(spanned) if *spanned.get_ref() > MAX_OVERLOAD_BURSTS => {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "workers overload_bursts: allowed 0 (never shed) to {MAX_OVERLOAD_BURSTS}"
                    ),
                ))
            }
            Some(spanned) => *spanned.get_ref(),
            None => DEFAULT_OVERLOAD_BURSTS,
        };
        let workers = WorkersConfig {
            cores,
            burst,
            mempool_size,
            idle: validate_idle(&raw.workers, &locator)?,
            overload_bursts,
        };

        let network = validate_network(&raw.network, &locator, &port_names, workers.cores.len())?;

        let mut services = Vec::new();
        let mut keys = HashSet::new();
        for spanned in &raw.service {
            let service = validate_service(spanned, &locator, &network, &mut warnings)?;
            if !keys.insert(service.key) {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!("service {} is configured twice", describe(&service.key)),
                ));
            }
            services.push(service);
        }
        refuse_vips_that_are_taken(&raw.service, &services, &ports, &network, &locator)?;

        let pipe = match &raw.pipe {
            Some(spanned) => {
                let pipe = spanned.get_ref();
                for name in [&pipe.from, &pipe.to] {
                    if !port_names.contains(name) {
                        return Err(locator.error_at(
                            &spanned.span(),
                            format!("pipe: there is no [[port]] named {name:?}"),
                        ));
                    }
                }
                Some(PipeConfig {
                    from: pipe.from.clone(),
                    to: pipe.to.clone(),
                })
            }
            None => None,
        };
        if pipe.is_none() && services.is_empty() {
            return Err(ConfigError {
                origin: origin.to_owned(),
                line: None,
                message: "nothing to do: add [[service]] entries, or a [pipe] between two ports"
                    .into(),
            });
        }
        if ports.is_empty() {
            return Err(ConfigError {
                origin: origin.to_owned(),
                line: None,
                message: "no [[port]]: name at least one DPDK device".into(),
            });
        }
        let needs_reply_entries = services.iter().any(|service| {
            matches!(service.mode, ForwardingMode::Nat | ForwardingMode::FullNat)
                || service
                    .backends
                    .iter()
                    .any(|backend| backend.address.is_ipv6())
        });
        if needs_reply_entries && network.conntrack_reply_entries < network.conntrack_capacity {
            warnings.push(format!(
                "conntrack_reply_entries {} is below conntrack_capacity {}: NAT and FULLNAT connections and \
                 connections to IPv6 DR/TUN backends beyond {} per worker are refused (table_full)",
                network.conntrack_reply_entries,
                network.conntrack_capacity,
                network.conntrack_reply_entries
            ));
        }
        let backend_count: usize = services.iter().map(|s| s.backends.len()).max().unwrap_or(0);
        if backend_count > 0 && (network.maglev_table_size.get() as usize) < backend_count * 100 {
            warnings.push(format!(
                "maglev_table_size {} is under 100 slots per backend ({} backends): balance suffers",
                network.maglev_table_size.get(),
                backend_count
            ));
        }

        Ok(Config {
            origin: origin.to_owned(),
            eal_args: raw.eal.args.clone(),
            ports,
            workers,
            network,
            services,
            pipe,
            control: validate_control(&raw.control, &locator, &mut warnings)?,
            sync: match &raw.sync {
                Some(section) => Some(
                    crate::sync_config::SyncConfig::validate(section.get_ref())
                        .map_err(|message| locator.error_at(&section.span(), message))?,
                ),
                None => None,
            },
            warnings,
        })
    }

    /// Index of the port named `name`.
    pub fn port_index(&self, name: &str) -> Option<usize> {
        self.ports.iter().position(|port| port.name == name)
    }

    /// The snapshot the workers forward with, given each port's MAC (from the device) and stable backend ids.
    pub fn snapshot_spec(
        &self,
        port_macs: &[[u8; 6]],
        registry: &mut BackendIdRegistry,
    ) -> Result<SnapshotSpec, ConfigError> {
        let error = |message: String| ConfigError {
            origin: self.origin.clone(),
            line: None,
            message,
        };
        let ports = self
            .ports
            .iter()
            .zip(port_macs.iter().chain(std::iter::repeat(&[0u8; 6])))
            .map(|(port, mac)| PortSpec {
                mac: *mac,
                mtu: port.mtu,
                addresses: port.addresses.iter().map(|p| (p.addr, p.len)).collect(),
            })
            .collect();
        let mut gateways = Vec::new();
        for gateway in &self.network.gateways {
            let port = self
                .port_index(&gateway.port)
                .ok_or_else(|| error(format!("gateway port {:?} does not exist", gateway.port)))?;
            gateways.push(GatewaySpec {
                port: port as u16,
                addr: gateway.address,
                mac: gateway.mac,
            });
        }
        let workers = self.workers.cores.len() as u16;
        let (low, high) = self.network.local_port_range;
        let local_ports = PortPartition::new(low, high, workers)
            .map_err(|e| error(format!("local_port_range: {e}")))?;
        let services = self
            .services
            .iter()
            .map(|service| ServiceSpec {
                key: service.key,
                mode: service.mode,
                scheduler: service.scheduler,
                persistence: service.persistence,
                // The sorry server is in every spec; the control loop's effective weights keep it out while
                // the quorum holds.
                backends: service
                    .all_backends()
                    .map(|backend| Backend {
                        id: registry.id(service.key, backend.address, backend.port),
                        addr: backend.address,
                        port: backend.port,
                        weight: backend.weight,
                        mac: backend.mac,
                    })
                    .collect(),
            })
            .collect();
        registry.retain(self);
        Ok(SnapshotSpec {
            ports,
            gateways,
            tunnel_source_v4: self.network.tunnel_source_v4,
            tunnel_source_v6: self.network.tunnel_source_v6,
            local_addresses: self.network.local_addresses.clone(),
            local_ports,
            maglev_size: self.network.maglev_table_size,
            services,
            kernel_exception_path: self.network.kernel_exception_path,
        })
    }
}

impl Config {
    /// Builds the forwarding snapshot this configuration describes, with placeholder MACs (no check depends on
    /// them) and every service present: what `sluice run` refuses about routes to backends, NAT backends, address
    /// families, tunnel sources and local addresses, in its words, without a device.
    pub fn check_snapshot(&self) -> Result<(), String> {
        let macs = vec![[0x02, 0, 0, 0, 0, 0x01]; self.ports.len()];
        let spec = self
            .snapshot_spec(&macs, &mut BackendIdRegistry::new())
            .map_err(|e| e.to_string())?;
        balancer::snapshot::Snapshot::build(&spec, 1)
            .map_err(|e| format!("{}: {e}", self.origin))?;
        Ok(())
    }
}

fn dataplane_max_burst() -> usize {
    64
}

/// The most bursts a worker behind may read on in one turn: beyond, draining could starve forwarding itself.
const MAX_OVERLOAD_BURSTS: usize = 256;

fn validate_network(
    raw: &RawNetwork,
    locator: &Locator<'_>,
    port_names: &HashSet<String>,
    workers: usize,
) -> Result<NetworkConfig, ConfigError> {
    let mut gateways = Vec::new();
    for spanned in &raw.gateways {
        let gateway = spanned.get_ref();
        if !port_names.contains(&gateway.port) {
            return Err(locator.error_at(
                &spanned.span(),
                format!(
                    "gateway port: there is no [[port]] named {:?}",
                    gateway.port
                ),
            ));
        }
        let address = gateway.address.parse().map_err(|_| {
            locator.error_at(
                &spanned.span(),
                format!(
                    "gateway address: {:?} is not an IP address",
                    gateway.address
                ),
            )
        })?;
        let mac = match &gateway.mac {
            Some(text) => Some(
                parse_mac(text)
                    .map_err(|e| locator.error_at(&spanned.span(), format!("gateway mac: {e}")))?,
            ),
            None => None,
        };
        gateways.push(GatewayConfig {
            port: gateway.port.clone(),
            address,
            mac,
        });
    }
    let family = |value: &Option<Spanned<String>>,
                  field: &str,
                  v4: bool|
     -> Result<Option<IpAddr>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let addr = locator.address(value, field)?;
        if addr.is_ipv4() != v4 {
            return Err(locator.error_at(
                &value.span(),
                format!(
                    "{field}: expected an {} address",
                    if v4 { "IPv4" } else { "IPv6" }
                ),
            ));
        }
        Ok(Some(addr))
    };
    let tunnel_source_v4 = family(&raw.tunnel_source_v4, "tunnel_source_v4", true)?;
    let tunnel_source_v6 = family(&raw.tunnel_source_v6, "tunnel_source_v6", false)?;
    let mut local_addresses = Vec::new();
    for value in &raw.local_addresses {
        local_addresses.push(locator.address(value, "local_addresses")?);
    }
    let local_port_range = match &raw.local_port_range {
        Some(spanned) => {
            let [low, high] = *spanned.get_ref();
            if low == 0 || low > high || usize::from(high - low) + 1 < workers {
                return Err(locator.error_at(
                    &spanned.span(),
                    "local_port_range: [low, high] with 1 <= low <= high and at least one port per worker",
                ));
            }
            (low, high)
        }
        None => (1024, 65535),
    };
    let conntrack_capacity = match &raw.conntrack_capacity {
        Some(spanned) => {
            let capacity = *spanned.get_ref();
            if capacity == 0 || capacity > balancer::conntrack::ConnTable::MAX_CAPACITY {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "conntrack_capacity: allowed 1 to {} connections per worker",
                        balancer::conntrack::ConnTable::MAX_CAPACITY
                    ),
                ));
            }
            capacity
        }
        None => 1 << 20,
    };
    let conntrack_reply_entries = match &raw.conntrack_reply_entries {
        Some(spanned) if *spanned.get_ref() > conntrack_capacity => {
            return Err(locator.error_at(
                &spanned.span(),
                format!(
                    "conntrack_reply_entries: allowed 0 to conntrack_capacity ({conntrack_capacity})"
                ),
            ));
        }
        Some(spanned) => *spanned.get_ref(),
        None => conntrack_capacity,
    };
    let maglev_table_size = match &raw.maglev_table_size {
        Some(spanned) => TableSize::new(*spanned.get_ref()).map_err(|error| {
            locator.error_at(&spanned.span(), format!("maglev_table_size: {error}"))
        })?,
        None => TableSize::default(),
    };
    let kernel_exception_path = raw
        .kernel_exception_path
        .as_ref()
        .is_some_and(|value| *value.get_ref());
    let previous_table_grace = match &raw.previous_table_grace {
        Some(spanned) => seconds(
            *spanned.get_ref(),
            "previous_table_grace",
            limits::PREVIOUS_TABLE_GRACE,
        )
        .map_err(|message| locator.error_at(&spanned.span(), message))?,
        None => Duration::ZERO,
    };
    let kernel_device = match &raw.kernel_device {
        None => KernelDevice::Tap,
        Some(spanned) => match spanned.get_ref().as_str() {
            "tap" => KernelDevice::Tap,
            "virtio_user" => KernelDevice::VirtioUser,
            other => {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "kernel_device: {other:?} is not allowed; use \"tap\" or \"virtio_user\""
                    ),
                ))
            }
        },
    };
    let vip_owner = match &raw.vip_owner {
        None => crate::vip_owner::VipOwner::default_for(kernel_exception_path),
        Some(spanned) => {
            let owner = crate::vip_owner::VipOwner::parse(spanned.get_ref())
                .map_err(|error| locator.error_at(&spanned.span(), error))?;
            if owner.needs_kernel_interface() && !kernel_exception_path {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!("vip_owner = \"{owner}\" puts VIPs on the kernel interfaces: it needs kernel_exception_path = true"),
                ));
            }
            owner
        }
    };
    let mut timeouts = Timeouts::default();
    let t = &raw.timeouts;
    let set = |slot: &mut u64, value: &Option<Spanned<u64>>, field: &str| {
        if let Some(spanned) = value {
            let seconds = *spanned.get_ref();
            if !limits::TIMEOUT_SECONDS.contains(&seconds) {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "timeouts {field}: allowed {} to {} seconds",
                        limits::TIMEOUT_SECONDS.start(),
                        limits::TIMEOUT_SECONDS.end()
                    ),
                ));
            }
            *slot = seconds * 1000;
        }
        Ok(())
    };
    set(
        &mut timeouts.established,
        &t.tcp_established,
        "tcp_established",
    )?;
    set(&mut timeouts.syn_sent, &t.tcp_syn_sent, "tcp_syn_sent")?;
    set(&mut timeouts.syn_recv, &t.tcp_syn_recv, "tcp_syn_recv")?;
    set(&mut timeouts.fin_wait, &t.tcp_fin_wait, "tcp_fin_wait")?;
    set(&mut timeouts.time_wait, &t.tcp_time_wait, "tcp_time_wait")?;
    set(&mut timeouts.close, &t.tcp_close, "tcp_close")?;
    set(
        &mut timeouts.close_wait,
        &t.tcp_close_wait,
        "tcp_close_wait",
    )?;
    set(&mut timeouts.last_ack, &t.tcp_last_ack, "tcp_last_ack")?;
    set(&mut timeouts.listen, &t.tcp_listen, "tcp_listen")?;
    set(&mut timeouts.synack, &t.tcp_syn_ack, "tcp_syn_ack")?;
    set(&mut timeouts.udp, &t.udp, "udp")?;
    set(&mut timeouts.icmp, &t.icmp, "icmp")?;
    Ok(NetworkConfig {
        gateways,
        tunnel_source_v4,
        tunnel_source_v6,
        local_addresses,
        local_port_range,
        conntrack_capacity,
        conntrack_reply_entries,
        maglev_table_size,
        timeouts,
        kernel_exception_path,
        kernel_device,
        previous_table_grace,
        vip_owner,
    })
}

fn validate_idle(raw: &RawWorkers, locator: &Locator<'_>) -> Result<IdleConfig, ConfigError> {
    let mut idle = IdleConfig::default();
    if let Some(spanned) = &raw.idle {
        idle.mode = match spanned.get_ref().as_str() {
            "poll" => IdleMode::Poll,
            "adaptive" => IdleMode::Adaptive,
            other => {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!("workers idle: {other:?} is not allowed; use \"poll\" or \"adaptive\""),
                ))
            }
        };
    }
    if let Some(spanned) = &raw.idle_polls {
        idle.polls = *spanned.get_ref();
        if !(1..=1_000_000).contains(&idle.polls) {
            return Err(
                locator.error_at(&spanned.span(), "workers idle_polls: allowed 1 to 1000000")
            );
        }
    }
    if let Some(spanned) = &raw.idle_sleep_us {
        idle.sleep_us = *spanned.get_ref();
        if !(1..=10_000).contains(&idle.sleep_us) {
            return Err(locator.error_at(
                &spanned.span(),
                "workers idle_sleep_us: allowed 1 to 10000 microseconds",
            ));
        }
    }
    let tuned = raw
        .idle_polls
        .as_ref()
        .map(Spanned::span)
        .or(raw.idle_sleep_us.as_ref().map(Spanned::span));
    if let (IdleMode::Poll, Some(span)) = (idle.mode, tuned) {
        return Err(locator.error_at(
            &span,
            "workers idle_polls / idle_sleep_us only apply with idle = \"adaptive\"",
        ));
    }
    Ok(idle)
}

/// Why `vip` can never be a VIP, whatever else is configured: traffic to it is not for one host (multicast,
/// broadcast), never leaves a host (loopback) or names no host (unspecified).
fn unusable_vip_class(vip: IpAddr) -> Option<&'static str> {
    if vip.is_unspecified() {
        Some("the unspecified address")
    } else if vip.is_loopback() {
        Some("a loopback address")
    } else if vip.is_multicast() {
        Some("a multicast address")
    } else if matches!(vip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// Refuses a VIP that is already someone's address: sluice's own (port addresses, local addresses, tunnel
/// sources), a gateway's or a backend's. Frames to such a VIP would be both balanced and answered or relayed
/// as that other role, and replies from a backend that is a VIP would be taken for new clients.
fn refuse_vips_that_are_taken(
    raw_services: &[Spanned<RawService>],
    services: &[ServiceConfig],
    ports: &[PortConfig],
    network: &NetworkConfig,
    locator: &Locator<'_>,
) -> Result<(), ConfigError> {
    for (raw, service) in raw_services.iter().zip(services) {
        let vip = service.key.vip;
        let role = if let Some(port) = ports
            .iter()
            .find(|port| port.addresses.iter().any(|prefix| prefix.addr == vip))
        {
            Some(format!("an address of port {:?}", port.name))
        } else if network.local_addresses.contains(&vip) {
            Some("one of [network] local_addresses".to_owned())
        } else if network.tunnel_source_v4 == Some(vip) || network.tunnel_source_v6 == Some(vip) {
            Some("a [network] tunnel source".to_owned())
        } else if network
            .gateways
            .iter()
            .any(|gateway| gateway.address == vip)
        {
            Some("a gateway".to_owned())
        } else {
            services.iter().find_map(|other| {
                other
                    .backends
                    .iter()
                    .any(|backend| backend.address == vip)
                    .then(|| format!("a backend of service {}", describe(&other.key)))
            })
        };
        if let Some(role) = role {
            return Err(locator.error_at(
                &raw.get_ref().vip.span(),
                format!("service vip: {vip} is {role}; give the service an address of its own"),
            ));
        }
    }
    Ok(())
}

fn validate_service(
    spanned: &Spanned<RawService>,
    locator: &Locator<'_>,
    network: &NetworkConfig,
    warnings: &mut Vec<String>,
) -> Result<ServiceConfig, ConfigError> {
    let raw = spanned.get_ref();
    let vip = locator.address(&raw.vip, "service vip")?;
    if let Some(class) = unusable_vip_class(vip) {
        return Err(locator.error_at(
            &raw.vip.span(),
            format!(
                "service vip: {vip} is {class}; a VIP must be a unicast address clients can reach"
            ),
        ));
    }
    let protocol = match raw.protocol.get_ref().as_str() {
        "tcp" => ip_protocol::TCP,
        "udp" => ip_protocol::UDP,
        other => {
            return Err(locator.error_at(
                &raw.protocol.span(),
                format!("service protocol: {other:?} is not allowed; use \"tcp\" or \"udp\""),
            ))
        }
    };
    let mode = ForwardingMode::from_name(raw.mode.get_ref()).ok_or_else(|| {
        locator.error_at(
            &raw.mode.span(),
            format!(
                "service mode: {:?} is not allowed; use dr, nat, fullnat or tun",
                raw.mode.get_ref()
            ),
        )
    })?;
    let scheduler = SchedulerKind::from_name(raw.scheduler.get_ref()).ok_or_else(|| {
        locator.error_at(
            &raw.scheduler.span(),
            format!(
                "service scheduler: {:?} is not allowed; use {}",
                raw.scheduler.get_ref(),
                SchedulerKind::NAMES
            ),
        )
    })?;
    let port = *raw.port.get_ref();
    let key = ServiceKey {
        vip,
        port,
        protocol,
    };
    let name = describe(&key);
    if port == 0 && !matches!(mode, ForwardingMode::Dr | ForwardingMode::Tun) {
        return Err(locator.error_at(
            &raw.port.span(),
            format!("service {name}: port 0 (all ports) is allowed in dr and tun modes only"),
        ));
    }
    let v4 = vip.is_ipv4();
    let tunnel_source = if v4 {
        network.tunnel_source_v4
    } else {
        network.tunnel_source_v6
    };
    if mode == ForwardingMode::Tun && tunnel_source.is_none() {
        return Err(locator.error_at(
            &raw.mode.span(),
            format!(
                "service {name}: tun mode needs [network] tunnel_source_v{} for its encapsulation",
                if v4 { 4 } else { 6 }
            ),
        ));
    }
    if mode == ForwardingMode::FullNat && !network.local_addresses.iter().any(|a| a.is_ipv4() == v4)
    {
        return Err(locator.error_at(
            &raw.mode.span(),
            format!(
                "service {name}: fullnat mode needs [network] local_addresses of the {} family",
                if v4 { "IPv4" } else { "IPv6" }
            ),
        ));
    }
    if let (None, Some(_)) = (&raw.persistence_timeout, &raw.persistence_netmask) {
        warnings.push(format!(
            "service {name}: persistence_netmask has no effect without persistence_timeout"
        ));
    }
    let persistence = match &raw.persistence_timeout {
        Some(timeout) => {
            if !limits::TIMEOUT_SECONDS.contains(timeout.get_ref()) {
                return Err(locator.error_at(
                    &timeout.span(),
                    format!(
                        "service persistence_timeout: allowed {} to {} seconds",
                        limits::TIMEOUT_SECONDS.start(),
                        limits::TIMEOUT_SECONDS.end()
                    ),
                ));
            }
            let netmask = raw.persistence_netmask.as_ref().map(|n| *n.get_ref());
            let max = if v4 { 32 } else { 128 };
            if let (Some(len), Some(spanned)) = (netmask, &raw.persistence_netmask) {
                if len > max {
                    return Err(locator.error_at(
                        &spanned.span(),
                        format!("service persistence_netmask: a prefix length up to {max}"),
                    ));
                }
            }
            Some(PersistenceSpec {
                timeout_ms: timeout.get_ref() * 1000,
                prefix_v4: if v4 { netmask.unwrap_or(32) } else { 32 },
                prefix_v6: if v4 { 128 } else { netmask.unwrap_or(128) },
            })
        }
        None => None,
    };
    let mut seen = HashSet::new();
    let service_alpha = raw.alpha.unwrap_or(false);
    // The checks of one backend or of the sorry server (`what` names it in the messages).
    let mut validate_backend = |spanned_backend: &Spanned<RawBackend>,
                                what: &str,
                                warnings: &mut Vec<String>|
     -> Result<BackendConfig, ConfigError> {
        let backend = spanned_backend.get_ref();
        let address = locator.address(&backend.address, &format!("{what} address"))?;
        if address.is_ipv4() != v4 {
            return Err(locator.error_at(
                &backend.address.span(),
                format!("{what} address: {address} is not of the family of VIP {vip}; mix families in separate services"),
            ));
        }
        let backend_port = backend.port.as_ref().map_or(port, |p| *p.get_ref());
        if matches!(mode, ForwardingMode::Dr | ForwardingMode::Tun) && backend_port != port {
            let span = backend
                .port
                .as_ref()
                .map_or(backend.address.span(), |p| p.span());
            return Err(locator.error_at(
                &span,
                format!(
                    "{what} port: {backend_port} differs from the service port {port}; {} cannot map ports (use nat \
                     or fullnat, or drop the port)",
                    raw.mode.get_ref()
                ),
            ));
        }
        if matches!(mode, ForwardingMode::Nat | ForwardingMode::FullNat) && backend_port == 0 {
            return Err(locator.error_at(
                &backend.address.span(),
                format!("{what} port: needs a port in nat and fullnat modes"),
            ));
        }
        let weight = match &backend.weight {
            Some(spanned_weight) => {
                let weight = *spanned_weight.get_ref();
                if !(0..=65535).contains(&weight) {
                    return Err(locator.error_at(
                        &spanned_weight.span(),
                        format!("{what} weight: allowed 0 (drained) to 65535"),
                    ));
                }
                weight as u32
            }
            None => 1,
        };
        let mac = match &backend.mac {
            Some(mac) => Some(
                parse_mac(mac.get_ref())
                    .map_err(|e| locator.error_at(&mac.span(), format!("{what} mac: {e}")))?,
            ),
            None => None,
        };
        if !seen.insert((address, backend_port)) {
            return Err(locator.error_at(
                &spanned_backend.span(),
                format!(
                    "{what} {}: listed twice in service {name}",
                    balancer::snapshot::describe_endpoint(address, backend_port)
                ),
            ));
        }
        let health_checks = match &backend.health_check {
            Some(checks) => validate_health_checks(checks, locator, warnings)?,
            None => Vec::new(),
        };
        let notify = validate_notify(backend, locator)?;
        Ok(BackendConfig {
            address,
            port: backend_port,
            weight,
            mac,
            health_checks,
            alpha: backend.alpha.unwrap_or(service_alpha),
            drained: backend.drained.unwrap_or(false),
            notify,
        })
    };
    let mut backends = Vec::new();
    for spanned_backend in &raw.backend {
        backends.push(validate_backend(spanned_backend, "backend", warnings)?);
    }
    let sorry_server = match &raw.sorry_server {
        Some(spanned) => {
            let sorry = spanned.get_ref();
            if sorry.health_check.is_some()
                || sorry.alpha.is_some()
                || sorry.drained.is_some()
                || sorry.notify_up.is_some()
                || sorry.notify_down.is_some()
                || sorry.notify_timeout.is_some()
            {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "service {name}: sorry_server takes address, port, weight and mac only (it is not checked)"
                    ),
                ));
            }
            Some(validate_backend(spanned, "sorry_server", warnings)?)
        }
        None => None,
    };
    if backends.is_empty() {
        warnings.push(format!(
            "service {name} has no backends: it will drop its traffic (counted)"
        ));
    }
    let count = |value: &Option<Spanned<i64>>, field: &str, default: u32| match value {
        Some(spanned) => u32::try_from(*spanned.get_ref())
            .ok()
            .filter(|value| *value <= 65535 * 1024)
            .ok_or_else(|| {
                locator.error_at(
                    &spanned.span(),
                    format!(
                        "service {field}: allowed 0 to {} (a sum of backend weights)",
                        65535 * 1024
                    ),
                )
            }),
        None => Ok(default),
    };
    let quorum = count(&raw.quorum, "quorum", 1)?;
    let hysteresis = count(&raw.hysteresis, "hysteresis", 0)?;
    if quorum == 0 {
        let span = raw.quorum.as_ref().map_or(0..0, |q| q.span());
        return Err(locator.error_at(
            &span,
            format!(
                "service {name}: quorum 0 can never be lost; allowed 1 and more (1 is the default)"
            ),
        ));
    }
    if hysteresis >= quorum {
        let span = raw.hysteresis.as_ref().map_or(0..0, |h| h.span());
        return Err(locator.error_at(
            &span,
            format!(
                "service {name}: hysteresis {hysteresis} must be below the quorum {quorum} (the quorum is lost \
                 below quorum - hysteresis)"
            ),
        ));
    }
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if u64::from(quorum) + u64::from(hysteresis) > total && !backends.is_empty() {
        warnings.push(format!(
            "service {name}: its backends' weights sum to {total}, below quorum {quorum} + hysteresis {hysteresis}: \
             the quorum can never be reached{}",
            if sorry_server.is_some() { " and the sorry server takes all its traffic" } else { "" }
        ));
    }
    if raw.quorum.is_some() && sorry_server.is_none() {
        warnings.push(format!(
            "service {name}: quorum without a sorry_server only shows in ctl list and the metrics (nothing takes \
             over when it is lost)"
        ));
    }
    Ok(ServiceConfig {
        key,
        mode,
        scheduler,
        persistence,
        backends,
        quorum,
        hysteresis,
        sorry_server,
    })
}

/// `notify_up`, `notify_down` and `notify_timeout` of a backend.
fn validate_notify(
    backend: &RawBackend,
    locator: &Locator<'_>,
) -> Result<NotifyConfig, ConfigError> {
    let command = |value: &Option<Spanned<String>>,
                   field: &str|
     -> Result<Option<String>, ConfigError> {
        match value {
            Some(spanned) => {
                let text = spanned.get_ref().trim();
                if text.is_empty() || text.len() > limits::COMMAND_BYTES || text.contains('\0') {
                    return Err(locator.error_at(
                        &spanned.span(),
                        format!(
                            "backend {field}: a command line of 1 to {} bytes without NUL (run with /bin/sh -c)",
                            limits::COMMAND_BYTES
                        ),
                    ));
                }
                Ok(Some(text.to_owned()))
            }
            None => Ok(None),
        }
    };
    let timeout = match &backend.notify_timeout {
        Some(spanned) => seconds(*spanned.get_ref(), "notify_timeout", limits::SCRIPT_TIMEOUT)
            .map_err(|error| locator.error_at(&spanned.span(), format!("backend {error}")))?,
        None => NotifyConfig::default().timeout,
    };
    Ok(NotifyConfig {
        up: command(&backend.notify_up, "notify_up")?,
        down: command(&backend.notify_down, "notify_down")?,
        timeout,
    })
}

/// One `health_check` table, or an array of them (several checkers, all must pass).
fn validate_health_checks(
    spanned: &Spanned<toml::Value>,
    locator: &Locator<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<HealthCheckConfig>, ConfigError> {
    let span = spanned.span();
    let tables: Vec<&toml::Value> = match spanned.get_ref() {
        table @ toml::Value::Table(_) => vec![table],
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(toml::Value::is_table) => {
            items.iter().collect()
        }
        _ => {
            return Err(locator.error_at(
                &span,
                "health_check: a table ([service.backend.health_check]), or tables ([[service.backend.health_check]]) \
                 for several checkers",
            ))
        }
    };
    if tables.len() > limits::CHECKERS {
        return Err(locator.error_at(
            &span,
            format!(
                "health_check: at most {} checkers per backend",
                limits::CHECKERS
            ),
        ));
    }
    let mut checks = Vec::with_capacity(tables.len());
    for table in tables {
        let raw = RawHealthCheck::deserialize(table.clone()).map_err(|error| {
            locator.error_at(&span, format!("health_check: {}", error.message()))
        })?;
        checks.push(validate_health_check(&raw, &span, locator, warnings)?);
    }
    Ok(checks)
}

fn validate_health_check(
    raw: &RawHealthCheck,
    span: &std::ops::Range<usize>,
    locator: &Locator<'_>,
    warnings: &mut Vec<String>,
) -> Result<HealthCheckConfig, ConfigError> {
    let fail = |message: String| locator.error_at(span, format!("health_check: {message}"));
    let kind = match raw.kind.as_str() {
        "tcp" => {
            if raw.path.is_some() || raw.status.is_some() {
                let line = locator.line(span.start);
                warnings.push(format!(
                    "{}:{line}: health_check: path and status apply to http checks; this tcp check ignores them",
                    locator.origin
                ));
            }
            CheckKind::Tcp
        }
        "http" => {
            let path = raw.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/')
                || path.len() > limits::PATH_BYTES
                || !path.bytes().all(|byte| byte.is_ascii_graphic())
            {
                return Err(fail(format!(
                    "path {path:?}: an absolute path of at most {} printable ASCII characters without spaces \
                     (percent-encode the others)",
                    limits::PATH_BYTES
                )));
            }
            let expected_status = raw.status.unwrap_or(200);
            if !limits::STATUS.contains(&expected_status) {
                return Err(fail(format!(
                    "status {expected_status}: allowed {} to {}",
                    limits::STATUS.start(),
                    limits::STATUS.end()
                )));
            }
            CheckKind::Http {
                path,
                expected_status,
            }
        }
        "misc" => {
            let command = raw.misc_path.as_deref().map(str::trim).unwrap_or_default();
            if command.is_empty() || command.len() > limits::COMMAND_BYTES || command.contains('\0')
            {
                return Err(fail(format!(
                    "misc_path: a misc check needs a command line of 1 to {} bytes without NUL (run with /bin/sh -c; \
                     exit status 0 passes)",
                    limits::COMMAND_BYTES
                )));
            }
            // keepalived's default misc_timeout is the delay_loop.
            let timeout = seconds(
                raw.misc_timeout.or(raw.delay_loop).unwrap_or(60.0),
                "misc_timeout",
                limits::SCRIPT_TIMEOUT,
            )
            .map_err(fail)?;
            CheckKind::Misc {
                command: command.to_owned(),
                timeout,
            }
        }
        other => {
            return Err(fail(format!(
                "type {other:?} is not allowed; use \"tcp\", \"http\" or \"misc\""
            )))
        }
    };
    let is_misc = matches!(kind, CheckKind::Misc { .. });
    if !is_misc && (raw.misc_path.is_some() || raw.misc_timeout.is_some()) {
        return Err(fail(format!(
            "misc_path and misc_timeout apply to type = \"misc\", not to this {} check",
            raw.kind
        )));
    }
    if is_misc
        && (raw.connect_ip.is_some()
            || raw.connect_port.is_some()
            || raw.path.is_some()
            || raw.status.is_some())
    {
        return Err(fail(
            "connect_ip, connect_port, path and status do not apply to a misc check (its command checks)".into(),
        ));
    }
    let on_failure = match raw.on_failure.as_deref().unwrap_or("remove") {
        "remove" => OnFailure::Remove,
        "inhibit" => OnFailure::Inhibit,
        other => {
            return Err(fail(format!(
                "on_failure {other:?} is not allowed; use \"remove\" or \"inhibit\""
            )))
        }
    };
    let connect_ip = match &raw.connect_ip {
        Some(text) => Some(
            text.parse()
                .map_err(|_| fail(format!("connect_ip {text:?} is not an IP address")))?,
        ),
        None => None,
    };
    if raw.connect_port == Some(0) {
        return Err(fail("connect_port: allowed 1 to 65535".into()));
    }
    let retry = raw.retry.unwrap_or(1);
    if !limits::RETRY.contains(&retry) {
        return Err(fail(format!(
            "retry = {retry}: allowed {} to {} consecutive failures",
            limits::RETRY.start(),
            limits::RETRY.end()
        )));
    }
    Ok(HealthCheckConfig {
        kind,
        connect_ip,
        connect_port: raw.connect_port,
        connect_timeout: seconds(
            raw.connect_timeout.unwrap_or(5.0),
            "connect_timeout",
            limits::CONNECT_TIMEOUT,
        )
        .map_err(fail)?,
        delay_loop: seconds(
            raw.delay_loop.unwrap_or(60.0),
            "delay_loop",
            limits::DELAY_LOOP,
        )
        .map_err(fail)?,
        retry,
        delay_before_retry: seconds(
            raw.delay_before_retry.unwrap_or(1.0),
            "delay_before_retry",
            limits::DELAY_BEFORE_RETRY,
        )
        .map_err(fail)?,
        on_failure,
        warmup: seconds(raw.warmup.unwrap_or(0.0), "warmup", limits::WARMUP).map_err(fail)?,
    })
}

/// The control socket's path and the metrics address: a bare port listens on loopback; a wildcard address is
/// accepted with a warning (the endpoint then answers every interface).
fn validate_control(
    raw: &RawControl,
    locator: &Locator<'_>,
    warnings: &mut Vec<String>,
) -> Result<ControlConfig, ConfigError> {
    let socket = match &raw.socket {
        Some(spanned) => {
            let path = spanned.get_ref();
            if path.is_empty() || path.len() > limits::SOCKET_PATH_BYTES || path.contains('\0') {
                return Err(locator.error_at(
                    &spanned.span(),
                    format!(
                        "control socket: a path of 1 to {} bytes (a Unix socket's limit)",
                        limits::SOCKET_PATH_BYTES
                    ),
                ));
            }
            Some(path.clone())
        }
        None => None,
    };
    let metrics = match &raw.metrics {
        Some(spanned) => {
            let text = spanned.get_ref().trim();
            let address = match text.parse::<u16>() {
                Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                Err(_) => text.parse::<SocketAddr>().map_err(|_| {
                    locator.error_at(
                        &spanned.span(),
                        format!(
                            "control metrics: {text:?} is not PORT (on 127.0.0.1) or ADDRESS:PORT (IPv6 as [addr]:port)"
                        ),
                    )
                })?,
            };
            if address.ip().is_unspecified() {
                warnings.push(format!(
                    "control metrics {address}: a wildcard address serves the metrics on every interface; \
                     name a loopback or management address unless that is meant"
                ));
            }
            Some(address)
        }
        None => None,
    };
    Ok(ControlConfig { socket, metrics })
}

/// Stable backend ids: the same (service, address, port) keeps its id across reloads; new backends get fresh ids;
/// ids of removed backends are not given out again by this registry.
#[derive(Debug, Default, Clone)]
pub struct BackendIdRegistry {
    ids: HashMap<(ServiceKey, IpAddr, u16), BackendId>,
    next: u32,
}

impl BackendIdRegistry {
    pub fn new() -> BackendIdRegistry {
        BackendIdRegistry::default()
    }

    /// The id of a backend, assigning a fresh one the first time.
    pub fn id(&mut self, service: ServiceKey, addr: IpAddr, port: u16) -> BackendId {
        let next = &mut self.next;
        *self.ids.entry((service, addr, port)).or_insert_with(|| {
            let id = BackendId(*next);
            *next += 1;
            id
        })
    }

    /// Forgets backends `config` no longer has.
    pub fn retain(&mut self, config: &Config) {
        let present: HashSet<(ServiceKey, IpAddr, u16)> = config
            .services
            .iter()
            .flat_map(|s| s.all_backends().map(move |b| (s.key, b.address, b.port)))
            .collect();
        self.ids.retain(|key, _| present.contains(key));
    }

    /// One past the largest id given out: the size per-backend tables need.
    pub fn id_bound(&self) -> u32 {
        self.next
    }

    /// Every id in use, by backend.
    pub fn ids(&self) -> BTreeMap<BackendId, (ServiceKey, IpAddr, u16)> {
        self.ids.iter().map(|(key, id)| (*id, *key)).collect()
    }
}
