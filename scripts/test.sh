#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (unit, property, fuzz smoke, DPDK vdev end-to-end), and real
# TCP traffic through sluice in network namespaces for every forwarding mode, and two sluice nodes behind an ECMP
# router (FRR, BIRD, BGP with BFD) losing and regaining a node, and two sluice nodes in active-backup with keepalived's
# VRRP failing over and back, and keepalived's checker knobs (a sorry server taking over when the quorum is lost,
# notify scripts); and what an operator reaches for (drain, connection listing, a backend shared by two NAT
# services). The installation step is checked too: the systemd unit verifies, the man pages render.
# Run scripts/setup.sh once before.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
bash scripts/test-packaging.sh
bash scripts/netns/e2e.sh
bash scripts/netns/operator.sh
bash scripts/netns/checkers.sh
bash scripts/netns/cluster.sh
bash scripts/netns/cluster.sh exceptions
bash scripts/netns/vrrp.sh
