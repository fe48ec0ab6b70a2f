#!/usr/bin/env bash
# Instructions per frame of `sluice run` on the replay of the headline benchmark, counted by callgrind: the worker
# as it runs on a DPDK port (the net_pcap PMD's receive and transmit included, as in every replay figure), and a
# count that does not drift with the load of a shared machine, for comparing two builds where Mpps cannot. At this
# worker's few cycles per instruction, fewer instructions have meant less time; confirm a gain with the replay.
# bench/instructions.sh counts the in-process generator's path instead (`sluice bench`, no device).
# Needs valgrind (`apt-get install valgrind`); runs without hugepages (`--no-huge`).
#
# Usage: bench/replay-instructions.sh SLUICE [mode ...] [-- family flows]   (default: all modes, ipv4, 1000 flows)
# Example: bench/replay-instructions.sh target/release/sluice dr nat -- ipv6 1000
set -euo pipefail
SLUICE=$1
shift
modes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    modes+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
family=${1:-ipv4}
flows=${2:-1000}
[ ${#modes[@]} -eq 0 ] && modes=(dr nat fullnat tun)
command -v valgrind > /dev/null || { echo "replay-instructions.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
WORKER_CPU=1
if [ "$(nproc)" -lt 2 ]; then WORKER_CPU=0; fi
EAL_MEMORY='"--no-huge", "-m", "1024"'
# shellcheck source=bench/replay-config.sh
source "$(dirname "$0")/replay-config.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

vip=10.0.0.100
[ "$family" = ipv6 ] && vip=2001:db8::100
frames=$((flows > 8192 ? flows : 8192))
"$SLUICE" generate --out "$work/replay.pcap" --vip "$vip" --flows "$flows" --frames "$frames" \
    --dst-mac 02:00:00:00:00:01 > /dev/null

echo "| mode | family | flows | instructions per frame | frames counted |"
echo "|---|---|---|---|---|"
for mode in "${modes[@]}"; do
    sluice_config "$mode" "$family" "$work/replay.pcap" $((frames + 16384)) > "$work/$mode.toml"
    valgrind --tool=callgrind --callgrind-out-file="$work/$mode.callgrind" "$SLUICE" run --config "$work/$mode.toml" \
        --max-packets 400000 > "$work/$mode.log" 2>&1
    # The worker thread's whole loop (its closure, which holds the poll), over the frames the worker received.
    loop=$(callgrind_annotate --inclusive=yes "$work/$mode.callgrind" 2> /dev/null |
        grep "run_balancer::{{closure}} \[" | head -1 | awk '{ gsub(",", "", $1); print $1 }')
    received=$(sed -n 's/^worker 0: rx \([0-9]*\).*/\1/p' "$work/$mode.log")
    awk -v m="$mode" -v fam="$family" -v n="$flows" -v l="${loop:-0}" -v r="${received:-0}" \
        'BEGIN { if (r == 0 || l == 0) { printf "| %s | %s | %s | not counted | 0 |\n", m, fam, n; exit }
                 printf "| %s | %s | %s | %.1f | %d |\n", m, fam, n, l / r, r }'
done
