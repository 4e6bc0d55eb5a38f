#!/usr/bin/env bash
# Regenerates the committed seed corpus with qemu-img and qemu-io (run by hand; the fuzz run
# only reads the seeds). Small images (512-byte clusters, 64 KiB disks) so that each is a few
# KiB and the fuzzer mutates metadata rather than padding:
#   plain       version 3, data and zero clusters
#   v2          compat=0.10 (version 2 header, no zero clusters)
#   backing     a backing file name and backing format extension (the fuzz resolver refuses it)
#   snapshot    an internal snapshot, then writes that copy shared clusters
#   compressed  `qemu-img convert -c`
#   clusters4k  4 KiB clusters and 8-bit refcounts (read-only for ward)
#   dirty       lazy refcounts, left dirty by a crash (qemu-io's abort): ward repairs it on a
#               writable open
# qcow2_header seeds are the same images' first 4 KiB behind the file length (8 bytes, little
# endian), the input format of that target.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
img_dir="$here/seeds/qcow2_image"
hdr_dir="$here/seeds/qcow2_header"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$img_dir" "$hdr_dir"
mkdir -p "$img_dir" "$hdr_dir"

create() { qemu-img create -q -f qcow2 -o "cluster_size=512,$1" "$2" 64K; }
io() { qemu-io -f qcow2 -c "$2" "$1" >/dev/null; }

create compat=1.1 "$tmp/plain"
io "$tmp/plain" 'write -P 0xab 0 3000'
io "$tmp/plain" 'write -z 4096 2048'
io "$tmp/plain" 'write -P 0x5a 40000 700'

create compat=0.10 "$tmp/v2"
io "$tmp/v2" 'write -P 0x11 1000 2000'
io "$tmp/v2" 'write -P 0x22 65000 536'

head -c 65536 /dev/zero >"$tmp/base.raw"
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw "$tmp/backing" 64K
io "$tmp/backing" 'write -P 0x33 512 1024'

create compat=1.1 "$tmp/snapshot"
io "$tmp/snapshot" 'write -P 0x44 0 4096'
qemu-img snapshot -c first "$tmp/snapshot"
io "$tmp/snapshot" 'write -P 0x55 1024 1024'
io "$tmp/snapshot" 'write -z 3072 512'

create compat=1.1 "$tmp/src"
io "$tmp/src" 'write -P 0x66 0 8192'
io "$tmp/src" 'write -P 0x77 30000 5000'
qemu-img convert -q -c -f qcow2 -O qcow2 -o cluster_size=512 "$tmp/src" "$tmp/compressed"

qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=8 "$tmp/clusters4k" 64K
io "$tmp/clusters4k" 'write -P 0x88 5000 10000'

create compat=1.1,lazy_refcounts=on "$tmp/dirty"
{ (ulimit -c 0; exec qemu-io -f qcow2 -c 'write -P 0x99 0 5000' -c abort "$tmp/dirty"); } \
    &>/dev/null || true
qemu-img info "$tmp/dirty" | grep -q 'cleanly shut down: no'

for name in plain v2 backing snapshot compressed clusters4k dirty; do
    [ "$name" = dirty ] || qemu-img check -q "$tmp/$name"
    cp "$tmp/$name" "$img_dir/$name.qcow2"
    len=$(stat -c %s "$tmp/$name")
    {
        for i in 0 1 2 3 4 5 6 7; do
            printf "\\x$(printf %02x $(((len >> (8 * i)) & 255)))"
        done
        head -c 4096 "$tmp/$name"
    } >"$hdr_dir/$name.bin"
done
du -sh "$here/seeds"
