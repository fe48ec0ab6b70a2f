#!/usr/bin/env bash
# The installation step and what it installs: scripts/install.sh into a temporary prefix, then systemd accepts the
# unit (systemd-analyze verify, when systemd-analyze is present), the manual pages render (man -l, and `man sluice`
# through MANPATH), the bash completion loads, and --version names DPDK.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p sluice
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
binary="$TARGET_DIR/debug/sluice"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
fail() { echo "packaging: FAILED: $*" >&2; exit 1; }

bash scripts/install.sh --prefix "$root/usr" --sysconfdir "$root/etc" --unit-dir "$root/systemd" \
    --binary "$binary" > "$root/install.log" || fail "install.sh: $(cat "$root/install.log")"
unit="$root/systemd/sluice.service"
[ -f "$unit" ] || fail "no unit written"
grep -q "^ExecStart=$root/usr/bin/sluice run --config $root/etc/sluice/sluice.toml$" "$unit" ||
    fail "the unit's ExecStart is not the installed binary: $(grep ExecStart "$unit")"
grep -q '^Type=notify$' "$unit" || fail "the unit is not Type=notify"

if command -v systemd-analyze > /dev/null; then
    # verify loads the unit as systemd would (syntax, executables present, dependencies known, and the
    # Documentation= man pages found: MANPATH points at the ones just installed); it writes only
    # problems, on stderr.
    verify=$(MANPATH="$root/usr/share/man" systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
    if grep -q "$(basename "$unit")" <<< "$verify"; then
        fail "systemd-analyze verify complains about the unit: $verify"
    fi
    echo "packaging: systemd-analyze verify accepts sluice.service"
else
    echo "packaging: systemd-analyze not installed; the unit's verification is skipped"
fi

if command -v man > /dev/null; then
    page=$(MANWIDTH=100 man -l "$root/usr/share/man/man1/sluice.1" 2> "$root/man.err") ||
        fail "man -l sluice.1: $(cat "$root/man.err")"
    for heading in NAME SYNOPSIS DESCRIPTION SUBCOMMANDS; do
        grep -q "^$heading" <<< "$page" || fail "sluice(1) has no $heading section: $page"
    done
    grep -q 'sluice-run(1)' <<< "$page" || fail "sluice(1) does not point at sluice-run(1)"
    grep -q 'SIGHUP reloads' <<< "$page" || fail "sluice(1) does not describe the signals"
    # As installed: `man sluice` and `man sluice-run` find the pages through the prefix's man directory.
    installed=$(MANPATH="$root/usr/share/man" MANWIDTH=100 man sluice 2>&1) ||
        fail "man sluice (through MANPATH): $installed"
    [ "$installed" = "$page" ] || fail "man sluice differs from man -l sluice.1"
    run_page=$(MANPATH="$root/usr/share/man" MANWIDTH=100 man sluice-run 2>&1) ||
        fail "man sluice-run (through MANPATH): $run_page"
    grep -q -- '--config' <<< "$run_page" || fail "sluice-run(1) lacks --config: $run_page"
    [ ! -s "$root/man.err" ] || fail "man warned: $(cat "$root/man.err")"
    echo "packaging: man sluice renders ($(wc -l <<< "$page") lines; $(ls "$root/usr/share/man/man1" | wc -l) pages)"
else
    echo "packaging: man not installed; rendering the pages is skipped"
fi

completion="$root/usr/share/bash-completion/completions/sluice"
bash -c "source '$completion' && complete -p sluice" > /dev/null || fail "the bash completion does not load"
[ -s "$root/usr/share/zsh/site-functions/_sluice" ] || fail "no zsh completion"
[ -s "$root/usr/share/fish/vendor_completions.d/sluice.fish" ] || fail "no fish completion"
"$binary" --version | grep -q '^DPDK ' || fail "--version names no DPDK: $("$binary" --version)"
echo "packaging: ok (bash, zsh and fish completions; --version: $("$binary" --version | tr '\n' ' '))"
