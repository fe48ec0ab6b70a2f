//! Records what `sluice --version` and the `sluice_build_info` metric report about the build: the git commit (when
//! built from a checkout), the compiler and the profile. Anything that cannot be found is "unknown", never an error.

use std::process::Command;

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    // The commit checked out; uncommitted changes are not marked (this script does not rerun on every edit).
    let commit =
        output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // A new commit moves HEAD (or the branch it names): build again then, not on every build.
    if let Some(head) = output("git", &["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(reference) = output("git", &["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = output("git", &["rev-parse", "--git-path", &reference]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    let dpdk =
        output("pkg-config", &["--modversion", "libdpdk"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SLUICE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SLUICE_RUSTC={rustc}");
    println!("cargo:rustc-env=SLUICE_PROFILE={profile}");
    println!("cargo:rustc-env=SLUICE_DPDK_BUILT_AGAINST={dpdk}");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
}
