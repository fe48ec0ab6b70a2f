#!/usr/bin/env bash
# Installs sluice: the binary, its manual pages and shell completions (generated from the binary's own command-line
# definitions), the systemd unit, and the documentation. Run as root for the default prefix.
#
# Usage: scripts/install.sh [--prefix DIR] [--sysconfdir DIR] [--unit-dir DIR] [--destdir DIR] [--binary PATH]
#   --prefix      where bin/, share/man/, share/bash-completion/ ... go (default /usr/local)
#   --sysconfdir  where the unit looks for sluice/sluice.toml (default /etc)
#   --unit-dir    where sluice.service goes (default /etc/systemd/system)
#   --destdir     a staging root prepended to every path written (packaging); paths inside files stay unprefixed
#   --binary      install this sluice binary instead of building one with `cargo build --release`
#   --pgo         build the profile-guided binary (scripts/build-pgo.sh: trains on replays through DPDK vdevs, so
#                 it runs as root; needs llvm-tools), 5-8 % faster on the benchmark's replays
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
sysconfdir=/etc
unit_dir=/etc/systemd/system
destdir=
binary=
pgo=false
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --sysconfdir) sysconfdir=$2; shift 2 ;;
        --unit-dir) unit_dir=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --pgo) pgo=true; shift ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for dir in "$prefix" "$sysconfdir" "$unit_dir"; do
    case "$dir" in /*) ;; *) echo "install.sh: $dir is not an absolute path" >&2; exit 2 ;; esac
done

if [ -z "$binary" ] && $pgo; then
    binary=$(bash scripts/build-pgo.sh)
elif [ -z "$binary" ]; then
    cargo build --release -p sluice
    binary="${CARGO_TARGET_DIR:-target}/release/sluice"
fi
[ -x "$binary" ] || { echo "install.sh: no executable sluice at $binary" >&2; exit 1; }

bindir="$prefix/bin"
mandir="$prefix/share/man/man1"
docdir="$prefix/share/doc/sluice"
install -d "$destdir$bindir" "$destdir$mandir" "$destdir$unit_dir" "$destdir$docdir/examples" \
    "$destdir$sysconfdir/sluice" \
    "$destdir$prefix/share/bash-completion/completions" "$destdir$prefix/share/zsh/site-functions" \
    "$destdir$prefix/share/fish/vendor_completions.d"
install -m 0755 "$binary" "$destdir$bindir/sluice"

# Manual pages and completions come from the binary just installed, so they describe exactly its options.
pages=$(mktemp -d)
trap 'rm -rf "$pages"' EXIT
"$binary" manpages "$pages"
install -m 0644 "$pages"/*.1 "$destdir$mandir/"
"$binary" completions bash > "$destdir$prefix/share/bash-completion/completions/sluice"
"$binary" completions zsh > "$destdir$prefix/share/zsh/site-functions/_sluice"
"$binary" completions fish > "$destdir$prefix/share/fish/vendor_completions.d/sluice.fish"

sed -e "s|@BINDIR@|$bindir|g" -e "s|@SYSCONFDIR@|$sysconfdir|g" dist/systemd/sluice.service.in \
    > "$destdir$unit_dir/sluice.service"
chmod 0644 "$destdir$unit_dir/sluice.service"

install -m 0644 README.md "$destdir$docdir/"
install -m 0644 config/README.md "$destdir$docdir/CONFIGURATION.md"
[ -f config/OPERATIONS.md ] && install -m 0644 config/OPERATIONS.md "$destdir$docdir/"
install -m 0644 config/*.toml "$destdir$docdir/examples/"

echo "install.sh: sluice $("$binary" -V | awk '{print $2}') installed under $destdir$prefix, unit $destdir$unit_dir/sluice.service"
if [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl > /dev/null; then
    systemctl daemon-reload
fi
if [ ! -f "$destdir$sysconfdir/sluice/sluice.toml" ]; then
    echo "install.sh: next, write $sysconfdir/sluice/sluice.toml (examples in $docdir/examples, reference in" \
        "$docdir/CONFIGURATION.md), then: systemctl enable --now sluice"
fi
