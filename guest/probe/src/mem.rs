//! The C memory primitives that `core` and the compiler expect to exist.
//!
//! On the linux-gnu target compiler_builtins does not provide them (libc would), so
//! we do. They are written with string instructions in inline assembly so that the
//! optimiser cannot recognise a copy loop and turn it back into a call to memcpy.
//! The direction flag is clear everywhere (the entry code does `cld`); memmove sets
//! it only for its own backward copy and clears it again.

use core::arch::asm;

/// # Safety
/// `dst` and `src` must be valid for `n` bytes and must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; rep movsq + rep movsb
    // copy exactly `n` bytes forwards. Quadwords first: under PVM each iteration
    // of a string instruction is emulated, so fewer, wider iterations are faster.
    unsafe {
        asm!("rep movsq", "mov rcx, {tail}", "rep movsb",
            tail = in(reg) n % 8,
            inout("rcx") n / 8 => _, inout("rdi") dst => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// `dst` and `src` must be valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 {
        return dst;
    }
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst is below src, or the ranges are disjoint: a forward copy is safe.
        // SAFETY: as for memcpy; a forward copy never reads a byte it already wrote.
        unsafe {
            asm!("rep movsb",
                inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
                options(nostack, preserves_flags));
        }
    } else {
        // dst overlaps the tail of src: copy backwards with DF=1, then restore DF.
        // SAFETY: ranges valid per the caller; we start at the last byte of each.
        unsafe {
            asm!("std", "rep movsb", "cld",
                inout("rcx") n => _,
                inout("rdi") dst.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack));
        }
    }
    dst
}

/// # Safety
/// `dst` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    let fill = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees `dst..dst+n` is writable; quadwords first, as
    // in memcpy.
    unsafe {
        asm!("rep stosq", "mov rcx, {tail}", "rep stosb",
            tail = in(reg) n % 8,
            inout("rcx") n / 8 => _, inout("rdi") dst => _, in("rax") fill,
            options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let ne: u8;
    let a_end: *const u8;
    let b_end: *const u8;
    // SAFETY: both ranges are readable per the caller. `repe cmpsb` stops after the
    // first differing byte (or after n bytes); ZF tells which.
    unsafe {
        asm!("repe cmpsb", "setne {ne}",
            ne = out(reg_byte) ne,
            inout("rcx") n => _, inout("rsi") a => a_end, inout("rdi") b => b_end,
            options(nostack, readonly));
    }
    if ne == 0 {
        return 0;
    }
    // SAFETY: cmpsb advanced both pointers past the differing byte, which lies
    // inside the caller's ranges.
    unsafe { i32::from(*a_end.sub(1)) - i32::from(*b_end.sub(1)) }
}

/// # Safety
/// Same as [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { memcmp(a, b, n) }
}
