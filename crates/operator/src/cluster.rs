//! What a cluster of sluice nodes behind ECMP routers needs to see at a glance: a digest of each service's Maglev
//! table (equal on nodes that built the same table from the same configuration and health verdicts), and a warning
//! for the services whose flows do not survive the loss of a node.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use balancer::service::{ForwardingMode, SchedulerKind, ServiceKey};
use balancer::snapshot::{describe_service, Snapshot};
use control::config::Config;
use dataplane::kernel::KernelStats;

/// The digest of `key`'s Maglev table in `snapshot`, as 16 hex digits.
pub fn maglev_digest(snapshot: &Snapshot, key: &ServiceKey) -> Option<String> {
    snapshot
        .services()
        .iter()
        .find(|service| service.key == *key)
        .map(|service| format!("{:016x}", service.maglev.digest()))
}

/// What the control thread knows of the exception path and the announcement, for the metrics.
#[derive(Default)]
pub struct ClusterView {
    /// Per worker, when the exception path runs.
    pub kernel: Vec<Arc<KernelStats>>,
    /// The VIPs on the kernel interfaces now.
    pub announced: BTreeSet<IpAddr>,
    /// Whether VIPs are announced at all (the exception path runs).
    pub announcing: bool,
}

impl ClusterView {
    /// `sluice_kernel_frames_total` by worker and direction, and `sluice_vip_announced` per VIP.
    pub fn metrics(&self, vips: &BTreeSet<IpAddr>) -> String {
        let mut out = String::new();
        if !self.kernel.is_empty() {
            out.push_str(
                "# HELP sluice_kernel_frames_total Frames through the kernel exception path: to_kernel, copied \
                 (ARP/ND), from_kernel, and those dropped each way.\n# TYPE sluice_kernel_frames_total counter\n",
            );
            for (index, stats) in self.kernel.iter().enumerate() {
                for (name, counter) in [
                    ("to_kernel", &stats.to_kernel),
                    ("copied", &stats.copied),
                    ("from_kernel", &stats.from_kernel),
                    ("to_kernel_dropped", &stats.to_kernel_dropped),
                    ("from_kernel_dropped", &stats.from_kernel_dropped),
                ] {
                    out.push_str(&format!(
                        "sluice_kernel_frames_total{{worker=\"{index}\",direction=\"{name}\"}} {}\n",
                        counter.load(Ordering::Relaxed)
                    ));
                }
            }
        }
        if self.announcing {
            out.push_str(
                "# HELP sluice_vip_announced 1 while the VIP is on the kernel interfaces for the routing daemon to \
                 announce.\n# TYPE sluice_vip_announced gauge\n",
            );
            for vip in vips {
                out.push_str(&format!(
                    "sluice_vip_announced{{vip=\"{vip}\"}} {}\n",
                    u8::from(self.announced.contains(vip))
                ));
            }
        }
        out
    }
}

/// `sluice_service_maglev_table_info`: one sample per service, the digest as a label.
pub fn digest_metrics(snapshot: &Snapshot) -> String {
    let mut out = String::from(
        "# HELP sluice_service_maglev_table_info The digest of a service's Maglev table: equal on every node that \
         built the same table.\n# TYPE sluice_service_maglev_table_info gauge\n",
    );
    for service in snapshot.services() {
        out.push_str(&format!(
            "sluice_service_maglev_table_info{{service=\"{}\",digest=\"{:016x}\",backends=\"{}\"}} 1\n",
            describe_service(&service.key),
            service.maglev.digest(),
            service.maglev.backend_count()
        ));
    }
    out
}

/// Services whose flows move to another backend, or break, when ECMP moves them to another node: anything but a
/// Maglev (`mh`) DR or TUN service without persistence holds per-node state.
pub fn cluster_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for service in &config.services {
        let mut reasons = Vec::new();
        if service.scheduler != SchedulerKind::Mh {
            reasons.push(format!(
                "scheduler {} chooses per node",
                format!("{:?}", service.scheduler).to_lowercase()
            ));
        }
        if service.persistence.is_some() {
            reasons.push("persistence is kept per node".to_owned());
        }
        match service.mode {
            ForwardingMode::Nat => {
                reasons.push("NAT replies must return through the same node".to_owned())
            }
            ForwardingMode::FullNat => reasons
                .push("FULLNAT connections live in one node's table and local ports".to_owned()),
            ForwardingMode::Dr | ForwardingMode::Tun => {}
        }
        if !reasons.is_empty() {
            warnings.push(format!(
                "service {}: if this node is one of several behind ECMP, only mh services in DR or TUN mode keep \
                 their flows when a node goes; here {}",
                describe_service(&service.key),
                reasons.join(", ")
            ));
        }
    }
    warnings
}
