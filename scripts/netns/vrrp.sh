#!/usr/bin/env bash
# Active-backup sluice with keepalived's VRRP, in network namespaces (all named slv-*):
#
#   client 10.77.0.50 ---------------- LAN 10.77.0.0/24 (a bridge in slv-sw) ----------------
#        |                       |                      |            |            |
#   node n1 10.77.0.1       node n2 10.77.0.2       be1 .11      be2 .12      be3 .13  (HTTP; LVS-DR real servers:
#   sluice on net_af_packet, keepalived --vrrp on sluice's tap sl-wan           VIP on lo, arp_ignore=1, arp_announce=2)
#
# The nodes' configurations come from an operator's pair of keepalived.conf files (VIP 10.77.0.100,
# virtual_router_id 51, MASTER priority 150 and BACKUP priority 100, advert_int 1, auth_type PASS, lb_kind DR,
# lb_algo rr) through `sluice import-keepalived`: each file gives sluice's configuration and keepalived's VRRP-only
# one; both halves are checked by `sluice check` and `keepalived --config-test`. The test bed then sets the devices
# and addresses and turns rr into mh (flows survive a failover only with mh). Checks, with figures printed:
#  1. n1 (MASTER) holds the VIP; exactly one node answers ARP for it;
#  2. kill -9 of n1's sluice: the VIP moves to n2 within 3 x advert_int plus skew, the client's neighbour entry
#     follows n2's gratuitous ARP, and n1's sluice restarted takes it back (preemption);
#  3. SIGTERM, then kill -9, to n1's keepalived: the VIP moves to n2; restarted, n1 takes it back;
#  4. every backend unreachable from n1 (its health checks fail): n1's track script gives the VIP to n2; back
#     when they are reachable again;
#  5. keep-alive connections opened before the failovers of 2 and 3 carry on to the same backend through them;
#  6. no ARP request was answered by both nodes at once (sampled every 20 ms from the client throughout).
#  7. with `nopreempt` (and `state BACKUP`) in n1's file, n1 coming back leaves the VIP with n2.
# Then everything it created is removed, and it checks that nothing is left.
#
# Usage: scripts/netns/vrrp.sh     (root; needs keepalived, installed by scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
    echo "vrrp: needs root (network namespaces); skipped"
    exit 0
fi
command -v keepalived > /dev/null || { echo "vrrp: keepalived missing: run scripts/setup.sh" >&2; exit 1; }

P=slv-
NAMESPACES=(sw cl n1 n2 be1 be2 be3)
STATE=/tmp/slv-vrrp
VIP=10.77.0.100
URL=http://$VIP/
ADVERT_INT=1
# VRRP's master-down interval for the BACKUP (priority 100): 3 x advert_int + (256 - 100) / 256 s of skew.
MASTER_DOWN_MS=$((3 * ADVERT_INT * 1000 + (256 - 100) * 1000 / 256))
cargo build -q -p sluice
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
SLUICE="$TARGET_DIR/debug/sluice"

ns() { ip netns exec "$P$1" "${@:2}"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

teardown() {
    if [ -n "${KEEP_LOGS:-}" ] && [ -d "$STATE" ]; then
        mkdir -p "$KEEP_LOGS"
        cp -r "$STATE"/. "$KEEP_LOGS/" 2> /dev/null || true
    fi
    if [ -f "$STATE/pids" ]; then
        while read -r pid; do kill "$pid" 2> /dev/null || true; done < "$STATE/pids"
        for _ in $(seq 50); do
            alive=""
            while read -r pid; do kill -0 "$pid" 2> /dev/null && alive="$alive $pid"; done < "$STATE/pids"
            [ -z "$alive" ] && break
            sleep 0.1
        done
    fi
    for name in "${NAMESPACES[@]}"; do
        if ip netns list | grep -q "^$P$name\b"; then
            for pid in $(ip netns pids "$P$name" 2> /dev/null); do kill -9 "$pid" 2> /dev/null || true; done
            ip netns del "$P$name" 2> /dev/null || true
        fi
    done
    rm -rf /var/run/dpdk/slv-n1 /var/run/dpdk/slv-n2 "$STATE"
}

fail() {
    echo "vrrp: FAILED: $*" >&2
    for node in n1 n2; do
        echo "--- $node sluice log" >&2
        grep -v '^EAL' "$STATE/$node/sluice.err" 2> /dev/null | tail -15 >&2 || true
        echo "--- $node keepalived log" >&2
        tail -15 "$STATE/$node/keepalived.log" >&2 2> /dev/null || true
    done
    exit 1
}

# link NS NAME: a veth from the bridge to namespace NS (interface NAME there), made inside the namespaces.
link() {
    local namespace=$1 name=$2
    ip -n "${P}sw" link add "vx-$namespace" type veth peer name "$name" netns "$P$namespace"
    ip -n "${P}sw" link set "vx-$namespace" master br0 up
    ip -n "$P$namespace" link set "$name" up
    ns sw ethtool -K "vx-$namespace" tx off rx off > /dev/null 2>&1 || true
    ns "$namespace" ethtool -K "$name" tx off rx off > /dev/null 2>&1 || true
}

topology_up() {
    mkdir -p "$STATE"
    for name in "${NAMESPACES[@]}"; do
        ip netns add "$P$name"
        ip -n "$P$name" link set lo up
    done
    ip -n "${P}sw" link add br0 type bridge
    ip -n "${P}sw" link set br0 up
    link cl lan
    ip -n "${P}cl" addr add 10.77.0.50/24 dev lan
    # Nodes: sluice owns "wan" through net_af_packet; the node's kernel must not answer on it (its addresses, and
    # the VIP when keepalived puts it there, are on sluice's tap).
    for node in n1 n2; do
        link "$node" wan
        ns "$node" sysctl -qw net.ipv4.conf.wan.arp_ignore=8 net.ipv4.conf.wan.rp_filter=1 \
            net.ipv6.conf.wan.disable_ipv6=1
    done
    for i in 1 2 3; do
        link "be$i" lan
        ip -n "${P}be$i" addr add "10.77.0.1$i/24" dev lan
        ip -n "${P}be$i" addr add "$VIP/32" dev lo
        ns "be$i" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
        ip netns exec "${P}be$i" python3 scripts/netns/backend.py "be$i" > /dev/null 2>&1 &
        echo $! >> "$STATE/pids"
    done
}

# operator_file STATE PRIORITY [LINE]: the keepalived.conf an LVS operator runs on a director (seed style); LINE
# (nopreempt) goes into its vrrp_instance.
operator_file() {
    cat << EOF
! Configuration File for keepalived
global_defs {
   notification_email {
     ops@example.com
   }
   notification_email_from lvs@example.com
   smtp_server 127.0.0.1
   smtp_connect_timeout 30
   router_id LVS_$1
}

vrrp_script chk_http_port {
    script "/usr/bin/killall -0 httpd"
    interval 2
    weight -60
}

vrrp_instance VI_1 {
    state $1
    interface eth0
    virtual_router_id 51
    priority $2
    ${3:-}
    advert_int $ADVERT_INT
    authentication {
        auth_type PASS
        auth_pass 1111
    }
    track_script {
        chk_http_port
    }
    virtual_ipaddress {
        $VIP
    }
}

virtual_server $VIP 80 {
    delay_loop 1
    lb_algo rr
    lb_kind DR
    protocol TCP
EOF
    for i in 1 2 3; do
        cat << EOF

    real_server 10.77.0.1$i 80 {
        weight 1
        HTTP_GET {
            url {
              path /
              status_code 200
            }
            connect_timeout 0.5
            retry 1
            delay_before_retry 0.2
        }
    }
EOF
    done
    echo "}"
}

# import_node NODE ADDRESS STATE PRIORITY CORE: both halves from the operator's file, checked, then set for the bed.
import_node() {
    local node=$1 addr=$2 dir=$STATE/$1
    mkdir -p "$dir"
    operator_file "$3" "$4" > "$dir/operator.conf"
    "$SLUICE" import-keepalived "$dir/operator.conf" --vrrp-out "$dir/keepalived.conf" \
        --check-script "$ROOT/scripts/keepalived/sluice-vip-check" --socket "$dir/ctl.sock" \
        > "$dir/imported.toml" 2> "$dir/import.notes" || fail "$node: import-keepalived: $(cat "$dir/import.notes")"
    "$SLUICE" check --config "$dir/imported.toml" > /dev/null 2>&1 || fail "$node: sluice check refused the import"
    keepalived --config-test --use-file "$dir/keepalived.conf" > "$dir/config-test.log" 2>&1 ||
        fail "$node: keepalived --config-test refused the import: $(cat "$dir/config-test.log")"
    sed -e "s|^args = .*|args = [\"--no-huge\", \"-m\", \"256\", \"--no-pci\", \"--no-shconf\", \"--no-telemetry\", \"--file-prefix\", \"slv-$node\"]|" \
        -e "s|^device = .*|device = \"net_af_packet0,iface=wan\"|" \
        -e "s|^addresses = \[\]|addresses = [\"$addr/24\"]|" \
        -e 's|^scheduler = "rr"|scheduler = "mh"|' \
        "$dir/imported.toml" > "$dir/sluice.toml"
    printf '[workers]\ncores = [%s]\nidle = "adaptive"\n' "$5" >> "$dir/sluice.toml"
    "$SLUICE" check --config "$dir/sluice.toml" > /dev/null 2>&1 || fail "$node: sluice check refused the test bed's file"
}

sluice_start() {
    local node=$1
    rm -f "$STATE/$node/sluice.err"
    ip netns exec "$P$node" env RUST_LOG=info "$SLUICE" run --config "$STATE/$node/sluice.toml" \
        > "$STATE/$node/sluice.out" 2> "$STATE/$node/sluice.err" &
    echo $! > "$STATE/$node/sluice.pid"
    echo $! >> "$STATE/pids"
    for _ in $(seq 200); do
        grep -q "forwarding with" "$STATE/$node/sluice.err" 2> /dev/null && return 0
        sleep 0.1
    done
    fail "$node: sluice did not start"
}

keepalived_start() {
    local node=$1 dir=$STATE/$1
    ip netns exec "$P$node" env SLUICE="$SLUICE" keepalived --vrrp --dont-fork --log-console --log-detail \
        --use-file "$dir/keepalived.conf" --pid "$dir/keepalived.pid" --vrrp_pid "$dir/vrrp.pid" \
        >> "$dir/keepalived.log" 2>&1 &
    echo $! > "$dir/keepalived.main"
    echo $! >> "$STATE/pids"
}

# holder: the node whose tap has the VIP now ("n1", "n2", "both" or "none").
holder() {
    local on=""
    for node in n1 n2; do
        ip -n "$P$node" -br addr show dev sl-wan 2> /dev/null | grep -q "$VIP" && on="$on $node"
    done
    case "$on" in " n1") echo n1 ;; " n2") echo n2 ;; "") echo none ;; *) echo both ;; esac
}

# wait_holder NODE SECONDS: waits until only NODE has the VIP; prints the milliseconds it took.
wait_holder() {
    local want=$1 limit_ms=$(($2 * 1000)) start
    start=$(now_ms)
    while [ "$(holder)" != "$want" ]; do
        [ $(($(now_ms) - start)) -gt "$limit_ms" ] && return 1
        sleep 0.01
    done
    echo $(($(now_ms) - start))
}

mac_of() { ip -n "$P$1" -br link show dev wan | awk '{ print $3 }'; }

# arp_moved_ms SINCE MAC: milliseconds from SINCE to the first ARP sample answered by MAC alone after it.
arp_moved_ms() {
    local at
    for _ in $(seq 300); do
        at=$(awk -v since="$1" -v mac="$2" '$1 >= since && $2 == mac { print $1; exit }' "$STATE/arp.events")
        [ -n "$at" ] && { echo $((at - $1)); return 0; }
        sleep 0.02
    done
    return 1
}

# failover LABEL FROM TO ACTION...: runs ACTION, waits for the VIP to move from FROM to TO (tap and ARP answers),
# and prints both times from the start of ACTION; sets MOVED_MS (the ARP answers' move: the takeover as the
# client sees it).
failover() {
    local label=$1 to=$3 start tap_ms
    shift 3
    start=$(now_ms)
    "$@"
    wait_holder "$to" 15 > /dev/null || fail "$label: the VIP did not move to $to (holder $(holder))"
    tap_ms=$(($(now_ms) - start))
    MOVED_MS=$(arp_moved_ms "$start" "$(mac_of "$to")") || fail "$label: ARP answers did not move to $to"
    echo "vrrp: $label: VIP on $to's tap after $tap_ms ms, ARP answered by $to after $MOVED_MS ms"
}

kill_sluice() { kill -9 "$(cat "$STATE/$1/sluice.pid")"; wait "$(cat "$STATE/$1/sluice.pid")" 2> /dev/null || true; }
# stop_keepalived NODE [SIGNAL]: signals keepalived's main process (reap_keepalived waits until it is gone).
stop_keepalived() { kill "-${2:-TERM}" "$(cat "$STATE/$1/keepalived.main")"; }
reap_keepalived() { wait "$(cat "$STATE/$1/keepalived.main")" 2> /dev/null || true; }
block_backends() { for i in 1 2 3; do ip -n "$P$1" route add blackhole "10.77.0.1$i/32"; done; }
unblock_backends() { for i in 1 2 3; do ip -n "$P$1" route del blackhole "10.77.0.1$i/32"; done; }

started=$(date +%s)
teardown
trap teardown EXIT
topology_up
core2=$(($(nproc) > 1 ? 1 : 0))
import_node n1 10.77.0.1 MASTER 150 0
import_node n2 10.77.0.2 BACKUP 100 "$core2"
cmp -s "$STATE/n1/keepalived.conf" "$STATE/n2/keepalived.conf" && fail "MASTER and BACKUP imported to the same VRRP file"
echo "vrrp: the operator's MASTER and BACKUP files imported to two pairs that sluice check and keepalived --config-test accept"
sluice_start n1
sluice_start n2
keepalived_start n1
keepalived_start n2

# 1. n1 is MASTER; exactly one node answers ARP.
ms=$(wait_holder n1 20) || fail "n1 never held the VIP alone (holder $(holder))"
echo "vrrp: n1 MASTER, VIP on its tap $ms ms after keepalived started"
touch "$STATE/arp.events"
ip netns exec "${P}cl" python3 scripts/netns/arp_watch.py lan "$VIP" "$STATE/arp.events" "$STATE/arp.stop" \
    > "$STATE/arp.out" 2> "$STATE/arp.err" &
arp_pid=$!
echo "$arp_pid" >> "$STATE/pids"
arp_moved_ms 0 "$(mac_of n1)" > /dev/null || fail "the client's ARP requests were not answered by n1 alone"
ns cl python3 scripts/netns/client.py count "$URL" 30 > /dev/null || fail "requests through n1 failed"

# 5 (opened now, checked at the end). Long-lived connections.
ip netns exec "${P}cl" python3 scripts/netns/vrrp_client.py hold "$URL" 20 "$STATE/ready" "$STATE/stop" \
    > "$STATE/hold.out" 2> "$STATE/hold.err" &
hold_pid=$!
echo "$hold_pid" >> "$STATE/pids"
for _ in $(seq 100); do [ -f "$STATE/ready" ] && break; sleep 0.1; done
[ -f "$STATE/ready" ] || fail "the long-lived connections did not open: $(cat "$STATE/hold.err")"
sleep 1

# 2. kill -9 of n1's sluice; then it comes back and preempts.
failover "kill -9 n1's sluice" n1 n2 kill_sluice n1
sluice_death_ms=$MOVED_MS
[ "$sluice_death_ms" -le $((MASTER_DOWN_MS + 1000)) ] ||
    fail "takeover took $sluice_death_ms ms (master down interval $MASTER_DOWN_MS ms)"
neighbour=$(ip -n "${P}cl" neigh show "$VIP" | awk '{ print $5 }')
[ "$neighbour" = "$(mac_of n2)" ] || fail "the client's neighbour entry for the VIP is $neighbour, not n2's $(mac_of n2)"
echo "vrrp: the client's neighbour entry for the VIP follows: $neighbour (n2)"
sleep 1
failover "n1's sluice restarted (preempt)" n2 n1 sluice_start n1
sleep 1

# 3. n1's keepalived stops (SIGTERM); it comes back and preempts.
failover "SIGTERM n1's keepalived" n1 n2 stop_keepalived n1
keepalived_death_ms=$MOVED_MS
reap_keepalived n1
[ "$keepalived_death_ms" -le $((MASTER_DOWN_MS + 1000)) ] ||
    fail "takeover took $keepalived_death_ms ms (master down interval $MASTER_DOWN_MS ms)"
sleep 1
failover "n1's keepalived restarted (preempt)" n2 n1 keepalived_start n1
sleep 1
failover "kill -9 n1's keepalived" n1 n2 stop_keepalived n1 KILL
keepalived_kill_ms=$MOVED_MS
reap_keepalived n1
sleep 1
failover "n1's keepalived restarted again (preempt)" n2 n1 keepalived_start n1
sleep 1

# 5. The long-lived connections, across the six moves of the VIP so far. (Not across step 4: there n1's health
# checks fail one backend at a time, and each verdict moves that backend's connections on n1 to the others, as
# they would if the backend had really failed.)
touch "$STATE/stop"
wait "$hold_pid" || fail "the long-lived client failed: $(cat "$STATE/hold.err")"
held=$(cat "$STATE/hold.out")
echo "vrrp: long-lived connections across six moves of the VIP: $held"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["broken"] == 0 and r["moved"] == 0 else 1)' \
    "$held" || fail "connections broke or moved: $held $(cat "$STATE/hold.err")"

# 4. n1 loses every backend (its health checks fail): its track script gives the VIP away.
failover "every backend unreachable from n1" n1 n2 block_backends n1
sleep 1
failover "n1's backends reachable again (preempt)" n2 n1 unblock_backends n1
sleep 1

# 7. nopreempt: n1's keepalived restarted from the operator's file with `state BACKUP` and `nopreempt` (imported the
# same way) leaves the VIP with n2 although its priority is higher.
operator_file BACKUP 150 nopreempt > "$STATE/n1/operator-nopreempt.conf"
"$SLUICE" import-keepalived "$STATE/n1/operator-nopreempt.conf" --vrrp-out "$STATE/n1/keepalived-nopreempt.conf" \
    --check-script "$ROOT/scripts/keepalived/sluice-vip-check" --socket "$STATE/n1/ctl.sock" > /dev/null 2>&1 ||
    fail "importing the nopreempt file"
grep -q '^ *nopreempt$' "$STATE/n1/keepalived-nopreempt.conf" || fail "nopreempt was not carried over"
failover "SIGTERM n1's keepalived (before nopreempt)" n1 n2 stop_keepalived n1
reap_keepalived n1
cp "$STATE/n1/keepalived-nopreempt.conf" "$STATE/n1/keepalived.conf"
keepalived_start n1
sleep 6
[ "$(holder)" = n2 ] || fail "n1 took the VIP back with nopreempt (holder $(holder))"
echo "vrrp: nopreempt: n1 (priority 150) restarted, the VIP stayed on n2 for 6 s"

# 6. Never two nodes at once.
touch "$STATE/arp.stop"
wait "$arp_pid" || fail "the ARP watcher failed: $(cat "$STATE/arp.err")"
arp=$(cat "$STATE/arp.out")
echo "vrrp: ARP samples from the client: $arp"
python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["two_at_once"] == 0 else 1)' "$arp" ||
    fail "both nodes answered ARP for the VIP at once: $arp"

echo "vrrp: takeover on sluice death $sluice_death_ms ms, on keepalived stop $keepalived_death_ms ms, on keepalived" \
    "kill -9 $keepalived_kill_ms ms \
(master down interval $MASTER_DOWN_MS ms)"
teardown
trap - EXIT
left=$(ip netns list | grep "^$P" || true)
[ -z "$left" ] || { echo "vrrp: FAILED: namespaces left: $left" >&2; exit 1; }
[ ! -e /var/run/dpdk/slv-n1 ] && [ ! -e /var/run/dpdk/slv-n2 ] || { echo "vrrp: FAILED: DPDK runtime files left" >&2; exit 1; }
pgrep -f "keepalived.*$STATE" > /dev/null && { echo "vrrp: FAILED: keepalived left running" >&2; exit 1; }
echo "vrrp: passed in $(($(date +%s) - started)) s; nothing left behind"
