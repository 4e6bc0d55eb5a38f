//! The data buffer pool handed to devices (1 MiB, page aligned, in .bss).
//!
//! Devices read and write it behind the compiler's back, so code never keeps a
//! Rust reference into it across a request: it fills the buffer through a
//! short-lived slice, submits, waits for completion (volatile ring accesses plus
//! fences), and only then takes a fresh slice to inspect the result.

use crate::sync::RacyCell;

pub const POOL_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Pool([u8; POOL_SIZE]);

static POOL: RacyCell<Pool> = RacyCell::new(Pool([0; POOL_SIZE]));

/// Physical (= virtual) address of the pool.
pub fn base() -> u64 {
    POOL.get() as u64
}

/// A slice of the pool.
///
/// # Safety
/// No other slice of the same bytes may be alive, and no device request may be
/// using them while the slice exists.
pub unsafe fn slice(off: usize, len: usize) -> &'static mut [u8] {
    assert!(off <= POOL_SIZE && len <= POOL_SIZE - off);
    // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
    unsafe { core::slice::from_raw_parts_mut((POOL.get() as *mut u8).add(off), len) }
}
