#!/usr/bin/env bash
# What an LVS operator reaches for, with real TCP through sluice (NAT) in network namespaces:
#   - one backend (be2) serves two NAT services (10.0.0.100:80 and 10.0.0.101:80): connections to both complete,
#     so each reply left from the VIP its client connected to, even from a client port just used for the other;
#   - `sluice ctl connections` lists held connections with their state and expiry while traffic flows, `list`
#     counts them as ActiveConn, and `rate` shows the connections per second;
#   - `sluice ctl drain` stops new connections to a backend while its held connections keep working.
# Takes /tmp/sluice-netns.lock so that it never shares the machine's namespaces with another netns test.
#
# Usage: scripts/netns/operator.sh     (root; sluice is built if needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
    echo "operator: needs root (network namespaces); skipped"
    exit 0
fi
NS_PREFIX=slo-
source scripts/netns/lib.sh
netns_lock

cargo build -q -p sluice
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$(pwd)/$TARGET_DIR" ;; esac
SLUICE="$TARGET_DIR/debug/sluice"
SOCKET="$STATE_DIR/ctl.sock"

fail() {
    echo "operator: FAILED: $*" >&2
    # Stopped first, so that its counters (drops by reason, per worker) are in the log below.
    if [ -n "${sluice_pid:-}" ]; then
        kill -TERM "$sluice_pid" 2> /dev/null && wait "$sluice_pid" 2> /dev/null || true
    fi
    echo "--- sluice log" >&2
    grep -v '^EAL' "$STATE_DIR/sluice.err" >&2 || true
    cat "$STATE_DIR/sluice.out" >&2 || true
    exit 1
}

wait_for_log() {
    for _ in $(seq 200); do
        grep -q "$1" "$STATE_DIR/sluice.err" 2> /dev/null && return 0
        sleep 0.1
    done
    fail "no \"$1\" in the log"
}

backends_in() { python3 -c 'import json,sys; print(" ".join(sorted(json.loads(sys.argv[1]))))' "$1"; }
ctl() { ns lb "$SLUICE" ctl --socket "$SOCKET" "$@"; }

started=$(date +%s%N)
topology_down
trap 'topology_down' EXIT
topology_up nat
cat > "$STATE_DIR/sluice.toml" << TOML
[eal]
args = ["--no-huge", "-m", "512", "--no-pci", "--no-shconf", "--no-telemetry"]
[[port]]
name = "client"
device = "net_af_packet0,iface=lb0"
addresses = ["10.0.0.1/24"]
[[port]]
name = "backend"
device = "net_af_packet1,iface=lb1"
addresses = ["10.1.0.1/24"]
[workers]
cores = [$(($(nproc) > 1 ? 1 : 0))]
[control]
socket = "$SOCKET"
[[service]]
vip = "10.0.0.100"
port = 80
mode = "nat"
[[service.backend]]
address = "10.1.0.11"
port = 80
[[service.backend]]
address = "10.1.0.12"
port = 80
[[service]]
vip = "10.0.0.101"
port = 80
mode = "nat"
[[service.backend]]
address = "10.1.0.12"
port = 80
[[service.backend]]
address = "10.1.0.13"
port = 80
TOML
"$SLUICE" check --config "$STATE_DIR/sluice.toml" > /dev/null || fail "check refused the configuration"
ip netns exec "${NS_PREFIX}lb" env RUST_LOG=info "$SLUICE" run --config "$STATE_DIR/sluice.toml" \
    > "$STATE_DIR/sluice.out" 2> "$STATE_DIR/sluice.err" &
echo $! >> "$STATE_DIR/pids"
sluice_pid=$!
wait_for_log "SIGHUP reloads"

# One backend, two NAT services: every connection to either VIP completes.
counts=$(ns client python3 scripts/netns/client.py count http://10.0.0.100/ 60) || fail "requests to .100 failed: $counts"
[ "$(backends_in "$counts")" = "be1 be2" ] || fail "10.0.0.100: expected be1 and be2, got $counts"
counts=$(ns client python3 scripts/netns/client.py count http://10.0.0.101/ 60) || fail "requests to .101 failed: $counts"
[ "$(backends_in "$counts")" = "be2 be3" ] || fail "10.0.0.101: expected be2 and be3, got $counts"

# A client port reused for the other VIP of be2: the new connection has the reply key of the finished one (still
# in TIME_WAIT), which gives way instead of black-holing the new connection for two minutes.
ports=$(ns client python3 scripts/netns/client.py reuse http://10.0.0.101/ http://10.0.0.100/ be2) \
    || fail "a port reused for the other VIP of be2 failed: $ports"

# ipvsadm --rate: the connections just made show as CPS of 10.0.0.101 in one of the next 2 s windows.
cps=0
for _ in $(seq 40); do
    cps=$(ctl rate | awk '$1 == "TCP" && $2 == "10.0.0.101:80" { print $3 }')
    [ "${cps:-0}" -gt 0 ] && break
    sleep 0.1
done
[ "${cps:-0}" -gt 0 ] || fail "no CPS for 10.0.0.101:80: $(ctl rate)"

# Connections held open: listed with their state and expiry while they carry requests; then be1 is drained
# under them.
holds=()
for h in $(seq 16); do
    ip netns exec "${NS_PREFIX}client" python3 scripts/netns/client.py hold http://10.0.0.100/ 8 > "$STATE_DIR/hold$h" 2> "$STATE_DIR/hold$h.err" &
    holds+=($!)
done
# The clients take a moment to start: the listing is read until it shows them all, for up to 10 s.
established=0
for _ in $(seq 50); do
    listing=$(ctl connections service 10.0.0.100:80 tcp limit 1000) || fail "connections: $listing"
    established=$(echo "$listing" | grep -cE '^TCP [0-9]{2}:[0-9]{2} ESTABLISHED +10\.0\.0\.2:[0-9]+ +10\.0\.0\.100:80 +10\.1\.0\.1[12]:80$' || true)
    [ "$established" -ge 16 ] && break
    sleep 0.2
done
[ "$established" -ge 16 ] || fail "expected the 16 held connections listed as ESTABLISHED, got: $listing"
# ipvsadm -Ln: the held connections count as ActiveConn of be1 and be2.
active=$(ctl list | awk '$1 == "->" && ($2 == "10.1.0.11:80" || $2 == "10.1.0.12:80") { sum += $5 } END { print sum + 0 }')
[ "$active" -ge 16 ] || fail "ActiveConn of be1 and be2 is $active with 16 connections held: $(ctl list)"
ctl drain 10.1.0.11:80 > /dev/null || fail "drain refused"
counts=$(ns client python3 scripts/netns/client.py count http://10.0.0.100/ 60) || fail "requests after the drain failed: $counts"
[ "$(backends_in "$counts")" = "be2" ] || fail "after draining be1, new connections went to $counts"
on_be1=0
for h in $(seq 16); do
    wait "${holds[$((h - 1))]}" || fail "held connection $h broke: $(cat "$STATE_DIR/hold$h.err")"
    [ "$(backends_in "$(cat "$STATE_DIR/hold$h")")" = "be1" ] && on_be1=$((on_be1 + 1))
done
[ "$on_be1" -gt 0 ] || fail "no held connection was on be1 (16 tries)"
ctl undrain 10.1.0.11:80 > /dev/null || fail "undrain refused"
counts=$(ns client python3 scripts/netns/client.py count http://10.0.0.100/ 60) || fail "requests after the undrain failed: $counts"
[ "$(backends_in "$counts")" = "be1 be2" ] || fail "after undraining be1, expected be1 and be2, got $counts"

kill -TERM "$sluice_pid"
wait "$sluice_pid" || fail "sluice did not stop cleanly"
grep -q "mempool: 0 buffers in use" "$STATE_DIR/sluice.out" || fail "mbufs left in use"
echo "operator: ok in $((($(date +%s%N) - started) / 1000000)) ms ($on_be1 of 16 held connections on the drained be1 kept working)"
topology_down
trap - EXIT
[ -z "$(leftovers)" ] || fail "left behind: $(leftovers)"
