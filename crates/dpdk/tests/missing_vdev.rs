//! A vdev that fails to probe (its pcap file does not exist) is reported by name, although the EAL itself starts.

mod common;

use dpdk::{Eal, EalError};

#[test]
fn a_vdev_that_did_not_probe_is_named() {
    let error = Eal::init(&common::eal_args(&[
        "--vdev=net_ring0",
        "--vdev=net_pcap7,rx_pcap=/nonexistent/in.pcap,tx_pcap=/nonexistent/out.pcap",
    ]))
    .unwrap_err();
    assert_eq!(
        error,
        EalError::DeviceNotProbed {
            name: "net_pcap7".into()
        }
    );
}
