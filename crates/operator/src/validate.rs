//! Every check of a configuration that does not need the devices, shared by `sluice check` and `sluice run` (which
//! runs it before the EAL starts), so that a file `check` passes is not refused by `run` for a reason `check`
//! could have seen, and both say it in the same words: the forwarding snapshot is built (routes to backends, NAT
//! backends, address families, tunnel and local addresses) with placeholder MACs, each port's virtual device is
//! asked for a queue per worker, and the sync and metrics addresses and the control socket's directory are tried.

use std::net::{SocketAddr, TcpListener};

use control::config::{Config, PortConfig};

/// The checks `sluice run` makes before it starts the EAL: `Err` holds `run`'s message.
pub fn validate_for_run(config: &Config) -> Result<(), String> {
    check_without_addresses(config)?;
    if let Some(sync) = config.sync.as_ref().filter(|_| config.pipe.is_none()) {
        try_sync_address(sync.listen, true)?;
    }
    Ok(())
}

/// `sluice check`: what [`validate_for_run`] checks, and the addresses `run` binds (sync, metrics, the control
/// socket's directory). An address in use is only a warning (it may be the running sluice's own); one the host
/// cannot bind is `run`'s error. Returns the warnings.
pub fn validate_for_check(config: &Config) -> Result<Vec<String>, String> {
    check_without_addresses(config)?;
    let mut warnings = Vec::new();
    if let Some(sync) = config.sync.as_ref().filter(|_| config.pipe.is_none()) {
        warnings.extend(try_sync_address(sync.listen, false)?);
    }
    if let Some(socket) = &config.control.socket {
        let path = std::path::Path::new(socket);
        if let Some(directory) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            if let Err(error) = std::fs::metadata(directory) {
                return Err(format!("control socket {}: {error}", path.display()));
            }
        }
    }
    if let Some(address) = config.control.metrics {
        if let Some(warning) = try_metrics_address(address)? {
            warnings.push(warning);
        }
    }
    Ok(warnings)
}

/// The queues of the devices and the forwarding snapshot.
fn check_without_addresses(config: &Config) -> Result<(), String> {
    for port in &config.ports {
        check_queues(port, config.workers.cores.len())?;
    }
    if config.pipe.is_none() {
        // With `vip_owner = "vrrp"` a service is published only once keepalived gives its VIP: it is checked here
        // all the same, so that it is not refused then.
        config.check_snapshot()?;
    }
    Ok(())
}

/// Binds the sync listen address (UDP) and lets it go, with `run`'s message when the host cannot; an address in
/// use is `run`'s error when `in_use_is_error`, else a warning (a running sluice's own?).
fn try_sync_address(address: SocketAddr, in_use_is_error: bool) -> Result<Option<String>, String> {
    match std::net::UdpSocket::bind(address) {
        Ok(_) => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && !in_use_is_error => {
            Ok(Some(format!(
                "sync: listen {address}: {error} now (a running sluice's own?)"
            )))
        }
        Err(error) => Err(format!("sync: listen {address}: {error}")),
    }
}

/// Each worker polls its own queue pair of every port: a virtual device with fewer queue pairs than workers would
/// only fail inside the EAL, after the first workers were set up.
fn check_queues(port: &PortConfig, workers: usize) -> Result<(), String> {
    let Some((queues, how)) = vdev_queue_pairs(&port.device) else {
        return Ok(());
    };
    if workers > queues {
        return Err(format!(
            "port {}: device {} has {queues} queue pair{} and there are {workers} workers ([workers] cores): each \
             worker needs its own; {how}, or use fewer cores",
            port.name,
            port.device_name(),
            if queues == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

/// The queue pairs a virtual device's arguments give it, for the drivers whose arguments say so, and how to ask
/// for more.
fn vdev_queue_pairs(device: &str) -> Option<(usize, &'static str)> {
    let mut parts = device.split(',').map(str::trim);
    let driver = parts.next()?;
    let arguments: Vec<(&str, &str)> = parts.filter_map(|part| part.split_once('=')).collect();
    if driver.starts_with("net_af_packet") {
        let pairs = arguments
            .iter()
            .find(|(key, _)| *key == "qpairs")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(1);
        return Some((pairs, "give net_af_packet qpairs=N"));
    }
    if driver.starts_with("net_pcap") {
        let count = |names: &[&str]| {
            arguments
                .iter()
                .filter(|(key, _)| names.contains(key))
                .count()
        };
        let rx = count(&["rx_pcap", "rx_iface", "rx_iface_in", "iface"]);
        // Without a transmit argument the driver gives each receive queue a queue that drops what it is sent
        // (a replay benchmark's setting).
        let tx = match count(&["tx_pcap", "tx_iface", "iface"]) {
            0 => rx,
            tx => tx,
        };
        return Some((
            rx.min(tx),
            "give net_pcap one rx_pcap and one tx_pcap per worker",
        ));
    }
    None
}

/// Binds `address` and lets it go: `Err` with `run`'s message when the host cannot listen there, a warning when
/// something listens there now.
fn try_metrics_address(address: SocketAddr) -> Result<Option<String>, String> {
    match TcpListener::bind(address) {
        Ok(_) => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Ok(Some(format!(
            "metrics listener {address}: {error} now (a running sluice's own?)"
        ))),
        Err(error) => Err(format!("metrics listener {address}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::vdev_queue_pairs;

    #[test]
    fn queue_pairs_come_from_the_device_arguments() {
        assert_eq!(vdev_queue_pairs("net_af_packet0,iface=lb0").unwrap().0, 1);
        assert_eq!(
            vdev_queue_pairs("net_af_packet0,iface=lb0,qpairs=4")
                .unwrap()
                .0,
            4
        );
        assert_eq!(
            vdev_queue_pairs("net_pcap0,rx_pcap=a,rx_pcap=b,tx_pcap=c,tx_pcap=d")
                .unwrap()
                .0,
            2
        );
        assert_eq!(vdev_queue_pairs("net_pcap0,iface=eth0").unwrap().0, 1);
        // Receive only: each receive queue gets a dropping transmit queue.
        assert_eq!(
            vdev_queue_pairs("net_pcap0,rx_pcap=a,infinite_rx=1")
                .unwrap()
                .0,
            1
        );
        assert_eq!(
            vdev_queue_pairs("net_pcap0,rx_pcap=a,rx_pcap=b").unwrap().0,
            2
        );
        assert!(vdev_queue_pairs("0000:01:00.0").is_none());
        assert!(vdev_queue_pairs("net_tap0").is_none());
    }
}
