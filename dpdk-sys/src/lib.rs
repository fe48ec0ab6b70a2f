//! Raw bindings to the system DPDK (bindgen over pkg-config `libdpdk`) plus a C shim for its inline functions.
//!
//! Nothing here is safe to call directly; `crates/dpdk` is the safe layer. Poll-mode drivers (net_pcap, net_ring,
//! net_null, net_tap, net_memif, net_af_packet, net_af_xdp, ...) are not linked: DPDK's EAL loads every driver
//! from its plugin directory (Debian: /usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0) at initialisation.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
