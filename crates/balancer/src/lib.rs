//! Services, backends, weighted Maglev, the LVS schedulers, the per-core connection table and the forwarding
//! decision. No DPDK dependency: everything here runs and tests on plain memory.
#![forbid(unsafe_code)]

pub mod conntrack;
pub mod decision;
pub mod exceptions;
pub mod expiry;
pub mod maglev;
pub mod neighbor;
pub mod persistence;
pub mod port_alloc;
pub mod route_table;
pub mod rss;
pub mod scheduler;
pub mod service;
pub mod snapshot;
