#!/usr/bin/env bash
# The forwarding rate of dpdk-testpmd as testpmd itself measures it, for the benchmarks that set it beside sluice.
# Sourced by bench/replay.sh and scripts/bench.sh.
#
# testpmd_mpps SECONDS ARGS...: runs `dpdk-testpmd ARGS` (EAL arguments, then `--` and the application's, which
# must include -i), starts forwarding and prints, in Mpps, the receive rate summed over its ports between two
# `show port stats all` SECONDS apart, the first after a warm-up of TESTPMD_WARMUP seconds (default 2). The rate
# comes from testpmd's own clock: the time testpmd takes to start (loading a pcap of 1M frames into mbufs takes
# about a second) is not counted as forwarding time, as dividing the packets forwarded between `start` and `stop`
# by the seconds slept between them would count it. sluice's own figures cover only the time it forwarded.
# Prints 0.000 when testpmd printed no rate.
testpmd_mpps() {
    local seconds=$1
    shift
    (
        echo start
        sleep "${TESTPMD_WARMUP:-2}"
        echo "show port stats all"
        sleep "$seconds"
        echo "show port stats all"
        echo stop
        sleep 1
        echo quit
    ) | dpdk-testpmd "$@" 2> /dev/null |
        awk '/Rx-pps:/ { rates[++n] = $2 }
             END {
                 # Each show prints one Rx-pps line per port: the second show is the second half.
                 total = 0
                 for (i = n / 2 + 1; i <= n; i++) total += rates[i]
                 printf "%.3f", (n >= 2 && n % 2 == 0) ? total / 1e6 : 0
             }'
}
