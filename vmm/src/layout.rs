//! The guest-physical memory map of a ward VM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT for the boot vCPU
//! 0x0000_6000  PVH hvm_start_info, followed by its memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  boot page tables (PML4, PDPT, PD: identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  end of low RAM (EBDA and BIOS area above are not RAM)
//! 0x000e_0000  ACPI tables (RSDP first, so a legacy scan finds it too)
//! 0x0010_0000  kernel (1 MiB); initrd at the top of the RAM below the MMIO hole
//! 0xc000_0000  32-bit MMIO hole: virtio-mmio windows at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

pub const BOOT_GDT: u64 = 0x500;
pub const PVH_INFO: u64 = 0x6000;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const CMDLINE: u64 = 0x2_0000;
/// Longest command line we pass, NUL included.
pub const CMDLINE_MAX: usize = 4096;
pub const EBDA_START: u64 = 0x9_fc00;
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_MAX: u64 = 0x2_0000;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IRQ (IOAPIC pin) for virtio devices; 4 is the serial port.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;

/// ACPI hardware-reduced sleep control and status registers (FADT), in I/O space.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
pub const SLEEP_STATUS_PORT: u16 = 0x601;

pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;

/// Smallest and largest guest RAM ward accepts.
pub const MIN_MEMORY_MIB: u64 = 16;
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The virtio-mmio window and IRQ of the `index`th device.
pub fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    let irq = VIRTIO_IRQ_BASE.checked_add(u32::try_from(index).ok()?)?;
    if irq >= IOAPIC_PINS {
        return None;
    }
    Some((VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE, irq))
}

/// RAM ranges (guest address, length) for `mem_bytes` of RAM, split around the MMIO hole.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(virtio_slot(0), Some((0xd000_0000, 5)));
        assert_eq!(virtio_slot(18), Some((0xd001_2000, 23)));
        assert_eq!(virtio_slot(19), None);
    }
}
