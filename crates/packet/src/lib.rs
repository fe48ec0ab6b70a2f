//! Zero-copy header views and in-place rewrites for the frames sluice forwards. No DPDK dependency.

pub mod flow;

pub use flow::{ip_protocol, FlowKey};
