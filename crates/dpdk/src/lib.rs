//! The thin safe layer over `dpdk-sys`: EAL, mempools, owned mbufs, ports and queues, lcores.
