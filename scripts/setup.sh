#!/usr/bin/env bash
# Installs what sluice needs to build and test on Debian 12, and reserves hugepages where it can.
# Idempotent: run it as often as you like. Needs root (or sudo) for apt-get and hugepages.
set -euo pipefail

packages=(
    build-essential pkg-config
    dpdk dpdk-dev libdpdk-dev      # DPDK 22.11: libraries, PMDs, headers, dpdk-testpmd
    clang libclang-dev             # bindgen
    libpcap-dev                    # net_pcap vdev
    iproute2 iputils-ping ethtool  # network namespaces and veth links for the end-to-end tests
    python3                        # the end-to-end tests' HTTP backends and client, demo summaries
    gnuplot-nox                    # benchmark plots
    bird2 frr                      # the cluster test bed: BIRD on the nodes, FRR (zebra, bgpd, bfdd) on the router
    keepalived                     # the VRRP test bed: keepalived --vrrp on each node's tap
    man-db groff-base              # man -l on the generated manual pages (scripts/test-packaging.sh)
)
# promtool checks the metrics endpoint's exposition. Debian packages it only with the Prometheus server (whose
# service is disabled below); without its recommended node exporter, which would be one more service.
without_recommends=(prometheus)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
    sudo_cmd=(sudo)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
missing_lean=()
for p in "${without_recommends[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_lean+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_lean[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]} ${missing_lean[*]}"
    "${sudo_cmd[@]}" apt-get update
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y "${missing[@]}"
    fi
    if [ ${#missing_lean[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing_lean[@]}"
    fi
else
    echo "setup.sh: system packages present"
fi

# The cluster and VRRP tests start their own BIRD, FRR and keepalived daemons in network namespaces: the packages'
# system services are not wanted (they would hold the BGP port, the control sockets and the VRRP instances of the
# root namespace). Only promtool of the prometheus package is used.
for service in bird frr keepalived prometheus; do
    if command -v systemctl > /dev/null && [ -d /run/systemd/system ]; then
        "${sudo_cmd[@]}" systemctl disable --now "$service" > /dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$service" ]; then
        "${sudo_cmd[@]}" "/etc/init.d/$service" stop > /dev/null 2>&1 || true
    fi
done

if ! command -v cargo >/dev/null; then
    echo "setup.sh: no Rust toolchain found: install one with rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi

# llvm-profdata for the profile-guided build (scripts/build-pgo.sh); the rest of the project does without it.
if command -v rustup > /dev/null; then
    rustup component add llvm-tools > /dev/null 2>&1 ||
        echo "setup.sh: rustup could not add llvm-tools: scripts/build-pgo.sh will not run" >&2
fi

pkg-config --exists libdpdk || { echo "setup.sh: pkg-config cannot find libdpdk after install" >&2; exit 1; }
echo "setup.sh: DPDK $(pkg-config --modversion libdpdk), $(cargo --version)"

# Hugepages: 2 MiB pages for the mempools. sluice runs without them (EAL --no-huge), only slower.
want_pages=${SLUICE_HUGEPAGES:-512}
nr=/proc/sys/vm/nr_hugepages
if [ -w "$nr" ] || [ ${#sudo_cmd[@]} -gt 0 ]; then
    have=$(cat "$nr")
    if [ "$have" -lt "$want_pages" ]; then
        echo "$want_pages" | "${sudo_cmd[@]}" tee "$nr" >/dev/null 2>&1 || true
    fi
    if ! grep -q hugetlbfs /proc/mounts; then
        "${sudo_cmd[@]}" mkdir -p /dev/hugepages
        "${sudo_cmd[@]}" mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true
    fi
fi
got=$(cat "$nr" 2>/dev/null || echo 0)
if [ "$got" -gt 0 ] && grep -q hugetlbfs /proc/mounts; then
    echo "setup.sh: $got hugepages of $(awk '/Hugepagesize/ {print $2 $3}' /proc/meminfo) reserved"
else
    echo "setup.sh: no hugepages could be reserved; sluice and its tests run with EAL --no-huge"
fi
