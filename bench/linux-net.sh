#!/bin/sh
# shellcheck shell=sh disable=SC2016 # the guest's script is single-quoted on purpose
#
# TCP throughput of the Linux guest, ward (ward-net) against QEMU microvm with virtio-net
# vhost=off, both on a TAP device, in a network namespace of its own (`unshare -n`, re-executing
# this script): no frame leaves it. With VMMS="ward wardu": ward confined against ward
# --unconfined (the cost of confinement) instead. Run where the VMs run: inside the nested machine
# (bench/src/linux.rs starts it there), or directly as root on a host with real KVM.
# Environment: GUEST_DIR (vmlinuz, initramfs.cpio.gz), SCRATCH (writable), RUNS, MIB (MiB per
# transfer), VMMS (the two compared, default "ward qemu"), TOOL (iperf3 or nc, default nc),
# QEMU (its binary), QEMU_DATA (its firmware directory, optional); with TOOL=iperf3,
# IPERF3_CPIO (the bundle of bench/iperf3.sh as an archive, for the guest) and IPERF3 (the
# host's iperf3, default /opt/iperf3/bin/iperf3); `ward`, `ward-vmm`, `ward-net` on PATH.
#
# Each run boots the guest (1 vCPU, 256 MiB) on one VMM. The guest brings eth0 up as
# 10.78.0.2/24 and pings the host (10.78.0.1). Then MIB MiB go each way over one TCP
# connection, guest -> host first:
# - TOOL=iperf3: Debian's iperf3 at both ends (the guest's from a second initramfs archive),
#   the guest a server, the host's client driving both tests (-R for guest -> host); the rate
#   is the receiver's (bytes and seconds of its "sum_received").
# - TOOL=nc: busybox nc at both ends, the guest sending MIB MiB of zeros and timing it, then
#   the host sending and timing (/proc/uptime).
# Runs alternate which VMM goes first. Output: one line per transfer,
#   NETBENCH vmm=<ward|wardu|qemu> dir=<g2h|h2g> bytes=<n> secs=<s> rc=<status>
# and, for each host -> guest transfer, a NETPROF line of what grew during it (below).

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
TOOL=${TOOL:-nc}
case $TOOL in
nc) INITRD=$GUEST_DIR/initramfs.cpio.gz ;;
iperf3)
    # The guest gets the bundle (bench/iperf3.sh) as a second archive after its own.
    INITRD=$SCRATCH/initramfs-iperf3.cpio.gz
    cat "$GUEST_DIR/initramfs.cpio.gz" "$IPERF3_CPIO" >"$INITRD" || exit 1
    IPERF3=${IPERF3:-/opt/iperf3/bin/iperf3}
    ;;
*) echo "NETBENCH unknown TOOL=$TOOL"; exit 1 ;;
esac
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
# (irqfd_inject is KVM injecting an irqfd's interrupt on an IOAPIC pin from a kworker). The
# tracepoint is switched on once, here: each switch patches kernel text on every CPU, and the
# nested machine (QEMU's emulation) has been seen to lose the other CPU in the middle of one,
# leaving this script stuck in the kernel for good (soft lockup, RCU stalls). Each transfer
# only empties the buffer before and reads it after.
if ! [ -e /sys/kernel/debug/kvm ]; then
    "$BB" mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
fi
WQ=/sys/kernel/tracing/events/workqueue/workqueue_execute_start
if ! [ -e "$WQ" ]; then
    "$BB" mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
fi
[ -w "$WQ/enable" ] && echo 1 >"$WQ/enable"
wq_start() {
    [ -w "$WQ/enable" ] || return 0
    : >/sys/kernel/tracing/trace
}
wq_stop() { # file: one "wq_FUNCTION count" line per function
    : >"$1"
    [ -w "$WQ/enable" ] || return 0
    sed -n 's/.*workqueue_execute_start:.* function \([A-Za-z0-9_.]*\).*/\1/p' /sys/kernel/tracing/trace |
        sort | uniq -c | "$BB" awk '{ print "wq_" $2, $1 }' >"$1"
}
snap() { # file tap
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
    # The tap's own counters: frames it sent to the guest (tx) and got from it (rx: the
    # guest's ACKs), and their bytes (/proc/net/dev: this namespace's, where /sys is not).
    # Past 99999999 bytes nothing separates the name's colon from the count.
    "$BB" awk -v t="$2:" '{ sub(/:/, ": "); $0 = $0 }
        $1 == t { print "tap_rx_bytes", $2; print "tap_rx_packets", $3
                  print "tap_tx_bytes", $10; print "tap_tx_packets", $11 }' /proc/net/dev >>"$1"
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

# The guest's part: eth0 up, the host reachable, then (nc) the two transfers itself, or
# (iperf3) a server that the host's client drives both ways, until the host says done. At the
# end it prints its interrupts by source and eth0's counters (frame errors among them).
UP='ip link set eth0 up;ip addr add 10.78.0.2/24 dev eth0
n=0;until ping -c1 -W2 10.78.0.1 >/dev/null;do n=$((n+1));[ $n -lt 90 ]||break;done
'
IRQ='grep -E "virtio|LOC|RES|CAL" /proc/interrupts|tr -s " "|sed "s/^/NET G-IRQ/"
grep eth0: /proc/net/dev|tr -s " "|sed "s/^/NET G-IRQ/"
'
if [ "$TOOL" = iperf3 ]; then
    G=$UP'/opt/iperf3/bin/iperf3 -s >/dev/null 2>&1 & s=$!
n=0;until netstat -ltn|grep -q ":5201 ";do sleep 1;n=$((n+1));[ $n -lt 60 ]||break;done
echo NET G-IPERF
timeout 900 nc -l -p 5009 >/dev/null
kill $s
'$IRQ'echo NET G-DONE
sleep 1'
else
    G=$UP'dd if=/dev/zero of=/tmp/tx bs=1M count=MIB 2>/dev/null
read a x </proc/uptime;timeout 300 nc -w 10 10.78.0.1 5001 </tmp/tx;r=$?;read b x </proc/uptime
echo NET G-SENT rc=$r t0=$a t1=$b
rm -f /tmp/tx
printf "#!/bin/sh\nexec cat >/dev/null\n" >/tmp/r;chmod +x /tmp/r
timeout 300 nc -l -p 5002 -e /tmp/r & l=$!
n=0;until netstat -ltn|grep -q ":5002 ";do sleep 1;n=$((n+1));[ $n -lt 60 ]||break;done
echo NET G-LISTEN
wait $l;echo NET G-RX rc=$?
'$IRQ'sleep 3'
    G=$(printf '%s' "$G" | sed "s/count=MIB/count=$MIB/")
fi
CMDLINE="console=ttyS0 quiet panic=-1 ward.run=$(b64 "$G")"
MAC=52:54:00:78:00:02

printf '#!/bin/sh\nexec cat >/dev/null\n' >"$SCRATCH/rx.sh"
chmod +x "$SCRATCH/rx.sh"
[ "$TOOL" = iperf3 ] || dd if=/dev/zero of="$SCRATCH/h2g.bin" bs=1M count="$MIB" 2>/dev/null
bytes=$((MIB * 1048576))

# Host -> guest, profiled: snapshots around `$@`, the sender, whose CPU time time(1) gives
# (it has exited by the second snapshot). Sets rc to its exit status and leaves the NETPROF line
# in $SCRATCH/prof-line, for the caller to print once it knows the transfer counts.
profiled() { # vmm tap command...
    # (snap and the others set v and t of their own: sh has no local variables)
    p_vmm=$1 p_tap=$2
    shift 2
    snap "$SCRATCH/prof0" "$p_tap"
    wq_start
    "$BB" time -o "$SCRATCH/sender-time" -f "%U %S" "$@"
    rc=$?
    wq_stop "$SCRATCH/prof-wq"
    "$BB" awk '{ printf "thr_sender %d\n", ($1 + $2) * 100 }' "$SCRATCH/sender-time" >>"$SCRATCH/prof-wq"
    snap "$SCRATCH/prof1" "$p_tap"
    prof "$p_vmm" "$SCRATCH/prof0" "$SCRATCH/prof1" "$SCRATCH/prof-wq" >"$SCRATCH/prof-line"
}

# busybox nc both ways: the guest sends and times (/proc/uptime), then the host sends and times.
transfers_nc() { # vmm run tap log
    if wait_for "$4" "NET G-SENT" 400; then
        sent=$(tr -d '\r' <"$4" | sed -n 's/.*NET G-SENT rc=\([0-9]*\) t0=\([0-9.]*\) t1=\([0-9.]*\).*/\1 \2 \3/p')
        # shellcheck disable=SC2086 # three numbers
        set -- "$1" "$2" "$3" "$4" $sent
        awk -v v="$1" -v rc="$5" -v a="$6" -v b="$7" -v n="$bytes" \
            'BEGIN { printf "NETBENCH vmm=%s dir=g2h bytes=%d secs=%.3f rc=%s\n", v, n, b - a, rc }'
    fi
    wait_exit "$lis" 60
    if wait_for "$4" "NET G-LISTEN" 120; then
        t0=$(now)
        profiled "$1" "$3" "$BB" timeout 300 "$BB" nc -w 10 10.78.0.2 5002 <"$SCRATCH/h2g.bin"
        t1=$(now)
        [ "$rc" = 0 ] && cat "$SCRATCH/prof-line"
        awk -v v="$1" -v rc="$rc" -v a="$t0" -v b="$t1" -v n="$bytes" \
            'BEGIN { printf "NETBENCH vmm=%s dir=h2g bytes=%d secs=%.3f rc=%s\n", v, n, b - a, rc }'
    fi
}

# What the receiver of an iperf3 test got and in how long ("sum_received" of its JSON report).
iperf_result() { # vmm dir rc json
    "$BB" awk -v v="$1" -v d="$2" -v rc="$3" '
        /"sum_received"/ { r = 1 }
        r && /"seconds"/ { s = $2; gsub(/[^0-9.]/, "", s) }
        r && /"bytes"/ { b = $2; gsub(/[^0-9]/, "", b) }
        r && /}/ { r = 0; done = 1 }
        /"retransmits"/ { x = $2; gsub(/[^0-9]/, "", x) }
        /"error":/ { err = 1 }
        END { if (!done || s <= 0 || err) rc = "no-result:" rc
              printf "NETBENCH vmm=%s dir=%s bytes=%d secs=%.3f rc=%s retransmits=%s\n", v, d, b, s, rc, x }' "$4"
}

# iperf3 both ways, one TCP stream of MIB MiB each, driven by the host's client: guest -> host
# (-R), then host -> guest; the receiver's count and time.
transfers_iperf3() { # vmm run tap log
    wait_for "$4" "NET G-IPERF" 400 || return
    rm -f "$SCRATCH/g2h.json" "$SCRATCH/h2g.json"
    "$BB" timeout 300 "$IPERF3" -c 10.78.0.2 -n "${MIB}M" -R -J --logfile "$SCRATCH/g2h.json"
    iperf_result "$1" g2h $? "$SCRATCH/g2h.json"
    profiled "$1" "$3" "$BB" timeout 300 "$IPERF3" -c 10.78.0.2 -n "${MIB}M" -J \
        --logfile "$SCRATCH/h2g.json"
    result=$(iperf_result "$1" h2g "$rc" "$SCRATCH/h2g.json")
    case $result in *" rc=0 "*) cat "$SCRATCH/prof-line" ;; esac
    echo "$result"
    echo done | "$BB" timeout 30 "$BB" nc -w 5 10.78.0.2 5009
}

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
        # The worker logs its counters when it stops (info, from ward_worker::serve).
        # shellcheck disable=SC2086 # empty, or --unconfined
        WARD_LOG=warn,ward_worker::serve=info ward run --name "nb$2" --kernel "$GUEST_DIR/vmlinuz" --initrd "$INITRD" \
            --memory 256M --vcpus 1 --net "tap=$tap,mac=$MAC" --console-log "$log" $unconfined \
            --cmdline "$CMDLINE" </dev/null >"$SCRATCH/$1-$2.out" 2>&1 &
    else
        tap=btapq
        # shellcheck disable=SC2086 # empty, or -L and a directory
        "$QEMU" $QEMU_L -M microvm -enable-kvm -cpu host -m 256M -smp 1 \
            -nodefaults -no-user-config -nographic -no-reboot -serial "file:$log" \
            -name "nb$2,debug-threads=on" -global virtio-mmio.force-legacy=false \
            -kernel "$GUEST_DIR/vmlinuz" -initrd "$INITRD" \
            -append "$CMDLINE" \
            -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vhost=off" \
            -device "virtio-net-device,netdev=n0,mac=$MAC" \
            </dev/null >"$SCRATCH/$1-$2.out" 2>&1 &
    fi
    vm=$!
    if wait_link "$tap" 120; then
        if [ "$TOOL" != iperf3 ]; then
            "$BB" timeout 300 "$BB" nc -l -p 5001 -e "$SCRATCH/rx.sh" &
            lis=$!
            wait_listen 5001 30
        fi
        "$BB" ip addr add 10.78.0.1/24 dev "$tap"
        "$BB" ip link set "$tap" up
        "transfers_$TOOL" "$1" "$2" "$tap" "$log"
    fi
    wait_exit "$vm" 300
    echo "NETBENCH vmm=$1 run=$2 exit=$?"
    # ward-net's counters over the whole run (both transfers): frames and interrupts per queue.
    c=$(grep -o '"[rt]x_\(frames\|signals\|direct\)":[0-9]*' "$SCRATCH/$1-$2.out" 2>/dev/null |
        tr -d '"' | tr ':\n' '= ')
    [ -n "$c" ] && echo "NETWORKER vmm=$1 run=$2 $c"
    # The guest's interrupts over the whole run, by source, and eth0's counters.
    tr -d '\r' <"$log" | sed -n "s/^NET G-IRQ/NETIRQ vmm=$1 run=$2/p"
    if ! grep -q "NET G-RX rc=0\|NET G-DONE" "$log"; then
        sed "s/^/[$1-$2] /" "$log" | tail -n 30
        sed "s/^/[$1-$2-out] /" "$SCRATCH/$1-$2.out" | tail -n 10
        for j in g2h h2g; do
            [ "$TOOL" = iperf3 ] && sed "s/^/[$1-$2-$j] /" "$SCRATCH/$j.json" | tail -n 10
        done
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
