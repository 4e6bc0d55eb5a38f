//! A copy of a virtio-mmio window's registers that the guest reads without leaving the guest.
//!
//! Every register a driver reads is a function of what the driver wrote (selectors, status,
//! queue setup) and of what the device offers, which does not change while the VM runs: the
//! features and the configuration space are cached when the worker connects, and
//! InterruptStatus says "used buffer" whenever the device is live (the worker's interrupts go
//! straight to KVM, so the core has nothing better to say). So the core keeps one page holding
//! the value of every register, and KVM maps it over the window read-only (a `KVM_MEM_READONLY`
//! slot): a read is an ordinary load from memory, with no exit. A write still exits (KVM posts
//! writes to a read-only slot as MMIO), and the core brings the page up to date before the
//! vCPU that wrote goes on, so a driver always reads back what it wrote.
//!
//! Two writes do not even reach the core: QueueNotify (an ioeventfd per queue, which the
//! worker reads) and InterruptACK, for which the core has nothing to do: an ioeventfd that
//! nobody reads takes it in the kernel.
//!
//! What that saves: under virtio-mmio every interrupt costs a Linux guest a read of
//! InterruptStatus and a write of InterruptACK, and QEMU (like ward without this page) handles
//! both in user space, two full round trips through the VMM per interrupt.
//!
//! Where KVM cannot map read-only memory (no `KVM_CAP_READONLY_MEM`), or refuses the slot,
//! nothing is mapped and every access exits as before; where it cannot match a write of any
//! length (no `KVM_CAP_IOEVENTFD_NO_LENGTH`), InterruptACK exits (and does nothing).
//!
//! While the device starts (DRIVER_OK), the page says "used buffer" before the core starts the
//! worker's queues: the worker may signal as soon as its first queue runs, and a vCPU other
//! than the one starting the device must not find InterruptStatus still 0 then.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, VolatileMemory};

/// The size of one window, and of its page.
pub const PAGE_SIZE: usize = crate::layout::VIRTIO_MMIO_SIZE as usize;

/// One window's register page: the core writes it, the guest reads it.
#[derive(Clone)]
pub struct RegisterPage {
    map: Arc<MmapRegion<()>>,
}

impl RegisterPage {
    /// A page of zeros.
    pub fn new() -> Result<Self, vm_memory::mmap::MmapRegionError> {
        Ok(RegisterPage {
            map: Arc::new(MmapRegion::new(PAGE_SIZE)?),
        })
    }

    /// The mapping, for KVM's memory slot.
    pub fn region(&self) -> &Arc<MmapRegion<()>> {
        &self.map
    }

    /// Sets the 32-bit register at `offset` (4-byte aligned, below [`PAGE_SIZE`]) with one
    /// aligned store, so a guest never reads half of an old value and half of a new one.
    pub fn store(&self, offset: usize, value: u32) {
        // A register offset within the page, aligned: the store cannot fail.
        let _ = self
            .map
            .as_volatile_slice()
            .store(value.to_le(), offset, Ordering::Release);
    }

    /// Copies `bytes` to `offset` (the configuration space: set once, before the guest runs);
    /// whatever would fall beyond the page is left out.
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        let n = bytes.len().min(PAGE_SIZE.saturating_sub(offset));
        if let Ok(s) = self.map.get_slice(offset, n) {
            s.copy_from(&bytes[..n]);
        }
    }

    /// The 32-bit value at `offset`, as the guest reads it.
    pub fn load(&self, offset: usize) -> u32 {
        self.map
            .as_volatile_slice()
            .load::<u32>(offset, Ordering::Acquire)
            .map_or(0, u32::from_le)
    }

    /// The byte at `offset`, as the guest reads it.
    pub fn byte(&self, offset: usize) -> u8 {
        self.map.as_volatile_slice().read_obj(offset).unwrap_or(0)
    }
}
