#!/usr/bin/env bash
# Active-active sluice behind an ECMP router, in network namespaces (all named slc-*):
#
#   client 10.99.0.2 --- 10.99.0.1 router (FRR: zebra, bgpd, bfdd; AS 65000; ECMP with L4 hashing) 10.88.0.254
#                                             |
#                 LAN 10.88.0.0/24 (a bridge in slc-sw)
#        |                      |                        |            |            |
#   node n1 10.88.0.1      node n2 10.88.0.2        be1 .11      be2 .12      be3 .13   (HTTP, VIP on lo: DR)
#   sluice on net_af_packet, BIRD on sluice's tap (sl-lan), AS 65001, BGP + BFD to the router
#
# VIP 10.200.0.100:80, DR and then TUN (IP-in-IP from the node's address), scheduler mh, HTTP health checks. Checks, with the figures printed as it goes:
#  1. the router has a route to the VIP with both nodes as next hops;
#  2. new connections spread over both nodes;
#  3. kill -9 of node n1 removes its next hop within 1 s, and keep-alive connections that went through it carry on
#     through n2 to the same backend, none broken;
#  4. every backend failing its health check: the VIP is withdrawn (off the tap, off the router) within 1 s of
#     the verdict, and announced again when one backend recovers;
#  5. n1 comes back and takes its share of new connections again;
#  6. (DR) a third node joins while keep-alive connections run: with the router's plain ECMP group some of them move
#     (to the new node and between the old ones: reported, and none breaks); with a resilient next-hop group none
#     moves, and the new node takes its share of new connections.
# With FLOOD_SECONDS=N it then floods n1 for N s and reports what happened to BGP and BFD (a measurement); the mode
# "flood" does only that, with n1 and n2 (about 25 s; it fails when BGP or BFD went down).
# Then everything it created is removed, and it checks that nothing is left.
#
# With the mode "exceptions" (run by scripts/test.sh on its own, about 1.5 min), connection exceptions shared between
# nodes: long-lived connections through n1 and n2, a backend added (then, in a second round, removed) and within a
# second n1 killed and n3 started; the connections that broke are counted with [sync] off and on, side by side (on:
# none may break but those to a removed backend).
#
# Usage: scripts/netns/cluster.sh [dr tun exceptions flood]   (root; needs bird2 and frr, installed by scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
    echo "cluster: needs root (network namespaces); skipped"
    exit 0
fi
for tool in bird birdc /usr/lib/frr/zebra /usr/lib/frr/bgpd /usr/lib/frr/bfdd; do
    command -v "$tool" > /dev/null || { echo "cluster: $tool missing: run scripts/setup.sh" >&2; exit 1; }
done

# The namespace lock (netns_lock) that serialises this machine's network-namespace test beds.
source scripts/netns/lib.sh
netns_lock

P=slc-
MODES=("$@")
[ ${#MODES[@]} -eq 0 ] && MODES=(dr tun)
NAMESPACES=(sw rt cl n1 n2 n3 be1 be2 be3 fl)
STATE=/tmp/slc-cluster
VIP=10.200.0.100
URL=http://$VIP/
# SLUICE_PROFILE=release runs the optimised build; the flood (the mode "flood", or FLOOD_SECONDS) takes it unless told
# otherwise: a debug build's worker reads and sheds too slowly to drain its queue under a flood.
PROFILE=${SLUICE_PROFILE:-debug}
if [ "$*" = flood ] || [ -n "${FLOOD_SECONDS:-}" ]; then PROFILE=${SLUICE_PROFILE:-release}; fi
if [ "$PROFILE" = release ]; then cargo build -q --release -p sluice; else cargo build -q -p sluice; fi
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
SLUICE="$TARGET_DIR/$PROFILE/sluice"

ns() { ip netns exec "$P$1" "${@:2}"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

teardown() {
    if [ -n "${KEEP_LOGS:-}" ] && [ -d "$STATE" ]; then
        mkdir -p "$KEEP_LOGS/${MODE:-none}"
        cp -r "$STATE"/n1 "$STATE"/n2 "$KEEP_LOGS/${MODE:-none}/" 2> /dev/null || true
    fi
    if [ -f "$STATE/pids" ]; then
        while read -r pid; do kill "$pid" 2> /dev/null || true; done < "$STATE/pids"
        # A stopped sluice takes its tap away itself; give it a moment before what is left is killed.
        for _ in $(seq 50); do
            alive=""
            while read -r pid; do kill -0 "$pid" 2> /dev/null && alive="$alive $pid"; done < "$STATE/pids"
            [ -z "$alive" ] && break
            sleep 0.1
        done
        for pid in $alive; do
            echo "cluster: still running 5 s after SIGTERM: $pid $(cat /proc/$pid/comm 2> /dev/null)" >&2
            for t in /proc/$pid/task/*; do echo "  $(cat $t/comm) $(cat $t/wchan) $(cat $t/stat | cut -d' ' -f3)"; done >&2
            tail -n 3 "$STATE"/n*/sluice.err >&2 || true
        done
    fi
    for name in "${NAMESPACES[@]}"; do
        if ip netns list | grep -q "^$P$name\b"; then
            for pid in $(ip netns pids "$P$name" 2> /dev/null); do kill -9 "$pid" 2> /dev/null || true; done
            ip netns del "$P$name" 2> /dev/null || true
        fi
    done
    rm -rf /var/run/dpdk/slc-n1 /var/run/dpdk/slc-n2 /var/run/dpdk/slc-n3 /var/run/dpdk/slc-fl "$STATE"
}

fail() {
    echo "cluster ${MODE:-}: FAILED: $*" >&2
    for node in n1 n2; do
        echo "--- $node sluice log" >&2
        grep -v '^EAL' "$STATE/$node/sluice.err" 2> /dev/null | tail -20 >&2 || true
    done
    echo "--- router" >&2
    ns rt ip route show "$VIP" >&2 || true
    vtysh_rt -c "show ip bgp summary" >&2 || true
    exit 1
}

# link NS NAME: a veth from the bridge to namespace NS (interface NAME there), made inside the namespaces.
link() {
    local namespace=$1 name=$2
    ip -n "${P}sw" link add "cx-$namespace" type veth peer name "$name" netns "$P$namespace"
    ip -n "${P}sw" link set "cx-$namespace" master br0 up
    ip -n "$P$namespace" link set "$name" up
    ns sw ethtool -K "cx-$namespace" tx off rx off > /dev/null 2>&1 || true
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
    # Router: the LAN, and a direct link to the client.
    link rt lan
    ip -n "${P}rt" addr add 10.88.0.254/24 dev lan
    ip -n "${P}rt" link add cl type veth peer name uplink netns "${P}cl"
    ip -n "${P}rt" link set cl up
    ip -n "${P}cl" link set uplink up
    ns rt ethtool -K cl tx off rx off > /dev/null 2>&1 || true
    ns cl ethtool -K uplink tx off rx off > /dev/null 2>&1 || true
    ip -n "${P}rt" addr add 10.99.0.1/24 dev cl
    ip -n "${P}cl" addr add 10.99.0.2/24 dev uplink
    ip -n "${P}cl" route add default via 10.99.0.1
    ns rt sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.lan.rp_filter=0
    # Nodes: sluice owns "lan" through net_af_packet; the node's kernel must not answer on it (its addresses are on
    # sluice's tap). On a NIC bound to DPDK there is no such kernel interface.
    for node in n1 n2 n3; do
        link "$node" lan
        ns "$node" sysctl -qw net.ipv4.conf.lan.arp_ignore=8 net.ipv4.conf.lan.rp_filter=1 \
            net.ipv6.conf.lan.disable_ipv6=1
    done
    # A traffic generator on the LAN, for the flood.
    link fl lan
    for i in 1 2 3; do
        link "be$i" lan
        ip -n "${P}be$i" addr add "10.88.0.1$i/24" dev lan
        ip -n "${P}be$i" route add default via 10.88.0.254
        ns "be$i" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
        if [ "$MODE" = tun ]; then
            # The VIP on a TUN device fed by a userspace IP-in-IP endpoint (no ipip module here).
            ns "be$i" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
            ip netns exec "${P}be$i" python3 scripts/netns/decap.py "tun$i" > "$STATE/decap$i.log" 2>&1 &
            echo $! >> "$STATE/pids"
            for _ in $(seq 50); do grep -q ready "$STATE/decap$i.log" 2> /dev/null && break; sleep 0.1; done
            ip -n "${P}be$i" addr add "$VIP/32" dev "tun$i"
            ip -n "${P}be$i" link set "tun$i" up
            ns "be$i" sysctl -qw "net.ipv4.conf.tun$i.rp_filter=0"
        else
            ip -n "${P}be$i" addr add "$VIP/32" dev lo
        fi
        backend_start "$i"
    done
}

backend_start() {
    ip netns exec "${P}be$1" python3 scripts/netns/backend.py "be$1" > /dev/null 2>&1 &
    echo $! > "$STATE/backend$1.pid"
    echo $! >> "$STATE/pids"
}

backend_stop() { kill "$(cat "$STATE/backend$1.pid")" 2> /dev/null || true; }

router_up() {
    local dir=$STATE/frr
    mkdir -p "$dir"
    cat > "$dir/zebra.conf" << 'EOF'
hostname slc-rt
EOF
    cat > "$dir/bfdd.conf" << 'EOF'
bfd
 profile fast
  receive-interval 100
  transmit-interval 100
  detect-multiplier 3
EOF
    cat > "$dir/bgpd.conf" << 'EOF'
router bgp 65000
 bgp router-id 10.88.0.254
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor SLUICE peer-group
 neighbor SLUICE remote-as 65001
 neighbor SLUICE bfd
 neighbor SLUICE bfd profile fast
 neighbor SLUICE timers 1 3
 neighbor SLUICE timers connect 1
 neighbor 10.88.0.1 peer-group SLUICE
 neighbor 10.88.0.2 peer-group SLUICE
 neighbor 10.88.0.3 peer-group SLUICE
 address-family ipv4 unicast
  neighbor SLUICE activate
  maximum-paths 8
 exit-address-family
EOF
    chown -R frr:frr "$dir"
    local common=(-d -z "$dir/zserv.api" --vty_socket "$dir" -u frr -g frr)
    ns rt /usr/lib/frr/zebra "${common[@]}" -f "$dir/zebra.conf" -i "$dir/zebra.pid" > "$dir/zebra.log" 2>&1
    ns rt /usr/lib/frr/bfdd "${common[@]}" -f "$dir/bfdd.conf" -i "$dir/bfdd.pid" --bfdctl "$dir/bfdd.sock" \
        > "$dir/bfdd.log" 2>&1
    ns rt /usr/lib/frr/bgpd "${common[@]}" -f "$dir/bgpd.conf" -i "$dir/bgpd.pid" > "$dir/bgpd.log" 2>&1
    for daemon in zebra bfdd bgpd; do cat "$dir/$daemon.pid" >> "$STATE/pids"; done
}

vtysh_rt() { ns rt vtysh --vty_socket "$STATE/frr" "$@"; }

# sync_section ADDR: with SYNC=on, the [sync] section of the node at ADDR: connection exceptions shared with the
# other nodes of the LAN (UDP 7100, through the kernel exception path like BGP).
sync_section() {
    [ "${SYNC:-off}" = on ] || return 0
    local peers=""
    for other in 10.88.0.1 10.88.0.2 10.88.0.3; do
        [ "$other" = "$1" ] || peers="$peers\"$other:7100\", "
    done
    cat << EOF
[sync]
listen = "0.0.0.0:7100"
peers = [${peers%, }]
key = "5c1ce5ecc0ffee00112233445566778899aabbccddeeff00"
EOF
}

# node_config NODE ADDRESS CORE: a node's sluice.toml. Its port's net_af_packet ring holds 16384 frames
# (AF_PACKET_FRAMES; the driver's default is 512, about 1 ms of a flood): on cores shared with the kernel, the
# generator and the routing daemons, the worker is off its CPU for milliseconds at a time, and what arrives meanwhile
# must wait in the ring for it, where the worker finds the control frames by shedding the data ahead of them.
node_config() {
    local node=$1 addr=$2 core=$3
    cat << EOF
[eal]
args = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry", "--file-prefix", "slc-$node"]
[[port]]
name = "lan"
device = "net_af_packet0,iface=lan,framecnt=${AF_PACKET_FRAMES:-16384}"
addresses = ["$addr/24"]
[workers]
cores = [$core]
idle = "adaptive"
$([ -n "${OVERLOAD_BURSTS:-}" ] && echo "overload_bursts = $OVERLOAD_BURSTS")
[network]
kernel_exception_path = true
$([ "$MODE" = tun ] && echo "tunnel_source_v4 = \"$addr\"")
[control]
socket = "$STATE/$node/ctl.sock"
metrics = "127.0.0.1:9901"
$(sync_section "$addr")
[[service]]
vip = "$VIP"
port = 80
mode = "$MODE"
scheduler = "mh"
EOF
    for i in 1 2 3; do
        cat << EOF
[[service.backend]]
address = "10.88.0.1$i"
[service.backend.health_check]
type = "http"
connect_timeout = 0.3
delay_loop = 0.2
retry = 1
delay_before_retry = 0.1
EOF
    done
    # A UDP service (discard) for the flood: balancer traffic that keeps the worker busy. Its backends are checked
    # on the HTTP port, so that the VIP goes when every HTTP server does.
    cat << EOF
[[service]]
vip = "$VIP"
port = 9
protocol = "udp"
mode = "$MODE"
scheduler = "mh"
EOF
    for i in 1 2; do
        cat << EOF
[[service.backend]]
address = "10.88.0.1$i"
[service.backend.health_check]
type = "tcp"
connect_port = 80
connect_timeout = 0.3
delay_loop = 0.2
retry = 1
delay_before_retry = 0.1
EOF
    done
}

sluice_start() {
    local node=$1
    ip netns exec "$P$node" env RUST_LOG=info "$SLUICE" run --config "$STATE/$node/sluice.toml" \
        > "$STATE/$node/sluice.out" 2> "$STATE/$node/sluice.err" &
    echo $! > "$STATE/$node/sluice.pid"
    echo $! >> "$STATE/pids"
    for _ in $(seq 200); do
        grep -q "announced $VIP" "$STATE/$node/sluice.err" 2> /dev/null && return 0
        sleep 0.1
    done
    fail "$node: sluice did not announce $VIP"
}

bird_start() {
    local node=$1 addr=$2
    sed -e "s/10\.88\.0\.1;/$addr;/" -e "s/local 10\.88\.0\.1 /local $addr /" config/bird.conf > "$STATE/$node/bird.conf"
    ns "$node" bird -c "$STATE/$node/bird.conf" -s "$STATE/$node/bird.ctl" -P "$STATE/$node/bird.pid"
    cat "$STATE/$node/bird.pid" >> "$STATE/pids"
}

node_up() {
    local node=$1 addr=$2 core=$3
    mkdir -p "$STATE/$node"
    node_config "$node" "$addr" "$core" > "$STATE/$node/sluice.toml"
    sluice_start "$node"
    bird_start "$node" "$addr"
}

next_hops() { ns rt ip route show "$VIP" | grep -c "via 10.88.0" || true; }

# wait_next_hops N SECONDS: waits until the router's route to the VIP has N next hops; prints the milliseconds.
wait_next_hops() {
    local want=$1 limit_ms=$(($2 * 1000)) start
    start=$(now_ms)
    while [ "$(next_hops)" != "$want" ]; do
        [ $(($(now_ms) - start)) -gt "$limit_ms" ] && return 1
        sleep 0.01
    done
    echo $(($(now_ms) - start))
}

# conns NODE: the connections sluice on NODE has opened to the VIP's service so far.
conns() { "$SLUICE" ctl --socket "$STATE/$1/ctl.sock" stats | awk '$1 == "TCP" { print $3 }'; }

# spread COUNT: COUNT new connections from the client; prints "n1 n2" connection counts for them.
spread() {
    local before1 before2 out
    before1=$(conns n1)
    before2=$(conns n2)
    out=$(ns cl python3 scripts/netns/client.py count "$URL" "$1") || fail "requests failed: $out"
    echo "$(($(conns n1) - before1)) $(($(conns n2) - before2))"
}

check_share() {
    local label=$1 a=$2 b=$3 total
    total=$((a + b))
    echo "cluster $MODE: $label: n1 $a, n2 $b of $total new connections"
    [ "$total" -gt 0 ] || fail "$label: no connection counted"
    [ $((a * 100 / total)) -ge 20 ] && [ $((b * 100 / total)) -ge 20 ] || fail "$label: uneven spread $a / $b"
}

# bgp_drops: how many times the router's BGP session with n1 has dropped; bfd_up: the BFD session's uptime (s).
bgp_drops() {
    vtysh_rt -c "show ip bgp neighbors 10.88.0.1 json" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["10.88.0.1"].get("connectionsDropped", 0))'
}
bfd_up() {
    vtysh_rt -c "show bfd peers json" |
        python3 -c 'import json,sys; print(next((p.get("uptime", 0) for p in json.load(sys.stdin) if p["peer"] == "10.88.0.1" and p["status"] == "up"), -1))'
}
udp_in() { "$SLUICE" ctl --socket "$STATE/n1/ctl.sock" stats | awk '$1 == "UDP" { print $4 }'; }

# flood_counters: "name value" lines of n1's counters: its port (DPDK), its tap and its LAN interface (kernel), and
# sluice's drops and exception path.
flood_counters() {
    ns n1 curl -s http://127.0.0.1:9901/metrics | grep -E '^sluice_(port|kernel|drops|worker)' | tr -d ' ' |
        sed 's/}/} /' | awk '{ print $1, $2 }' || true
    ns n1 awk 'NR > 2 { sub(":", "", $1); print $1 "_rx_packets", $3; print $1 "_rx_drop", $5; print $1 "_tx_packets", $11; print $1 "_tx_drop", $13 }' /proc/net/dev
    vtysh_rt -c "show bfd peers counters json" | python3 -c 'import json,sys; [print("bfd_" + k, v) for p in json.load(sys.stdin) if p["peer"] == "10.88.0.1" for k, v in p.items() if k != "peer" and isinstance(v, int)]' || true
}

# flood_measure HOPS: once the route to the VIP has HOPS next hops, UDP to the VIP from a generator on the LAN
# (dpdk-testpmd txonly on net_af_packet, on the CPU that is not n1's worker's, as a generator on another machine
# would be), as fast as it goes, at n1 for FLOOD_SECONDS; reports the offered and forwarded rates, what n1 read and
# shed, and whether the BGP and BFD sessions with the router and the route's next hops stayed up; sets FLOOD_HELD=1
# when BGP and BFD stayed up. With FLOOD_DIAG=1 it prints every counter of n1 that moved (its port, its worker, its
# tap and LAN interface, the router's BFD counters).
flood_measure() {
    local hops=$1 seconds=$FLOOD_SECONDS mac drops_before bfd_before in_before lost=0 start
    mac=$(ip -n "${P}n1" -br link show dev lan | awk '{ print $3 }')
    wait_next_hops "$hops" 10 > /dev/null || fail "the route to the VIP did not have $hops next hops before the flood"
    drops_before=$(bgp_drops)
    bfd_before=$(bfd_up)
    in_before=$(udp_in)
    ip netns exec "${P}fl" dpdk-testpmd --lcores=0@1,1@1 --no-huge -m 256 --no-pci --no-shconf \
        --no-telemetry --file-prefix slc-fl --vdev=net_af_packet0,iface=lan -- --forward-mode=txonly \
        --eth-peer="0,$mac" --tx-ip=10.99.0.77,$VIP --tx-udp=4000,9 --txpkts=64 --nb-cores=1 --total-num-mbufs=8192 --stats-period=1 < /dev/null \
        > "$STATE/flood.out" 2>&1 &
    local flood=$!
    echo "$flood" >> "$STATE/pids"
    flood_counters > "$STATE/counters.before"
    start=$(now_ms)
    local expected present
    expected=$(hops_present)
    : > "$STATE/flood.missing"
    while [ $(($(now_ms) - start)) -lt $((seconds * 1000)) ]; do
        present=$(hops_present)
        if [ "$present" != "$expected" ]; then
            lost=$((lost + 1))
            comm -23 <(echo "$expected") <(echo "$present") >> "$STATE/flood.missing"
        fi
        sleep 0.1
    done
    local in_after drops_after bfd_after
    in_after=$(udp_in)
    drops_after=$(bgp_drops)
    bfd_after=$(bfd_up)
    flood_counters > "$STATE/counters.after"
    if [ -n "${FLOOD_DIAG:-}" ]; then
        paste "$STATE/counters.before" "$STATE/counters.after" | awk '{ if ($4 - $2) print $1, $4 - $2 }' | sed 's/^/  delta /'
    fi
    kill -INT "$flood"
    wait "$flood" 2> /dev/null || true
    local offered
    offered=$(grep -o 'TX-packets: *[0-9]*' "$STATE/flood.out" | tail -n 1 | grep -o '[0-9]*$')
    local shed read_by_sluice
    shed=$(counter_delta 'sluice_worker_drops_total{worker="0",reason="overload_shed"}')
    read_by_sluice=$(counter_delta 'sluice_worker_rx_packets_total{worker="0"}')
    echo "cluster $MODE: flood at n1 for $seconds s: offered $((${offered:-0} / seconds)) pps, n1 read" \
        "$((read_by_sluice / seconds)) pps of the $(($(counter_delta lan_rx_packets) / seconds)) pps its LAN" \
        "interface received, forwarded $(((in_after - in_before) / seconds)) pps, shed $((shed / seconds)) pps;" \
        "BGP drops $drops_before -> $drops_after, BFD uptime $bfd_before -> $bfd_after s, samples without all" \
        "$hops next hops: $lost (n1's missing in $(grep -c '^10.88.0.1$' "$STATE/flood.missing"))"
    FLOOD_HELD=0
    if [ "$drops_after" = "$drops_before" ] && [ "$bfd_before" -ge 0 ] && [ "$bfd_after" -ge $((bfd_before + seconds - 1)) ]; then
        FLOOD_HELD=1
        echo "cluster $MODE: flood: BGP and BFD stayed up"
    else
        echo "cluster $MODE: flood: BGP or BFD went down (see above)"
    fi
}

# hops_present: the next hops of the router's route to the VIP, one address a line, sorted.
hops_present() { ns rt ip route show "$VIP" | grep -o "via 10\.88\.0\.[0-9]*" | cut -d' ' -f2 | sort -u || true; }

# counter_delta NAME: how much n1's counter NAME moved during the flood (flood_counters before and after).
counter_delta() {
    paste "$STATE/counters.before" "$STATE/counters.after" | awk -v name="$1" '$1 == name { d = $4 - $2 } END { print d + 0 }'
}

# hold_start N: N keep-alive connections from the client, sending until hold_stop; waits until all are open.
hold_start() {
    rm -f "$STATE/ready" "$STATE/stop"
    ns cl python3 scripts/netns/cluster_client.py hold "$URL" "$1" "$STATE/ready" "$STATE/stop" \
        > "$STATE/hold.out" 2> "$STATE/hold.err" &
    hold_pid=$!
    echo "$hold_pid" >> "$STATE/pids"
    for _ in $(seq 100); do [ -f "$STATE/ready" ] && break; sleep 0.1; done
    [ -f "$STATE/ready" ] || fail "the long-lived connections did not open: $(cat "$STATE/hold.err")"
}

# hold_stop: stops them and sets HELD to their summary; fails if one broke or moved to another backend.
hold_stop() {
    touch "$STATE/stop"
    wait "$hold_pid" || fail "the long-lived client failed: $(cat "$STATE/hold.err")"
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["broken"] == 0 and r["moved"] == 0 else 1)' \
        "$(cat "$STATE/hold.out")" || fail "connections broke or moved: $(cat "$STATE/hold.out") $(cat "$STATE/hold.err")"
    HELD=$(cat "$STATE/hold.out")
}

# third_node: n3 joins under live connections, with the router's plain ECMP group and then a resilient one.
third_node() {
    local core b1 b2 b3 moved_old moved_new
    core=$(($(nproc) > 1 ? 1 : 0))
    # Plain ECMP (FRR's multipath route, hash-threshold).
    hold_start 30
    b1=$(conns n1)
    b2=$(conns n2)
    node_up n3 10.88.0.3 "$core"
    wait_next_hops 3 30 > /dev/null || fail "n3 never joined the route"
    sleep 2
    moved_old=$(($(conns n1) - b1 + $(conns n2) - b2))
    moved_new=$(conns n3)
    hold_stop
    echo "cluster $MODE: n3 joins a plain ECMP group under 30 live connections: $moved_new moved to n3," \
        "$moved_old between n1 and n2, none broken: $HELD"
    # Resilient: a next-hop group of the kernel's, installed beside FRR's route with a better metric.
    kill "$(cat "$STATE/n3/sluice.pid")"
    wait "$(cat "$STATE/n3/sluice.pid")" 2> /dev/null || true
    wait_next_hops 2 5 > /dev/null || fail "n3's next hop stayed after it stopped"
    ip -n "${P}rt" nexthop add id 60001 via 10.88.0.1 dev lan
    ip -n "${P}rt" nexthop add id 60002 via 10.88.0.2 dev lan
    ip -n "${P}rt" nexthop add id 60003 via 10.88.0.3 dev lan
    ip -n "${P}rt" nexthop add id 60000 group 60001/60002 type resilient buckets 128 idle_timer 1
    ip -n "${P}rt" route add "$VIP/32" nhid 60000 metric 5
    hold_start 30
    b1=$(conns n1)
    b2=$(conns n2)
    sluice_start n3
    ip -n "${P}rt" nexthop replace id 60000 group 60001/60002/60003 type resilient buckets 128 idle_timer 1
    sleep 3
    moved_old=$(($(conns n1) - b1 + $(conns n2) - b2))
    moved_new=$(conns n3)
    hold_stop
    echo "cluster $MODE: n3 joins a resilient group under 30 live connections: $moved_new moved to n3," \
        "$moved_old between n1 and n2: $HELD"
    [ "$moved_old" = 0 ] && [ "$moved_new" = 0 ] || fail "live connections moved in a resilient group"
    b1=$(conns n1)
    b2=$(conns n2)
    b3=$(conns n3)
    out=$(ns cl python3 scripts/netns/client.py count "$URL" 300) || fail "requests failed: $out"
    b1=$(($(conns n1) - b1))
    b2=$(($(conns n2) - b2))
    b3=$(($(conns n3) - b3))
    echo "cluster $MODE: new connections with n3 in the resilient group: n1 $b1, n2 $b2, n3 $b3 of 300"
    [ $((b3 * 100 / 300)) -ge 20 ] || fail "n3 took less than a fifth of new connections: $b3 of 300"
    ip -n "${P}rt" route del "$VIP/32" nhid 60000 metric 5
}

scenario() {
    MODE=$1
    SYNC=off
teardown
trap teardown EXIT
topology_up
router_up
node_up n1 10.88.0.1 0
node_up n2 10.88.0.2 "$(($(nproc) > 1 ? 1 : 0))"

# 1. Both next hops.
ms=$(wait_next_hops 2 30) || fail "the router never had both next hops"
echo "cluster $MODE: router has both next hops ($ms ms after the nodes announced)"
ns rt ip route show "$VIP"

# Both nodes built the same Maglev table (once their health checks agree).
digest() { "$SLUICE" ctl --socket "$STATE/$1/ctl.sock" list | awk '$1 == "TCP" { print $NF }'; }
for _ in $(seq 50); do
    d1=$(digest n1)
    d2=$(digest n2)
    [ -n "$d1" ] && [ "$d1" = "$d2" ] && break
    sleep 0.1
done
[ -n "$d1" ] && [ "$d1" = "$d2" ] || fail "the nodes' Maglev tables differ: $d1 / $d2"
echo "cluster $MODE: both nodes' Maglev table digest $d1"

# 2. New connections spread over both nodes.
read -r a b <<< "$(spread 200)"
check_share "spread" "$a" "$b"

# 3. kill -9 of n1 under long-lived connections.
rm -f "$STATE/ready" "$STATE/stop"
n1_before=$(conns n1)
ns cl python3 scripts/netns/cluster_client.py hold "$URL" 40 "$STATE/ready" "$STATE/stop" \
    > "$STATE/hold.out" 2> "$STATE/hold.err" &
hold_pid=$!
echo "$hold_pid" >> "$STATE/pids"
for _ in $(seq 100); do [ -f "$STATE/ready" ] && break; sleep 0.1; done
[ -f "$STATE/ready" ] || fail "the long-lived connections did not open: $(cat "$STATE/hold.err")"
through_n1=$(($(conns n1) - n1_before))
[ "$through_n1" -gt 0 ] || fail "no long-lived connection went through n1"
sleep 1
kill -9 "$(cat "$STATE/n1/sluice.pid")"
wait "$(cat "$STATE/n1/sluice.pid")" 2> /dev/null || true
ms=$(wait_next_hops 1 5) || fail "n1's next hop stayed after kill -9"
echo "cluster $MODE: kill -9 n1: its next hop left the router's route in $ms ms"
[ "$ms" -le 1000 ] || fail "next hop removal took $ms ms (more than 1 s)"
sleep 3
touch "$STATE/stop"
wait "$hold_pid" || fail "the long-lived client failed: $(cat "$STATE/hold.err")"
held=$(cat "$STATE/hold.out")
echo "cluster $MODE: long-lived connections across n1's death ($through_n1 of 40 went through n1): $held"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["broken"] == 0 and r["moved"] == 0 else 1)' \
    "$held" || fail "connections broke or moved: $held $(cat "$STATE/hold.err")"

# 4. Every backend fails: the VIP is withdrawn; one recovers: announced again.
for i in 1 2 3; do backend_stop "$i"; done
stopped=$(now_ms)
while ns n2 ip -br addr show dev sl-lan | grep -q "$VIP/32"; do
    [ $(($(now_ms) - stopped)) -gt 10000 ] && fail "the VIP stayed on n2's tap with every backend down"
    sleep 0.01
done
off_tap=$(now_ms)
ms=$(wait_next_hops 0 5) || fail "the router kept the VIP's route"
echo "cluster $MODE: all backends down: VIP off n2's tap $((off_tap - stopped)) ms after the backends stopped" \
    "(health checks), route gone from the router $ms ms later"
[ "$ms" -le 1000 ] || fail "withdrawal took $ms ms (more than 1 s)"
backend_start 2
started_be=$(now_ms)
ms=$(wait_next_hops 1 10) || fail "the VIP was not announced again after a backend recovered"
echo "cluster $MODE: a backend back: route on the router again $((($(now_ms) - started_be))) ms after it started"

# 5. n1 comes back (BIRD kept running; sluice makes a new tap) and takes its share.
backend_start 1
backend_start 3
sluice_start n1
ms=$(wait_next_hops 2 30) || fail "n1 did not come back into the route"
echo "cluster $MODE: n1 restarted: both next hops again after $ms ms"
sleep 1
read -r a b <<< "$(spread 200)"
check_share "after n1 rejoined" "$a" "$b"

if [ "$MODE" = dr ]; then third_node; fi
if [ "$MODE" = dr ] && [ -n "${FLOOD_SECONDS:-}" ]; then flood_measure 3; fi
teardown
trap - EXIT
}

ctl() { "$SLUICE" ctl --socket "$STATE/$1/ctl.sock" "${@:2}"; }

# exceptions_run off|on add|remove: DR, n1 and n2 under 60 long-lived connections; then a backend change on both
# nodes: "add" starts with be1 and be2 (be3 taken out by ctl) and adds be3 (a third of the Maglev slots change
# hands); "remove" starts with all three and removes be3 (its own connections are lost: it is out of the service).
# Within a second n1 is killed and n3 (with the same backends) starts. Flows move from n1 to n2 and n3, and between
# n2 and n3 when n3 enters the router's plain ECMP group. Sets BROKE to how many connections broke or reached
# another backend, and LOST to how many of them had the removed backend.
exceptions_run() {
    SYNC=$1
    local change=$2
    MODE=dr
    teardown
    trap teardown EXIT
    topology_up
    router_up
    node_up n1 10.88.0.1 0
    node_up n2 10.88.0.2 "$(($(nproc) > 1 ? 1 : 0))"
    wait_next_hops 2 30 > /dev/null || fail "the router never had both next hops"
    if [ "$change" = add ]; then
        for node in n1 n2; do ctl "$node" remove-backend "$VIP:80" tcp 10.88.0.13:80 > /dev/null; done
    fi
    rm -f "$STATE/ready" "$STATE/stop"
    ns cl python3 scripts/netns/cluster_client.py hold "$URL" 60 "$STATE/ready" "$STATE/stop" \
        > "$STATE/hold.out" 2> "$STATE/hold.err" &
    hold_pid=$!
    echo "$hold_pid" >> "$STATE/pids"
    for _ in $(seq 100); do [ -f "$STATE/ready" ] && break; sleep 0.1; done
    [ -f "$STATE/ready" ] || fail "the long-lived connections did not open: $(cat "$STATE/hold.err")"
    sleep 1
    local changed core
    changed=$(now_ms)
    for node in n1 n2; do ctl "$node" "$change-backend" "$VIP:80" tcp 10.88.0.13:80 > /dev/null; done
    sleep 0.2
    kill -9 "$(cat "$STATE/n1/sluice.pid")"
    wait "$(cat "$STATE/n1/sluice.pid")" 2> /dev/null || true
    core=$(($(nproc) > 1 ? 1 : 0))
    mkdir -p "$STATE/n3"
    node_config n3 10.88.0.3 "$core" > "$STATE/n3/sluice.toml"
    local killed_and_started=$(($(now_ms) - changed))
    sluice_start n3
    # n3 gets the same backends as n1 and n2 before BIRD announces it (it has no connection yet).
    [ "$change" = remove ] && ctl n3 remove-backend "$VIP:80" tcp 10.88.0.13:80 > /dev/null
    bird_start n3 10.88.0.3
    local settled
    settled=$(now_ms)
    until ns rt ip route show "$VIP" | grep -q "via 10.88.0.3" && ! ns rt ip route show "$VIP" | grep -q "via 10.88.0.1 "; do
        [ $(($(now_ms) - settled)) -gt 30000 ] && fail "the route never settled on n2 and n3"
        sleep 0.05
    done
    echo "cluster exceptions $SYNC: the route is on n2 and n3 $(($(now_ms) - changed)) ms after the change"
    sleep 3
    touch "$STATE/stop"
    wait "$hold_pid" || fail "the long-lived client failed: $(cat "$STATE/hold.err")"
    HELD=$(cat "$STATE/hold.out")
    BROKE=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["broken"] + r["moved"])' "$HELD")
    LOST=0
    [ "$change" = remove ] && LOST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).count("be3"))' "$STATE/ready")
    echo "cluster exceptions $SYNC: be3 ${change/%e/}ed, n1 killed and n3 started $killed_and_started ms later" \
        "($LOST connections had be3): $HELD"
    if [ "$SYNC" = on ]; then
        echo "cluster exceptions on: n2: $(ctl n2 sync | tr '\n' ' ')"
        echo "cluster exceptions on: n3: $(ctl n3 sync | tr '\n' ' ')"
    fi
    teardown
    trap - EXIT
}

exceptions_scenario() {
    local change off on off_lost on_lost
    for change in add remove; do
        exceptions_run off "$change"
        off=$BROKE off_lost=$LOST
        exceptions_run on "$change"
        on=$BROKE on_lost=$LOST
        local lost=""
        [ "$change" = remove ] && lost=" (of them to be3, which left the service: off $off_lost, on $on_lost)"
        echo "cluster exceptions: be3 ${change/%e/}ed with a node change: connections broken of 60:" \
            "exceptions off $off, exceptions on $on$lost"
        [ "$on" = "$on_lost" ] || fail "with exceptions on, $((on - on_lost)) connections broke that were not to be3: $HELD"
    done
}

# flood_scenario: n1 and n2 up, both next hops on the router, then flood_measure (FLOOD_SECONDS, default 10); fails
# when BGP or BFD went down.
flood_scenario() {
    MODE=dr
    SYNC=off
    FLOOD_SECONDS=${FLOOD_SECONDS:-10}
    teardown
    trap teardown EXIT
    topology_up
    router_up
    node_up n1 10.88.0.1 0
    node_up n2 10.88.0.2 "$(($(nproc) > 1 ? 1 : 0))"
    wait_next_hops 2 30 > /dev/null || fail "the router never had both next hops"
    # BFD up for a few seconds, so that its uptime can show the flood's span.
    for _ in $(seq 100); do [ "$(bfd_up)" -ge 2 ] && break; sleep 0.1; done
    flood_measure 2
    [ "$FLOOD_HELD" = 1 ] || fail "BGP or BFD went down under the flood"
    teardown
    trap - EXIT
}

started=$(date +%s)
for mode in "${MODES[@]}"; do
    case "$mode" in
        dr | tun) scenario "$mode" ;;
        exceptions) exceptions_scenario ;;
        flood) flood_scenario ;;
        *) echo "cluster: unknown mode $mode (dr, tun or exceptions)" >&2; exit 2 ;;
    esac
done
left=$(ip netns list | grep "^$P" || true)
[ -z "$left" ] || { echo "cluster: FAILED: namespaces left: $left" >&2; exit 1; }
[ ! -e /var/run/dpdk/slc-n1 ] && [ ! -e /var/run/dpdk/slc-n2 ] && [ ! -e /var/run/dpdk/slc-n3 ] || { echo "cluster: FAILED: DPDK runtime files left" >&2; exit 1; }
echo "cluster: ${MODES[*]} passed in $(($(date +%s) - started)) s; nothing left behind"
