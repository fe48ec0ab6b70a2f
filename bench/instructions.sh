#!/usr/bin/env bash
# Instructions per frame of the worker path, counted by callgrind: a figure that does not drift with the load of a
# shared machine, for comparing two builds where Mpps cannot. Needs valgrind (`apt-get install valgrind`).
#
# Two workloads:
# - by default, `sluice bench` runs one second under valgrind (1K flows, established, unless extra arguments say
#   otherwise); the count is the worker's poll loop with the in-process generator and counting sink taken out,
#   divided by the frames it handled;
# - with --replay, `sluice run` forwards the headline's replay (bench/replay-config.sh, without hugepages): the
#   worker as it runs on a DPDK port, the net_pcap PMD's receive and transmit included, as in every replay figure;
#   the count is the worker thread's whole loop divided by the frames it received. The extra arguments are the
#   family and the flows (default ipv4 1000). With --replay --answers (NAT and FULLNAT), the replay carries the
#   backends' answers too (replay_pcap_with_answers): half of its frames are replies. With --replay --new-syn,
#   every frame is a SYN of a flow of its own, through a table of half as many entries as the flows (default
#   131072), as in the headline's new-connection row: the count is per new connection.
#
# Usage: bench/instructions.sh SLUICE [--replay [--answers | --new-syn]] [mode ...] [-- extra arguments]
# Examples: bench/instructions.sh target/release/sluice dr nat fullnat tun
#           bench/instructions.sh target/release/sluice --replay dr nat -- ipv6 1000
#           bench/instructions.sh target/release/sluice --replay --answers nat fullnat
#           bench/instructions.sh target/release/sluice --replay --new-syn dr
set -euo pipefail
SLUICE=$1
shift
replay=false answers=false new_syn=false
if [ "${1:-}" = "--replay" ]; then
    replay=true
    shift
    if [ "${1:-}" = "--answers" ]; then
        answers=true
        shift
    elif [ "${1:-}" = "--new-syn" ]; then
        new_syn=true
        shift
    fi
fi
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
largest() { { grep -E "$1" "$2" || true; } | awk '{ gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0 } END { print m + 0 }'; }

# Per mode, sluice run on the replay of FAMILY and FLOWS.
count_replay() { # family flows
    local family=$1 flows=$2 mbufs loop received answers_label=""
    WORKER_CPU=1
    if [ "$(nproc)" -lt 2 ]; then WORKER_CPU=0; fi
    EAL_MEMORY='"--no-huge", "-m", "1024"'
    # shellcheck source=bench/replay-config.sh
    source "$(dirname "$0")/replay-config.sh"
    local run_args=() capacity=2097152
    mbufs=$(($(replay_frames "$flows") + 16384))
    if $new_syn; then
        # Each flow's first frame is a SYN: as many flows as frames make every frame a SYN of its own flow.
        "$SLUICE" generate --out "$work/replay.pcap" --vip "$(replay_vip "$family")" --flows "$flows" \
            --frames "$flows" --dst-mac 02:00:00:00:00:01 > /dev/null
        mbufs=$((flows + 16384)) capacity=$((flows / 2)) answers_label=" new SYN"
    elif $answers; then
        run_args=("${REPLAY_RUN_ARGS[@]}")
        answers_label=" + answers"
        mbufs=$((2 * $(replay_frames "$flows") + 16384))
    else
        replay_pcap "$SLUICE" "$family" "$flows" "$work/replay.pcap"
    fi
    echo "| mode | family | flows | instructions per frame | frames counted |"
    echo "|---|---|---|---|---|"
    for mode in "${modes[@]}"; do
        if $answers; then
            replay_pcap_with_answers "$SLUICE" "$mode" "$family" "$flows" "$work/replay.pcap"
        fi
        sluice_config "$mode" "$family" "$work/replay.pcap" "$mbufs" "$capacity" > "$work/$mode.toml"
        # Fair scheduling lets the control thread see --max-packets on time: without it the polling worker keeps
        # valgrind's thread lock, runs on for a number of frames that varies from run to run, and the first
        # frames' one-off costs (1K new connections) weigh differently in each count.
        valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$work/$mode.callgrind" "$SLUICE" run \
            --config "$work/$mode.toml" --max-packets 400000 "${run_args[@]}" > "$work/$mode.log" 2>&1
        callgrind_annotate --inclusive=yes "$work/$mode.callgrind" 2> /dev/null > "$work/inclusive"
        # The worker thread's closure holds its whole loop, poll and clock (named without its object file when the
        # profile-guided build inlines it).
        loop=$(largest "run_balancer::\{\{closure\}\}( \[|$)" "$work/inclusive")
        received=$(sed -n 's/^worker 0: rx \([0-9]*\).*/\1/p' "$work/$mode.log")
        awk -v m="$mode$answers_label" -v fam="$family" -v n="$flows" -v l="$loop" -v r="${received:-0}" \
            'BEGIN { if (r == 0 || l == 0) { printf "| %s | %s | %s | not counted | 0 |\n", m, fam, n; exit }
                     printf "| %s | %s | %s | %.1f | %d |\n", m, fam, n, l / r, r }'
    done
}

if $replay; then
    if $new_syn; then
        count_replay "${1:-ipv4}" "${2:-131072}"
    else
        count_replay "${1:-ipv4}" "${2:-1000}"
    fi
    exit 0
fi

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
