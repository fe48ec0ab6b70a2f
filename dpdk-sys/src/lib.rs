//! Raw bindings to the system DPDK (bindgen over pkg-config `libdpdk`) plus a C shim for its inline functions.
