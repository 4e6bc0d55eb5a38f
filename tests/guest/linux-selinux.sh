#!/bin/sh
# sVirt in the nested machine, whose Debian kernel has SELinux built in (booted with it among
# its LSMs) and no policy: the workload loads ward's minimal policy
# (policy/selinux/minimal/ward-minimal.conf, compiled), enforcing, then runs probe-guest VMs.
# Environment: POLICY (the compiled policy), PROBE (the probe guest's ELF), SCRATCH, and
# `ward` on PATH (debug build: the hostile-worker mode). Output: `LINUX-SELINUX ...` lines,
# which tests/tests/linux_selinux.rs asserts on.
say() { echo "LINUX-SELINUX $*"; }

mkdir -p /sys/fs/selinux
mount -t selinuxfs none /sys/fs/selinux 2>/dev/null
if [ ! -e /sys/fs/selinux/load ]; then
    say "FAIL: no SELinux in this kernel (lsm= on the command line?)"
    exit 1
fi
cat "$POLICY" >/sys/fs/selinux/load || { say "FAIL: cannot load the policy"; exit 1; }
echo 1 >/sys/fs/selinux/enforce
say "enforce=$(cat /sys/fs/selinux/enforce)"
say "launcher-context=$(cat /proc/self/attr/current | tr -d '\0')"
ward policy show 2>&1 | grep "this host: SELinux" | sed 's/^ */LINUX-SELINUX show: /'

D="$SCRATCH/sel"
mkdir -p "$D"
mount -t tmpfs none "$D"
for f in a b c shared; do
    dd if=/dev/zero of="$D/$f.img" bs=1M count=1 2>/dev/null
done

# A probe VM that reads its disk (blk-info) and idles; its launcher's pid in $!.
start() {
    WARD_LOG=info ward run --name "$1" --kernel "$PROBE" --memory 64M --disk "$D/$1.img" \
        --console-log "$D/$1.log" \
        --cmdline "console=ttyS0 probe.run=blk-info:0,idle:0 probe.timeout_ms=600000" \
        </dev/null >"$D/$1.ward" 2>&1 &
}
wait_idle() {
    i=0
    while ! grep -q "PROBE idle:0 started" "$D/$1.log" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 120 ]; then
            say "timeout: VM $1 never idled"
            sed "s/^/[$1-ward] /" "$D/$1.ward"
            return 1
        fi
        sleep 1
    done
}
# ward's processes under launcher $2 (children, and their children in their pid
# namespaces), one line each: VM, name, context.
contexts() {
    for c in $(cat /proc/"$2"/task/*/children 2>/dev/null); do
        for p in "$c" $(cat /proc/"$c"/task/*/children 2>/dev/null); do
            say "proc vm=$1 comm=$(cat /proc/"$p"/comm) ctx=$(tr -d '\0' </proc/"$p"/attr/current)"
        done
    done
}

start a
wa=$!
start b
wb=$!
wait_idle a && wait_idle b || exit 1
grep "PROBE blk-info:0" "$D/a.log" "$D/b.log" | sed 's/^/LINUX-SELINUX /'
contexts a "$wa"
contexts b "$wb"
ward status a 2>&1 | sed 's/^/LINUX-SELINUX status: /'
# B's core, at work inside its pid namespace: a target for VM c's worker.
bcore=
for c in $(cat /proc/"$wb"/task/*/children); do
    if [ "$(cat /proc/"$c"/comm)" = ward-vmm ]; then
        bcore=$(cat /proc/"$c"/task/*/children | awk '{print $1}')
    fi
done
grep -h "relabelled" "$D/a.ward" "$D/b.ward" | sed 's/^.*relabelled/LINUX-SELINUX relabelled/'

# VM c: only SELinux confines it (no seccomp, no namespaces, no uid of its own: it runs as
# root), and its block worker, once started, tries to reach VM b.
cat >"$D/selinux-only.json" <<'JSON'
{
  "core": {"seccomp": {"level": "off"}, "namespaces": {"level": "off"}, "landlock": "off", "own_uid": "off"},
  "block": {"seccomp": {"level": "off"}, "namespaces": {"level": "off"}, "landlock": "off", "own_uid": "off"},
  "net": {"seccomp": {"level": "off"}, "namespaces": {"level": "off"}, "landlock": "off", "own_uid": "off"},
  "console": {"seccomp": {"level": "off"}, "namespaces": {"level": "off"}, "landlock": "off", "own_uid": "off"},
  "cgroup": {"level": "off"},
  "selinux": {"level": "required"}
}
JSON
sed 's/"selinux": {"level": "required"}/"selinux": {"level": "off"}/' "$D/selinux-only.json" >"$D/nothing.json"
hostile() {
    name=$1 policy=$2 spec=$3
    WARD_HOSTILE_TEST="block:$spec" timeout 120 ward run --name "$name" --kernel "$PROBE" --memory 64M \
        --policy "$D/$policy.json" --seccomp off --disk "$D/c.img" --console-log "$D/$name.log" \
        --cmdline "console=ttyS0 probe.run=idle:0" </dev/null >"$D/$name.ward" 2>&1
    rc=$?
    said=$(grep -o "hostile test: .*" "$D/$name.ward" | head -1)
    say "hostile $name policy=$policy spec=$spec exit=$rc said=${said:-nothing}"
    if [ "$rc" -ne 1 ] || ! grep -q "hostile test" "$D/$name.ward"; then
        sed "s/^/[$name-ward] /" "$D/$name.ward"
    fi
}
hostile c1 selinux-only "open:$D/b.img"
hostile c2 selinux-only "kill:$bcore"
hostile c3 selinux-only "open:$D/shared.img"
hostile c4 nothing "open:$D/b.img"
say "avc $(dmesg | grep 'avc:  denied' | grep -c 'ward_t')"
dmesg | grep 'avc:  denied' | grep ward_t | sed 's/^.*avc:/LINUX-SELINUX avc:/' | head -5

# The VMs end; b's image gets its label back, so c's worker (SELinux on) may now open it.
kill -TERM "$wa" "$wb"
wait "$wa"
say "a-exit=$?"
wait "$wb"
say "b-exit=$?"
hostile c5 selinux-only "open:$D/b.img"
say "done"
