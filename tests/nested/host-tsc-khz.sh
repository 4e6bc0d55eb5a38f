#!/usr/bin/env bash
# Print this host's TSC frequency in kHz (nothing, exit 1, when unknown).
#
# Why: under QEMU TCG the emulated TSC is the host's TSC, and the guest kernel's
# PIT-based TSC calibration fails when the host is busy ("tsc: Unable to calibrate
# against PIT ... Marking TSC unstable"), after which the Debian kernel hangs early
# in boot. Passing tsc_early_khz=<this value> (plus tsc=reliable) avoids that.
# WARD_TSC_KHZ=<kHz> overrides the detection.
set -euo pipefail

if [[ -n ${WARD_TSC_KHZ:-} ]]; then
    printf '%s\n' "$WARD_TSC_KHZ"
    exit 0
fi
# 1. the kernel exports it on some systems
if [[ -r /sys/devices/system/cpu/cpu0/tsc_freq_khz ]]; then
    cat /sys/devices/system/cpu/cpu0/tsc_freq_khz
    exit 0
fi
# 2. the kernel's own calibration, from the boot log (refined value preferred)
mhz=$( (dmesg 2>/dev/null || true) | sed -n \
    -e 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/R \1/p' \
    -e 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/D \1/p' | sort -r | head -n1 | cut -d' ' -f2)
# 3. /proc/cpuinfo, only meaningful when the TSC runs at a constant, known rate
if [[ -z $mhz ]] && grep -q '^flags.* constant_tsc' /proc/cpuinfo; then
    mhz=$(sed -n 's/^cpu MHz[[:space:]]*: \([0-9.]*\)$/\1/p' /proc/cpuinfo | head -n1)
fi
[[ -n $mhz ]] || exit 1
awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 + 0.5 }'
