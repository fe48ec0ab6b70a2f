#!/usr/bin/env bash
# Throughput figures in one command: builds sluice in release mode, then measures
#   1. the headline (bench/replay.sh): sluice against dpdk-testpmd macswap on the same net_pcap replay, one worker on
#      the same core, interleaved rounds and medians, per mode and family at 1K, 100K and 1M flows;
#   2. the DPDK pipe (sluice run with a [pipe]) between two net_null ports on one core, beside dpdk-testpmd's io
#      forwarding on the same vdevs and core;
#   3. the worker path with the in-process generator (sluice bench): a new SYN on every frame (new connections per
#      second), and a micro-benchmark per mode;
#   4. cross-process over net_memif with dpdk-testpmd flowgen; 5. one worker against two;
# and writes bench/RESULTS.md and bench/results.csv (bench/replay.csv for the headline).
#
# Usage: scripts/bench.sh [seconds per run, default 5] [rounds of the headline, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-5}"
ROUNDS="${2:-3}"
OUT_MD=bench/RESULTS.md
OUT_CSV=bench/results.csv
WORKER_CPU=1
if [ "$(nproc)" -lt 2 ]; then WORKER_CPU=0; fi

# The profile-guided build (scripts/build-pgo.sh, what scripts/install.sh --pgo installs) when the toolchain has
# llvm-tools; else, or with BUILD=plain, the plain release build.
# The profile of where a worker's time goes reads the plain build, whose stages are functions of their own (the
# profile-guided build inlines them into one).
cargo build --release -q -p sluice
PLAIN="${CARGO_TARGET_DIR:-target}/release/sluice"
if [ "${BUILD:-pgo}" = pgo ] && SLUICE=$(bash scripts/build-pgo.sh); then
    BUILD_NOTE="profile-guided release build (\`scripts/build-pgo.sh\`); the profile of a worker's stages: the plain release build"
else
    SLUICE=$PLAIN
    BUILD_NOTE="plain release build (\`cargo build --release\`)"
fi

# Reserve 2 MB hugepages when there are too few and we may (scripts/setup.sh does the same).
free_pages=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "${free_pages:-0}" -lt 256 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
    echo $(($(cat /proc/sys/vm/nr_hugepages) + 512)) > /proc/sys/vm/nr_hugepages || true
fi
free_pages=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "${free_pages:-0}" -ge 256 ]; then
    EAL_MEMORY='"--in-memory"'
    TESTPMD_MEMORY=(--in-memory)
    MEMORY_NOTE="hugepages ($free_pages free 2 MB pages)"
else
    EAL_MEMORY='"--no-huge", "-m", "1024", "--no-shconf"'
    TESTPMD_MEMORY=(--no-huge -m 1024 --no-shconf)
    MEMORY_NOTE="no hugepages (--no-huge)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

replay_table=$(bash bench/replay.sh "$SLUICE" bench/replay.csv "$SECONDS_PER_RUN" "$ROUNDS" 1000 100000 1000000)
profile_section="perf is not installed: no profile (apt-get install linux-perf, then bench/profile.sh)."
if command -v perf > /dev/null; then
    profile_section="Share of the worker thread's samples (\`perf record -e cpu-clock\` on its CPU), DR, 64-byte replay, by stage:

| stage | 1K flows |
|---|---|
$(bash bench/profile.sh "$PLAIN" dr 1000)

| stage | 1M flows |
|---|---|
$(bash bench/profile.sh "$PLAIN" dr 1000000)

Rerun with \`bench/profile.sh target/release/sluice MODE FLOWS\`."
fi

cat > "$work/pipe.toml" <<EOF
[eal]
args = [$EAL_MEMORY, "--no-pci", "--no-telemetry", "-l", "0"]
[[port]]
name = "in"
device = "net_null0"
[[port]]
name = "out"
device = "net_null1"
[workers]
cores = [$WORKER_CPU]
burst = 32
[pipe]
from = "in"
to = "out"
EOF

duration_ms=$((SECONDS_PER_RUN * 1000))
sluice_pipe=$("$SLUICE" run --config "$work/pipe.toml" --duration-ms "$duration_ms" 2>/dev/null | sed -n 's/.*rate \([0-9.]*\) Mpps.*/\1/p')

# shellcheck source=bench/testpmd.sh
source bench/testpmd.sh
testpmd_rate() {
    testpmd_mpps "$SECONDS_PER_RUN" "${TESTPMD_MEMORY[@]}" --no-pci --no-telemetry -l "0,$WORKER_CPU" \
        --vdev=net_null0 --vdev=net_null1 -- -i --forward-mode="$1" --nb-cores=1 --burst=32
}
testpmd_io=$(testpmd_rate io)
testpmd_macswap=$(testpmd_rate macswap)
ratio=$(awk -v a="$sluice_pipe" -v b="$testpmd_io" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')

echo "mode,family,flows,frame_len,new_connections,mpps,ns_per_packet" > "$OUT_CSV"
rows=""
run_bench() {
    local line mpps ns
    line=$("$SLUICE" bench --cpu "$WORKER_CPU" --seconds "$SECONDS_PER_RUN" "$@" 2>/dev/null | tail -1)
    mpps=$(echo "$line" | sed -n 's/.*: \([0-9.]*\) Mpps.*/\1/p')
    ns=$(echo "$line" | sed -n 's/.*Mpps, \([0-9.]*\) ns\/packet.*/\1/p')
    # The share of received frames forwarded (the rest were counted drops), for the table.
    echo "$line" | sed -n 's/.*forwarded \([0-9.]*\) of received.*/\1/p' > "$work/forwarded"
    echo "$line" >&2
    echo "$mpps,$ns"
}
add_row() { # mode family flows-label wire-bytes result
    rows+="| $1 | $2 | $3 | $4 | ${5%,*} | ${5#*,} | $(cat "$work/forwarded") | $(awk -v a="${5%,*}" -v b="$testpmd_macswap" 'BEGIN { printf "%.2f", a / b }') |"$'\n'
}
# Every mode and family: 64-byte frames at 1K, 100K, 1M and 10M concurrent flows, full-size frames at 1K flows, and
# a new connection with every frame.
for mode in dr nat fullnat tun; do
    for family in ipv4 ipv6; do
        v6=()
        [ "$family" = ipv6 ] && v6=(--v6)
        short=64
        [ "$family" = ipv6 ] && short=78
        for flows in 1000 1000000; do
            result=$(run_bench --mode "$mode" "${v6[@]}" --flows "$flows" --frame-len 60)
            echo "$mode,$family,$flows,60,false,$result" >> "$OUT_CSV"
            add_row "$mode" "$family" "$flows" "$short" "$result"
        done
        result=$(run_bench --mode "$mode" "${v6[@]}" --new-connections --frame-len 60)
        echo "$mode,$family,new,60,true,$result" >> "$OUT_CSV"
        add_row "$mode" "$family" "every packet a new SYN" "$short" "$result"
    done
done

# Cross-process, as with a traffic generator: dpdk-testpmd's flowgen engine sends 64-byte UDP frames over net_memif
# (1024 flows: flowgen varies the destination address, so each flow is its own VIP) and sluice forwards them back to
# it; then dpdk-testpmd macswap takes sluice's place on the same memif link. Both forwarders share CPU 0 with their
# main thread; the generator has CPU 1.
flowgen_config() {
    python3 - "$1" "$2" "$EAL_MEMORY" << 'PY'
import sys
mode, path, memory = sys.argv[1], sys.argv[2], sys.argv[3]
lines = ["[eal]", f'args = [{memory}, "--no-pci", "--no-telemetry", "--file-prefix", "sluice-bench", "--lcores", "0@0"]',
         "[[port]]", 'name = "net"', f'device = "net_memif0,role=client,socket={path}.sock"',
         'addresses = ["10.252.0.1/16"]',
         # The destination testpmd 22.11's flowgen writes in every frame (its fixed cfg_ether_dst, whatever the
         # peer): the port must answer to it, as frames to another MAC are dropped.
         'mac = "00:01:02:03:04:01"', "[workers]", "cores = [0]", "[network]", "maglev_table_size = 251",
         'tunnel_source_v4 = "10.252.0.1"', 'local_addresses = ["10.252.0.5"]']
port = 1001
for i in range(1024):
    lines += ["[[service]]", f'vip = "10.253.{i // 256}.{i % 256}"', f"port = {port}", 'protocol = "udp"', f'mode = "{mode}"']
    # NAT recognises replies by backend address and port: each service gets its own backend ports.
    backend_port = 2000 + i if mode == "nat" else port
    for b in (1, 2):
        lines += ["[[service.backend]]", f'address = "10.252.1.{b}"', f"port = {backend_port}",
                  f'mac = "02:be:00:00:00:0{b}"']
open(path, "w").write("\n".join(lines) + "\n")
PY
}
start_generator() {
    rm -f "$work/memif.sock"
    # Long enough for the forwarder's warm-up and measured seconds (testpmd_mpps) and its start.
    (echo start; sleep $((SECONDS_PER_RUN + ${TESTPMD_WARMUP:-2} + 3)); echo stop; sleep 1; echo quit) |
        dpdk-testpmd "${TESTPMD_MEMORY[@]}" --no-pci --no-telemetry -l "0,$WORKER_CPU" --file-prefix bench-gen \
            --vdev="net_memif0,role=server,socket=$work/memif.sock" -- -i --forward-mode=flowgen \
            --flowgen-flows=1024 --nb-cores=1 --burst=32 > "$work/generator.log" 2>&1 &
    generator=$!
    sleep 1.5
}
# The link's rate swings between runs by up to three times, for either forwarder alike and from one run to the next
# (the two busy CPUs of this virtual machine share the host with others): a slow run says nothing of the forwarder.
# So the two forwarders alternate, run for run, for MEMIF_ROUNDS rounds (at least 5), and each is credited with its
# best run: what it forwards when the host lets the link run; every run is shown beside it.
cross_rows=""
if [ "$(nproc)" -ge 2 ]; then
    for round in $(seq "${MEMIF_ROUNDS:-$((ROUNDS > 5 ? ROUNDS : 5))}"); do
        for mode in dr nat fullnat tun; do
            start_generator
            macswap=$(testpmd_mpps "$SECONDS_PER_RUN" "${TESTPMD_MEMORY[@]}" --no-pci --no-telemetry --lcores "0@0,2@0" \
                --file-prefix bench-fwd --vdev="net_memif0,role=client,socket=$work/memif.sock" -- -i \
                --forward-mode=macswap --nb-cores=1 --burst=32)
            wait "$generator" || true
            flowgen_config "$mode" "$work/memif"
            start_generator
            line=$("$SLUICE" run --config "$work/memif" --duration-ms "$duration_ms" 2>&1) || echo "sluice $mode: $line" >&2
            wait "$generator" || true
            rate=$(echo "$line" | sed -n 's/.*rate \([0-9.]*\) Mpps.*/\1/p')
            echo "${rate:-0}" >> "$work/memif-$mode"
            echo "${macswap:-0}" >> "$work/memif-macswap-$mode"
            echo "$line" | sed -n 's/^worker 0:.* drops \(.*\)$/\1/p' >> "$work/memif-$mode-drops"
            # Frames the device could not hand to sluice for want of room in its receive ring (from the exit summary).
            echo "$line" | sed -n 's/^port net:.* rx_missed \([0-9]*\).*/\1/p' >> "$work/memif-$mode-missed"
            echo "memif round $round: testpmd macswap ${macswap:-0} Mpps, sluice $mode ${rate:-0} Mpps" >&2
        done
    done
    rounds() { paste -sd ' ' "$1" | sed 's/ /, /g'; }
    for mode in dr nat fullnat tun; do
        missed=$(awk '{ s += $1 } END { print s + 0 }' "$work/memif-$mode-missed")
        best_sluice=$(sort -g "$work/memif-$mode" | tail -1)
        best_macswap=$(sort -g "$work/memif-macswap-$mode" | tail -1)
        cross_rows+="| sluice $mode | ${best_sluice} ($(rounds "$work/memif-$mode")) | ${best_macswap} ($(rounds "$work/memif-macswap-$mode")) | $(awk -v a="$best_sluice" -v b="$best_macswap" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }') | $(paste -sd ';' "$work/memif-$mode-drops" | sed 's/;/; /g') | ${missed} |"$'\n'
    done
fi

# Scaling from one worker to two, per mode: workers share nothing on the packet path, so two independent workers
# (one process per core) show what a second core adds on this machine.
echo "mode,workers,mpps" > bench/scaling.csv
scaling_rows=""
for mode in dr nat fullnat tun; do
    one=$(run_bench --mode "$mode" --flows 1000 --frame-len 60)
    one=${one%,*}
    two=0
    if [ "$(nproc)" -ge 2 ]; then
        "$SLUICE" bench --mode "$mode" --flows 1000 --cpu 0 --seconds "$SECONDS_PER_RUN" 2> /dev/null | tail -1 > "$work/w0" &
        "$SLUICE" bench --mode "$mode" --flows 1000 --cpu 1 --seconds "$SECONDS_PER_RUN" 2> /dev/null | tail -1 > "$work/w1" &
        wait
        two=$(cat "$work/w0" "$work/w1" | sed -n 's/.*: \([0-9.]*\) Mpps.*/\1/p' | awk '{ s += $1 } END { printf "%.2f", s }')
    fi
    echo "$mode,1,$one" >> bench/scaling.csv
    echo "$mode,2,$two" >> bench/scaling.csv
    scaling_rows+="| $mode | $one | $two |"$'\n'
    awk -F, -v m="$mode" '$1 == m { print $2, $3 }' bench/scaling.csv > "$work/scaling-$mode.dat"
done

# Plots, when gnuplot is there (scripts/setup.sh installs it).
if command -v gnuplot > /dev/null; then
    for mode in dr nat fullnat tun; do
        awk -F, -v m="$mode" '$1 == m && $2 == "ipv4" && $4 == 60 && $5 == "false" { print $3, $6 }' "$OUT_CSV" | sort -n > "$work/$mode.dat"
    done
    gnuplot <<GNUPLOT
set terminal png size 900,540
set output "bench/mpps-vs-flows.png"
set title "sluice worker path, one core, IPv4, 64-byte frames"
set xlabel "concurrent flows"
set ylabel "Mpps"
set logscale x
set grid
set key top right
plot "$work/dr.dat" using 1:2 with linespoints title "dr", "$work/nat.dat" using 1:2 with linespoints title "nat", "$work/fullnat.dat" using 1:2 with linespoints title "fullnat", "$work/tun.dat" using 1:2 with linespoints title "tun"
set output "bench/mpps-vs-workers.png"
set title "sluice worker path, IPv4, 1K flows, 64-byte frames: one and two workers"
set xlabel "workers"
unset logscale x
set xtics 1
set xrange [0.5:2.5]
set yrange [0:*]
plot "$work/scaling-dr.dat" using 1:2 with linespoints title "dr", "$work/scaling-nat.dat" using 1:2 with linespoints title "nat", "$work/scaling-fullnat.dat" using 1:2 with linespoints title "fullnat", "$work/scaling-tun.dat" using 1:2 with linespoints title "tun"
GNUPLOT
fi

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cat > "$OUT_MD" <<EOF
# Benchmark results

- Date: $(date -u +%Y-%m-%dT%H:%MZ)
- Machine: ${cpu:-unknown CPU}, $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); DPDK $(pkg-config --modversion libdpdk); ${MEMORY_NOTE}
- Build: ${BUILD_NOTE}
- Command: \`scripts/bench.sh ${SECONDS_PER_RUN} ${ROUNDS}\` (${SECONDS_PER_RUN} s per run, worker on CPU ${WORKER_CPU}); raw figures in \`bench/replay.csv\` and \`bench/results.csv\`
- The machine is shared and virtualised: absolute Mpps drift from run to run; the ratios are the figures to read.

## Headline: sluice against dpdk-testpmd on the same replay

Both forward 64-byte TCP frames (IPv6: 78 bytes) from \`net_pcap0,rx_pcap=F,infinite_rx=1\` (the pcap's frames
received forever; transmitted frames are dropped by the vdev) with one worker on CPU ${WORKER_CPU}; testpmd runs
\`--forward-mode=macswap\`, sluice runs each forwarding mode with a two-backend Maglev service. Each round runs
testpmd, then sluice in every mode, on the same pcap; the table shows medians of ${ROUNDS} rounds and the ratio of
the medians. The pcap of N flows holds max(N, 8192) frames, cycling over the flows, so every frame after the
first pass is a connection-table hit. \`bench/replay.sh\` runs this alone. Each rate covers only the time its
forwarder forwarded: sluice's from its worker's own count and clock, testpmd's as testpmd measures it between two
\`show port stats all\` after a warm-up (\`bench/testpmd.sh\`), so neither counts its start-up (loading a pcap of 1M
frames takes testpmd about a second).

The second table replays 524288 SYNs, each of its own flow, through a connection table of 262144 entries: every
frame opens a connection and evicts the oldest (the line under it shows the connections opened per frame, from
sluice's exit summary). sluice's figure is new connections per second; testpmd forwards the same replay, whose
cold 1 GB of frames bounds it.

The third table replays NAT and FULLNAT traffic with the backends' answers: the 1K-flow replay, then what the
backends send back to what sluice forwarded of it (captured from sluice's port and answered by \`sluice generate
--answers-to\`), so that half of the frames take the reply path. testpmd replays the same pcap.

${replay_table}

## Where a worker's time goes

${profile_section}

sluice pipe on net_null, one core: **${sluice_pipe} Mpps**; dpdk-testpmd io forwarding on the same vdevs and core in the same run: **${testpmd_io} Mpps** (ratio ${ratio}).

## The DPDK pipe, one core

| forwarder | Mpps |
|---|---|
| sluice run, [pipe] net_null0 -> net_null1 | ${sluice_pipe} |
| dpdk-testpmd --forward-mode=io, net_null0 <-> net_null1 | ${testpmd_io} |
| dpdk-testpmd --forward-mode=macswap, net_null0 <-> net_null1 | ${testpmd_macswap} |

net_null does no I/O: these are the cost of the poll loop, mbuf handling and bursts alone.

## The balancer's worker path, one core (sluice bench, a micro-benchmark)

Every frame goes through the real worker: parse, service lookup, connection table, Maglev on a miss, the mode's
rewrite with checksum updates, burst transmit. Frames come from the in-process generator and go to a counting sink
(their cost is included); there is no device. 64-byte frames are 60 bytes plus FCS for IPv4; IPv6 TCP frames cannot
be that short and are 74 bytes. "forwarded" is the share of received frames sent on (the rest are counted drops):
FULLNAT has 16 local addresses here, about 1.03M local ports on one worker, so beyond that many concurrent
connections new flows are dropped as local_ports_exhausted. "vs macswap" is the ratio to dpdk-testpmd macswap on
net_null above.

| mode | family | flows | frame (bytes on the wire) | Mpps | ns/packet | forwarded | vs macswap |
|---|---|---|---|---|---|---|---|
${rows}
## Cross-process over net_memif (dpdk-testpmd flowgen as the generator)

| forwarder | sluice Mpps: best (each run) | testpmd macswap Mpps, alternating with it: best (each run) | ratio of the bests | sluice's drops, each run | rx_missed, all runs |
|---|---|---|---|---|---|
${cross_rows}
The generator and the forwarder each poll one of the machine's two CPUs; the link is a shared-memory ring, so the
ceiling is the memif transfer itself. Its rate swings between runs by up to three times, whichever forwarder runs
and from one run to the next (the host's other load): sluice and testpmd macswap alternate on the same link, run for
run, and each is credited with its best run.

## Scaling

Mpps, IPv4, 1K flows, 64-byte frames:

| mode | one worker | two workers |
|---|---|---|
${scaling_rows}

Two workers are two pinned cores running the worker path side by side; on this 2-core virtual machine the second
core also carries the operating system. Plots: \`bench/mpps-vs-flows.png\`, \`bench/mpps-vs-workers.png\`.

EOF
# Criterion figures and the profile live in bench/micro.md (criterion runs take minutes; rerun them by hand).
cat bench/micro.md >> "$OUT_MD"
echo "wrote $OUT_MD and $OUT_CSV"
