//! Minimal synchronisation for a single-core-mostly kernel.
//!
//! Everything runs with interrupts disabled on the boot CPU, except the short
//! `blk-irq` window and the application processors started by `smp`, which only
//! print. So global state lives in [`RacyCell`] (plain shared memory, the caller
//! promises there is no concurrent access), and the serial port is guarded by a
//! [`SpinLock`] built on `xchg` (an `AtomicBool::swap`), never on cmpxchg16b.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A static cell without any locking. Access is `unsafe` and needs the caller to
/// know that nobody else touches the value at the same time.
#[repr(transparent)]
pub struct RacyCell<T>(UnsafeCell<T>);

// SAFETY: the probe is effectively single-threaded; every user of a RacyCell
// documents why its access cannot race (boot CPU only, or written before the APs
// are started and read-only afterwards).
unsafe impl<T> Sync for RacyCell<T> {}

impl<T> RacyCell<T> {
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    /// Raw pointer to the contents.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// Test-and-set spin lock on a single byte (`xchg`).
pub struct SpinLock {
    locked: AtomicBool,
}

impl SpinLock {
    pub const fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
        }
    }

    /// Spins until the lock is free. After `max_spins` attempts the lock is taken
    /// anyway: a CPU that died while holding it (e.g. an exception in the middle of a
    /// line) must not silence the panic report.
    pub fn lock(&self, max_spins: u64) -> SpinGuard<'_> {
        let mut spins = 0u64;
        while self.locked.swap(true, Ordering::Acquire) {
            spins += 1;
            if spins >= max_spins {
                break;
            }
            core::hint::spin_loop();
        }
        SpinGuard { lock: self }
    }
}

pub struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
