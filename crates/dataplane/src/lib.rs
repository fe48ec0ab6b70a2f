//! The worker burst loop, generic over packet I/O so that it runs on DPDK ports and on in-memory frames alike.
#![forbid(unsafe_code)]
pub mod awaiting_neighbor;
pub mod build;
pub mod control_queue;
pub mod exceptions;
pub mod fuzzing;
pub mod handoff;
pub mod held_fragments;
pub mod idle;
pub mod io;
pub mod kernel;
pub mod listing;
pub mod per_reason;
pub mod previous_table;
pub mod traffic;
pub mod vlan;
pub mod worker;

pub use balancer::rss;
