#!/bin/sh
# shellcheck shell=sh
#
# /init of the ward Linux test guest (runs under busybox ash as PID 1).
# Installed into initramfs.cpio.gz by tests/guest/prepare.sh.
#
# Protocol (what tests look for on the console):
#   WARD-GUEST READY uptime=<secs>     userspace is up, modules loaded
#   WARD-GUEST EXIT status=<rc>        the ward.run script finished with <rc>
#   WARD-GUEST MODULE-FAILED <name>: <error>
# Kernel command line:
#   ward.run=<base64 shell script>     run it with `sh -c`, then reboot
#   ward.shell=1                       (no ward.run) interactive shell on the console
#   ward.shell=hvc0                    (no ward.run) login shell on the virtio console hvc0
#                                      (needs virtio_console; ttyS0 keeps the boot messages)
# After that the guest syncs and `reboot -f`s; the VMM treats that as the end.
# Unless the command line has reboot=..., the reboot is done by triple fault.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
HOME=/root
export PATH HOME

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null || true
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1

cmdline=$(cat /proc/cmdline)

# Module parameters given on the kernel command line as <module>.<param>=<value>
# (modprobe would do this; busybox insmod does not).
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
            echo "WARD-GUEST MODULE-FAILED $name: $err"
        fi
    done </etc/ward-modules
fi

read -r up _ </proc/uptime
echo "WARD-GUEST READY uptime=$up"

run=
shell=
for a in $cmdline; do
    case $a in
    ward.run=*) run=${a#ward.run=} ;;
    ward.shell=1) shell=1 ;;
    ward.shell=hvc0) shell=hvc0 ;;
    esac
done

if [ -n "$run" ]; then
    if script=$(echo "$run" | base64 -d 2>/dev/null); then
        cd /root || cd /
        sh -c "$script"
        rc=$?
        cd /
    else
        echo "WARD-GUEST ward.run is not valid base64"
        rc=127
    fi
    echo "WARD-GUEST EXIT status=$rc"
elif [ "$shell" = hvc0 ]; then
    if [ -c /dev/hvc0 ]; then
        echo "WARD-GUEST shell on hvc0 (exit it to reboot)"
        # -c: hvc0 becomes the shell's controlling terminal (job control, Ctrl-C).
        setsid -c sh -l </dev/hvc0 >/dev/hvc0 2>&1
    else
        echo "WARD-GUEST no /dev/hvc0 (is virtio_console loaded and the device there?)"
    fi
elif [ -n "$shell" ]; then
    echo "WARD-GUEST shell (exit it to reboot)"
    setsid cttyhack sh -l
fi

sync
# Without reboot= on the command line the kernel tries ACPI reset, then the i8042,
# then the BIOS reset vector, and hangs on machines that have none of these (QEMU
# microvm, a minimal VMM). A triple fault always ends the VM: QEMU -no-reboot exits
# and KVM reports KVM_EXIT_SHUTDOWN to the VMM.
case " $cmdline " in
*" reboot="*) ;;
*) [ -w /sys/kernel/reboot/type ] && echo triple >/sys/kernel/reboot/type ;;
esac
reboot -f
# Not reached unless reboot failed.
echo "WARD-GUEST reboot failed"
poweroff -f
while :; do sleep 3600; done
