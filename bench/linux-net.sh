#!/bin/sh
# shellcheck shell=sh disable=SC2016 # the guest's script is single-quoted on purpose
#
# TCP throughput of the Linux guest, ward (ward-net) against QEMU microvm with virtio-net
# vhost=off, both on a TAP device, in a network namespace of its own (`unshare -n`, re-executing
# this script): no frame leaves it. With VMMS="ward wardu": ward confined against ward
# --unconfined (the cost of confinement) instead. Run where the VMs run: inside the nested machine
# (bench/src/linux.rs starts it there), or directly as root on a host with real KVM.
# Environment: GUEST_DIR (vmlinuz, initramfs.cpio.gz), SCRATCH (writable), RUNS, MIB (MiB per
# transfer), VMMS (the two compared, default "ward qemu"), QEMU (its binary), QEMU_DATA (its
# firmware directory, optional); `ward`,
# `ward-vmm`, `ward-net` on PATH.
#
# Each run boots the guest (1 vCPU, 256 MiB) on one VMM. The guest brings eth0 up as
# 10.78.0.2/24, pings the host (10.78.0.1), then sends MIB MiB of zeros to the host with
# busybox nc and times it (guest -> host); then it listens and the host sends MIB MiB to it,
# timed by the host (host -> guest). Both ends use the same busybox nc under both VMMs. Runs
# alternate which VMM goes first. Output: one line per transfer,
#   NETBENCH vmm=<ward|wardu|qemu> dir=<g2h|h2g> bytes=<n> secs=<s>

BB=busybox
if [ -n "$GUEST_DIR" ] && [ -x "$GUEST_DIR/busybox" ]; then
    BB=$GUEST_DIR/busybox
fi
if [ "$NETBENCH_NETNS" != 1 ]; then
    export NETBENCH_NETNS=1
    exec "$BB" unshare -n sh "$0" "$@"
fi
"$BB" ip link set lo up
RUNS=${RUNS:-3}
MIB=${MIB:-32}
QEMU=${QEMU:-qemu-system-x86_64}
QEMU_L=
[ -n "$QEMU_DATA" ] && QEMU_L="-L $QEMU_DATA"

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
now() { cut -d' ' -f1 /proc/uptime; }

wait_for() { # file pattern seconds
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -gt "$3" ] && { echo "NETBENCH timeout: no '$2' in $1 after $3 s"; return 1; }
        sleep 1
    done
}

wait_link() { # ifname seconds
    i=0
    while ! "$BB" ip link show "$1" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -gt "$2" ] && { echo "NETBENCH timeout: no interface $1 after $2 s"; return 1; }
        sleep 1
    done
}

wait_listen() { # port seconds
    i=0
    while ! "$BB" netstat -ltn | grep -q ":$1 "; do
        i=$((i + 1))
        [ "$i" -gt "$2" ] && { echo "NETBENCH timeout: nothing listens on $1 after $2 s"; return 1; }
        sleep 1
    done
}

# Where the time goes, host -> guest: a snapshot before and after the transfer of what KVM
# counted (debugfs: exits, interrupts injected, MMIO exits, halts; the sums over all VMs, and
# one VM runs at a time), of this machine's CPU time (/proc/stat: busy, guest) and of every
# thread's CPU time, by thread name (/proc/*/task/*/stat: utime + stime, guest time included).
# Ticks are USER_HZ (100 per second).
KVM_STATS="exits irq_injections mmio_exits halt_exits halt_wakeup io_exits irq_exits irq_window_exits request_irq_exits signal_exits"
# And, where tracefs is there, the work items the kernel's workqueues ran, by function
# (irqfd_inject is KVM injecting an irqfd's interrupt on an IOAPIC pin from a kworker).
if ! [ -e /sys/kernel/debug/kvm ]; then
    "$BB" mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
fi
WQ=/sys/kernel/tracing/events/workqueue/workqueue_execute_start
if ! [ -e "$WQ" ]; then
    "$BB" mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
fi
wq_start() {
    [ -w "$WQ/enable" ] || return 0
    : >/sys/kernel/tracing/trace
    echo 1 >"$WQ/enable"
}
wq_stop() { # file: one "wq_FUNCTION count" line per function
    : >"$1"
    [ -w "$WQ/enable" ] || return 0
    echo 0 >"$WQ/enable"
    sed -n 's/.*workqueue_execute_start:.* function \([A-Za-z0-9_.]*\).*/\1/p' /sys/kernel/tracing/trace |
        sort | uniq -c | "$BB" awk '{ print "wq_" $2, $1 }' >"$1"
}
snap() { # file
    for k in $KVM_STATS; do
        v=$(cat "/sys/kernel/debug/kvm/$k" 2>/dev/null) && [ -n "$v" ] && printf 'kvm_%s %s\n' "$k" "$v"
    done >"$1"
    "$BB" awk '/^cpu / { print "cpu_busy", $2 + $3 + $4 + $7 + $8 + $9; print "cpu_guest", $10 + $11 }' /proc/stat >>"$1"
    cat /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null | "$BB" awk '
        # The name is between the first "(" and the last ")": the regex is greedy.
        match($0, /\(.*\)/) {
          c = substr($0, RSTART + 1, RLENGTH - 2); gsub(/[^A-Za-z0-9_.\/-]/, "_", c)
          n = split(substr($0, RSTART + RLENGTH + 1), f, " ")
          if (n >= 13) t[c] += f[12] + f[13] }
        END { for (c in t) print "thr_" c, t[c] }' >>"$1"
}
prof() { # vmm before after work: one line of what grew between the two snapshots, and the
    # work items (counted from zero: an empty file stands for the before)
    "$BB" awk -v v="$1" '
        FNR == NR { a[$1] = $2; next }
        { d = $2 - a[$1]; if (d > 0) line = line " " $1 "=" d }
        END { print "NETPROF vmm=" v " dir=h2g" line }' "$2" "$3" "$4"
}

running() {
    st=$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

wait_exit() { # pid seconds
    i=0
    while running "$1"; do
        i=$((i + 1))
        if [ "$i" -gt "$2" ]; then
            echo "NETBENCH timeout: pid $1 still running after $2 s; stopping it"
            kill -TERM "$1" 2>/dev/null
            sleep 5
            kill -KILL "$1" 2>/dev/null
            break
        fi
        sleep 1
    done
    wait "$1"
}

G='ip link set eth0 up;ip addr add 10.78.0.2/24 dev eth0
n=0;until ping -c1 -W2 10.78.0.1 >/dev/null;do n=$((n+1));[ $n -lt 90 ]||break;done
dd if=/dev/zero of=/tmp/tx bs=1M count=MIB 2>/dev/null
read a x </proc/uptime;timeout 300 nc -w 10 10.78.0.1 5001 </tmp/tx;r=$?;read b x </proc/uptime
echo NET G-SENT rc=$r t0=$a t1=$b
rm -f /tmp/tx
printf "#!/bin/sh\nexec cat >/dev/null\n" >/tmp/r;chmod +x /tmp/r
timeout 300 nc -l -p 5002 -e /tmp/r & l=$!
n=0;until netstat -ltn|grep -q ":5002 ";do sleep 1;n=$((n+1));[ $n -lt 60 ]||break;done
echo NET G-LISTEN
wait $l;echo NET G-RX rc=$?
sleep 3'
G=$(printf '%s' "$G" | sed "s/count=MIB/count=$MIB/")
CMDLINE="console=ttyS0 quiet panic=-1 ward.run=$(b64 "$G")"
MAC=52:54:00:78:00:02

printf '#!/bin/sh\nexec cat >/dev/null\n' >"$SCRATCH/rx.sh"
chmod +x "$SCRATCH/rx.sh"
dd if=/dev/zero of="$SCRATCH/h2g.bin" bs=1M count="$MIB" 2>/dev/null
bytes=$((MIB * 1048576))

one() { # vmm run
    log="$SCRATCH/$1-$2.log"
    rm -f "$log"
    if [ "$1" = ward ] || [ "$1" = wardu ]; then
        tap=btap0
        unconfined=
        if [ "$1" = wardu ]; then
            tap=btapu
            unconfined=--unconfined
        fi
        # shellcheck disable=SC2086 # empty, or --unconfined
        ward run --name "nb$2" --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initramfs.cpio.gz" \
            --memory 256M --vcpus 1 --net "tap=$tap,mac=$MAC" --console-log "$log" $unconfined \
            --cmdline "$CMDLINE" </dev/null >"$SCRATCH/$1-$2.out" 2>&1 &
    else
        tap=btapq
        # shellcheck disable=SC2086 # empty, or -L and a directory
        "$QEMU" $QEMU_L -M microvm -enable-kvm -cpu host -m 256M -smp 1 \
            -nodefaults -no-user-config -nographic -no-reboot -serial "file:$log" \
            -name "nb$2,debug-threads=on" -global virtio-mmio.force-legacy=false \
            -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" \
            -append "$CMDLINE" \
            -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vhost=off" \
            -device "virtio-net-device,netdev=n0,mac=$MAC" \
            </dev/null >"$SCRATCH/$1-$2.out" 2>&1 &
    fi
    vm=$!
    if wait_link "$tap" 120; then
        "$BB" timeout 300 "$BB" nc -l -p 5001 -e "$SCRATCH/rx.sh" &
        lis=$!
        wait_listen 5001 30
        "$BB" ip addr add 10.78.0.1/24 dev "$tap"
        "$BB" ip link set "$tap" up
        if wait_for "$log" "NET G-SENT" 400; then
            sent=$(tr -d '\r' <"$log" | sed -n 's/.*NET G-SENT rc=\([0-9]*\) t0=\([0-9.]*\) t1=\([0-9.]*\).*/\1 \2 \3/p')
            # shellcheck disable=SC2086 # three numbers
            set -- "$1" "$2" $sent
            awk -v v="$1" -v rc="$3" -v a="$4" -v b="$5" -v n="$bytes" \
                'BEGIN { printf "NETBENCH vmm=%s dir=g2h bytes=%d secs=%.3f rc=%s\n", v, n, b - a, rc }'
        fi
        wait_exit "$lis" 60
        if wait_for "$log" "NET G-LISTEN" 120; then
            snap "$SCRATCH/prof0"
            wq_start
            t0=$(now)
            "$BB" time -o "$SCRATCH/nc-time" -f "%U %S" \
                "$BB" timeout 300 "$BB" nc -w 10 10.78.0.2 5002 <"$SCRATCH/h2g.bin"
            rc=$?
            t1=$(now)
            wq_stop "$SCRATCH/prof-wq"
            # The sending nc has exited by the second snapshot: its CPU time, from time(1).
            "$BB" awk '{ printf "thr_nc_sender %d\n", ($1 + $2) * 100 }' "$SCRATCH/nc-time" >>"$SCRATCH/prof-wq"
            snap "$SCRATCH/prof1"
            [ "$rc" = 0 ] && prof "$1" "$SCRATCH/prof0" "$SCRATCH/prof1" "$SCRATCH/prof-wq"
            awk -v v="$1" -v rc="$rc" -v a="$t0" -v b="$t1" -v n="$bytes" \
                'BEGIN { printf "NETBENCH vmm=%s dir=h2g bytes=%d secs=%.3f rc=%s\n", v, n, b - a, rc }'
        fi
    fi
    wait_exit "$vm" 300
    echo "NETBENCH vmm=$1 run=$2 exit=$?"
    if ! grep -q "NET G-RX rc=0" "$log"; then
        sed "s/^/[$1-$2] /" "$log" | tail -n 30
        sed "s/^/[$1-$2-out] /" "$SCRATCH/$1-$2.out" | tail -n 10
    fi
}

# shellcheck disable=SC2086 # two words
set -- ${VMMS:-ward qemu}
first=$1 second=$2
r=0
while [ "$r" -lt "$RUNS" ]; do
    if [ $((r % 2)) = 0 ]; then
        one "$first" "$r"
        one "$second" "$r"
    else
        one "$second" "$r"
        one "$first" "$r"
    fi
    r=$((r + 1))
done
exit 0
