//! Just enough ACPI to count CPUs and find the IOAPIC.
//!
//! Path: RSDP (from start_info.rsdp_paddr; if that is 0, the legacy scan of the
//! BIOS area 0xE0000..0xFFFFF) -> XSDT (RSDP revision >= 2) or RSDT -> the table
//! with signature "APIC" (the MADT).
//!
//! RSDP: "RSD PTR " @0, revision u8 @15, RSDT address u32 @16, XSDT address u64
//! @24. SDT header: signature @0, length u32 @4; entries start at @36 (u64 each
//! in the XSDT, u32 in the RSDT). MADT: local APIC address u32 @36, flags @40,
//! interrupt controller structures from @44, each `type u8, length u8, ...`:
//!
//! * type 0 Processor Local APIC: uid u8 @2, APIC id u8 @3, flags u32 @4
//!   (bit 0 enabled)
//! * type 9 Processor Local x2APIC: x2APIC id u32 @4, flags u32 @8
//! * type 1 I/O APIC: id u8 @2, address u32 @4, GSI base u32 @8
//! * type 2 Interrupt Source Override: bus u8 @2, source IRQ u8 @3, GSI u32 @4,
//!   flags u16 @8

use crate::cpu::phys_mapped;

pub const MAX_CPUS: usize = 256;
const MAX_OVERRIDES: usize = 16;
pub const MAX_IOAPICS: usize = 4;
const MAX_TABLE_LEN: u64 = 1 << 20;

#[derive(Clone, Copy)]
pub struct IrqOverride {
    pub source: u8,
    pub gsi: u32,
    pub flags: u16,
}

pub struct AcpiInfo {
    pub rsdp: u64,
    /// "start_info", "scan" or "none".
    pub rsdp_source: &'static str,
    pub madt: u64,
    pub apic_ids: [u32; MAX_CPUS],
    pub cpus: usize,
    /// I/O APICs as (MMIO address, first GSI); QEMU microvm with ACPI has two.
    pub ioapics: [(u64, u32); MAX_IOAPICS],
    pub nioapics: usize,
    pub overrides: [IrqOverride; MAX_OVERRIDES],
    pub noverrides: usize,
}

fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: every caller checked `phys_mapped` for the whole structure; ACPI
    // tables live in guest RAM/ROM below 4 GiB, which is identity-mapped.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn sig_at(addr: u64, sig: &[u8]) -> bool {
    phys_mapped(addr, sig.len() as u64)
        && sig
            .iter()
            .enumerate()
            .all(|(i, &c)| rd::<u8>(addr + i as u64) == c)
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |acc, i| acc.wrapping_add(rd::<u8>(addr + i))) == 0
}

impl AcpiInfo {
    pub const fn empty() -> Self {
        Self {
            rsdp: 0,
            rsdp_source: "none",
            madt: 0,
            apic_ids: [0; MAX_CPUS],
            cpus: 0,
            ioapics: [(0, 0); MAX_IOAPICS],
            nioapics: 0,
            overrides: [IrqOverride {
                source: 0,
                gsi: 0,
                flags: 0,
            }; MAX_OVERRIDES],
            noverrides: 0,
        }
    }

    pub fn parse(rsdp_hint: u64) -> Self {
        let mut a = Self::empty();
        if rsdp_hint != 0 && sig_at(rsdp_hint, b"RSD PTR ") {
            a.rsdp = rsdp_hint;
            a.rsdp_source = "start_info";
        } else if let Some(p) = scan_bios_area() {
            a.rsdp = p;
            a.rsdp_source = "scan";
        } else {
            return a;
        }
        if let Some(madt) = find_table(a.rsdp, b"APIC") {
            a.madt = madt;
            a.parse_madt(madt);
        }
        a
    }

    fn parse_madt(&mut self, madt: u64) {
        let len = u64::from(rd::<u32>(madt + 4));
        let mut off = 44;
        while off + 2 <= len {
            let e = madt + off;
            let typ = rd::<u8>(e);
            let elen = u64::from(rd::<u8>(e + 1));
            if elen < 2 || off + elen > len {
                break;
            }
            match (typ, elen) {
                (0, 8..) if rd::<u32>(e + 4) & 1 != 0 => self.add_cpu(u32::from(rd::<u8>(e + 3))),
                (9, 16..) if rd::<u32>(e + 8) & 1 != 0 => self.add_cpu(rd::<u32>(e + 4)),
                (1, 12..) if self.nioapics < MAX_IOAPICS => {
                    self.ioapics[self.nioapics] = (u64::from(rd::<u32>(e + 4)), rd::<u32>(e + 8));
                    self.nioapics += 1;
                }
                (2, 10..) if self.noverrides < MAX_OVERRIDES => {
                    self.overrides[self.noverrides] = IrqOverride {
                        source: rd::<u8>(e + 3),
                        gsi: rd::<u32>(e + 4),
                        flags: rd::<u16>(e + 8),
                    };
                    self.noverrides += 1;
                }
                _ => {}
            }
            off += elen;
        }
    }

    fn add_cpu(&mut self, id: u32) {
        if self.cpus < MAX_CPUS {
            self.apic_ids[self.cpus] = id;
        }
        self.cpus += 1;
    }

    /// Maps a legacy IRQ number to the GSI the IOAPIC sees (interrupt source
    /// overrides only exist for ISA IRQs 0-15).
    pub fn irq_to_gsi(&self, irq: u32) -> u32 {
        self.overrides[..self.noverrides]
            .iter()
            .find(|o| u32::from(o.source) == irq)
            .map_or(irq, |o| o.gsi)
    }
}

/// ACPI 1.0 §5.2.5.1: the RSDP sits on a 16-byte boundary in 0xE0000..0xFFFFF.
fn scan_bios_area() -> Option<u64> {
    (0xe_0000u64..0x10_0000)
        .step_by(16)
        .find(|&p| sig_at(p, b"RSD PTR ") && checksum_ok(p, 20))
}

fn find_table(rsdp: u64, sig: &[u8; 4]) -> Option<u64> {
    if !phys_mapped(rsdp, 36) {
        return None;
    }
    let revision = rd::<u8>(rsdp + 15);
    let xsdt = if revision >= 2 {
        rd::<u64>(rsdp + 24)
    } else {
        0
    };
    let (root, entry_size) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (u64::from(rd::<u32>(rsdp + 16)), 4)
    };
    if root == 0 || !phys_mapped(root, 36) {
        return None;
    }
    let len = u64::from(rd::<u32>(root + 4)).min(MAX_TABLE_LEN);
    if len < 36 || !phys_mapped(root, len) {
        return None;
    }
    let n = (len - 36) / entry_size;
    (0..n)
        .map(|i| {
            let e = root + 36 + i * entry_size;
            if entry_size == 8 {
                rd::<u64>(e)
            } else {
                u64::from(rd::<u32>(e))
            }
        })
        .find(|&t| {
            t != 0
                && phys_mapped(t, 36)
                && sig_at(t, sig)
                && phys_mapped(t, u64::from(rd::<u32>(t + 4)).min(MAX_TABLE_LEN))
        })
}
