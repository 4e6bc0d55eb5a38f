#!/bin/sh
# The VM's cgroup v2 (launcher/src/cgroup.rs), where a cgroup2 hierarchy exists or can be
# mounted without disturbing anything: the nested machine's Debian kernel (the PVM host has
# cgroup v1 only). Environment: GUEST_DIR (vmlinuz, initramfs.cpio.gz), SCRATCH (writable),
# and `ward` on PATH. Output: `LINUX-CGROUP ...` lines (tests/tests/linux_cgroup.rs asserts on
# them) and the guest's serial log as [cg], ward's output as [cg-ward].

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
CG=/sys/fs/cgroup

if [ ! -f "$CG/cgroup.controllers" ]; then
    # Only an empty, unmounted /sys/fs/cgroup is ours to mount on; a v1 host's is not.
    if [ -n "$(ls -A "$CG" 2>/dev/null)" ]; then
        echo "LINUX-CGROUP SKIP: $CG holds a cgroup v1 hierarchy"
        exit 0
    fi
    mkdir -p "$CG"
    mount -t cgroup2 none "$CG" || { echo "LINUX-CGROUP cannot mount cgroup2"; exit 0; }
fi
echo "LINUX-CGROUP controllers=$(tr ' ' , <"$CG/cgroup.controllers")"

dd if=/dev/zero of="$SCRATCH/cg.img" bs=1M count=1 2>/dev/null
ward run --name cg --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initramfs.cpio.gz" \
    --memory 256M --disk "$SCRATCH/cg.img" --console-log "$SCRATCH/cg.log" \
    --cmdline "console=ttyS0 quiet reboot=k panic=-1 ward.run=$(b64 'echo CG-GUEST-UP; sleep 5; echo CG-GUEST-DONE')" \
    </dev/null >"$SCRATCH/cg.ward" 2>&1 &
w=$!
i=0
while ! grep -q CG-GUEST-UP "$SCRATCH/cg.log" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -gt 120 ] && { echo "LINUX-CGROUP timeout: the guest never came up"; break; }
    sleep 1
done
G="$CG/ward/cg"
echo "LINUX-CGROUP memory.max=$(cat "$G/memory.max") pids.max=$(cat "$G/pids.max")"
n=0
names=
while read -r p; do
    n=$((n + 1))
    names="$names,$(cat "/proc/$p/comm")"
done <"$G/cgroup.procs"
echo "LINUX-CGROUP procs=$n comms=$names"
echo "LINUX-CGROUP launcher-cgroup=$(cut -d: -f3 "/proc/$w/cgroup")"
wait "$w"
echo "LINUX-CGROUP ward-exit=$?"
if [ -d "$G" ]; then echo "LINUX-CGROUP left-behind"; else echo "LINUX-CGROUP removed"; fi
sed 's/^/[cg] /' "$SCRATCH/cg.log"
sed 's/^/[cg-ward] /' "$SCRATCH/cg.ward"
