#!/usr/bin/env bash
# Installs what ward's build, tests, demo and benchmarks need from Debian's packages:
#   qemu-system-x86  the reference VMM for benchmarks, and the nested machine for Linux tests
#   qemu-utils       qemu-img, the referee for disk images
#   cpio             building initramfs images
#   g++              libFuzzer, which image/fuzz/run.sh builds (cargo-fuzz itself comes from
#                    crates.io: run.sh installs it)
#   checkpolicy, m4, gawk
#                    building ward's SELinux policies (policy/selinux/build.sh): the module
#                    for refpolicy hosts and the minimal policy the nested test machine loads
# Idempotent: does nothing when everything is present. Debian 12 machines here may carry a
# newer backported qemu-utils that conflicts with Debian's qemu-system-x86; then both are
# installed at the qemu-system-x86 version, which is what the tests expect (7.2).
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v cpio >/dev/null || need+=(cpio)
command -v gzip >/dev/null || need+=(gzip)
command -v c++ >/dev/null || need+=(g++)
command -v checkpolicy >/dev/null || need+=(checkpolicy)
command -v m4 >/dev/null || need+=(m4)
command -v gawk >/dev/null || need+=(gawk)
# qemu-img must match qemu-system (both from the same Debian release).
if command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null; then
    sv=$(qemu-system-x86_64 --version | head -1 | awk '{print $4}')
    iv=$(qemu-img --version | head -1 | awk '{print $3}')
    [ "${sv%%.*}" = "${iv%%.*}" ] || need+=(qemu-utils)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: need root to install: ${need[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if ! apt-get install -y -qq "${need[@]}" qemu-system-x86 qemu-utils >/dev/null 2>&1; then
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
        echo "setup-host: Debian's qemu-system-x86 cannot be found in the package lists" >&2
        exit 1
    fi
    others=()
    for p in "${need[@]}"; do
        case "$p" in qemu-*) ;; *) others+=("$p") ;; esac
    done
    # qemu-utils from the same Debian build as qemu-system-x86 (a downgrade of the backport).
    apt-get install -y -qq --allow-downgrades "${others[@]}" qemu-system-x86 "qemu-utils=$ver" >/dev/null
fi
echo "setup-host: installed ${need[*]}" >&2
