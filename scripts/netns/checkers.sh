#!/usr/bin/env bash
# keepalived's checker knobs with real traffic (DR mode, the test bed of scripts/netns/lib.sh): be1 and be2 serve,
# be3 is the service's sorry server, the quorum is 2 (both real backends). be1 has two checkers, HTTP and a
# MISC_CHECK that fails while a maintenance file exists; be2 has alpha (it takes no traffic before its first check
# passes). Shows that: the sorry server takes the traffic when be1's misc check fails (quorum lost) and gives it back
# when it passes again; notify_down and notify_up run with the backend and service in their environment; ctl list
# shows the weights in use and the sorry server's state; the metrics endpoint says the same and passes
# `promtool check metrics` (when promtool is installed).
#
# Usage: scripts/netns/checkers.sh     (root; takes /tmp/sluice-netns.lock, as every network-namespace test must)
set -euo pipefail
cd "$(dirname "$0")/../.."
NS_PREFIX="${NS_PREFIX:-sk-}"
source scripts/netns/lib.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "checkers: needs root (network namespaces); skipped"
    exit 0
fi
netns_lock
cargo build -q -p sluice
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$(pwd)/$TARGET_DIR" ;; esac
SLUICE="$TARGET_DIR/debug/sluice"
URL=http://10.0.0.100/
started=$(date +%s%N)

fail() {
    echo "checkers: FAILED: $*" >&2
    echo "--- sluice log" >&2
    grep -v '^EAL' "$STATE_DIR/sluice.err" >&2 || true
    echo "--- notify log" >&2
    cat "$STATE_DIR/notify.log" >&2 || true
    exit 1
}

wait_for_log() {
    for _ in $(seq 200); do
        grep -q -- "$1" "$STATE_DIR/sluice.err" 2> /dev/null && return 0
        sleep 0.1
    done
    fail "no \"$1\" in the log"
}

# weight_state LIST BACKEND: the weight the workers use and the state `ctl list` shows for the backend (the
# columns between them, ActiveConn and InActConn, are not looked at).
weight_state() { awk -v backend="$2" '$1 == "->" && $2 == backend { print $4, $NF }' <<< "$1"; }
backends_in() { python3 -c 'import json,sys; print(" ".join(sorted(json.loads(sys.argv[1]))))' "$1"; }
ctl() { ns lb "$SLUICE" ctl --socket "$STATE_DIR/ctl.sock" "$@"; }
scrape() {
    ns lb python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9300/metrics", timeout=5).read().decode(), end="")'
}

topology_down
trap 'topology_down' EXIT
topology_up dr
: > "$STATE_DIR/notify.log"
check='[[service.backend.health_check]]
type = "http"
connect_timeout = 0.5
delay_loop = 0.2
retry = 2
delay_before_retry = 0.1'
notify="notify_up = \"echo \$SLUICE_STATE \$SLUICE_BACKEND \$SLUICE_SERVICE >> $STATE_DIR/notify.log\"
notify_down = \"echo \$SLUICE_STATE \$SLUICE_BACKEND \$SLUICE_SERVICE >> $STATE_DIR/notify.log\"
notify_timeout = 2"
cat > "$STATE_DIR/sluice.toml" << TOML
[eal]
args = ["--no-huge", "-m", "512", "--no-pci", "--no-shconf", "--no-telemetry"]
[[port]]
name = "client"
device = "net_af_packet0,iface=lb0"
addresses = ["10.0.0.1/24"]
[workers]
cores = [$(($(nproc) > 1 ? 1 : 0))]
[control]
socket = "$STATE_DIR/ctl.sock"
metrics = "127.0.0.1:9300"
[[service]]
vip = "10.0.0.100"
port = 80
mode = "dr"
scheduler = "mh"
quorum = 2
sorry_server = { address = "10.0.0.13" }
[[service.backend]]
address = "10.0.0.11"
$notify
$check
[[service.backend.health_check]]
type = "misc"
misc_path = "test ! -e $STATE_DIR/be1.maintenance"
misc_timeout = 1
delay_loop = 0.2
[[service.backend]]
address = "10.0.0.12"
alpha = true
$notify
$check
TOML
"$SLUICE" check --config "$STATE_DIR/sluice.toml" > /dev/null || fail "sluice check refuses the configuration"
ip netns exec "${NS_PREFIX}lb" env RUST_LOG=info "$SLUICE" run --config "$STATE_DIR/sluice.toml" \
    > "$STATE_DIR/sluice.out" 2> "$STATE_DIR/sluice.err" &
echo $! >> "$STATE_DIR/pids"
sluice_pid=$!
wait_for_log "SIGHUP reloads"
# be2 starts down (alpha), so the quorum starts lost; its first passing check brings it back.
wait_for_log "backend 10.0.0.12:80 (id 1): up"
wait_for_log "tcp://10.0.0.100:80 regained its quorum"
counts=$(ns client python3 scripts/netns/client.py count "$URL" 100) || fail "requests failed: $counts"
[ "$(backends_in "$counts")" = "be1 be2" ] || fail "expected be1 and be2 to answer, got $counts"
list=$(ctl list) || fail "ctl list: $list"
[ "$(weight_state "$list" 10.0.0.13:80)" = "- sorry-standby" ] || fail "the sorry server is not on standby: $list"
grep -q 'quorum 2 hysteresis 0: held (healthy weight 2)' <<< "$list" || fail "no quorum line: $list"

# be1's misc check fails: be1 is down, the healthy weight 1 is below the quorum, the sorry server serves.
touch "$STATE_DIR/be1.maintenance"
wait_for_log "backend 10.0.0.11:80 (id 0): down (misc check 2 of 2"
wait_for_log "tcp://10.0.0.100:80 lost its quorum (healthy weight 1 < 2 - hysteresis 0): the sorry server takes"
counts=$(ns client python3 scripts/netns/client.py count "$URL" 100) || fail "requests with the quorum lost failed: $counts"
[ "$(backends_in "$counts")" = "be3" ] || fail "with the quorum lost, expected only the sorry server be3, got $counts"
list=$(ctl list)
[ "$(weight_state "$list" 10.0.0.13:80)" = "1 sorry-active" ] || fail "the sorry server is not active: $list"
[ "$(weight_state "$list" 10.0.0.12:80)" = "- quorum-lost" ] || fail "be2 is not out for the quorum: $list"
metrics=$(scrape) || fail "metrics scrape failed"
grep -q '^sluice_service_sorry_active{service="tcp://10.0.0.100:80"} 1$' <<< "$metrics" ||
    fail "the metrics do not show the sorry server active: $(grep sorry <<< "$metrics")"
grep -q '^sluice_backend_healthy{service="tcp://10.0.0.100:80",backend="10.0.0.11:80",role="real"} 0$' <<< "$metrics" ||
    fail "the metrics do not show be1 down"
if command -v promtool > /dev/null; then
    report=$(promtool check metrics <<< "$metrics" 2>&1) || fail "promtool check metrics: $report"
else
    echo "checkers: promtool not installed (scripts/setup.sh installs it); the exposition is not checked"
fi
for _ in $(seq 50); do grep -q '^down 10.0.0.11:80 tcp://10.0.0.100:80$' "$STATE_DIR/notify.log" && break; sleep 0.1; done
grep -q '^down 10.0.0.11:80 tcp://10.0.0.100:80$' "$STATE_DIR/notify.log" || fail "notify_down did not run"
wait_for_log "notify_down: service tcp://10.0.0.100:80 backend 10.0.0.11:80"

# The misc check passes again: be1 is up, the quorum is back, the real backends take the traffic back.
rm "$STATE_DIR/be1.maintenance"
wait_for_log "backend 10.0.0.11:80 (id 0): up (all 2 checks pass)"
wait_for_log "tcp://10.0.0.100:80 regained its quorum (healthy weight 2 >= 2 + hysteresis 0): the real backends take"
counts=$(ns client python3 scripts/netns/client.py count "$URL" 100) || fail "requests after the quorum returned failed: $counts"
[ "$(backends_in "$counts")" = "be1 be2" ] || fail "after the quorum returned, expected be1 and be2, got $counts"
for _ in $(seq 50); do grep -q '^up 10.0.0.11:80 tcp://10.0.0.100:80$' "$STATE_DIR/notify.log" && break; sleep 0.1; done
grep -q '^up 10.0.0.11:80 tcp://10.0.0.100:80$' "$STATE_DIR/notify.log" || fail "notify_up did not run"

kill -TERM "$sluice_pid"
wait "$sluice_pid" || fail "sluice did not stop cleanly"
grep -q "stopping: SIGTERM received" "$STATE_DIR/sluice.err" || fail "the stop is not logged"
grep -q "mempool: 0 buffers in use" "$STATE_DIR/sluice.out" || fail "mbufs left in use"
echo "checkers: ok in $((($(date +%s%N) - started) / 1000000)) ms (sorry server took over and gave back; notify ran:" \
    "$(tr '\n' ';' < "$STATE_DIR/notify.log"))"
topology_down
trap - EXIT
[ -z "$(leftovers)" ] || fail "left behind: $(leftovers)"
