#!/usr/bin/env bash
# Boot the nested test machine: QEMU microvm in TCG (software) emulation with
# -cpu max, which emulates AMD-V/SVM with nested paging, running the Debian cloud
# kernel from tests/guest/prepare.sh with kvm + kvm-amd loaded, so /dev/kvm inside
# is ordinary KVM. A workload script runs inside; its output goes to the outer
# serial console, which this script streams to stdout.
#
# Usage: tests/nested/run-nested.sh [options]
#   --bin PATH          host executable -> /ward/bin/<name>, with the shared libraries
#                       ldd names (and the dynamic loader) at the same paths (repeatable)
#   --file SRC:DEST     host file or directory -> DEST inside (DEST ending in / keeps
#                       the name) (repeatable)
#   --disk PATH         raw image as a virtio-blk disk: /dev/vda, /dev/vdb, ... in
#                       order (repeatable)
#   --script PATH       workload: shell script run with busybox sh (cwd /ward,
#                       PATH=/ward/bin:/bin:/sbin:...)
#   --cmd STRING        workload given inline (instead of --script)
#   --env NAME=VALUE    environment variable for the workload (repeatable)
#   --module NAME       extra kernel module (with its dependencies) to load (repeatable)
#   --append ARGS       extra outer kernel command-line arguments
#                       (e.g. kvm_amd.npt=0: <module>.<param>= is passed to insmod)
#   --mem MiB           outer memory (default 3072)
#   --smp N             outer CPUs (default 2)
#   --timeout SECS      kill QEMU after SECS and exit 124 (default 600)
#   --shell             no workload: interactive shell on the console (use a terminal)
#   --log FILE          also save the serial output to FILE
#                       (default: <repo>/target/nested/last-serial.log)
#   --keep              keep the per-run work directory (initramfs etc.)
#
# Exit status: the workload's, from the "NESTED EXIT <rc>" line; 124 on timeout;
# 125 when the machine ended without that line (or on a harness error).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
guest="$repo/target/guest/linux"
cache="$repo/target/nested"

die() { echo "run-nested.sh: error: $*" >&2; exit 125; }
log() { echo "run-nested.sh: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

bins=() files=() disks=() envs=() mods=()
script= cmd= append= mem=3072 smp=2 timeout_s=600 shell=0 keep=0
logfile="$cache/last-serial.log"
need() { [[ $# -ge 2 ]] || die "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case $1 in
    --bin) need "$@"; bins+=("$2"); shift 2 ;;
    --file) need "$@"; files+=("$2"); shift 2 ;;
    --disk) need "$@"; disks+=("$2"); shift 2 ;;
    --script) need "$@"; script=$2; shift 2 ;;
    --cmd) need "$@"; cmd=$2; shift 2 ;;
    --env) need "$@"; envs+=("$2"); shift 2 ;;
    --module) need "$@"; mods+=("$2"); shift 2 ;;
    --append) need "$@"; append+=" $2"; shift 2 ;;
    --mem) need "$@"; mem=$2; shift 2 ;;
    --smp) need "$@"; smp=$2; shift 2 ;;
    --timeout) need "$@"; timeout_s=$2; shift 2 ;;
    --shell) shell=1; shift ;;
    --log) need "$@"; logfile=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
done
[[ $mem =~ ^[0-9]+$ ]] || die "--mem wants MiB as a number, got '$mem'"
[[ $smp =~ ^[0-9]+$ ]] || die "--smp wants a number, got '$smp'"
[[ $timeout_s =~ ^[0-9]+$ ]] || die "--timeout wants seconds, got '$timeout_s'"
[[ -n $script && -n $cmd ]] && die "give --script or --cmd, not both"
[[ -z $script || -f $script ]] || die "--script $script: no such file"

for tool in qemu-system-x86_64 timeout ldd sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is needed"
done

# ---- kernel, busybox, module lists ------------------------------------------------
"$repo/tests/guest/prepare.sh" || die "tests/guest/prepare.sh failed"
kver=$(<"$guest/kver")
moddir="$guest/modules"
bb="$guest/busybox"
mkdir -p "$cache"

# Extra modules: their dependency closure from modules.dep, appended to the list.
modlist=$(<"$guest/outer-modules")
if [[ ${#mods[@]} -gt 0 ]]; then
    for m in "${mods[@]}"; do
        n=${m//-/_}
        line=$(awk -v n="$n" -F: '{ f=$1; sub(/.*\//, "", f); sub(/\.ko$/, "", f); gsub(/-/, "_", f); if (f == n) { print; exit } }' "$moddir/modules.dep")
        if [[ -z $line ]]; then
            if sed 's,.*/,,; s,\.ko$,,; s,-,_,g' "$moddir/modules.builtin" | grep -qx "$n"; then
                log "module $m is built into the kernel"
                continue
            fi
            die "kernel $kver has no module '$m'"
        fi
        read -r -a deps <<<"${line#*:}"
        for (( i=${#deps[@]}-1; i>=0; i-- )); do modlist+=$'\n'"${deps[i]}"; done
        modlist+=$'\n'"${line%%:*}"
    done
    modlist=$(awk '!seen[$0]++' <<<"$modlist")
fi

# ---- base initramfs (busybox, modules, /init): cached --------------------------
key=$( { cat "$here/outer-init.sh" "$guest/.stamp"; echo "$kver"; echo "$modlist"; } | sha256sum | cut -d' ' -f1)
base="$cache/base-initramfs-${key:0:16}.cpio"
if [[ ! -f $base ]]; then
    log "building the outer base initramfs"
    broot=$(mktemp -d "$cache/base.XXXXXX")
    mkdir -p "$broot"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,ward/bin,"lib/modules/$kver"}
    cp "$bb" "$broot/bin/busybox"
    while IFS= read -r applet; do
        case $applet in
        */*) [[ -e $broot/$applet ]] || ln -s /bin/busybox "$broot/$applet" ;;
        esac
    done < <("$bb" --list-full)
    while IFS= read -r rel; do
        [[ -n $rel ]] || continue
        mkdir -p "$broot/lib/modules/$kver/$(dirname "$rel")"
        cp "$moddir/$rel" "$broot/lib/modules/$kver/$rel"
    done <<<"$modlist"
    printf '%s\n' "$modlist" >"$broot/etc/ward-modules"
    install -m 0755 "$here/outer-init.sh" "$broot/init"
    (cd "$broot" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) >"$broot.cpio"
    rm -rf "$broot"
    find "$cache" -maxdepth 1 -name 'base-initramfs-*.cpio' -mmin +1440 -delete
    mv "$broot.cpio" "$base"
fi

# ---- per-run initramfs part: binaries, files, workload ---------------------------
work=$(mktemp -d "$cache/run.XXXXXX")
cleanup() { if [[ $keep == 0 ]]; then rm -rf "$work"; else log "kept $work"; fi; }
trap cleanup EXIT
root="$work/root"
mkdir -p "$root/ward/bin"

copy_lib() { # host path -> same path inside, symlinks resolved
    local p=$1
    [[ -e $root$p ]] && return 0
    mkdir -p "$root$(dirname "$p")"
    cp -L "$p" "$root$p"
}
for b in ${bins[@]+"${bins[@]}"}; do
    [[ -f $b && -x $b ]] || die "--bin $b: not an executable file"
    cp -L "$b" "$root/ward/bin/$(basename "$b")"
    chmod 0755 "$root/ward/bin/$(basename "$b")"
    if ldd_out=$(LC_ALL=C ldd "$b" 2>&1); then
        if grep -q 'not found' <<<"$ldd_out"; then
            die "--bin $b: missing libraries: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t' ' ')"
        fi
        while read -r lib; do
            [[ -n $lib ]] && copy_lib "$lib"
        done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out")
    fi  # else: static (ldd: "not a dynamic executable")
done
for spec in ${files[@]+"${files[@]}"}; do
    [[ $spec == *:* ]] || die "--file wants SRC:DEST, got '$spec'"
    src=${spec%:*} dest=${spec##*:}
    [[ -e $src ]] || die "--file $spec: no such file: $src"
    [[ $dest == /* ]] || die "--file $spec: DEST must be an absolute path"
    [[ $dest == */ ]] && dest+=$(basename "$src")
    mkdir -p "$root$(dirname "$dest")"
    cp -a -L "$src" "$root$dest"
done
if [[ -n $script ]]; then
    install -m 0755 "$script" "$root/ward/script.sh"
elif [[ -n $cmd ]]; then
    printf '%s\n' "$cmd" >"$root/ward/script.sh"
fi
if [[ ${#envs[@]} -gt 0 ]]; then
    for e in "${envs[@]}"; do
        [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got '$e'"
        printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
    done >"$root/ward/env"
fi
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) >"$work/run.cpio"
# The kernel unpacks concatenated cpio archives in order.
cat "$base" "$work/run.cpio" >"$work/initramfs.cpio"

# ---- QEMU ------------------------------------------------------------------------
kargs="console=ttyS0 quiet panic=-1 reboot=t"
# TCG's TSC is the host's; give its rate, or the kernel's PIT calibration fails on
# a busy host and the boot hangs (see host-tsc-khz.sh).
if tsc_khz=$("$here/host-tsc-khz.sh") && [[ $tsc_khz =~ ^[1-9][0-9]*$ ]]; then
    kargs+=" tsc_early_khz=$tsc_khz tsc=reliable"
else
    log "warning: host TSC frequency unknown (set WARD_TSC_KHZ); the boot may hang when the host is busy"
fi
kargs+="$append"
[[ $shell == 1 ]] && kargs+=" nested.shell=1"
qemu=(qemu-system-x86_64 -M microvm,accel=tcg -cpu max -m "${mem}M" -smp "$smp"
    -nographic -no-reboot
    -kernel "$guest/vmlinuz" -initrd "$work/initramfs.cpio" -append "$kargs")
i=0
for d in ${disks[@]+"${disks[@]}"}; do
    [[ -f $d || -b $d ]] || die "--disk $d: no such file"
    qemu+=(-drive "id=disk$i,file=$d,format=raw,if=none" -device "virtio-blk-device,drive=disk$i")
    i=$((i + 1))
done

mkdir -p "$(dirname "$logfile")"
log "booting the outer machine (${mem}M, $smp CPUs, timeout ${timeout_s}s, initramfs $(du -h "$work/initramfs.cpio" | cut -f1))"
start=$(date +%s.%N)
set +e
if [[ -t 0 ]]; then
    timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" | tee "$logfile"
else
    timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null | tee "$logfile"
fi
qrc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')

ready=$(tr -d '\r' <"$logfile" | grep -a -o 'NESTED READY.*' | tail -n1 || true)
exitline=$(tr -d '\r' <"$logfile" | grep -a -o 'NESTED EXIT [0-9]*' | tail -n1 || true)
log "wall ${wall}s; ${ready:-no NESTED READY line}"
if [[ $qrc == 124 || $qrc == 137 ]]; then
    log "TIMEOUT: the outer machine ran longer than ${timeout_s}s and was killed"
    exit 124
fi
if [[ -z $exitline ]]; then
    log "FAILED: the outer machine ended (QEMU status $qrc) without a NESTED EXIT line; serial log: $logfile"
    exit 125
fi
rc=${exitline##* }
log "workload exit status $rc"
exit "$rc"
