#!/bin/sh
# shellcheck shell=sh
#
# /init of the nested outer machine (busybox ash, PID 1). Put into the outer
# initramfs by tests/nested/run-nested.sh. Console protocol:
#   NESTED MODULE-FAILED <name>: <error>
#   NESTED READY kvm=<1|0> uptime=<secs>
#   NESTED INFO ...                        (kvm_amd parameters, cpus, memory)
#   NESTED EXIT <rc>                       the workload's exit status
# Then sync and power off.
#
# Kernel command line (set by run-nested.sh):
#   nested.shell=1   no workload script: interactive shell on the console
#   <module>.<param>=<value>   passed to insmod of <module>

PATH=/ward/bin:/bin:/sbin:/usr/bin:/usr/sbin
HOME=/root
export PATH HOME

# Stage 1: the initramfs is "rootfs", where pivot_root(2) is refused. Copy it into
# a tmpfs mounted over it and chroot there, so that sandboxes (mount namespaces +
# pivot_root) work inside the outer machine. /ward (the per-run payload, which can
# be large) is bind-mounted instead of copied.
if [ "$$" = 1 ] && [ ! -e /.nested-root ]; then
    mkdir -p /newroot
    if mount -t tmpfs -o mode=0755 tmpfs /newroot; then
        for e in /* /.[!.]*; do
            [ -e "$e" ] || continue
            case $e in /newroot | /ward) continue ;; esac
            cp -a "$e" /newroot/
        done
        mkdir -p /ward /newroot/ward
        mount --bind /ward /newroot/ward
        : >/newroot/.nested-root
        cd /newroot && mount --move . / && exec chroot . /init
    fi
    echo "NESTED WARNING: cannot move to a tmpfs root; staying on rootfs"
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /tmp /run /sys/fs/cgroup
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /dev/pts 2>/dev/null || true
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

cmdline=$(cat /proc/cmdline)

modparams() {
    _m=$1
    _p=
    for _a in $cmdline; do
        case $_a in
        "$_m".*=*) _p="$_p ${_a#"$_m".}" ;;
        esac
    done
    echo "$_p"
}

# /etc/ward-modules: module paths (relative to /lib/modules/<kver>) in load order.
kver=$(uname -r)
if [ -f /etc/ward-modules ]; then
    while read -r rel; do
        [ -n "$rel" ] || continue
        name=${rel##*/}
        name=${name%.ko}
        name=$(echo "$name" | tr - _)
        [ -d "/sys/module/$name" ] && continue
        # shellcheck disable=SC2046 # params are meant to be split
        if ! err=$(insmod "/lib/modules/$kver/$rel" $(modparams "$name") 2>&1); then
            echo "NESTED MODULE-FAILED $name: $err"
        fi
    done </etc/ward-modules
fi

ip link set lo up 2>/dev/null || true
hostname nested 2>/dev/null || true

kvm=0
[ -c /dev/kvm ] && kvm=1
read -r up _ </proc/uptime
echo "NESTED READY kvm=$kvm uptime=$up"
info="cpus=$(nproc) mem=$(awk '/MemTotal/ {print int($2/1024) "M"}' /proc/meminfo)"
for p in nested npt avic nrips vgif vls; do
    f=/sys/module/kvm_amd/parameters/$p
    [ -r "$f" ] && info="$info kvm_amd.$p=$(cat "$f")"
done
echo "NESTED INFO $info"
if [ "$kvm" = 0 ]; then
    echo "NESTED WARNING: no /dev/kvm; kernel messages about kvm:"
    dmesg | grep -i -E 'kvm|svm' | tail -n 20
fi

# Workload.
if [ -f /ward/env ]; then
    # shellcheck source=/dev/null
    . /ward/env
fi
shell=0
case " $cmdline " in
*" nested.shell=1 "*) shell=1 ;;
esac
rc=0
if [ -f /ward/script.sh ]; then
    cd /ward || cd /
    sh /ward/script.sh
    rc=$?
    cd /
elif [ "$shell" = 1 ]; then
    echo "NESTED shell (exit it to power off)"
    setsid cttyhack sh -l
    rc=$?
fi
sync
read -r up _ </proc/uptime
echo "NESTED DONE uptime=$up"
echo "NESTED EXIT $rc"
sync
poweroff -f
# Not reached unless the power-off failed; run-nested.sh passes reboot=t and
# QEMU runs with -no-reboot, so a reboot ends it as well.
reboot -f
while :; do sleep 3600; done
