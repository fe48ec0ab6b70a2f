//! What this sluice binary is: its version, the commit and compiler it was built from, and the DPDK it runs on
//! (asked of the library at run time, which may differ from the one it was built against). `--version` prints it
//! and the `sluice_build_info` metric carries it.

use control::observe::BuildInfo;

/// This build, with the DPDK version of the library loaded now.
pub fn current() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("SLUICE_GIT_COMMIT").into(),
        rustc: env!("SLUICE_RUSTC").into(),
        profile: env!("SLUICE_PROFILE").into(),
        dpdk: dpdk::version(),
        dpdk_built_against: env!("SLUICE_DPDK_BUILT_AGAINST").into(),
    }
}

/// `sluice --version`: the version on the first line, then the build.
pub fn long_version() -> String {
    let build = current();
    format!(
        "{}\n{} (built against {})\ncommit {}\n{} ({} profile)",
        build.version,
        build.dpdk,
        build.dpdk_built_against,
        build.commit,
        build.rustc,
        build.profile
    )
}
