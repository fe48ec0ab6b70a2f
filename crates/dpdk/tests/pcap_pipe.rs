//! A pcap pushed through two net_pcap ports comes out identical, frame by frame, and every mbuf returns to its pool.

mod common;

use dataplane::io::Burst;
use dpdk::{Eal, Mempool, Port, PortConfig, DEFAULT_DATA_ROOM, SOCKET_ANY};

#[test]
fn pcap_in_equals_pcap_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    let output = dir.path().join("out.pcap");
    let empty = dir.path().join("empty.pcap");
    let discard = dir.path().join("discard.pcap");
    let frames = common::sample_frames(500);
    common::write_pcap(&input, &frames);
    common::write_pcap(&empty, &[]);
    let args = common::eal_args(&[
        &format!(
            "--vdev=net_pcap0,rx_pcap={},tx_pcap={}",
            input.display(),
            discard.display()
        ),
        &format!(
            "--vdev=net_pcap1,rx_pcap={},tx_pcap={}",
            empty.display(),
            output.display()
        ),
    ]);
    let eal = Eal::init(&args).unwrap();
    let pool = Mempool::new("pipe", 1023, 32, DEFAULT_DATA_ROOM, SOCKET_ANY).unwrap();
    let pool = std::sync::Arc::new(pool);
    {
        let input_port = Port::configure(
            &eal,
            eal.port_by_name("net_pcap0").unwrap(),
            &PortConfig::default(),
            &pool,
        )
        .unwrap();
        let output_port = Port::configure(
            &eal,
            eal.port_by_name("net_pcap1").unwrap(),
            &PortConfig::default(),
            &pool,
        )
        .unwrap();
        let mut rx = input_port.rx_queue(0).unwrap();
        let mut tx = output_port.tx_queue(0, &pool).unwrap();
        let mut burst = Burst::new();
        let mut forwarded = 0;
        let mut idle = 0;
        while forwarded < frames.len() && idle < 100_000 {
            if rx.rx_burst(&mut burst, 32) == 0 {
                idle += 1;
                continue;
            }
            while !burst.is_empty() {
                forwarded += tx.tx_burst(&mut burst);
            }
        }
        assert_eq!(forwarded, frames.len());
        let stats = input_port.stats().unwrap();
        assert_eq!(stats.rx_packets, frames.len() as u64);
        assert_eq!(pool.in_use(), 0, "every mbuf back in the pool");
        // Dropping the ports stops and closes them: net_pcap writes its file then.
    }
    assert_eq!(common::read_pcap(&output), frames);
    assert_eq!(pool.in_use(), 0);
}
