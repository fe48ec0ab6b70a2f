#!/usr/bin/env bash
# What the adaptive idle mode costs, against busy polling:
#   1. full load: one worker forwarding DR traffic replayed without end from a pcap (net_pcap infinite_rx) to a
#      net_null port, for 3 s, RUNS times per mode: received Mpps;
#   2. idle: the CPU the process uses while no frame arrives (3 s);
#   3. low rate: ping of the node's address at 50 per second through net_af_packet in two network namespaces
#      (answered by the worker itself): median, 99th percentile and largest round trip.
# Prints a Markdown table. Usage: bench/idle.sh [RUNS] (root; uses the release build, built if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build -q --release -p sluice
SLUICE=$(pwd)/target/release/sluice
DIR=$(mktemp -d /tmp/slc-idle.XXXXXX)
NODE=slc-ib-n
PEER=slc-ib-p
CORE=$(($(nproc) > 1 ? 1 : 0))

cleanup() {
    ip netns del "$NODE" 2> /dev/null || true
    ip netns del "$PEER" 2> /dev/null || true
    rm -rf "$DIR" "/var/run/dpdk/slc-ib"
}
trap cleanup EXIT

idle_keys() {
    if [ "$1" = adaptive ]; then echo 'idle = "adaptive"'; else echo 'idle = "poll"'; fi
}

# 1. Full load.
"$SLUICE" generate --out "$DIR/flows.pcap" --flows 1000 --frames 8000 > /dev/null
full_load() {
    cat > "$DIR/load.toml" << EOF
[eal]
args = ["--no-huge", "-m", "1024", "--no-pci", "--no-shconf", "--no-telemetry", "--file-prefix", "slc-ib"]
[[port]]
name = "client"
device = "net_pcap0,rx_pcap=$DIR/flows.pcap,infinite_rx=1,tx_pcap=$DIR/out.pcap"
addresses = ["10.0.0.1/24"]
mac = "02:00:00:00:00:01"
[[port]]
name = "backend"
device = "net_null1"
addresses = ["10.1.0.1/24"]
[workers]
cores = [$CORE]
$(idle_keys "$1")
mempool_size = 32767
[[service]]
vip = "10.0.0.100"
port = 80
mode = "dr"
[[service.backend]]
address = "10.1.0.11"
mac = "02:be:00:00:00:11"
[[service.backend]]
address = "10.1.0.12"
mac = "02:be:00:00:00:12"
EOF
    "$SLUICE" run --config "$DIR/load.toml" --duration-ms 3000 2> /dev/null |
        awk '/^sluice: stopped/ { for (i = 1; i <= NF; i++) if ($i == "rate") print $(i + 1) }'
}

# 2. Low rate.
ip netns add "$NODE"
ip netns add "$PEER"
ip -n "$NODE" link add cxa type veth peer name cxb netns "$PEER"
ip -n "$NODE" link set cxa up
ip -n "$PEER" link set cxb up
ip netns exec "$NODE" ethtool -K cxa tx off rx off > /dev/null 2>&1 || true
ip netns exec "$PEER" ethtool -K cxb tx off rx off > /dev/null 2>&1 || true
ip -n "$PEER" addr add 10.77.0.254/24 dev cxb
low_rate() {
    cat > "$DIR/ping.toml" << EOF
[eal]
args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry", "--file-prefix", "slc-ib"]
[[port]]
name = "up"
device = "net_af_packet0,iface=cxa"
addresses = ["10.77.0.1/24"]
[workers]
cores = [$CORE]
$(idle_keys "$1")
mempool_size = 32767
[[service]]
vip = "10.77.0.100"
port = 80
mode = "dr"
[[service.backend]]
address = "10.77.0.11"
EOF
    ip netns exec "$NODE" "$SLUICE" run --config "$DIR/ping.toml" > /dev/null 2> "$DIR/ping.err" &
    local pid=$!
    for _ in $(seq 100); do grep -q "forwarding with" "$DIR/ping.err" && break; sleep 0.1; done
    # CPU used while no frame arrives, over 3 s.
    local before after
    before=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    sleep 3
    after=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    idle_cpu=$(((after - before) * 100 / (3 * $(getconf CLK_TCK))))
    ip netns exec "$PEER" ping -c 20 -i 0.05 -q 10.77.0.1 > /dev/null || true
    ip netns exec "$PEER" ping -c 500 -i 0.02 10.77.0.1 |
        awk -F'time=' '/time=/ { split($2, t, " "); print t[1] }' | sort -n > "$DIR/rtt"
    kill "$pid"
    wait "$pid" || true
    awk -v cpu="$idle_cpu" '{ v[NR] = $1 } END { printf "%.3f %.3f %.3f %d %d\n", v[int(NR * 0.5)], v[int(NR * 0.99)], v[NR], NR, cpu }' \
        "$DIR/rtt"
}

echo "| idle | full load Mpps (runs) | CPU when idle | ping RTT median ms | p99 ms | max ms | replies |"
echo "|---|---|---|---|---|---|---|"
# Full-load runs alternate between the modes, so that the load of a shared machine falls on both alike.
poll_rates=()
adaptive_rates=()
for _ in $(seq "$RUNS"); do
    poll_rates+=("$(full_load poll)")
    adaptive_rates+=("$(full_load adaptive)")
done
for mode in poll adaptive; do
    if [ "$mode" = poll ]; then rates=("${poll_rates[@]}"); else rates=("${adaptive_rates[@]}"); fi
    read -r median p99 max count cpu <<< "$(low_rate "$mode")"
    echo "| $mode | ${rates[*]} | $cpu% | $median | $p99 | $max | $count/500 |"
done
