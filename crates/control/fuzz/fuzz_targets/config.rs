//! Arbitrary bytes as a configuration file, through validation, the snapshot spec and the snapshot
//! (`control::fuzzing::config`, which the test suite also smoke-runs). Run: `scripts/fuzz-control.sh config SECONDS`, or
//! `cargo +nightly fuzz run config` from crates/control where cargo-fuzz is installed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    control::fuzzing::config(data);
});
