#!/usr/bin/env bash
# Prepare the Linux test guest assets for ward into <repo>/target/guest/linux/:
#   vmlinuz            Debian cloud kernel (bzImage)
#   kver               its version string (uname -r)
#   modules/           its extracted lib/modules/<kver> tree, plus a generated modules.dep
#   busybox            static busybox
#   initramfs.cpio.gz  the guest initramfs (busybox, virtio modules, /init = guest-init.sh)
#   guest-modules      modules in the initramfs, load order (paths relative to modules/)
#   outer-modules      modules the nested outer machine loads (tests/nested/run-nested.sh)
#
# The kernel and busybox are fetched with `apt-get download` (never installed) and
# cached in <repo>/target/guest/debs/. A second run with everything in place does
# nothing. Options:
#   --force    rebuild the outputs (still uses cached .debs when they match)
#   --refresh  also re-resolve the kernel package (apt-get update) and re-download
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/target/guest/linux"
debs="$repo/target/guest/debs"

# Modules the Linux guest needs (virtio over mmio, found through ACPI).
# REQUIRED ones must be a module or built in; the others are loaded when present.
GUEST_REQUIRED=(virtio virtio_ring virtio_mmio virtio_blk)
GUEST_OPTIONAL=(virtio_net virtio_console)
# Modules for the nested outer machine: KVM (AMD-V/SVM as emulated by QEMU TCG),
# its virtio-mmio disks, and networking pieces for later tests.
OUTER_REQUIRED=(irqbypass kvm kvm_amd virtio virtio_ring virtio_mmio virtio_blk)
OUTER_OPTIONAL=(ccp tun veth bridge virtio_net)

die() { echo "prepare.sh: error: $*" >&2; exit 1; }
log() { echo "prepare.sh: $*" >&2; }

force=0
refresh=0
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    --refresh) force=1; refresh=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done

# ---- fast path: everything present and built by this very script --------------
stamp_value() { cat "${BASH_SOURCE[0]}" "$here/guest-init.sh" | sha256sum | cut -d' ' -f1; }
up_to_date() {
    local f
    [[ $force == 0 && -f $out/.stamp ]] || return 1
    [[ $(<"$out/.stamp") == "$(stamp_value)" ]] || return 1
    for f in vmlinuz kver busybox initramfs.cpio.gz guest-modules outer-modules modules/modules.dep; do
        [[ -e $out/$f ]] || return 1
    done
    log "up to date: $out (kernel $(<"$out/kver"))"
}
up_to_date && exit 0

# One builder at a time; whoever waited finds the work done.
mkdir -p "$debs" "$out"
if command -v flock >/dev/null; then
    exec 9>"$out/.lock"
    flock 9
    up_to_date && exit 0
fi

for tool in apt-get apt-cache dpkg-deb gzip sha256sum find grep; do
    command -v "$tool" >/dev/null || die "'$tool' is needed (this script expects a Debian/Ubuntu host)"
done

# ---- apt helpers ----------------------------------------------------------------
apt_updated=0
apt_update_once() {
    [[ $apt_updated == 1 ]] && return 0
    apt_updated=1
    log "running apt-get update"
    apt-get update -qq >&2 || log "warning: apt-get update failed"
}

# Name of the concrete kernel package behind the linux-image-cloud-amd64 metapackage.
resolve_kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | sort -V | tail -n1
}

# newest cached .deb for a package name (glob), or nothing
cached_deb() {
    local pkg=$1 f best=
    for f in "$debs/${pkg}"_*.deb; do
        [[ -e $f ]] && best=$f
    done
    [[ -n $best ]] && printf '%s\n' "$best"
    return 0
}

# fetch PKG -> prints the path of its .deb in $debs
fetch() {
    local pkg=$1 deb
    deb=$(cached_deb "$pkg")
    if [[ -n $deb && $refresh == 0 ]]; then
        printf '%s\n' "$deb"
        return 0
    fi
    log "downloading $pkg"
    if ! (cd "$debs" && apt-get download -o APT::Sandbox::User=root -q "$pkg" >&2); then
        apt_update_once
        (cd "$debs" && apt-get download -o APT::Sandbox::User=root -q "$pkg" >&2) \
            || die "cannot download Debian package '$pkg' (no access to the Debian archive?)"
    fi
    deb=$(cached_deb "$pkg")
    [[ -n $deb ]] || die "apt-get download $pkg left no .deb in $debs"
    printf '%s\n' "$deb"
}

# ---- kernel + busybox ---------------------------------------------------------
[[ $refresh == 1 ]] && apt_update_once
kpkg=$(resolve_kernel_pkg || true)
if [[ -z $kpkg ]]; then
    # No package lists? Use a cached kernel .deb if we have one, else update and retry.
    cached=$(cached_deb 'linux-image-*-cloud-amd64')
    if [[ -n $cached && $refresh == 0 ]]; then
        kpkg=$(basename "$cached"); kpkg=${kpkg%%_*}
        log "apt-cache cannot resolve linux-image-cloud-amd64; using cached $kpkg"
    else
        apt_update_once
        kpkg=$(resolve_kernel_pkg || true)
        [[ -n $kpkg ]] || die "cannot resolve the kernel package of linux-image-cloud-amd64 (apt-cache depends found nothing; is the Debian archive reachable?)"
    fi
fi
log "kernel package: $kpkg"
kdeb=$(fetch "$kpkg")
bdeb=$(fetch busybox-static)

work="$out/.work"
rm -rf "$work"
mkdir -p "$work/kernel" "$work/busybox"
trap 'rm -rf "$work"' EXIT
log "extracting $(basename "$kdeb")"
dpkg-deb -x "$kdeb" "$work/kernel"
dpkg-deb -x "$bdeb" "$work/busybox"

kdir=("$work"/kernel/lib/modules/*/)
[[ ${#kdir[@]} == 1 && -d ${kdir[0]} ]] || die "unexpected layout in $kdeb: need exactly one lib/modules/<kver>/"
kver=$(basename "${kdir[0]}")
[[ -f $work/kernel/boot/vmlinuz-$kver ]] || die "no boot/vmlinuz-$kver in $kdeb"
[[ -x $work/busybox/bin/busybox ]] || die "no bin/busybox in $bdeb"
bb="$work/busybox/bin/busybox"
"$bb" true || die "the extracted busybox does not run on this host"

rm -rf "$out/modules"
mv "${kdir[0]}" "$out/modules"
moddir="$out/modules"

# ---- module dependency data (no depmod on the host: read .modinfo directly) ---
declare -A KO=() DEPS=()   # normalized name -> relative path / direct deps (space separated)
norm() { local s=$1; s=${s%.ko}; s=${s##*/}; printf '%s' "${s//-/_}"; }
while IFS= read -r line; do
    file=${line%%:depends=*}
    deps=${line#*:depends=}
    rel=${file#"$moddir"/}
    n=$(norm "$rel")
    KO[$n]=$rel
    deps=${deps//,/ }
    DEPS[$n]=${deps//-/_}
done < <(find "$moddir" -name '*.ko' -print0 | LC_ALL=C xargs -0 grep -a -o -P '(?<=\x00)depends=[\w,-]*' /dev/null)
(( ${#KO[@]} > 0 )) || die "found no modules (or no depends= info) under $moddir"
declare -A BUILTIN=()
if [[ -f $moddir/modules.builtin ]]; then
    while IFS= read -r rel; do BUILTIN[$(norm "$rel")]=1; done <"$moddir/modules.builtin"
fi

# CLOSURE[name] = the module's dependency closure, load order, itself last
declare -A CLOSURE=()
closure() {
    local n=$1 d r seen=" " list=""
    [[ -n ${CLOSURE[$n]+x} ]] && return 0
    CLOSURE[$n]=""   # guard against cycles
    for d in ${DEPS[$n]}; do
        [[ -n ${KO[$d]+x} ]] || continue
        closure "$d"
        for r in ${CLOSURE[$d]}; do
            [[ $seen == *" $r "* ]] || { seen+="$r "; list+="$r "; }
        done
    done
    CLOSURE[$n]="$list$n"
}

# modules.dep in depmod's format (dependencies listed in reverse load order),
# so busybox modprobe works from this tree too.
for n in "${!KO[@]}"; do
    closure "$n"
    read -r -a cl <<<"${CLOSURE[$n]}"
    line="${KO[$n]}:"
    for (( i=${#cl[@]}-2; i>=0; i-- )); do line+=" ${KO[${cl[i]}]}"; done
    printf '%s\n' "$line"
done >"$work/modules.dep"
LC_ALL=C sort "$work/modules.dep" >"$moddir/modules.dep"

# resolve_list LISTFILE required... -- optional...
# Writes the load-ordered relative paths of the modules and their dependencies.
resolve_list() {
    local listfile=$1; shift
    local required=1 n r seen=" " order=()
    for n in "$@"; do
        if [[ $n == -- ]]; then required=0; continue; fi
        n=${n//-/_}
        if [[ -z ${KO[$n]+x} ]]; then
            if [[ -n ${BUILTIN[$n]+x} ]]; then
                log "  $n: built into the kernel"
            elif [[ $required == 1 ]]; then
                die "kernel $kver has no module '$n' (neither loadable nor built in)"
            else
                log "  WARNING: kernel $kver has no module '$n' (optional; skipped)"
            fi
            continue
        fi
        closure "$n"
        for r in ${CLOSURE[$n]}; do
            [[ $seen == *" $r "* ]] || { seen+="$r "; order+=("${KO[$r]}"); }
        done
    done
    printf '%s\n' "${order[@]}" >"$listfile"
}
names_of() { local r s=""; while IFS= read -r r; do s+="$(norm "$r") "; done <"$1"; printf '%s' "$s"; }
log "guest modules:"
resolve_list "$work/guest-modules" "${GUEST_REQUIRED[@]}" -- "${GUEST_OPTIONAL[@]}"
log "  load order: $(names_of "$work/guest-modules")"
log "outer modules:"
resolve_list "$work/outer-modules" "${OUTER_REQUIRED[@]}" -- "${OUTER_OPTIONAL[@]}"
log "  load order: $(names_of "$work/outer-modules")"

# ---- guest initramfs ----------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,"lib/modules/$kver"}
cp "$bb" "$root/bin/busybox"
while IFS= read -r applet; do
    case $applet in
    */*) [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet" ;;
    esac
done < <("$bb" --list-full)
while IFS= read -r rel; do
    mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
    cp "$moddir/$rel" "$root/lib/modules/$kver/$rel"
done <"$work/guest-modules"
cp "$work/guest-modules" "$root/etc/ward-modules"
install -m 0755 "$here/guest-init.sh" "$root/init"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) \
    | gzip -9 >"$work/initramfs.cpio.gz"

# ---- publish ------------------------------------------------------------------
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$bb" "$out/busybox"
printf '%s\n' "$kver" >"$out/kver"
mv "$work/guest-modules" "$work/outer-modules" "$work/initramfs.cpio.gz" "$out/"
stamp_value >"$out/.stamp"
log "done: $out (kernel $kver, initramfs $(du -h "$out/initramfs.cpio.gz" | cut -f1))"
