#!/bin/sh
# The Linux guest on a qcow2 overlay: run where ward can boot Linux (directly on real KVM, or
# inside the nested machine). Environment: GUEST_DIR (vmlinuz, initramfs.cpio.gz), BASE (raw
# base image or block device), SCRATCH (writable dir), EXPORT (file or device the overlay is
# copied to, for the host to inspect), and `ward`, `ward-img` on PATH.

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

ward-img create -f qcow2 -b "$BASE" -F raw "$SCRATCH/over.qcow2" || exit 1
ward run --name qcow2 --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initramfs.cpio.gz" \
    --memory 256M --disk "$SCRATCH/over.qcow2,format=qcow2" --console-log "$SCRATCH/q.log" \
    --cmdline "console=ttyS0 reboot=k panic=-1 ward.run=$(b64 'echo BASE=$(dd if=/dev/vda bs=512 skip=100 count=1 2>/dev/null | head -c 11); printf ward-qcow2-X | dd of=/dev/vda bs=512 seek=3000 conv=fsync 2>/dev/null; sync; echo WROTE-Q')"
echo "LINUX-QCOW2 ward-exit=$?"
sed 's/^/[q] /' "$SCRATCH/q.log"
ward-img check "$SCRATCH/over.qcow2"
echo "LINUX-QCOW2 check=$?"
dd if="$SCRATCH/over.qcow2" of="$EXPORT" bs=65536 conv=fsync 2>/dev/null
echo "LINUX-QCOW2 exported size=$(wc -c <"$SCRATCH/over.qcow2")"
