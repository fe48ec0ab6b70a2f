#!/usr/bin/env bash
# Real traffic end to end, for each forwarding mode: network namespaces with a client, sluice on net_af_packet and
# three backends running HTTP servers. Checks that TCP handshakes complete and answers are right, that every
# connection stays on one backend, that a stopped backend is detected by the health checks and avoided by new
# connections while connections to the others continue, that a backend added by a reload (SIGHUP) under load
# receives new connections, that sluice stops cleanly with every mbuf back, and that nothing is left behind.
#
# Usage: scripts/netns/e2e.sh [dr nat fullnat tun]     (root; sluice is built if needed; takes
# /tmp/sluice-netns.lock, see netns_lock in lib.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/netns/lib.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "e2e: needs root (network namespaces); skipped"
    exit 0
fi
netns_lock
MODES=("$@")
[ ${#MODES[@]} -eq 0 ] && MODES=(dr nat fullnat tun)
cargo build -q -p sluice
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$(pwd)/$TARGET_DIR" ;; esac
SLUICE="$TARGET_DIR/debug/sluice"
URL=http://10.0.0.100/

fail() {
    echo "e2e $MODE: FAILED: $*" >&2
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

run_mode() {
    MODE=$1
    local started counts holds
    started=$(date +%s%N)
    topology_down
    trap 'topology_down' EXIT
    topology_up "$MODE"
    write_config "$MODE" "$STATE_DIR/sluice.toml" 1 2
    ip netns exec "${NS_PREFIX}lb" env RUST_LOG=info "$SLUICE" run --config "$STATE_DIR/sluice.toml" \
        > "$STATE_DIR/sluice.out" 2> "$STATE_DIR/sluice.err" &
    echo $! >> "$STATE_DIR/pids"
    local sluice_pid=$!
    wait_for_log "SIGHUP reloads"

    # The first request after the start is answered without a retransmission (a SYN or an answer dropped while a
    # neighbour is resolved would cost the client a second): the frames wait for the resolution instead.
    local first
    first=$(ns client python3 scripts/netns/client.py first "$URL" 0.9) || fail "the first request was slow or failed: $first"
    echo "e2e $MODE: first request answered by ${first% *} in ${first#* } s"

    counts=$(ns client python3 scripts/netns/client.py count "$URL" 200) || fail "requests failed: $counts"
    [ "$(backends_in "$counts")" = "be1 be2" ] || fail "expected be1 and be2 to answer, got $counts"
    local sticky
    sticky=$(ns client python3 scripts/netns/client.py keepalive "$URL" 30) || fail "keep-alive failed"
    [ "$(backends_in "$sticky" | wc -w)" -eq 1 ] || fail "one connection was answered by $sticky"

    # Connections held open across the failure of be1: those on be2 must keep working (16 of them, so that the
    # chance that Maglev puts none on be2 is 2^-16).
    holds=()
    for h in $(seq 16); do
        ip netns exec "${NS_PREFIX}client" python3 scripts/netns/client.py hold "$URL" 3 > "$STATE_DIR/hold$h" 2> /dev/null &
        holds+=($!)
    done
    sleep 0.5
    backend_stop 1
    wait_for_log "(id 0): down"
    counts=$(ns client python3 scripts/netns/client.py count "$URL" 100) || fail "requests after be1 stopped failed: $counts"
    [ "$(backends_in "$counts")" = "be2" ] || fail "after be1 stopped, expected only be2, got $counts"
    local survivors=0
    for h in $(seq 16); do
        if wait "${holds[$((h - 1))]}"; then
            [ "$(backends_in "$(cat "$STATE_DIR/hold$h")")" = "be2" ] || fail "a held connection moved: $(cat "$STATE_DIR/hold$h")"
            survivors=$((survivors + 1))
        fi
    done
    [ "$survivors" -gt 0 ] || fail "no held connection was on be2 (16 tries): $(cat "$STATE_DIR"/hold*)"

    # be3 joins by a reload under load.
    ip netns exec "${NS_PREFIX}client" python3 scripts/netns/client.py count "$URL" 150 > "$STATE_DIR/load" 2>&1 &
    local load=$!
    write_config "$MODE" "$STATE_DIR/sluice.toml" 1 2 3
    kill -HUP "$sluice_pid"
    wait_for_log "reload: generation"
    wait "$load" || fail "requests during the reload failed: $(cat "$STATE_DIR/load")"
    counts=$(ns client python3 scripts/netns/client.py count "$URL" 150) || fail "requests after the reload failed: $counts"
    [ "$(backends_in "$counts")" = "be2 be3" ] || fail "after adding be3, expected be2 and be3, got $counts"

    kill -TERM "$sluice_pid"
    wait "$sluice_pid" || fail "sluice did not stop cleanly"
    grep -q "mempool: 0 buffers in use" "$STATE_DIR/sluice.out" || fail "mbufs left in use"
    echo "e2e $MODE: ok in $((($(date +%s%N) - started) / 1000000)) ms; last balance $counts"
    grep '^worker' "$STATE_DIR/sluice.out"
    topology_down
    trap - EXIT
    [ -z "$(leftovers)" ] || fail "left behind: $(leftovers)"
}

for mode in "${MODES[@]}"; do
    run_mode "$mode"
done
