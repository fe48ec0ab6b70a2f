//! Generates bindings to the system DPDK found by pkg-config and builds the C shim over its inline functions.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(library) => library,
        Err(error) => panic!(
            "\n\nDPDK 22.11 or newer was not found by pkg-config (`libdpdk`): {error}\n\
             Run `sudo scripts/setup.sh` from the repository root to install dpdk, dpdk-dev, libdpdk-dev, \
             clang and libclang-dev, then build again.\n\n"
        ),
    };

    // pkg-config's own flags (include paths, `-include rte_config.h`, the machine flags DPDK was built for),
    // passed unchanged to the C compiler and to bindgen.
    let flags: Vec<String> = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    let mut shim = cc::Build::new();
    shim.file("shim/shim.c").warnings(false);
    for path in &dpdk.include_paths {
        shim.include(path);
    }
    let mut pending_include = false;
    for flag in &flags {
        // `-include rte_config.h` is two words; everything else is one.
        if pending_include {
            shim.flag("-include").flag(flag);
            pending_include = false;
        } else if flag == "-include" {
            pending_include = true;
        } else if !flag.starts_with("-I") {
            shim.flag(flag);
        }
    }
    shim.compile("sluice_dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(&flags)
        .clang_args(
            dpdk.include_paths
                .iter()
                .map(|path| format!("-I{}", path.display())),
        )
        .clang_macro_fallback()
        .allowlist_function("shim_.*")
        .allowlist_function("rte_eal_.*")
        .allowlist_function("rte_eth_.*")
        .allowlist_function("rte_pktmbuf_.*")
        .allowlist_function("rte_mempool_.*")
        .allowlist_function("rte_lcore_.*")
        .allowlist_function("rte_thread_.*")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_get_next_lcore")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_version")
        .allowlist_function("rte_dev_.*")
        .allowlist_function("rte_vdev_.*")
        .allowlist_function("rte_pdump_init")
        .allowlist_function("rte_pdump_uninit")
        .allowlist_type("rte_eth_conf")
        .allowlist_type("rte_eth_dev_info")
        .allowlist_type("rte_eth_stats")
        .allowlist_type("rte_eth_link")
        .allowlist_type("rte_ether_addr")
        .allowlist_type("rte_eth_rss_conf")
        .allowlist_var("RTE_ETH_.*")
        .allowlist_var("RTE_MBUF_.*")
        .allowlist_var("RTE_PKTMBUF_.*")
        .allowlist_var("RTE_MAX_.*")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("LCORE_ID_ANY")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_mempool")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen could not generate the DPDK bindings; is libclang-dev installed (scripts/setup.sh)?");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing the DPDK bindings");
}
