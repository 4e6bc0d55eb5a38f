//! Split virtqueue (virtio 1.2 §2.7).
//!
//! Memory (all little endian, in a static, page-aligned [`QueueMem`]):
//!
//! * descriptor table at `driver + 0`: `size` entries of
//!   `{ addr: u64, len: u32, flags: u16, next: u16 }` (flags: NEXT=1, WRITE=2
//!   "device writes", INDIRECT=4 "addr points to a table of descriptors");
//! * available ring at `driver + 2048`: `{ flags: u16, idx: u16, ring: [u16; size],
//!   used_event: u16 }` (written by us);
//! * used ring at `device + 0`: `{ flags: u16, idx: u16, ring: [{ id: u32, len: u32 };
//!   size], avail_event: u16 }` (written by the device).
//!
//! Ordering: descriptors and the ring slot must be visible before the new
//! `avail.idx`, and `avail.idx` before the notify write; used entries may only be
//! read after observing `used.idx`. x86 is TSO, but the compiler is not, so all
//! ring accesses are volatile and separated by fences.
//!
//! With VIRTIO_RING_F_EVENT_IDX, `used_event` tells the device after which used
//! index we want an interrupt; we keep it equal to the next entry we expect, i.e.
//! "interrupt on every completion". Notifications are always sent, which the spec
//! allows even when `avail_event` says they are not needed.
//!
//! Descriptors are handed out from a free list. For every published head we
//! remember which descriptors belong to the request (not by following `next`:
//! the malformed-request scenarios build cycles), and return them when the head
//! comes back in the used ring.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

pub const QSZ_MAX: usize = 128;
/// Most descriptors one request may use (header + 16 data segments + status + spare).
pub const MAX_CHAIN: usize = 24;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

const AVAIL_OFF: usize = QSZ_MAX * 16;

#[repr(C, align(4096))]
pub struct QueueMem {
    driver: [u8; 4096],
    device: [u8; 4096],
}

impl QueueMem {
    pub const fn new() -> Self {
        Self {
            driver: [0; 4096],
            device: [0; 4096],
        }
    }
}

#[derive(Clone, Copy)]
struct Chain {
    len: u8,
    descs: [u16; MAX_CHAIN],
}

/// One used-ring element as the device wrote it.
#[derive(Clone, Copy)]
pub struct Used {
    pub id: u32,
    pub len: u32,
    /// Whether `id` named a request we had in flight.
    pub known: bool,
}

pub struct Queue {
    mem: *mut QueueMem,
    size: u16,
    event_idx: bool,
    next_avail: u16,
    last_used: u16,
    free: [u16; QSZ_MAX],
    nfree: usize,
    chains: [Chain; QSZ_MAX],
}

impl Queue {
    /// Takes over `mem` (zeroing it) for a queue of `size` entries.
    ///
    /// # Safety
    /// `mem` must point to a `QueueMem` used by nothing but this queue (and the
    /// device) for as long as the queue lives; `size` must be 1..=QSZ_MAX.
    pub unsafe fn new(mem: *mut QueueMem, size: u16, event_idx: bool) -> Self {
        // SAFETY: exclusive per the caller's contract.
        unsafe { core::ptr::write_bytes(mem, 0, 1) };
        let mut q = Self {
            mem,
            size,
            event_idx,
            next_avail: 0,
            last_used: 0,
            free: [0; QSZ_MAX],
            nfree: 0,
            chains: [Chain {
                len: 0,
                descs: [0; MAX_CHAIN],
            }; QSZ_MAX],
        };
        for i in (0..size).rev() {
            q.free[q.nfree] = i;
            q.nfree += 1;
        }
        q
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn desc_paddr(&self) -> u64 {
        self.mem as u64
    }

    pub fn avail_paddr(&self) -> u64 {
        self.mem as u64 + AVAIL_OFF as u64
    }

    pub fn used_paddr(&self) -> u64 {
        self.mem as u64 + 4096
    }

    fn drv(&self, off: usize) -> *mut u8 {
        // SAFETY: callers stay within the 4 KiB driver page (offsets derive from
        // size <= QSZ_MAX).
        unsafe { (*self.mem).driver.as_mut_ptr().add(off) }
    }

    fn dev(&self, off: usize) -> *mut u8 {
        // SAFETY: as above for the device page.
        unsafe { (*self.mem).device.as_mut_ptr().add(off) }
    }

    pub fn free_descs(&self) -> usize {
        self.nfree
    }

    pub fn alloc(&mut self) -> Option<u16> {
        if self.nfree == 0 {
            return None;
        }
        self.nfree -= 1;
        Some(self.free[self.nfree])
    }

    fn release(&mut self, d: u16) {
        if self.nfree < QSZ_MAX {
            self.free[self.nfree] = d;
            self.nfree += 1;
        }
    }

    /// Fills descriptor `i`.
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let p = self.drv(usize::from(i % self.size) * 16);
        // SAFETY: p..p+16 lies in the descriptor table; volatile because the device
        // reads it concurrently once published.
        unsafe {
            write_volatile(p as *mut u64, addr);
            write_volatile(p.add(8) as *mut u32, len);
            write_volatile(p.add(12) as *mut u16, flags);
            write_volatile(p.add(14) as *mut u16, next);
        }
    }

    /// Records `descs` (which must contain `head`) as one request and makes `head`
    /// available to the device. Does not notify.
    pub fn publish(&mut self, head: u16, descs: &[u16]) {
        let c = &mut self.chains[usize::from(head)];
        c.len = descs.len().min(MAX_CHAIN) as u8;
        c.descs[..usize::from(c.len)].copy_from_slice(&descs[..usize::from(c.len)]);
        self.push_avail(head);
    }

    /// Puts any value into the next available ring slot (the malformed-request
    /// scenarios use out-of-range indices).
    pub fn push_avail(&mut self, entry: u16) {
        let slot = usize::from(self.next_avail % self.size);
        // SAFETY: the slot and idx lie in the available ring area of the driver page.
        unsafe {
            write_volatile(self.drv(AVAIL_OFF + 4 + 2 * slot) as *mut u16, entry);
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(self.drv(AVAIL_OFF + 2) as *mut u16, self.next_avail);
        }
        fence(Ordering::SeqCst);
    }

    /// Whether the device has used entries we have not consumed yet.
    pub fn has_used(&self) -> bool {
        // SAFETY: used.idx lies in the device page.
        let idx = unsafe { read_volatile(self.dev(2) as *const u16) };
        idx != self.last_used
    }

    /// Consumes the next used element, returning its descriptors to the free list.
    pub fn pop_used(&mut self) -> Option<Used> {
        if !self.has_used() {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used % self.size);
        // SAFETY: the element lies in the used ring of the device page.
        let (id, len) = unsafe {
            (
                read_volatile(self.dev(4 + 8 * slot) as *const u32),
                read_volatile(self.dev(8 + 8 * slot) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            let off = AVAIL_OFF + 4 + 2 * usize::from(self.size);
            // SAFETY: used_event follows the available ring in the driver page.
            unsafe { write_volatile(self.drv(off) as *mut u16, self.last_used) };
        }
        let known = id < u32::from(self.size) && self.chains[id as usize].len != 0;
        if known {
            let c = self.chains[id as usize];
            self.chains[id as usize].len = 0;
            for &d in &c.descs[..usize::from(c.len)] {
                self.release(d);
            }
        }
        Some(Used { id, len, known })
    }
}
