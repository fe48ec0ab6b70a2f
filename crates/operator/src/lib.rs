//! What an operator of a running sluice talks to, and the control thread behind it: the control loop (running
//! configuration, health, snapshot publication), the control socket and metrics endpoint (`serve`, `ctl`), the
//! ipvsadm-style views, the keepalived importer, VIP ownership (following keepalived, announcing for BGP), the
//! kernel exception path's set-up and the connection sync between nodes. No DPDK dependency: the binary wires
//! these to the devices.
#![forbid(unsafe_code)]
pub mod announce;
pub mod check;
pub mod cluster;
pub mod connections;
pub mod control_loop;
pub mod ctl;
pub mod exception;
pub mod keepalived;
pub mod metrics;
pub mod netlink;
pub mod rate;
pub mod serve;
pub mod service_stats;
pub mod sync;
pub mod sync_wire;
pub mod validate;
pub mod vip_owner;
