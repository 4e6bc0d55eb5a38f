#!/usr/bin/env bash
# Builds release binaries and runs ward against QEMU side by side; prints a Markdown report.
#   bench/run.sh [--runs N] [--burst N] [--linux-runs N] [--no-linux] [--no-probe] [--no-net]
#                [--no-probe-net] [--no-linux-boot] [--no-confine] [--net-frames N] [--net-mib N]
#                [--convert-mib N] [--net-tool iperf3|nc] [--no-regs]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup-host.sh
cargo build --release --workspace --bins
bash guest/probe/build.sh >/dev/null
bash tests/guest/prepare.sh
exec "$repo/target/release/ward-bench" "$@"
