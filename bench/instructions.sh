#!/usr/bin/env bash
# Instructions per frame of the worker path, counted by callgrind: a figure that does not drift with the load of a
# shared machine, for comparing two builds where Mpps cannot. `sluice bench` runs one second under valgrind
# (1K flows, established, unless extra arguments say otherwise); the count is the worker's poll loop with the
# in-process generator and counting sink taken out, divided by the frames it handled.
# Needs valgrind (`apt-get install valgrind`).
#
# Usage: bench/instructions.sh SLUICE [mode ...] [-- extra sluice bench arguments, e.g. --v6 or --new-connections]
# Example: bench/instructions.sh target/release/sluice dr nat fullnat tun
set -euo pipefail
SLUICE=$1
shift
modes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    modes+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
[ ${#modes[@]} -eq 0 ] && modes=(dr nat fullnat tun)
command -v valgrind > /dev/null || { echo "instructions.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The largest inclusive count of the lines matching $1 in the annotation $2.
largest() { grep -E "$1" "$2" | awk '{ gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0 } END { print m + 0 }'; }

echo "| mode | arguments | instructions per frame | frames counted |"
echo "|---|---|---|---|"
for mode in "${modes[@]}"; do
    out="$work/$mode.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$SLUICE" bench --mode "$mode" --flows 1000 \
        --seconds 1 "$@" > /dev/null 2>&1
    callgrind_annotate --inclusive=yes "$out" 2> /dev/null > "$work/inclusive"
    callgrind_annotate --tree=calling "$out" 2> /dev/null > "$work/tree"
    poll=$(largest "Worker<R,T>::poll( |$)" "$work/inclusive")
    rx=$(largest "TrafficSource as dataplane::io::RxQueue>::rx_burst( |$)" "$work/inclusive")
    tx=$(largest "CountingSink as dataplane::io::TxQueue>::tx_burst( |$)" "$work/inclusive")
    frames=$(grep -E ">   .*FrameTemplate::write \(" "$work/tree" | sed 's/.*(\([0-9,]*\)x).*/\1/' | tr -d , |
        awk '{ s += $1 } END { print s + 0 }')
    awk -v m="$mode" -v a="$*" -v p="$poll" -v r="$rx" -v t="$tx" -v f="$frames" \
        'BEGIN { if (f == 0) { printf "| %s | %s | no frames counted | 0 |\n", m, a; exit }
                 printf "| %s | %s | %.0f | %d |\n", m, a, (p - r - t) / f, f }'
done
