#!/usr/bin/env bash
# Fuzzes ward-image's qcow2 parsing for a bounded time: builds every cargo-fuzz target beside
# this script and runs each for SECONDS (default 30), starting from a copy of its seeds in
# target/fuzz/corpus/ (the committed seeds never grow). Fails on any crash, panic, hang
# (-timeout) or memory blow-up (-rss_limit_mb), naming the input that did it.
#
#   image/fuzz/run.sh [SECONDS]
#
# Runs on the stable toolchain: `--sanitizer none` leaves out the only nightly flag cargo-fuzz
# passes (-Zsanitizer); the coverage instrumentation it uses is stable (-Cpasses=sancov-module
# and -Cllvm-args). ward-image has no unsafe code, so a sanitizer would find nothing a panic
# does not show; --debug-assertions turns on overflow checks, which do find bugs.
#
# To replay a crash: cd image/fuzz && cargo fuzz run --sanitizer none --debug-assertions \
#   --target-dir ../../target/fuzz/build TARGET ARTIFACT
set -euo pipefail
secs="${1:-30}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/target/fuzz"

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi

flags=(--sanitizer none --debug-assertions --target-dir "$out/build")
cd "$here"
# Its own workspace, so the main `cargo fmt --all` does not see it.
cargo fmt --check
cargo fuzz build "${flags[@]}"

for target in $(cargo fuzz list); do
    corpus="$out/corpus/$target"
    artifacts="$out/artifacts/$target"
    log="$out/$target.log"
    rm -rf "$corpus" "$artifacts"
    mkdir -p "$corpus" "$artifacts"
    cp "seeds/$target"/* "$corpus/"
    # -max_len: the seeds are a few KiB; 64 KiB leaves room for bigger tables and clusters.
    # -timeout: one input taking 10 s is a hang. -rss_limit_mb: a huge allocation is a bug.
    if ! cargo fuzz run "${flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log" >&2
        echo "FAIL: fuzz target $target crashed (log: $log); input(s) in $artifacts:" >&2
        ls -l "$artifacts" >&2
        exit 1
    fi
    runs=$(awk '/stat::number_of_executed_units:/ { print $2 }' "$log")
    speed=$(awk '/stat::average_exec_per_sec:/ { print $2 }' "$log")
    echo "fuzz: $target ran ${secs}s, $runs inputs ($speed/s), no crash"
done
# cargo-fuzz makes its own artifacts directory beside the targets; it stays empty.
rmdir artifacts/* artifacts 2>/dev/null || true
