#!/usr/bin/env bash
# Build the probe guest and copy it to <repo>/target/guest/probe.elf.
#
# Works from any cwd. Cargo makes repeated runs cheap when nothing changed, and the
# copy only happens when the ELF differs. Prints the path of the ELF on stdout.
#
# The probe is a no_std kernel built with the *host* target (x86_64-unknown-linux-gnu)
# and a linker script, because only the host toolchain is available (no
# x86_64-unknown-none, no build-std). The flags below make that work:
#   -sse,-sse2,+soft-float   keep our code off SSE/FP (rustc warns that these are
#                            ABI-relevant; accepted with a warning on rustc 1.95)
#   no-redzone               interrupt frames land on the interrupted stack
#   relocation-model=static  plain absolute addresses, no PIE, no GOT
#   -nostartfiles/-nostdlib/-static/-no-pie  no libc, no crt, fixed load address
# RUSTFLAGS from the caller are ignored on purpose: CARGO_ENCODED_RUSTFLAGS wins.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="x86_64-unknown-linux-gnu"
build_dir="$repo/target/probe-build"
out="$repo/target/guest/probe.elf"

flags=(
    -C target-feature=-sse,-sse2,+soft-float
    -C no-redzone=yes
    -C relocation-model=static
    -C panic=abort
    -C link-arg=-nostartfiles
    -C link-arg=-nostdlib
    -C link-arg=-static
    -C link-arg=-no-pie
    -C link-arg=-Wl,--build-id=none
    -C link-arg=-Wl,-z,noexecstack
)

unset RUSTFLAGS
CARGO_ENCODED_RUSTFLAGS="$(IFS=$'\x1f'; printf '%s' "${flags[*]}")"
export CARGO_ENCODED_RUSTFLAGS
export CARGO_TARGET_DIR="$build_dir"

cd "$here"
# rustc warns on every build (cargo even replays it on no-op builds) that the
# SSE/soft-float settings are ABI-relevant; that is intended here, so those lines
# are filtered. Everything else (and the full log on failure) is shown on stderr.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! cargo build --release --quiet --target "$target" \
    --manifest-path "$here/Cargo.toml" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
awk '/^warning: target feature `(sse2|soft-float)`/ { skip = 1; next }
     skip && /^$/ { skip = 0; next }
     skip || /generated [0-9]+ warnings?$/ { next }
     { print }' "$log" >&2

elf="$build_dir/$target/release/probe"
mkdir -p "$(dirname "$out")"
if ! cmp -s "$elf" "$out"; then
    cp "$elf" "$out.tmp"
    mv "$out.tmp" "$out"
fi
echo "$out"
