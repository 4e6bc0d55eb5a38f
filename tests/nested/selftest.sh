#!/usr/bin/env bash
# Self-test of the nested machine harness (tests/nested/run-nested.sh):
#   - /dev/kvm exists inside, and kvm-smoke (tests/nested/kvm-smoke.c) creates a
#     VM through it and runs real-mode guest code (static build via --bin, and a
#     dynamically linked build via --bin, which exercises the ldd library copying)
#   - --file: the Linux guest's vmlinuz + initramfs arrive intact
#   - --disk: two disks appear as /dev/vda, /dev/vdb in order; the workload writes
#     to /dev/vda and the host finds the data in the image afterwards
#   - --env and the exit status of the workload; pivot_root works inside
# Prints "selftest: N passed, M failed"; exit status 0 only when all passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/target/nested/selftest"
mkdir -p "$out"

command -v gcc >/dev/null || { echo "selftest: error: gcc is needed" >&2; exit 1; }
"$repo/tests/guest/prepare.sh"
guest="$repo/target/guest/linux"

gcc -O2 -Wall -Wextra -static -o "$out/kvm-smoke" "$here/kvm-smoke.c"
gcc -O2 -Wall -Wextra -o "$out/kvm-smoke-dyn" "$here/kvm-smoke.c"

# Disks: vda zeroed, vdb with a marker, to check the order.
rm -f "$out/vda.img" "$out/vdb.img"
truncate -s 16M "$out/vda.img"
truncate -s 16M "$out/vdb.img"
printf 'WARD-DISK-B' | dd of="$out/vdb.img" conv=notrunc status=none
token="token-$$-$RANDOM"

cat >"$out/workload.sh" <<'EOF'
echo "workload: PATH=$PATH TOKEN=$TOKEN"
fails=0
check() { if "$@"; then echo "workload: ok: $*"; else echo "workload: FAILED: $*"; fails=$((fails + 1)); fi; }
check test -c /dev/kvm
check kvm-smoke
check kvm-smoke-dyn
check test "$(sha256sum /ward/guest/vmlinuz | cut -d' ' -f1)" = "$VMLINUZ_SHA"
check test "$(sha256sum /ward/guest/initramfs.cpio.gz | cut -d' ' -f1)" = "$INITRAMFS_SHA"
check test -b /dev/vda
# sandboxes need pivot_root, which the initramfs rootfs refuses
check unshare -m sh -c 'mkdir -p /tmp/nr && mount -t tmpfs t /tmp/nr && mkdir /tmp/nr/old && cd /tmp/nr && pivot_root . old'
check test "$(head -c 11 /dev/vdb)" = WARD-DISK-B
printf 'NESTED-DISK %s\n' "$TOKEN" | dd of=/dev/vda bs=512 conv=sync status=none
sync
exit $((fails == 0 ? 42 : 1))
EOF

log="$out/serial.log"
set +e
"$here/run-nested.sh" \
    --bin "$out/kvm-smoke" --bin "$out/kvm-smoke-dyn" \
    --file "$guest/vmlinuz:/ward/guest/" --file "$guest/initramfs.cpio.gz:/ward/guest/" \
    --disk "$out/vda.img" --disk "$out/vdb.img" \
    --env "TOKEN=$token" \
    --env "VMLINUZ_SHA=$(sha256sum "$guest/vmlinuz" | cut -d' ' -f1)" \
    --env "INITRAMFS_SHA=$(sha256sum "$guest/initramfs.cpio.gz" | cut -d' ' -f1)" \
    --script "$out/workload.sh" --timeout 300 --log "$log"
rc=$?
set -e

passed=0 failed=0
result() { if [[ $1 == ok ]]; then passed=$((passed + 1)); echo "selftest: ok: $2"; else failed=$((failed + 1)); echo "selftest: FAILED: $2"; fi; }
if [[ $rc == 42 ]]; then result ok "workload exit status 42 passed through"; else result fail "run-nested.sh exit status $rc, wanted 42"; fi
if grep -aq 'NESTED READY kvm=1' "$log"; then result ok "/dev/kvm inside"; else result fail "no 'NESTED READY kvm=1'"; fi
if [[ $(grep -ac 'KVM-SMOKE OK' "$log") == 2 ]]; then
    result ok "kvm-smoke (static and dynamic) ran a VM"
else
    result fail "kvm-smoke did not pass twice"
fi
if grep -aq 'workload: FAILED' "$log"; then
    result fail "workload checks (see above)"
else
    result ok "workload checks (--file, --env, disk order, pivot_root)"
fi
if [[ $(head -c 200 "$out/vda.img" | tr -d '\0' | head -n1) == "NESTED-DISK $token" ]]; then
    result ok "data written to /dev/vda is in vda.img"
else
    result fail "vda.img does not hold the workload's data"
fi
echo "selftest: $passed passed, $failed failed"
[[ $failed == 0 ]]
