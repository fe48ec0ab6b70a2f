//! Arbitrary scripts through whole workers on in-memory ports (`dataplane::fuzzing::exercise`, which the test
//! suite also runs as a smoke test): every frame they send must parse and carry valid checksums, and nothing may
//! panic. Run: `scripts/fuzz-worker.sh [SECONDS]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::exercise(data);
});
