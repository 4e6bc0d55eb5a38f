#!/usr/bin/env bash
# Debian's iperf3 for the Linux network benchmark, in a bundle that runs anywhere without being
# installed: the binary and every shared library it needs, all from Debian's packages
# (`apt-get download` + `dpkg-deb -x`, never installed), and its own dynamic loader, which it is
# started through (`--library-path`), so the same files run on the host, in the nested machine
# and in the guest.
#
#   bench/iperf3.sh    builds (once) into target/bench/iperf3/:
#     opt/iperf3/bin/iperf3      a shell wrapper: the loader, the library path, the binary
#     opt/iperf3/lib/            iperf3.bin, libiperf, libsctp, libssl, libcrypto, libc, libm,
#                                the loader
#     iperf3.cpio.gz             the same tree (opt/iperf3/...) as a cpio archive, which the
#                                benchmark appends to the test guest's initramfs (the kernel
#                                unpacks concatenated archives one over the other)
#   Prints the bundle's directory.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/target/bench/iperf3"
debs="$repo/target/bench/debs"
PKGS=(iperf3 libiperf0 libsctp1 libssl3 libc6)

die() { echo "iperf3.sh: error: $*" >&2; exit 1; }
log() { echo "iperf3.sh: $*" >&2; }

stamp=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [[ -f $out/.stamp && $(<"$out/.stamp") == "$stamp" && -f $out/iperf3.cpio.gz ]]; then
    echo "$out"
    exit 0
fi
for tool in apt-get dpkg-deb cpio gzip; do
    command -v "$tool" >/dev/null || die "'$tool' is needed"
done

mkdir -p "$debs"
fetch() { # package: prints its .deb
    local f
    for f in "$debs/$1"_*.deb; do
        [[ -e $f ]] && { echo "$f"; return 0; }
    done
    log "downloading $1"
    if ! (cd "$debs" && apt-get download -o APT::Sandbox::User=root -q "$1" >&2); then
        apt-get update -qq >&2 || true
        (cd "$debs" && apt-get download -o APT::Sandbox::User=root -q "$1" >&2) ||
            die "cannot download Debian package '$1'"
    fi
    for f in "$debs/$1"_*.deb; do
        [[ -e $f ]] && { echo "$f"; return 0; }
    done
    die "apt-get download $1 left no .deb in $debs"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for p in "${PKGS[@]}"; do
    dpkg-deb -x "$(fetch "$p")" "$work/x"
done

rm -rf "$out"
lib="$out/opt/iperf3/lib"
mkdir -p "$lib" "$out/opt/iperf3/bin"
cp -L "$work/x/usr/bin/iperf3" "$lib/iperf3.bin"
for so in libiperf.so.0 libsctp.so.1 libssl.so.3 libcrypto.so.3 libc.so.6 libm.so.6 \
    ld-linux-x86-64.so.2; do
    f=$(find "$work/x" -name "$so" | head -n1)
    [[ -n $f ]] || die "no $so in ${PKGS[*]}"
    cp -L "$f" "$lib/$so"
done
cat >"$out/opt/iperf3/bin/iperf3" <<'EOF'
#!/bin/sh
# Debian's iperf3 through its own loader and libraries (bench/iperf3.sh).
d=/opt/iperf3/lib
[ -n "$IPERF3_ROOT" ] && d=$IPERF3_ROOT/opt/iperf3/lib
exec "$d/ld-linux-x86-64.so.2" --library-path "$d" "$d/iperf3.bin" "$@"
EOF
chmod 0755 "$out/opt/iperf3/bin/iperf3" "$lib"/*

# Every library the binary names must be in the bundle.
IPERF3_ROOT=$out "$out/opt/iperf3/bin/iperf3" --version >/dev/null ||
    die "the bundled iperf3 does not run"
(cd "$out" && find opt | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$work/i.cpio.gz"
mv "$work/i.cpio.gz" "$out/iperf3.cpio.gz"
echo "$stamp" >"$out/.stamp"
log "built $out ($(IPERF3_ROOT=$out "$out/opt/iperf3/bin/iperf3" --version | head -n1))"
echo "$out"
