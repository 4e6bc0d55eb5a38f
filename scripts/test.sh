#!/usr/bin/env bash
# Runs all of ward's tests on this machine: formatting, lints, unit tests, the integration
# tests that boot the probe guest on the host's /dev/kvm and the Linux guest (directly where
# the host's KVM can run it, else inside the nested machine), and a bounded fuzzing run of the
# qcow2 parsers. Fails when /dev/kvm exists and no KVM test ran.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bash scripts/setup-host.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
bash guest/probe/build.sh >/dev/null
bash tests/guest/prepare.sh

marker="$repo/target/kvm-tests-ran"
rm -f "$marker"
export WARD_KVM_MARKER="$marker"
# Two test threads: there are two cores, and the guests each want one.
out="$repo/target/test-output.log"
cargo test --workspace -- --test-threads=2 2>&1 | tee "$out"

if [ -e /dev/kvm ]; then
    ran=$(sort -u "$marker" 2>/dev/null | wc -l)
    if [ "$ran" -eq 0 ]; then
        echo "FAIL: /dev/kvm exists but no KVM test ran" >&2
        exit 1
    fi
    echo "KVM tests that ran: $ran"
else
    echo "WARNING: /dev/kvm is missing here: every KVM test was skipped" >&2
fi

# The qcow2 parsers under libFuzzer for a bounded time (image/fuzz/run.sh; about a minute to
# build and 30 s per target unless WARD_FUZZ_SECONDS says otherwise). A crash fails the run.
bash image/fuzz/run.sh "${WARD_FUZZ_SECONDS:-30}"

# One closing line for the whole run (cargo prints one per test binary, the last being the
# doc-tests, which are empty).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$out"
