//! Local APIC, I/O APIC and legacy 8259 PIC programming.
//!
//! Local APIC: IA32_APIC_BASE (MSR 0x1b) holds the MMIO base (bits 12+), the
//! global enable (bit 11) and the x2APIC mode bit (bit 10). In xAPIC mode the
//! registers are 32-bit MMIO at base + offset; in x2APIC mode the same register is
//! MSR 0x800 + offset/16 (ICR becomes one 64-bit MSR, 0x830). Registers used: ID
//! 0x20, TPR 0x80, EOI 0xb0, SVR 0xf0 (bit 8 = software enable, low byte =
//! spurious vector), ICR 0x300/0x310, LVT timer 0x320, timer initial count 0x380,
//! timer divide 0x3e0.
//!
//! I/O APIC: index register IOREGSEL at base, data window IOWIN at base + 0x10.
//! Register 1 = version (bits 16-23: max redirection entry). Redirection entry for
//! pin n: registers 0x10 + 2n (low: vector, delivery mode, dest mode, polarity
//! bit 13, trigger bit 15, mask bit 16) and 0x11 + 2n (high: destination APIC id
//! in bits 24-31).

use crate::cpu::{mmio_read32, mmio_write32, outb, rdmsr, wrmsr};

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

pub const REG_ID: u32 = 0x20;
pub const REG_TPR: u32 = 0x80;
pub const REG_EOI: u32 = 0xb0;
pub const REG_SVR: u32 = 0xf0;
pub const REG_ICR_LO: u32 = 0x300;
pub const REG_ICR_HI: u32 = 0x310;
pub const REG_LVT_TIMER: u32 = 0x320;
pub const REG_TIMER_INIT: u32 = 0x380;
pub const REG_TIMER_DIV: u32 = 0x3e0;

pub const ICR_INIT: u32 = 0x0000_4500; // delivery mode INIT, level assert
pub const ICR_STARTUP: u32 = 0x0000_4600; // delivery mode start-up, vector in bits 0-7
const ICR_PENDING: u32 = 1 << 12;

#[derive(Clone, Copy)]
pub struct Lapic {
    x2apic: bool,
    base: u64,
}

impl Lapic {
    /// Finds this CPU's local APIC and makes sure it is globally enabled.
    pub fn current() -> Self {
        // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU with an APIC.
        let mut msr = unsafe { rdmsr(IA32_APIC_BASE) };
        if msr & APIC_BASE_ENABLE == 0 {
            msr |= APIC_BASE_ENABLE;
            // SAFETY: setting the global enable bit only turns the APIC on.
            unsafe { wrmsr(IA32_APIC_BASE, msr) };
        }
        Self {
            x2apic: msr & APIC_BASE_X2APIC != 0,
            base: msr & 0xf_ffff_f000,
        }
    }

    pub fn read(&self, reg: u32) -> u32 {
        if self.x2apic {
            // SAFETY: x2APIC mode is on, so MSRs 0x800-0x8ff are the APIC registers.
            unsafe { rdmsr(0x800 + (reg >> 4)) as u32 }
        } else {
            mmio_read32(self.base + u64::from(reg))
        }
    }

    pub fn write(&self, reg: u32, v: u32) {
        if self.x2apic {
            // SAFETY: as in `read`.
            unsafe { wrmsr(0x800 + (reg >> 4), u64::from(v)) }
        } else {
            mmio_write32(self.base + u64::from(reg), v);
        }
    }

    pub fn id(&self) -> u32 {
        let id = self.read(REG_ID);
        if self.x2apic {
            id
        } else {
            id >> 24
        }
    }

    /// Software-enables the APIC with the given spurious vector, accepting all
    /// priorities.
    pub fn enable(&self, spurious: u8) {
        self.write(REG_TPR, 0);
        self.write(REG_SVR, 0x100 | u32::from(spurious));
    }

    pub fn eoi(&self) {
        self.write(REG_EOI, 0);
    }

    /// Sends an IPI (`low` = ICR low dword) to the APIC id `dest` and waits for the
    /// delivery status to clear (xAPIC only; x2APIC has no pending bit).
    pub fn send_ipi(&self, dest: u32, low: u32) {
        if self.x2apic {
            // SAFETY: x2APIC ICR is MSR 0x830: destination in bits 32-63.
            unsafe { wrmsr(0x830, (u64::from(dest) << 32) | u64::from(low)) }
            return;
        }
        self.write(REG_ICR_HI, dest << 24);
        self.write(REG_ICR_LO, low);
        for _ in 0..1_000_000 {
            if self.read(REG_ICR_LO) & ICR_PENDING == 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }

    /// Periodic timer interrupts on `vector` every `count` bus clocks / 16.
    pub fn timer_periodic(&self, vector: u8, count: u32) {
        self.write(REG_TIMER_DIV, 0x3); // divide by 16
        self.write(REG_LVT_TIMER, (1 << 17) | u32::from(vector)); // periodic
        self.write(REG_TIMER_INIT, count);
    }

    pub fn timer_stop(&self) {
        self.write(REG_LVT_TIMER, 1 << 16); // masked
        self.write(REG_TIMER_INIT, 0);
    }
}

pub struct IoApic {
    base: u64,
}

impl IoApic {
    pub fn new(base: u64) -> Self {
        Self { base }
    }

    fn read(&self, reg: u32) -> u32 {
        mmio_write32(self.base, reg);
        mmio_read32(self.base + 0x10)
    }

    fn write(&self, reg: u32, v: u32) {
        mmio_write32(self.base, reg);
        mmio_write32(self.base + 0x10, v);
    }

    /// Number of redirection entries (pins).
    pub fn pins(&self) -> u32 {
        ((self.read(1) >> 16) & 0xff) + 1
    }

    /// Routes `pin` to `vector` on APIC `dest`: fixed delivery, physical
    /// destination, active high, edge triggered, unmasked.
    pub fn route_edge(&self, pin: u32, vector: u8, dest: u32) {
        self.write(0x10 + 2 * pin, 1 << 16); // mask while changing
        self.write(0x11 + 2 * pin, dest << 24);
        self.write(0x10 + 2 * pin, u32::from(vector));
    }

    pub fn mask(&self, pin: u32) {
        self.write(0x10 + 2 * pin, 1 << 16);
    }
}

/// Masks every line of both legacy 8259 PICs (ports 0x21 and 0xa1 are the
/// interrupt mask registers), so only the IOAPIC delivers interrupts.
pub fn mask_pic() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}
