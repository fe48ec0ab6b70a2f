#!/usr/bin/env bash
# Compares two or more sluice builds in time, on the headline's replay: each round runs every build once, for
# SECONDS_PER_RUN seconds, in an order rotated from round to round (so that no build always runs first, after
# the same neighbour, or in the same slot of the host's swings), and prints each build's median rate. On a
# shared host single runs swing by a third; back-to-back pairs in a fixed order disagreed with each other from
# one hour to the next, and this did not. Instruction counts (bench/instructions.sh) can point the wrong way: a
# build with fewer instructions that waits longer for memory is slower, and only this shows it.
#
# Usage: bench/compare.sh MODE ROUNDS SLUICE SLUICE... (FAMILY, FLOWS and SECONDS_PER_RUN from the environment;
# defaults ipv4, 1000 and 2)
# Example: bench/compare.sh dr 11 /tmp/old/sluice target/release/sluice
set -euo pipefail
mode=$1 rounds=$2
shift 2
[ $# -ge 2 ] || { echo "compare.sh: give at least two builds" >&2; exit 1; }
builds=("$@")
family=${FAMILY:-ipv4} flows=${FLOWS:-1000} seconds=${SECONDS_PER_RUN:-2}
WORKER_CPU=1
if [ "$(nproc)" -lt 2 ]; then WORKER_CPU=0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=bench/replay-config.sh
source "$(dirname "$0")/replay-config.sh"
replay_pcap "${builds[0]}" "$family" "$flows" "$work/replay.pcap"
sluice_config "$mode" "$family" "$work/replay.pcap" $(($(replay_frames "$flows") + 16384)) > "$work/config.toml"

count=${#builds[@]}
declare -a rates
for round in $(seq "$rounds"); do
    for slot in $(seq 0 $((count - 1))); do
        build=$(((slot + round) % count))
        rate=$("${builds[$build]}" run --config "$work/config.toml" --duration-ms $((seconds * 1000)) 2>&1 |
            sed -n 's/.*rate \([0-9.]*\) Mpps.*/\1/p' | tail -1)
        rates[build]="${rates[build]:-} ${rate:-0}"
    done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "| build | $mode $family $flows flows: median Mpps of $rounds rounds | runs |"
echo "|---|---|---|"
for build in $(seq 0 $((count - 1))); do
    echo "| ${builds[build]} | $(echo "${rates[build]}" | median) |${rates[build]} |"
done
