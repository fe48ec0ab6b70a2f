//! Services, backends, weighted Maglev, the LVS schedulers, the per-core connection table and the forwarding decision. No DPDK dependency.
