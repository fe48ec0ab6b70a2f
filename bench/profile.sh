#!/usr/bin/env bash
# Where a worker's time goes: sluice forwards a 64-byte TCP replay (net_pcap infinite_rx, 1K flows, DR unless a mode
# is given) on CPU 1 while `perf record -e cpu-clock` samples that CPU; prints the share of the worker thread's
# samples by stage. Needs linux-perf (`apt-get install linux-perf`).
#
# Usage: bench/profile.sh SLUICE [mode] [flows]
set -euo pipefail
SLUICE=$1
MODE=${2:-dr}
FLOWS=${3:-1000}
command -v perf > /dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The headline's replay and configuration (bench/replay.sh), on CPU 1 where perf samples.
WORKER_CPU=1
# shellcheck source=bench/replay-config.sh
source "$(dirname "$0")/replay-config.sh"
replay_pcap "$SLUICE" ipv4 "$FLOWS" "$work/replay.pcap"
sluice_config "$MODE" ipv4 "$work/replay.pcap" $(($(replay_frames "$FLOWS") + 16384)) > "$work/sluice.toml"
"$SLUICE" run --config "$work/sluice.toml" --duration-ms 6000 > /dev/null 2>&1 &
sluice=$!
sleep 2
perf record -q -e cpu-clock -C 1 -o "$work/perf.data" -- sleep 3 > /dev/null 2>&1
wait "$sluice" || true
worker=$(perf script -i "$work/perf.data" -F tid 2> /dev/null | sort | uniq -c | sort -rn | head -1 | awk '{print $2}')
perf report -i "$work/perf.data" --tid "$worker" --no-children --stdio --sort dso,sym 2> /dev/null |
    grep -E '^ +[0-9.]+%' | awk '
    { share = $1; sub("%", "", share); line = $0; total += share
      if (line ~ /\[k\]/) stage = "kernel (interrupts taking the CPU)"
      else if (line ~ /net_pcap|librte_/) stage = "receive and transmit (the net_pcap PMD, mbufs)"
      else if (line ~ /parse/) stage = "parse (Ethernet, IP, TCP)"
      else if (line ~ /conntrack|lookup_key|find_from|ConnKey/) stage = "connection table (lookup, key, hash)"
      else if (line ~ /account|touch|tcp_state/) stage = "connection state (IPVS TCP states, expiry)"
      else if (line ~ /rewrite|checksum|set_macs|encapsulate/) stage = "rewrite and checksums"
      else if (line ~ /decide|decision|snapshot|maglev|scheduler/) stage = "decision (out of line)"
      else if (line ~ /Engine.*handle|Engine.*forward|enqueue|flush|transmit/) stage = "frame handling (verdict, counters, tx bursts)"
      else if (line ~ /Worker.*poll|prefetch/) stage = "burst staging (prefetch, parse loop, key staging)"
      else stage = "other"
      shares[stage] += share }
    END { for (s in shares) printf "| %s | %.1f%% |\n", s, 100 * shares[s] / total }' | sort -t'|' -k3 -rn
