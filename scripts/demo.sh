#!/usr/bin/env bash
# The demo: real HTTP clients balanced by sluice over three backends in network namespaces.
#
#   scripts/demo.sh [--mode dr|nat|fullnat|tun] [--requests N]    (root; sets the machine up if needed)
#   scripts/demo.sh --pcap                                         (no namespaces: pcap files through net_pcap)
#
# A client namespace sends N real HTTP requests (a new TCP connection each) to the VIP 10.0.0.100; sluice runs in
# its own namespace on net_af_packet and forwards them to three backends that answer with their names, configured
# as the mode requires (see scripts/netns/lib.sh). The demo prints how many requests each backend answered and
# sluice's statistics, and removes everything it created, also on ctrl-c or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=dr
REQUESTS=300
PCAP=false
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --pcap) PCAP=true; shift ;;
        *) echo "usage: scripts/demo.sh [--mode dr|nat|fullnat|tun] [--requests N] [--pcap]" >&2; exit 2 ;;
    esac
done
case "$MODE" in dr | nat | fullnat | tun) ;; *) echo "demo: --mode is dr, nat, fullnat or tun" >&2; exit 2 ;; esac
if ! pkg-config --exists libdpdk 2> /dev/null || ! command -v ethtool > /dev/null; then
    bash scripts/setup.sh
fi
cargo build --release -q -p sluice
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$(pwd)/$TARGET_DIR" ;; esac
SLUICE="$TARGET_DIR/release/sluice"

if [ "$PCAP" = true ]; then
    # Client traffic (300 TCP flows, 3000 frames) from a pcap file, DR with weighted Maglev (weights 1, 1, 2).
    mkdir -p target/demo
    "$SLUICE" generate --out target/demo/clients.pcap --client 198.51.100.1 --flows 300 --frames 3000 --dst-mac 02:00:00:00:00:01
    "$SLUICE" generate --out target/demo/empty.pcap --frames 0 > /dev/null
    RUST_LOG=warn "$SLUICE" run --config config/demo.toml --idle-exit-ms 500 2> /dev/null
    python3 - << 'PY'
import struct, collections
names = {bytes.fromhex("02be0000000b"): "10.1.0.11 (weight 1)",
         bytes.fromhex("02be0000000c"): "10.1.0.12 (weight 1)",
         bytes.fromhex("02be0000000d"): "10.1.0.13 (weight 2)"}
data = open("target/demo/to-backends.pcap", "rb").read()
frames, flows, at = collections.Counter(), collections.defaultdict(set), 24
while at + 16 <= len(data):
    length = struct.unpack_from("<I", data, at + 8)[0]
    frame = data[at + 16: at + 16 + length]
    at += 16 + length
    backend = names.get(frame[0:6], frame[0:6].hex(":"))
    frames[backend] += 1
    flows[backend].add((frame[26:30], frame[34:36]))
print("\nframes and flows per backend (from target/demo/to-backends.pcap):")
for backend in sorted(frames):
    print(f"  {backend}: {frames[backend]} frames, {len(flows[backend])} flows")
PY
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: network namespaces need root (or run scripts/demo.sh --pcap)" >&2
    exit 1
fi
source scripts/netns/lib.sh
topology_down
trap 'topology_down' EXIT INT TERM
echo "demo: building the $MODE topology (client, sluice, three backends)"
topology_up "$MODE"
write_config "$MODE" "$STATE_DIR/sluice.toml" 1 2 3
ip netns exec "${NS_PREFIX}lb" env RUST_LOG=info "$SLUICE" run --config "$STATE_DIR/sluice.toml" \
    > "$STATE_DIR/sluice.out" 2> "$STATE_DIR/sluice.err" &
sluice_pid=$!
echo $sluice_pid >> "$STATE_DIR/pids"
for _ in $(seq 200); do grep -q "SIGHUP reloads" "$STATE_DIR/sluice.err" && break; sleep 0.1; done
echo "demo: $REQUESTS HTTP requests from the client to http://10.0.0.100/ ($MODE mode, Maglev)"
counts=$(ns client python3 scripts/netns/client.py count http://10.0.0.100/ "$REQUESTS")
python3 -c 'import json,sys
for name, count in sorted(json.loads(sys.argv[1]).items()):
    print(f"  {name}: {count} requests")' "$counts"
kill -TERM "$sluice_pid"
wait "$sluice_pid" || true
echo "demo: sluice's statistics"
sed 's/^/  /' "$STATE_DIR/sluice.out"
