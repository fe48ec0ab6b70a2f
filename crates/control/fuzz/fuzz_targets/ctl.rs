//! Arbitrary bytes as a control-socket line and as the head of a request to the metrics endpoint
//! (`control::fuzzing::ctl`, which the test suite also smoke-runs). Run: `scripts/fuzz-control.sh ctl SECONDS`, or
//! `cargo +nightly fuzz run ctl` from crates/control where cargo-fuzz is installed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    control::fuzzing::ctl(data);
});
