#!/bin/sh
# The Linux guest scenarios, run where ward can boot Linux: directly on a host with real KVM,
# or inside the nested machine (tests/nested) on hosts whose KVM cannot.
# Environment: GUEST_DIR (vmlinuz, initramfs.cpio.gz), DISK (raw image or block device),
# SCRATCH (writable), and `ward` on PATH.
# Few VMs per run: inside the nested machine each costs seconds.

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

guest() { # name vcpus script
    ward run --name "$1" --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initramfs.cpio.gz" \
        --vcpus "$2" --memory 256M --disk "$DISK" --console-log "$SCRATCH/$1.log" \
        --cmdline "console=ttyS0 reboot=k panic=-1 ward.run=$(b64 "$3")"
    rc=$?
    sed "s/^/[$1] /" "$SCRATCH/$1.log"
    echo "LINUX-TEST $1 ward-exit=$rc"
}

guest one 1 'echo NPROC=$(nproc); printf ward-pattern-A | dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null; sync; echo WROTE-A'
guest two 2 'echo NPROC=$(nproc); echo READ-A=$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 14); blkdiscard -o 1048576 -l 65536 /dev/vda && echo DISCARDED-A; printf ward-pattern-B | dd of=/dev/vda bs=512 seek=4096 conv=fsync 2>/dev/null; sync; echo WROTE-B'

# hvc0: a login shell on the virtio console, served by ward-console. Two sessions through
# `ward console` (each detached with ^] while the guest keeps running), a second client refused
# while one is attached, then `exit` ends the shell and the VM. The console log keeps it all.
hvc_log="$SCRATCH/three.hvc.log"
wait_for() { # file pattern seconds
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -gt "$3" ] && return 1
        sleep 1
    done
}
session() { # name input expect: types input, waits for expect in the log, detaches
    (
        printf '%s\n' "$2"
        wait_for "$hvc_log" "$3" 60
        printf '\035'
    ) | ward console three >"$SCRATCH/$1.out" 2>&1
    echo "LINUX-TEST $1 console-exit=$? saw=$(grep -c "$3" "$SCRATCH/$1.out")"
}
ward run --name three --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initramfs.cpio.gz" \
    --vcpus 1 --memory 256M --console virtio --console-log "$hvc_log" \
    --serial-log "$SCRATCH/three.log" \
    --cmdline "console=ttyS0 reboot=k panic=-1 ward.shell=hvc0" </dev/null &
three=$!
if wait_for "$SCRATCH/three.log" "WARD-GUEST shell on hvc0" 120; then
    session hvc-one 'echo hvc-$((6*7))' hvc-42
    # While one client is attached, another is refused.
    (sleep 4; printf '\035') | ward console three >/dev/null 2>&1 &
    holder=$!
    sleep 1
    ward console three </dev/null >"$SCRATCH/busy.out" 2>&1
    echo "LINUX-TEST busy console-exit=$? $(grep -o 'console busy' "$SCRATCH/busy.out")"
    wait "$holder"
    session hvc-two 'echo again-$((7*8)); ls /dev/hvc0' again-56
    # The shell's exit reboots the guest; the client ends when the VM does.
    (printf 'exit\n'; while kill -0 "$three" 2>/dev/null; do sleep 1; done) |
        ward console three >/dev/null 2>&1 &
fi
wait "$three"
echo "LINUX-TEST three ward-exit=$?"
sed "s/^/[three] /" "$SCRATCH/three.log"
sed "s/^/[three-hvc] /" "$hvc_log"
