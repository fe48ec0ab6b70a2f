#!/usr/bin/env bash
# The network-namespace test bed: a client, sluice (attached to veth links through DPDK's net_af_packet) and three
# backends running real HTTP servers, configured for one forwarding mode as LVS requires. Sourced by
# scripts/netns/e2e.sh and scripts/demo.sh.
#
# Address plan (IPv4):
#   client segment 10.0.0.0/24: client 10.0.0.2, sluice port 10.0.0.1, VIP 10.0.0.100
#   dr, tun: the backends are on the client segment: 10.0.0.11-13 (and the balancer's management address 10.0.0.250)
#   nat, fullnat: backend segment 10.1.0.0/24: sluice port 10.1.0.1, FULLNAT local address 10.1.0.5,
#                 backends 10.1.0.11-13, management 10.1.0.250
# The "lb" namespace's kernel has no address on sluice's links: sluice owns them. Its management link (a separate
# veth) carries the health checks, as a balancer's management NIC would.

NS_PREFIX="${NS_PREFIX:-sl-}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${STATE_DIR:-/tmp/${NS_PREFIX}netns}"

# netns_lock: waits for /tmp/sluice-netns.lock, which every network-namespace test bed on this machine takes (the
# veth names and namespaces would collide), on file descriptor 9, unless a process this shell descends from holds it
# already (`flock /tmp/sluice-netns.lock scripts/test.sh`): waiting then would never end.
netns_lock() {
    local lock=/tmp/sluice-netns.lock inode holders pid
    exec 9> "$lock"
    flock -n 9 && return 0
    inode=$(stat -c %i "$lock")
    holders=$(awk -v inode="$inode" '$2 == "FLOCK" { n = split($6, id, ":"); if (id[n] == inode) print $5 }' /proc/locks)
    pid=$$
    while [ "$pid" -gt 1 ]; do
        grep -qx "$pid" <<< "$holders" && return 0
        pid=$(awk '{ print $4 }' "/proc/$pid/stat" 2> /dev/null || echo 1)
    done
    echo "waiting for $lock (another network-namespace test is running)" >&2
    flock 9
}

# Runs a command in a test-bed namespace (in the foreground: for background processes use ip netns exec directly,
# so that $! is the process and not a subshell).
ns() { ip netns exec "${NS_PREFIX}$1" "${@:2}"; }

backend_net() {
    case "$1" in dr | tun) echo 10.0.0 ;; *) echo 10.1.0 ;; esac
}

# A veth from namespace $1 (interface $2) to the bridge of namespace "sw", with offloads off so that raw frames carry
# real checksums.
link_to_switch() {
    local namespace=$1 name=$2 bridge=$3
    ip link add "$name" type veth peer name "s-$name"
    ip link set "$name" netns "${NS_PREFIX}$namespace"
    ip link set "s-$name" netns "${NS_PREFIX}sw"
    ns sw ip link set "s-$name" master "$bridge" up
    ns "$namespace" ip link set "$name" up
    ns "$namespace" ethtool -K "$name" tx off rx off > /dev/null 2>&1 || true
    ns sw ethtool -K "s-$name" tx off rx off > /dev/null 2>&1 || true
}

# topology_up MODE: namespaces, links, addresses and the backends' LVS configuration; backends' HTTP servers run.
topology_up() {
    local mode=$1 net backend_bridge
    net=$(backend_net "$mode")
    mkdir -p "$STATE_DIR"
    for name in client lb be1 be2 be3 sw; do
        ip netns add "${NS_PREFIX}$name"
        ns "$name" ip link set lo up
    done
    ns sw ip link add br0 type bridge
    ns sw ip link set br0 up
    link_to_switch client cl0 br0
    ns client ip addr add 10.0.0.2/24 dev cl0
    ns client ip route add default via 10.0.0.1
    link_to_switch lb lb0 br0
    backend_bridge=br0
    if [ "$net" = 10.1.0 ]; then
        ns sw ip link add br1 type bridge
        ns sw ip link set br1 up
        link_to_switch lb lb1 br1
        backend_bridge=br1
    fi
    link_to_switch lb mgmt "$backend_bridge"
    ns lb ip addr add "$net.250/24" dev mgmt
    for i in 1 2 3; do
        link_to_switch "be$i" "be${i}eth" "$backend_bridge"
        ns "be$i" ip addr add "$net.1$i/24" dev "be${i}eth"
        case "$mode" in
            dr)
                ns "be$i" ip addr add 10.0.0.100/32 dev lo
                ns "be$i" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
                ;;
            tun)
                # The VIP sits on the tunnel device; on this shared segment the backends must not answer ARP for it.
                ns "be$i" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
                ns "be$i" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
                # Started without the ns function so that $! is the process itself (ip netns exec execs it).
                ip netns exec "${NS_PREFIX}be$i" python3 "$HERE/decap.py" "tun$i" > "$STATE_DIR/decap$i.log" 2>&1 &
                echo $! >> "$STATE_DIR/pids"
                for _ in $(seq 50); do grep -q ready "$STATE_DIR/decap$i.log" 2> /dev/null && break; sleep 0.1; done
                ns "be$i" ip addr add 10.0.0.100/32 dev "tun$i"
                ns "be$i" ip link set "tun$i" up
                ns "be$i" sysctl -qw "net.ipv4.conf.tun$i.rp_filter=0"
                ;;
            nat)
                ns "be$i" ip route add default via 10.1.0.1
                ;;
            fullnat) ;;
        esac
        backend_start "$i"
    done
}

backend_start() {
    ip netns exec "${NS_PREFIX}be$1" python3 "$HERE/backend.py" "be$1" > /dev/null 2>&1 &
    echo $! > "$STATE_DIR/backend$1.pid"
    echo $! >> "$STATE_DIR/pids"
}

backend_stop() {
    kill "$(cat "$STATE_DIR/backend$1.pid")" 2> /dev/null || true
}

# write_config MODE FILE BACKENDS...: a sluice configuration for the topology, with the listed backends (1-3).
write_config() {
    local mode=$1 file=$2 net
    shift 2
    net=$(backend_net "$mode")
    {
        echo '[eal]'
        echo 'args = ["--no-huge", "-m", "512", "--no-pci", "--no-shconf", "--no-telemetry"]'
        echo '[[port]]'
        echo 'name = "client"'
        echo 'device = "net_af_packet0,iface=lb0"'
        echo 'addresses = ["10.0.0.1/24"]'
        if [ "$net" = 10.1.0 ]; then
            echo '[[port]]'
            echo 'name = "backend"'
            echo 'device = "net_af_packet1,iface=lb1"'
            echo 'addresses = ["10.1.0.1/24"]'
        fi
        echo '[workers]'
        echo "cores = [$(($(nproc) > 1 ? 1 : 0))]"
        echo '[network]'
        [ "$mode" = tun ] && echo 'tunnel_source_v4 = "10.0.0.1"'
        [ "$mode" = fullnat ] && echo 'local_addresses = ["10.1.0.5"]'
        echo '[[service]]'
        echo 'vip = "10.0.0.100"'
        echo 'port = 80'
        echo "mode = \"$mode\""
        echo 'scheduler = "mh"'
        for i in "$@"; do
            echo '[[service.backend]]'
            echo "address = \"$net.1$i\""
            echo '[service.backend.health_check]'
            echo 'type = "http"'
            echo 'connect_timeout = 0.5'
            echo 'delay_loop = 0.2'
            echo 'retry = 2'
            echo 'delay_before_retry = 0.1'
        done
    } > "$file"
}

# topology_down: every process and namespace this test bed started, whatever state it is in.
topology_down() {
    if [ -f "$STATE_DIR/pids" ]; then
        while read -r pid; do kill "$pid" 2> /dev/null || true; done < "$STATE_DIR/pids"
    fi
    for name in client lb be1 be2 be3 sw; do
        if ip netns pids "${NS_PREFIX}$name" > /dev/null 2>&1; then
            for pid in $(ip netns pids "${NS_PREFIX}$name" 2> /dev/null); do kill -9 "$pid" 2> /dev/null || true; done
            ip netns del "${NS_PREFIX}$name" 2> /dev/null || true
        fi
    done
    rm -rf "$STATE_DIR"
}

# leftovers: prints anything of the test bed still present.
leftovers() {
    ip netns list | grep "^${NS_PREFIX}" || true
}
