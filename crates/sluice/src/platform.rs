//! The device side of the metrics: each port's counters (`rte_eth_stats_get`, read on the control thread when the
//! metrics are asked for, never counted per packet) and the mempool's use, handed to the control loop as a reader
//! so that it needs no DPDK itself.

use std::sync::Arc;

use control::config::Config;
use control::observe::{MempoolSample, PlatformReader, PlatformSample, PortSample};
use dpdk::{Mempool, Port, PortStatsReader};

/// A reader of `ports` (named as in `config`) and `pool`.
pub fn reader(ports: &[Port], config: &Config, pool: &Arc<Mempool>) -> PlatformReader {
    let ports: Vec<(String, PortStatsReader)> = config
        .ports
        .iter()
        .zip(ports)
        .map(|(settings, port)| (settings.name.clone(), port.stats_reader()))
        .collect();
    let pool = Arc::clone(pool);
    Box::new(move || PlatformSample {
        ports: ports
            .iter()
            .filter_map(|(name, reader)| {
                // A port whose counters cannot be read (closing) is left out rather than shown as zeros.
                let stats = reader.read().ok()?;
                Some(PortSample {
                    name: name.clone(),
                    rx_packets: stats.rx_packets,
                    tx_packets: stats.tx_packets,
                    rx_bytes: stats.rx_bytes,
                    tx_bytes: stats.tx_bytes,
                    rx_missed: stats.rx_missed,
                    rx_errors: stats.rx_errors,
                    tx_errors: stats.tx_errors,
                    rx_no_mbuf: stats.rx_no_mbuf,
                })
            })
            .collect(),
        mempools: vec![MempoolSample {
            name: pool.name().to_owned(),
            in_use: u64::from(pool.in_use()),
            available: u64::from(pool.available()),
        }],
    })
}
