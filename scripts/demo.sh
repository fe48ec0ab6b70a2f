#!/usr/bin/env bash
# The demo: client traffic (300 TCP flows, 3000 frames) read from a pcap file is balanced by sluice in DR mode with
# weighted Maglev (weights 1, 1, 2) over three backends, through real DPDK net_pcap ports; the frames sent to the
# backends are written to another pcap file and counted per backend here.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pkg-config --exists libdpdk 2>/dev/null; then
    bash scripts/setup.sh
fi
cargo build --release -q -p sluice
SLUICE="${CARGO_TARGET_DIR:-target}/release/sluice"
mkdir -p target/demo
"$SLUICE" generate --out target/demo/clients.pcap --client 198.51.100.1 --flows 300 --frames 3000 --dst-mac 02:70:63:61:70:00
"$SLUICE" generate --out target/demo/empty.pcap --frames 0 > /dev/null
RUST_LOG=warn "$SLUICE" run --config config/demo.toml --idle-exit-ms 500 2>/dev/null
python3 - <<'PY'
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
