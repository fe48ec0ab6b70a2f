//! Arbitrary bytes through the frame parser and every rewrite and answer (`packet::fuzzing::exercise`, which the
//! test suite also runs as a smoke test). Run: `cargo +nightly fuzz run frame` from crates/packet
//! (or `RUSTC_BOOTSTRAP=1 cargo fuzz run frame` on a stable toolchain).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    packet::fuzzing::exercise(data);
});
