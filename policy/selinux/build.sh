#!/usr/bin/env bash
# Builds ward's SELinux policies into <repo>/target/selinux/:
#   ward.pp          the module for hosts with a reference-policy based policy (ward.te,
#                    ward.if, ward.fc), built against Debian's refpolicy headers
#                    (selinux-policy-dev, fetched with `apt-get download`, never installed)
#   ward-minimal.33  the standalone policy for machines with none (minimal/ward-minimal.conf):
#                    what the nested test machine loads
# Needs checkpolicy (checkmodule), m4 and gawk (scripts/setup-host.sh installs them).
# Prints the output directory.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/target/selinux"
dev="$out/dev"
die() { echo "policy/selinux/build.sh: error: $*" >&2; exit 1; }
for tool in checkpolicy checkmodule m4 gawk make apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || die "'$tool' is needed (run scripts/setup-host.sh)"
done
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

checkpolicy -M -U allow -c 33 -o "$out/ward-minimal.33" "$here/minimal/ward-minimal.conf" >&2

if [[ ! -f $dev/usr/share/selinux/devel/Makefile || ! -x $dev/usr/bin/semodule_package ]]; then
    rm -rf "$dev" "$out/debs"
    mkdir -p "$dev" "$out/debs"
    for pkg in selinux-policy-dev semodule-utils; do
        if ! (cd "$out/debs" && apt-get download -o APT::Sandbox::User=root -q "$pkg" >&2); then
            apt-get update -qq >&2 || true
            (cd "$out/debs" && apt-get download -o APT::Sandbox::User=root -q "$pkg" >&2) \
                || die "cannot download $pkg"
        fi
    done
    for d in "$out"/debs/*.deb; do dpkg-deb -x "$d" "$dev"; done
fi
build="$out/module"
rm -rf "$build"
mkdir -p "$build"
cp "$here"/ward.te "$here"/ward.if "$here"/ward.fc "$build/"
(cd "$build" && make -s -f "$dev/usr/share/selinux/devel/Makefile" \
    SHAREDIR="$dev/usr/share/selinux" NAME=default AWK=gawk \
    CHECKMODULE="$(command -v checkmodule)" SEMOD_PKG="$dev/usr/bin/semodule_package" \
    ward.pp >&2)
cp "$build/ward.pp" "$out/ward.pp"
echo "$out"
