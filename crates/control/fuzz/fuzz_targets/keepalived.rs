//! Arbitrary bytes as a keepalived.conf through the importer; its output must be accepted by the configuration parser
//! (`control::fuzzing::keepalived`, which the test suite also smoke-runs). Run: `scripts/fuzz-control.sh keepalived SECONDS`, or
//! `cargo +nightly fuzz run keepalived` from crates/control where cargo-fuzz is installed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    control::fuzzing::keepalived(data);
});
