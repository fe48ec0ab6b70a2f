//! A net_ring port loops its transmit back to its receive; a worker pinned to a CPU and registered with DPDK
//! sends and receives a burst with buffers from the shared pool.

mod common;

use std::sync::Arc;

use dataplane::io::Burst;
use dpdk::{spawn_worker, Eal, Mbuf, Mempool, Port, PortConfig, DEFAULT_DATA_ROOM, SOCKET_ANY};

#[test]
fn ring_port_loops_back_on_a_registered_worker() {
    let eal = Eal::init(&common::eal_args(&["--vdev=net_ring0"])).unwrap();
    let pool = Arc::new(Mempool::new("ring", 511, 32, DEFAULT_DATA_ROOM, SOCKET_ANY).unwrap());
    let port = Port::configure(
        &eal,
        eal.port_by_name("net_ring0").unwrap(),
        &PortConfig::default(),
        &pool,
    )
    .unwrap();
    let info = port.device_info().unwrap();
    assert_eq!(info.driver, "net_ring");
    assert!(port.link().unwrap().up);
    let mut rx = port.rx_queue(0).unwrap();
    let mut tx = port.tx_queue(0, &pool).unwrap();
    assert!(port.rx_queue(1).is_err());
    let worker_pool = Arc::clone(&pool);
    let cpu = core_count().saturating_sub(1);
    let handle = spawn_worker(cpu, "ring-worker", move || {
        let lcore = dpdk::lcore_id();
        let mut out = Burst::new();
        for i in 0..32u8 {
            let mut mbuf = Mbuf::alloc(&worker_pool).expect("pool has buffers");
            assert!(mbuf.append(64));
            mbuf.data_mut().fill(i);
            assert!(mbuf.prepend(4));
            mbuf.data_mut()[..4].copy_from_slice(&[0xaa, 0xbb, 0xcc, i]);
            // More than the headroom: refused, the frame left as it was.
            assert!(!mbuf.prepend(u16::MAX));
            assert_eq!(mbuf.len(), 68);
            out.push(mbuf);
        }
        let sent = tx.tx_burst(&mut out);
        let mut back = Burst::new();
        let mut spins = 0;
        while back.len() < sent && spins < 1_000_000 {
            rx.rx_burst(&mut back, 32);
            spins += 1;
        }
        let contents: Vec<Vec<u8>> = back.iter().map(|m| m.data().to_vec()).collect();
        (lcore, sent, contents)
    })
    .unwrap();
    let (lcore, sent, contents) = handle.join().unwrap().unwrap();
    assert_ne!(lcore, u32::MAX, "the worker thread has an lcore id");
    assert_eq!(sent, 32);
    assert_eq!(contents.len(), 32);
    for (i, frame) in contents.iter().enumerate() {
        assert_eq!(frame.len(), 68);
        assert_eq!(&frame[..4], &[0xaa, 0xbb, 0xcc, i as u8]);
        assert!(frame[4..].iter().all(|&b| b == i as u8));
    }
    assert_eq!(pool.in_use(), 0, "every mbuf back in the pool");
    assert_eq!(port.stats().unwrap().tx_packets, 32);
}

fn core_count() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len())
}
