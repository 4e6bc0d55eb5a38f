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
