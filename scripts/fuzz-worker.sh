#!/usr/bin/env bash
# Fuzzes whole workers (crates/dataplane/fuzz, target worker) with libFuzzer: arbitrary scripts of frames on both
# ports, answers to what the workers sent, fragments, time steps and table updates; every frame sent must parse and
# carry valid checksums. Runs for SECONDS (default 60) or, with RUNS, that many executions; starts from the seed
# scripts of dataplane::fuzzing::seeds and prints libFuzzer's summary. Further arguments go to libFuzzer (e.g.
# -fork=2 -ignore_crashes=1 for a long run on two cores that keeps going past a crash). Uses cargo-fuzz when it is installed, else
# builds with the same coverage flags by hand (a nightly toolchain is needed either way).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
runs=${RUNS:--1}
fuzz=crates/dataplane/fuzz
corpus=$fuzz/corpus/worker
mkdir -p "$corpus"
SLUICE_FUZZ_SEEDS=$PWD/$corpus cargo test --quiet -p dataplane --test fuzz_smoke -- the_seeds >/dev/null
if cargo fuzz --help >/dev/null 2>&1; then
    cd "$fuzz"
    exec cargo +nightly fuzz run worker corpus/worker -- -max_total_time="$seconds" -runs="$runs" -rss_limit_mb=2048 "${@:2}"
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the flags off build scripts and proc macros, as cargo-fuzz does.
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
cargo +nightly build --quiet --release --target "$triple" --manifest-path "$fuzz/Cargo.toml" --bin worker
mkdir -p "$fuzz/artifacts/worker"
exec "$fuzz/target/$triple/release/worker" "$corpus" -max_total_time="$seconds" -runs="$runs" -rss_limit_mb=2048 \
    -max_len=1024 -artifact_prefix="$fuzz/artifacts/worker/" -print_final_stats=1 "${@:2}"
