#!/usr/bin/env bash
# A profile-guided release build of sluice. An instrumented build forwards the benchmark's own replays: every mode in
# both families at 1K and 100K flows, NAT and FULLNAT with the backends' answers (the reply path), and a replay of a
# new SYN on every frame (new connections and eviction). The release build is then made again with the profile those
# runs wrote, so that the compiler lays the worker out along the paths traffic takes and keeps the rare ones aside.
#
# Needs llvm-profdata from the Rust toolchain's LLVM (`rustup component add llvm-tools`, which scripts/setup.sh runs).
# Builds in $CARGO_TARGET_DIR (default target/) under pgo-train/ and pgo/, and prints the binary's path on stdout:
# target/pgo/release/sluice. Takes two release builds and about a minute of training.
#
# Usage: scripts/build-pgo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$(pwd)/target}
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    echo "build-pgo.sh: $profdata not found: rustup component add llvm-tools" >&2
    exit 1
fi
# RUSTFLAGS replaces the rustflags of .cargo/config.toml, so its target CPU is named again here.
cpu=(-C target-cpu=x86-64-v2)
profiles="$target/pgo-profiles"
rm -rf "$profiles"
mkdir -p "$profiles"
echo "build-pgo.sh: instrumented build" >&2
RUSTFLAGS="${cpu[*]} -Cprofile-generate=$profiles" CARGO_TARGET_DIR="$target/pgo-train" \
    cargo build --release -q -p sluice >&2
trainer="$target/pgo-train/release/sluice"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
WORKER_CPU=1
if [ "$(nproc)" -lt 2 ]; then WORKER_CPU=0; fi
# Training needs no speed: no hugepages, and nothing left behind for secondary processes.
EAL_MEMORY='"--no-huge", "-m", "2048", "--no-shconf"'
# shellcheck source=bench/replay-config.sh
source bench/replay-config.sh

train() { # label config [extra arguments of sluice run]
    if ! "$trainer" run --config "$2" --duration-ms 1500 "${@:3}" > "$work/train.log" 2>&1; then
        cat "$work/train.log" >&2
        echo "build-pgo.sh: training on $1 failed" >&2
        exit 1
    fi
    if ! grep -q "drops none" "$work/train.log"; then
        echo "build-pgo.sh: training on $1 dropped frames: $(grep '^worker' "$work/train.log")" >&2
        exit 1
    fi
    echo "build-pgo.sh: trained on $1" >&2
}

for family in ipv4 ipv6; do
    for flows in 1000 100000; do
        replay_pcap "$trainer" "$family" "$flows" "$work/replay.pcap"
        for mode in dr nat fullnat tun; do
            sluice_config "$mode" "$family" "$work/replay.pcap" $(($(replay_frames "$flows") + 16384)) > "$work/run.toml"
            train "$mode $family $flows flows" "$work/run.toml"
        done
    done
    for mode in nat fullnat; do
        replay_pcap_with_answers "$trainer" "$mode" "$family" 1000 "$work/answers.pcap"
        sluice_config "$mode" "$family" "$work/answers.pcap" $((2 * $(replay_frames 1000) + 16384)) > "$work/run.toml"
        train "$mode $family with answers" "$work/run.toml" "${REPLAY_RUN_ARGS[@]}"
    done
done
# A new SYN on every frame, through a table of half as many connections (as bench/replay.sh's new-SYN replay): every
# frame opens a connection and evicts one. Only the eviction count tells these runs apart, so they may drop nothing
# else.
syn_flows=65536
"$trainer" generate --out "$work/syn.pcap" --vip "$(replay_vip ipv4)" --flows $syn_flows --frames $syn_flows \
    --dst-mac 02:00:00:00:00:01 > /dev/null
for mode in dr nat fullnat tun; do
    sluice_config "$mode" ipv4 "$work/syn.pcap" $((syn_flows + 16384)) $((syn_flows / 2)) > "$work/run.toml"
    train "$mode new SYN on every frame" "$work/run.toml"
done

"$profdata" merge -o "$profiles/merged.profdata" "$profiles"/*.profraw
# Cargo rebuilds when the flags change, not when a file they name does: the profile is named by its content.
profile="$profiles/$(sha256sum "$profiles/merged.profdata" | cut -c1-16).profdata"
mv "$profiles/merged.profdata" "$profile"
echo "build-pgo.sh: build with the profile" >&2
RUSTFLAGS="${cpu[*]} -Cprofile-use=$profile -Cllvm-args=-pgo-warn-missing-function=false" \
    CARGO_TARGET_DIR="$target/pgo" cargo build --release -q -p sluice >&2
echo "$target/pgo/release/sluice"
