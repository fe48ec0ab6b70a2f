#!/usr/bin/env bash
# Fuzzes one target of crates/control/fuzz (config, keepalived or ctl) for SECONDS (default 60) with libFuzzer,
# starting from seeds taken from the repository (config/*.toml, the keepalived test file, ctl commands); prints
# libFuzzer's summary. Uses cargo-fuzz when it is installed, else builds with the same coverage flags by hand
# (a nightly toolchain is needed either way).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz-control.sh config|keepalived|ctl [SECONDS]}
seconds=${2:-60}
fuzz=crates/control/fuzz
corpus=$fuzz/corpus/$target
mkdir -p "$corpus"
case $target in
config) cp config/*.toml "$corpus/" ;;
keepalived)
    sed -n '/^const KEEPALIVED: &str = r#"/,/^"#;/p' crates/sluice/tests/keepalived.rs | sed '1d;$d' >"$corpus/keepalived.conf"
    printf 'virtual_server 10.0.0.1 80 {\n lb_kind FNAT\n real_server 10.0.0.2 8080 {\n  HTTP_GET {\n   url {\n    path "/a b"\n   }\n  }\n }\n}\n' >"$corpus/fullnat.conf"
    ;;
ctl)
    n=0
    for line in "list" "stats" "reload" "drain 10.1.0.11:80" "trace 198.51.100.1:10000 10.0.0.100:80 udp" \
        "add-service [fd00::1]:53 udp dr wrr" "set-weight 10.0.0.100:80 tcp 10.1.0.13:80 5" \
        $'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n' $'POST /metrics HTTP/1.0\r\n\r\n'; do
        printf '%s' "$line" >"$corpus/seed-$n"
        n=$((n + 1))
    done
    ;;
*) echo "unknown target $target: config, keepalived or ctl" >&2; exit 2 ;;
esac
if cargo fuzz --help >/dev/null 2>&1; then
    cd "$fuzz"
    exec cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the flags off build scripts and proc macros, as cargo-fuzz does.
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
cargo +nightly build --quiet --release --target "$triple" --manifest-path "$fuzz/Cargo.toml" --bin "$target"
mkdir -p "$fuzz/artifacts/$target"
exec "$fuzz/target/$triple/release/$target" "$corpus" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -artifact_prefix="$fuzz/artifacts/$target/" -print_final_stats=1
