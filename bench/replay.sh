#!/usr/bin/env bash
# The headline benchmark: sluice against dpdk-testpmd --forward-mode=macswap on the same net_pcap replay
# (infinite_rx: the pcap's frames are received forever, transmitted frames are dropped by the vdev), one worker on
# the same CPU, in the same run, interleaved round by round. A user with a traffic generator measures the same
# thing: how much of what the device path can move does the balancer keep.
#
# Usage: bench/replay.sh SLUICE OUT_CSV [seconds per run] [rounds] [flow counts...]
# Writes one CSV row per (mode, family, flows, round) and prints a Markdown table of medians on stdout; then the
# same for a replay in which every frame is a SYN of a new flow (NEW_SYN_FRAMES distinct flows, default 524288; 0
# skips it) through a connection table of half as many entries, so that every frame opens a connection and evicts
# the oldest: new connections per second, in flows labelled "new SYN"; then NAT and FULLNAT on a replay that carries
# the backends' answers as well (ANSWER_FLOWS flows, default 1000; 0 skips it), half of its frames replies, in rows
# whose mode is "nat+answers" and "fullnat+answers".
set -euo pipefail
SLUICE=$1
OUT_CSV=$2
SECONDS_PER_RUN=${3:-3}
ROUNDS=${4:-3}
shift 4 || true
FLOWS=("${@:-1000 100000 1000000}")
# shellcheck disable=SC2206
FLOWS=(${FLOWS[*]})
WORKER_CPU=1
if [ "$(nproc)" -lt 2 ]; then WORKER_CPU=0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A replay holds every frame of its pcap in mbufs at once: 1M frames need about 2.4 GB of 2 MB pages.
want_pages=2048
if [ -w /proc/sys/vm/nr_hugepages ] && [ "$(cat /proc/sys/vm/nr_hugepages)" -lt "$want_pages" ]; then
    echo "$want_pages" > /proc/sys/vm/nr_hugepages || true
fi

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# shellcheck source=bench/testpmd.sh
source "$(dirname "$0")/testpmd.sh"

testpmd_rate() { # pcap mbufs
    testpmd_mpps "$SECONDS_PER_RUN" --in-memory --no-pci --no-telemetry -l "0,$WORKER_CPU" \
        --vdev="net_pcap0,rx_pcap=$1,infinite_rx=1" -- -i --forward-mode=macswap --nb-cores=1 --burst=32 \
        --total-num-mbufs="$2"
}

# shellcheck source=bench/replay-config.sh
source "$(dirname "$0")/replay-config.sh"

# One run: the rate, the share of received frames forwarded (from the worker's line of the exit summary) and, from
# the service's line (Conns, InPkts), the connections opened per frame.
sluice_run() { # config vip [extra arguments of sluice run]
    local out
    out=$("$SLUICE" run --config "$1" --duration-ms $((SECONDS_PER_RUN * 1000)) "${@:3}" 2>&1)
    echo "$out" | sed -n 's/.*rate \([0-9.]*\) Mpps.*/\1/p' | tail -1 | tr '\n' ' '
    echo "$out" | awk '/^worker [0-9]+:/ { for (i = 1; i < NF; i++) { if ($i == "rx") rx += $(i + 1); if ($i == "forwarded") fw += $(i + 1) } }
        END { if (rx > 0) printf "%.4f ", fw / rx; else printf "0 " }'
    # The exit summary's service line names the VIP as 10.0.0.100:80 or [2001:db8::100]:80.
    echo "$out" | awk -v vip="$2" '$2 == vip ":80" || $2 == "[" vip "]:80" { if ($4 > 0) printf "%.3f", $3 / $4; exit }'
    echo
}

# A rate measures forwarding only if the frames were forwarded: runs that dropped some are listed under the tables.
check_forwarded() { # label share
    if awk -v s="$2" 'BEGIN { exit !(s < 0.999) }'; then
        echo "$1 forwarded only $2 of what it received" >> "$work/short-runs"
        echo "warning: $1 forwarded only $2 of what it received" >&2
    fi
}

# ROUNDS interleaved rounds on one pcap: testpmd, then sluice in every mode ("$work/MODE.toml"); each figure goes to
# "$work/testpmd-SUFFIX" and "$work/MODE-SUFFIX" (connections opened per frame to "$work/MODE-SUFFIX-opened"), and a
# CSV row with the caller's $family and FLOWS in its flows column.
measure_rounds() { # pcap mbufs vip suffix flows label
    local reference rate share opened
    for round in $(seq "$ROUNDS"); do
        reference=$(testpmd_rate "$1" "$2")
        echo "$reference" >> "$work/testpmd-$4"
        for mode in dr nat fullnat tun; do
            read -r rate share opened <<< "$(sluice_run "$work/$mode.toml" "$3")"
            rate=${rate:-0}
            check_forwarded "$mode $6 round $round" "${share:-0}"
            echo "$mode,$family,$5,$round,$rate,$reference" >> "$OUT_CSV"
            echo "$rate" >> "$work/$mode-$4"
            echo "$opened" >> "$work/$mode-$4-opened"
            echo "$6 round $round: testpmd $reference, sluice $mode $rate Mpps, forwarded ${share:-?}, ${opened:-?} connections opened per frame" >&2
        done
    done
}

# The table row of medians: label, family, testpmd's median, then each mode's median and ratio.
ratio_row() { # label family suffix
    local reference rate row
    reference=$(median < "$work/testpmd-$3")
    row="| $1 | $2 | $reference |"
    for mode in dr nat fullnat tun; do
        rate=$(median < "$work/$mode-$3")
        row+=" $rate | $(awk -v a="$rate" -v b="$reference" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }') |"
    done
    echo "$row"
}

echo "mode,family,flows,round,sluice_mpps,testpmd_mpps" > "$OUT_CSV"
echo "| flows | family | testpmd macswap Mpps | DR Mpps | ratio | NAT | ratio | FULLNAT | ratio | TUN | ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for flows in "${FLOWS[@]}"; do
    for family in ipv4 ipv6; do
        mbufs=$(($(replay_frames "$flows") + 16384))
        pcap="$work/replay-$family-$flows.pcap"
        vip=$(replay_vip "$family")
        replay_pcap "$SLUICE" "$family" "$flows" "$pcap"
        for mode in dr nat fullnat tun; do
            sluice_config "$mode" "$family" "$pcap" "$mbufs" > "$work/$mode.toml"
        done
        measure_rounds "$pcap" "$mbufs" "$vip" "$family-$flows" "$flows" "replay $family $flows flows"
        ratio_row "$flows" "$family" "$family-$flows"
        rm -f "$pcap"
    done
done

NEW_SYN_FRAMES=${NEW_SYN_FRAMES:-524288}
if [ "$NEW_SYN_FRAMES" -gt 0 ]; then
    echo
    echo "| new SYN every frame | family | testpmd macswap Mpps | DR M conn/s | ratio | NAT | ratio | FULLNAT | ratio | TUN | ratio |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    family=ipv4
    vip=$(replay_vip "$family")
    mbufs=$((NEW_SYN_FRAMES + 16384))
    pcap="$work/new-syn.pcap"
    # Each flow's first frame is a SYN: as many flows as frames make every frame a SYN of its own flow. The table
    # holds half of them, so a flow is evicted long before its SYN comes round again.
    "$SLUICE" generate --out "$pcap" --vip "$vip" --flows "$NEW_SYN_FRAMES" --frames "$NEW_SYN_FRAMES" \
        --dst-mac 02:00:00:00:00:01 > /dev/null
    for mode in dr nat fullnat tun; do
        sluice_config "$mode" "$family" "$pcap" "$mbufs" $((NEW_SYN_FRAMES / 2)) > "$work/$mode.toml"
    done
    measure_rounds "$pcap" "$mbufs" "$vip" new "new SYN" "replay of new SYNs"
    ratio_row "$NEW_SYN_FRAMES flows, table of $((NEW_SYN_FRAMES / 2))" "$family" new
    echo
    echo "Connections opened per frame (median; 1.000: every frame opened one): DR $(median < "$work/dr-new-opened"), NAT $(median < "$work/nat-new-opened"), FULLNAT $(median < "$work/fullnat-new-opened"), TUN $(median < "$work/tun-new-opened")."
    rm -f "$pcap"
fi

ANSWER_FLOWS=${ANSWER_FLOWS:-1000}
if [ "$ANSWER_FLOWS" -gt 0 ]; then
    echo
    echo "| with the backends' answers | family | mode | testpmd macswap Mpps | sluice Mpps | ratio |"
    echo "|---|---|---|---|---|---|"
    mbufs=$((2 * $(replay_frames "$ANSWER_FLOWS") + 16384))
    for family in ipv4 ipv6; do
        vip=$(replay_vip "$family")
        for mode in nat fullnat; do
            # Each mode's answers are its own (FULLNAT's go to its local ports), so testpmd replays each pcap too.
            pcap="$work/answers-$mode.pcap"
            replay_pcap_with_answers "$SLUICE" "$mode" "$family" "$ANSWER_FLOWS" "$pcap"
            sluice_config "$mode" "$family" "$pcap" "$mbufs" > "$work/$mode.toml"
            for round in $(seq "$ROUNDS"); do
                reference=$(testpmd_rate "$pcap" "$mbufs")
                read -r rate share opened <<< "$(sluice_run "$work/$mode.toml" "$vip" "${REPLAY_RUN_ARGS[@]}")"
                rate=${rate:-0}
                check_forwarded "$mode with answers $family round $round" "${share:-0}"
                echo "$mode+answers,$family,$ANSWER_FLOWS,$round,$rate,$reference" >> "$OUT_CSV"
                echo "$reference" >> "$work/testpmd-answers-$family-$mode"
                echo "$rate" >> "$work/answers-$family-$mode"
                echo "answers $family $mode round $round: testpmd $reference, sluice $rate Mpps, forwarded ${share:-?}" >&2
            done
            reference=$(median < "$work/testpmd-answers-$family-$mode")
            rate=$(median < "$work/answers-$family-$mode")
            echo "| $ANSWER_FLOWS | $family | $mode | $reference | $rate | $(awk -v a="$rate" -v b="$reference" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }') |"
            rm -f "$pcap"
        done
    done
fi

echo
if [ -s "$work/short-runs" ]; then
    echo "Runs that dropped frames (their rates are not forwarding rates):"
    echo
    sed 's/^/- /' "$work/short-runs"
else
    echo "Every run forwarded every frame it received."
fi
