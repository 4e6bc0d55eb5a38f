#!/usr/bin/env bash
# Builds ward, prepares the guests, and boots the demo.
#
# Where the host's KVM can run Linux: the Debian Linux guest with a disk, its login shell on the
# virtio console hvc0, served by its own ward-console process (exit the shell to end the VM;
# ^] detaches, `ward console demo` attaches again). Where it cannot (KVM's PVM back end, as on
# ward's development machines): the probe guest on the host's KVM, then the Linux guest inside
# a nested machine (QEMU software emulation with AMD-V, ward on ordinary KVM inside).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bash scripts/setup-host.sh
cargo build --release --workspace --bins
probe=$(bash guest/probe/build.sh)
bash tests/guest/prepare.sh
bin="$repo/target/release"
guest="$repo/target/guest/linux"
mkdir -p target/demo
img=target/demo/disk.img
[ -f "$img" ] || truncate -s 64M "$img"

if [ ! -c /dev/kvm ]; then
    echo "demo: this machine has no /dev/kvm; ward needs KVM." >&2
    exit 1
fi

if [ ! -d /sys/module/kvm_pvm ]; then
    echo "demo: booting the Debian Linux guest on ward (2 vCPUs, 512 MiB, $img as /dev/vda)."
    echo "demo: you get a shell on the virtio console (hvc0); 'exit' ends the VM, ^] detaches"
    echo "demo: (then 'ward console demo' attaches again). Boot messages: the serial log."
    exec "$bin/ward" run --name demo --kernel "$guest/vmlinuz" --initrd "$guest/initramfs.cpio.gz" \
        --vcpus 2 --memory 512M --disk "$img" --console virtio \
        --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet ward.shell=hvc0"
fi

cat <<'MSG'
demo: this host's KVM is the PVM back end (/sys/module/kvm_pvm): it runs small guest code, but
demo: no VMM can boot a stock Linux guest on it. So, first the probe guest on this host's KVM,
demo: writing and reading its disk through a ward-block worker:
MSG
"$bin/ward" run --name demo-probe --kernel "$probe" --disk "$img" --vcpus 2 \
    --cmdline "console=ttyS0 probe.run=blk-info:0,blk-write:0:0:16:1,blk-flush:0,blk-read:0:0:16:1"

echo
echo "demo: now the Linux guest, on ward, inside a nested machine (takes about half a minute):"
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat >"$script" <<'INNER'
# The guest's login shell is on hvc0 (ward-console); `ward console demo` attaches to it and
# types a few commands, as a user at a terminal would.
ward run --name demo --kernel /ward/guest/vmlinuz --initrd /ward/guest/initramfs.cpio.gz \
    --vcpus 2 --memory 256M --disk /dev/vda --console virtio \
    --console-log /tmp/demo.hvc.log --serial-log /tmp/demo.serial.log \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet ward.shell=hvc0" </dev/null &
vm=$!
i=0
while ! grep -q "WARD-GUEST shell on hvc0" /tmp/demo.serial.log 2>/dev/null && [ $i -lt 120 ]; do
    i=$((i + 1)); sleep 1
done
echo "demo: the guest's shell is up on hvc0; 'ward console demo' attaches and types:"
(
    printf '%s\n' 'uname -sr; echo "CPUs: $(nproc)"; echo "disk: /dev/vda, $(cat /sys/block/vda/size) sectors"; echo "hello from the guest" | dd of=/dev/vda bs=512 seek=1000 conv=fsync 2>/dev/null && echo "wrote sector 1000 of /dev/vda"; echo DEMO-DONE'
    i=0
    while ! grep -q '^DEMO-DONE' /tmp/demo.hvc.log && [ $i -lt 60 ]; do i=$((i + 1)); sleep 1; done
    printf 'exit\n'
    while kill -0 "$vm" 2>/dev/null; do sleep 1; done
) | ward console demo
wait "$vm"
echo "ward exited with $?"
INNER
bash tests/nested/run-nested.sh --bin "$bin/ward" --bin "$bin/ward-vmm" --bin "$bin/ward-block" \
    --bin "$bin/ward-console" \
    --file "$guest/vmlinuz:/ward/guest/" --file "$guest/initramfs.cpio.gz:/ward/guest/" \
    --disk "$img" --script "$script" | grep -v '^NESTED \(MODULE\|INFO\)'
echo
echo "demo: the host's image now holds what the guest wrote at sector 1000:"
dd if="$img" bs=512 skip=1000 count=1 2>/dev/null | head -c 21; echo
