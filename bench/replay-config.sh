#!/usr/bin/env bash
# The sluice configuration of the replay benchmark, sourced by bench/replay.sh, bench/instructions.sh --replay and
# bench/profile.sh.
#
# sluice_config MODE FAMILY PCAP MBUFS [CONNTRACK CAPACITY]: prints a configuration with one port replaying PCAP
# forever (net_pcap, infinite_rx), one worker on CPU $WORKER_CPU, and a two-backend Maglev service in MODE for
# FAMILY (ipv4 or ipv6). EAL_MEMORY (default "--in-memory") is the EAL's memory argument, as TOML strings.
# replay_vip FAMILY, replay_frames FLOWS and replay_pcap SLUICE FAMILY FLOWS OUT give the replay it forwards;
# replay_pcap_with_answers adds the backends' answers, for NAT and FULLNAT, run with $REPLAY_RUN_ARGS.

# The service's VIP for FAMILY.
replay_vip() {
    if [ "$1" = ipv4 ]; then echo 10.0.0.100; else echo 2001:db8::100; fi
}

# The frames of a replay of FLOWS flows: at least 8192, so that a short replay is not all start-up.
replay_frames() {
    echo $(($1 > 8192 ? $1 : 8192))
}

# Writes to OUT the client traffic of FLOWS flows to FAMILY's VIP, addressed to the port's MAC.
replay_pcap() { # sluice family flows out
    "$1" generate --out "$4" --vip "$(replay_vip "$2")" --flows "$3" --frames "$(replay_frames "$3")" \
        --dst-mac 02:00:00:00:00:01 > /dev/null
}

# The arguments of every `sluice run` of a replay with answers: FULLNAT's local ports, which the answers are
# addressed to, repeat from run to run only under one seed.
REPLAY_RUN_ARGS=(--local-port-seed 1)

# Writes to OUT the client traffic of replay_pcap followed by the backends' answers to what sluice in MODE sent
# them for it: sluice forwards the clients' frames once with its port's output captured, and `sluice generate
# --answers-to` answers the capture. Replayed forever, every frame after the first pass hits a connection, half of
# them in the reply direction.
replay_pcap_with_answers() { # sluice mode family flows out
    local sluice=$1 mode=$2 family=$3 flows=$4 out=$5
    replay_pcap "$sluice" "$family" "$flows" "$out.requests"
    sluice_config "$mode" "$family" "$out.requests" $(($(replay_frames "$flows") + 16384)) |
        sed "s|,infinite_rx=1\"|,tx_pcap=$out.capture\"|" > "$out.toml"
    "$sluice" run --config "$out.toml" --idle-exit-ms 400 "${REPLAY_RUN_ARGS[@]}" > "$out.log" 2>&1 ||
        { cat "$out.log" >&2; return 1; }
    "$sluice" generate --answers-to "$out.capture" --out "$out.answers" > /dev/null || return 1
    # Both files come from sluice's pcap writer: one file header, then the answers' records after the requests'.
    { cat "$out.requests"; tail -c +25 "$out.answers"; } > "$out"
    rm -f "$out.requests" "$out.capture" "$out.answers" "$out.toml" "$out.log"
}

sluice_config() { # mode family pcap mbufs [conntrack capacity]
    local mode=$1 family=$2 pcap=$3 mbufs=$4 capacity=${5:-2097152} vip net port_addr backend1 backend2 tunnel local
    local gateway eal_memory=${EAL_MEMORY:-'"--in-memory"'}
    vip=$(replay_vip "$family")
    if [ "$family" = ipv4 ]; then
        port_addr=10.0.0.1/16 backend1=10.0.1.11 backend2=10.0.1.12 tunnel=10.0.0.1 gateway=10.0.0.254
        local=$(seq -s ', ' -f '"10.0.2.%g"' 5 20)
    else
        port_addr=2001:db8::1/64 backend1=2001:db8::1:11 backend2=2001:db8::1:12 gateway=2001:db8::fe
        tunnel=2001:db8::1
        local=$(for i in $(seq 5 20); do printf '"2001:db8::2:%x", ' "$i"; done | sed 's/, $//')
    fi
    net="tunnel_source_${family/ip/}= \"$tunnel\""
    net=${net/tunnel_source_v4=/tunnel_source_v4 =}
    net=${net/tunnel_source_v6=/tunnel_source_v6 =}
    cat <<CONF
[eal]
args = [$eal_memory, "--no-pci", "--no-telemetry", "-l", "0"]
[[port]]
name = "wan"
device = "net_pcap0,rx_pcap=$pcap,infinite_rx=1"
addresses = ["$port_addr"]
mac = "02:00:00:00:00:01"
[workers]
cores = [$WORKER_CPU]
burst = 32
mempool_size = $mbufs
[network]
conntrack_capacity = $capacity
gateways = [{ port = "wan", address = "$gateway", mac = "02:00:00:00:00:fe" }]
$net
local_addresses = [$local]
[[service]]
vip = "$vip"
port = 80
protocol = "tcp"
mode = "$mode"
[[service.backend]]
address = "$backend1"
mac = "02:be:00:00:00:01"
[[service.backend]]
address = "$backend2"
mac = "02:be:00:00:00:02"
CONF
}
