#!/bin/sh
# shellcheck shell=sh disable=SC2016 # the guests' scripts are single-quoted on purpose
#
# Linux guests on ward's virtio-net (ward-net workers over TAP devices), run where ward can boot
# Linux: directly on a host with real KVM (as root), or inside the nested machine (tests/nested).
# Environment: GUEST_DIR (vmlinuz, initramfs.cpio.gz; busybox too when run directly), SCRATCH
# (writable), and `ward`, `ward-vmm`, `ward-net` on PATH.
#
# Everything runs in a network namespace of its own (`unshare -n`, re-executing this script): the
# taps, the bridge and every address exist only there, and no frame leaves it. Three VMs:
#   one     --net tap=wtap0; the host end gets 10.78.0.1/24, the guest eth0 10.78.0.2/24. The
#           guest pings the host, then 16 MiB go guest -> host and 16 MiB host -> guest with
#           busybox nc; both ends print md5 and size of what they sent and received, and the
#           senders' times give the throughput each way.
#   a, b    at once, on wtap1 / wtap2 with their own MACs, both ports of bridge br0 (10.79.0.1/24
#           on the host side): a (10.79.0.2) pings b (10.79.0.3) and sends it 4 MiB. Then every
#           thread of both ward-net workers is checked for Seccomp: 2 (filter mode), b's worker
#           is killed with SIGKILL (b's ward must stop with an error naming it), and a is told to
#           finish: it finds b gone and the host still reachable, and ends normally.
# Output: `LINUX-NET ...` lines (tests/tests/linux_net.rs asserts on them) and the guests' serial
# logs prefixed with [one], [a], [b] (their lines of interest start with `NET `), ward's own
# output with [one-ward], [a-ward], [b-ward]. Every wait is bounded.

BB=busybox
if [ -n "$GUEST_DIR" ] && [ -x "$GUEST_DIR/busybox" ]; then
    BB=$GUEST_DIR/busybox # run directly: the guest's static busybox, for its nc and ip
fi

if [ "$LINUX_NET_NETNS" != 1 ]; then
    export LINUX_NET_NETNS=1
    exec "$BB" unshare -n sh "$0" "$@"
fi
echo "LINUX-NET in a new network namespace"
# The workers log their counters when they stop (ward passes WARD_LOG on).
export WARD_LOG="warn,virtio_queue=off,ward_worker=info"
"$BB" ip link set lo up

# How a bounded wait that ran out says so (tests/tests/linux_net.rs fails on it).
TIMEOUT="LINUX-NET timeout"

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
now() { cut -d' ' -f1 /proc/uptime; }
md5() { md5sum <"$1" | cut -c1-32; }
size() { wc -c <"$1" | tr -d ' '; }

wait_for() { # file pattern seconds [pid]: gives up early once pid (the VM's ward) has ended
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -gt "$3" ] && { echo "$TIMEOUT: no '$2' in $1 after $3 s"; return 1; }
        if [ -n "$4" ] && ! running "$4"; then
            grep -q "$2" "$1" 2>/dev/null && return 0
            echo "$TIMEOUT: no '$2' in $1, and its VM has ended"
            return 1
        fi
        sleep 1
    done
}

wait_link() { # ifname seconds: until ward has created the tap
    i=0
    while ! "$BB" ip link show "$1" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -gt "$2" ] && { echo "LINUX-NET timeout: no interface $1 after $2 s"; return 1; }
        sleep 1
    done
}

wait_listen() { # port seconds
    i=0
    while ! "$BB" netstat -ltn | grep -q ":$1 "; do
        i=$((i + 1))
        [ "$i" -gt "$2" ] && { echo "LINUX-NET timeout: nothing listens on $1 after $2 s"; return 1; }
        sleep 1
    done
}

running() { # pid: exists and is not a zombie
    st=$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# wait_exit pid seconds: waits for a background job, TERM then KILL after the bound; its exit
# status is $?.
wait_exit() {
    i=0
    while running "$1"; do
        i=$((i + 1))
        if [ "$i" -gt "$2" ]; then
            echo "$TIMEOUT: pid $1 still running after $2 s; stopping it"
            kill -TERM "$1" 2>/dev/null
            sleep 5
            kill -KILL "$1" 2>/dev/null
            break
        fi
        sleep 1
    done
    wait "$1"
}

children_named() { # ppid comm
    for s in /proc/[0-9]*/stat; do
        read -r pid comm _ ppid _ 2>/dev/null <"$s" || continue
        [ "$ppid" = "$1" ] && [ "$comm" = "($2)" ] && echo "$pid"
    done
}

seccomp_check() { # label ward-pid: Seccomp: of every thread of its ward-net workers
    ws=$(children_named "$2" ward-net)
    [ -n "$ws" ] || echo "LINUX-NET $1 seccomp no ward-net child of $2"
    for w in $ws; do
        # In a pid namespace of its own, the worker is the child of ward's child of that name.
        inner=$(children_named "$w" ward-net)
        [ -n "$inner" ] && w=$inner
        modes=
        n=0
        for t in /proc/"$w"/task/*; do
            m=$(awk '/^Seccomp:/ { print $2 }' "$t/status" 2>/dev/null)
            modes="$modes${modes:+,}${m:-?}"
            n=$((n + 1))
        done
        echo "LINUX-NET $1 seccomp pid=$w threads=$n modes=$modes"
    done
}

rate() { # label bytes t0 t1
    awk -v l="$1" -v b="$2" -v a="$3" -v c="$4" 'BEGIN {
        d = c - a
        printf "LINUX-NET throughput %s bytes=%d secs=%.2f MiB/s=%.2f\n", l, b, d, (d > 0 ? b / d / 1048576 : 0)
    }'
}

# ward run NAME NET SCRIPT in the background; $! is ward.
start_vm() {
    ward run --name "$1" --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initramfs.cpio.gz" \
        --memory 256M --net "$2" --console-log "$SCRATCH/$1.log" \
        --cmdline "console=ttyS0 quiet reboot=k panic=-1 ward.run=$(b64 "$3")" \
        </dev/null >"$SCRATCH/$1.ward" 2>&1 &
}

show_logs() { # name
    sed "s/^/[$1] /" "$SCRATCH/$1.log"
    sed "s/^/[$1-ward] /" "$SCRATCH/$1.ward"
}

# The receiving end of a transfer: `nc -l -e` runs it with the connection on stdin and stdout,
# so the listener never closes its sending half before it has read everything.
printf '#!/bin/sh\nexec cat >"%s"\n' "$SCRATCH/g2h.bin" >"$SCRATCH/rx.sh"
chmod +x "$SCRATCH/rx.sh"

# ---- one: a guest and the host, 16 MiB each way ----------------------------------------------
G1='ip link set eth0 up;ip addr add 10.78.0.2/24 dev eth0
n=0;until ping -c1 -W2 10.78.0.1 >/dev/null;do n=$((n+1));[ $n -lt 90 ]||break;done
echo NET PING ok=$(ping -c3 -W5 10.78.0.1|grep -c ttl=)
dd if=/dev/urandom of=/tmp/tx bs=64k count=256 2>/dev/null
echo NET G-TX md5=$(md5sum </tmp/tx|cut -c1-32) bytes=$(wc -c </tmp/tx)
read a x </proc/uptime;timeout 300 nc -w 30 10.78.0.1 5001 </tmp/tx;r=$?;read b x </proc/uptime
echo NET G-SENT rc=$r t0=$a t1=$b
printf "#!/bin/sh\nexec cat >/tmp/rx\n" >/tmp/r;chmod +x /tmp/r
timeout 300 nc -l -p 5002 -e /tmp/r & l=$!
n=0;until netstat -ltn|grep -q ":5002 ";do sleep 1;n=$((n+1));[ $n -lt 60 ]||break;done
echo NET G-LISTEN
wait $l;echo NET G-RX rc=$? md5=$(md5sum </tmp/rx|cut -c1-32) bytes=$(wc -c </tmp/rx)'

dd if=/dev/urandom of="$SCRATCH/h2g.bin" bs=65536 count=256 2>/dev/null
echo "LINUX-NET one host-tx md5=$(md5 "$SCRATCH/h2g.bin") bytes=$(size "$SCRATCH/h2g.bin")"
start_vm one tap=wtap0 "$G1"
one=$!
if wait_link wtap0 120; then
    "$BB" timeout 600 "$BB" nc -l -p 5001 -e "$SCRATCH/rx.sh" &
    lis=$!
    wait_listen 5001 30
    "$BB" ip addr add 10.78.0.1/24 dev wtap0
    "$BB" ip link set wtap0 up
    echo "LINUX-NET one wtap0 up: $("$BB" ip -o addr show dev wtap0 | grep -o 'inet [0-9./]*')"
    # Guest -> host: the guest times its sending.
    wait_for "$SCRATCH/one.log" "NET G-SENT" 400
    wait_exit "$lis" 60
    echo "LINUX-NET one host-rx rc=$? md5=$(md5 "$SCRATCH/g2h.bin") bytes=$(size "$SCRATCH/g2h.bin")"
    seccomp_check one "$one"
    # Host -> guest, once the guest listens.
    if wait_for "$SCRATCH/one.log" "NET G-LISTEN" 120; then
        t0=$(now)
        "$BB" timeout 300 "$BB" nc -w 30 10.78.0.2 5002 <"$SCRATCH/h2g.bin"
        rc=$?
        t1=$(now)
        echo "LINUX-NET one host-sent rc=$rc t0=$t0 t1=$t1"
        rate host-to-guest "$(size "$SCRATCH/h2g.bin")" "$t0" "$t1"
    fi
    sent=$(tr -d '\r' <"$SCRATCH/one.log" | sed -n 's/.*NET G-SENT rc=[0-9]* t0=\([0-9.]*\) t1=\([0-9.]*\).*/\1 \2/p')
    if [ -n "$sent" ]; then
        # shellcheck disable=SC2086 # two numbers
        rate guest-to-host "$(size "$SCRATCH/g2h.bin")" $sent
    fi
fi
wait_exit "$one" 300
echo "LINUX-NET one ward-exit=$?"
show_logs one
rm -f "$SCRATCH/h2g.bin" "$SCRATCH/g2h.bin"

# ---- a and b: two guests on a bridge; then b's worker is killed ------------------------------
GB='printf "#!/bin/sh\nexec cat >/tmp/rx\n" >/tmp/r;chmod +x /tmp/r
timeout 400 nc -l -p 5003 -e /tmp/r & l=$!
n=0;until netstat -ltn|grep -q ":5003 ";do sleep 1;n=$((n+1));[ $n -lt 60 ]||break;done
ip link set eth0 up;ip addr add 10.79.0.3/24 dev eth0;echo NET B-LISTEN
wait $l;echo NET B-RX rc=$? md5=$(md5sum </tmp/rx|cut -c1-32) bytes=$(wc -c </tmp/rx)
echo NET B-STATS $(cd /sys/class/net/eth0/statistics;for f in rx_packets rx_dropped tx_packets tx_dropped;do echo $f=$(cat $f);done) $(grep virtio /proc/interrupts|tr -s " ")
sleep 300;echo NET B-NOT-KILLED'
GA='ip link set eth0 up;ip addr add 10.79.0.2/24 dev eth0
n=0;until ping -c1 -W2 10.79.0.3 >/dev/null;do n=$((n+1));[ $n -lt 90 ]||break;done
echo NET A-PING ok=$(ping -c3 -W5 10.79.0.3|grep -c ttl=)
dd if=/dev/urandom of=/tmp/tx bs=64k count=64 2>/dev/null
echo NET A-TX md5=$(md5sum </tmp/tx|cut -c1-32) bytes=$(wc -c </tmp/tx)
timeout 300 nc -w 30 10.79.0.3 5003 </tmp/tx;echo NET A-SENT rc=$?
echo NET A-STATS $(cd /sys/class/net/eth0/statistics;for f in rx_packets rx_dropped tx_packets tx_dropped;do echo $f=$(cat $f);done) $(grep virtio /proc/interrupts|tr -s " ")
timeout 300 nc -l -p 5004 </dev/null;echo NET A-TOLD rc=$?
if ping -c2 -W3 10.79.0.3 >/dev/null;then echo NET A-PEER-UP;else echo NET A-PEER-GONE;fi
echo NET A-HOST-PING ok=$(ping -c3 -W5 10.79.0.1|grep -c ttl=)'

"$BB" ip link add br0 type bridge
"$BB" ip addr add 10.79.0.1/24 dev br0
"$BB" ip link set br0 up

# The counters of the bridge's ports and the taps, when a transfer between a and b failed: a tap
# whose tx_drop rises while its guest got nothing says its worker stopped reading it.
tap_stats() {
    grep -E '^ *(br0|wtap[0-9]):' /proc/net/dev | tr -s ' ' | sed 's/^ */LINUX-NET diag /'
}

# pair: a and b as the header says. Returns 1, having stopped both VMs and shown their logs
# under [try-a] and [try-b], when the transfer between them did not complete.
pair() {
    [ "$1" = first ] && TIMEOUT="LINUX-NET first try: timeout"
    start_vm b tap=wtap2,mac=52:54:00:78:00:0b "$GB"
    b=$!
    start_vm a tap=wtap1,mac=52:54:00:78:00:0a "$GA"
    a=$!
    for t in wtap1 wtap2; do
        if wait_link "$t" 120; then
            "$BB" ip link set "$t" master br0
            "$BB" ip link set "$t" up
            echo "LINUX-NET $t on br0"
        fi
    done
    if ! wait_for "$SCRATCH/a.log" "NET A-SENT" 420 "$a" || ! wait_for "$SCRATCH/b.log" "NET B-RX" 60 "$b"; then
        [ "$1" = last ] && return 0 # the checks that follow report it
        tap_stats
        echo "LINUX-NET pair failed: the transfer from a to b did not complete; a retry follows"
        kill -TERM "$a" "$b" 2>/dev/null
        wait_exit "$a" 60
        wait_exit "$b" 60
        sed "s/^/[try-a] /" "$SCRATCH/a.log" "$SCRATCH/a.ward"
        sed "s/^/[try-b] /" "$SCRATCH/b.log" "$SCRATCH/b.ward"
        TIMEOUT="LINUX-NET timeout"
        return 1
    fi
    TIMEOUT="LINUX-NET timeout"
}

# A stalled transfer between two nested guests has been seen once in many runs, with the
# sending guest hanging (no further output, then a reset): its diagnostics are printed and the
# pair runs once more; the test reports the retry.
pair first || pair last
# Both VMs are running, and data went through both workers.
seccomp_check a "$a"
seccomp_check b "$b"
for w in $(children_named "$b" ward-net); do
    echo "LINUX-NET b kill -9 ward-net pid=$w"
    kill -KILL "$w"
done
wait_exit "$b" 120
echo "LINUX-NET b ward-exit=$?"
echo "LINUX-NET b said: $(grep 'ward: ' "$SCRATCH/b.ward" | tail -n1)"
# Tell a to finish (a connection to its port 5004 is the signal).
i=0
until "$BB" timeout 30 "$BB" nc -w 10 10.79.0.2 5004 </dev/null >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -gt 30 ] && { echo "LINUX-NET cannot reach a on port 5004"; break; }
    sleep 1
done
wait_exit "$a" 180
echo "LINUX-NET a ward-exit=$?"
show_logs a
show_logs b
exit 0
