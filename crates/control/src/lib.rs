//! Configuration, the control thread, table publication, health checks and statistics. No DPDK dependency.
#![forbid(unsafe_code)]
pub mod backend_state;
pub mod config;
pub mod fuzzing;
pub mod health;
pub mod keepalived;
pub mod keepalived_vrrp;
pub mod observe;
pub mod protocol;
pub mod render;
pub mod script;
pub mod sync_config;
pub mod systemd;
pub mod vip_owner;
