//! vCPUs: registers for each boot protocol, CPUID, MSRs, the local APIC's LINT pins, and the
//! run loop that hands port and MMIO exits to the [`Bus`].

use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use tracing::{error, info_span, warn};
use ward_ipc::core::ExitReason;

use crate::boot::Entry;
use crate::devices::Bus;
use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("Cannot get KVM's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("Cannot set CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("Cannot set MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("Cannot build the MSR list")]
    MsrList,
    #[error("Cannot set FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("Cannot get or set registers")]
    Regs(#[source] kvm_ioctls::Error),
    #[error("Cannot get or set the local APIC")]
    Lapic(#[source] kvm_ioctls::Error),
    #[error("Cannot write the boot GDT")]
    Gdt(#[source] crate::boot::Error),
}

// GDT entries (flat segments): code64, code32, data, TSS.
const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
const GDT_CODE32: u64 = 0x00cf_9b00_0000_ffff;
const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;
const GDT_TSS: u64 = 0x008f_8b00_0000_ffff;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

// MSRs a fresh vCPU gets (the rest stay at KVM's reset values).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

// Local APIC registers in kvm_lapic_state.regs, and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Builds the GDT entry `entry` at `index` into a KVM segment.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
}

impl Vcpu {
    pub fn new(kvm: &Kvm, vm: &VmFd, id: u8, vcpus: u8) -> Result<Self, Error> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::Create(id, e))?;
        let mut cpuid: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::SupportedCpuid)?;
        let tsc_khz = fd.get_tsc_khz().ok().filter(|&k| k != 0);
        crate::cpuid::patch(&mut cpuid, id, vcpus, tsc_khz);
        fd.set_cpuid2(&cpuid).map_err(Error::SetCpuid)?;
        let v = Vcpu { id, fd };
        v.set_msrs()?;
        v.set_lint()?;
        v.fd.set_fpu(&kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        })
        .map_err(Error::SetFpu)?;
        Ok(v)
    }

    fn set_msrs(&self) -> Result<(), Error> {
        let entries: Vec<kvm_msr_entry> = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
        ]
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::MsrList)?;
        let n = self.fd.set_msrs(&msrs).map_err(Error::SetMsrs)?;
        if n != entries.len() {
            // Not fatal: which MSRs a KVM accepts varies (PVM accepts fewer); the first refused
            // one is named so that a guest failing later can be traced back to it.
            let refused = entries.get(n).map(|e| e.index).unwrap_or(0);
            warn!(
                vcpu = self.id,
                set = n,
                refused = format_args!("{refused:#x}"),
                "KVM refused some boot MSRs"
            );
        }
        Ok(())
    }

    /// LINT0 as ExtINT (the PIC), LINT1 as NMI: what firmware leaves for the kernel.
    fn set_lint(&self) -> Result<(), Error> {
        let mut lapic = self.fd.get_lapic().map_err(Error::Lapic)?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = lapic.regs[reg..reg + 4]
                .iter()
                .map(|&b| b as u8)
                .collect::<Vec<u8>>()
                .try_into()
                .unwrap_or([0; 4]);
            let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd.set_lapic(&lapic).map_err(Error::Lapic)
    }

    /// Registers for the boot vCPU, per boot protocol.
    pub fn set_boot_regs(
        &self,
        mem: &vm_memory::GuestMemoryMmap,
        entry: Entry,
    ) -> Result<(), Error> {
        let mut sregs: kvm_sregs = self.fd.get_sregs().map_err(Error::Regs)?;
        let (gdt, code, rip, regs) = match entry {
            Entry::Linux64 { rip } => (
                [0, GDT_CODE64, GDT_DATA, GDT_TSS],
                GDT_CODE64,
                rip,
                kvm_regs {
                    rflags: 2,
                    rip,
                    rsp: layout::BOOT_STACK,
                    rbp: layout::BOOT_STACK,
                    rsi: layout::ZERO_PAGE,
                    ..Default::default()
                },
            ),
            Entry::Pvh { rip } => (
                [0, GDT_CODE32, GDT_DATA, GDT_TSS],
                GDT_CODE32,
                rip,
                kvm_regs {
                    rflags: 2,
                    rip,
                    rbx: layout::PVH_INFO,
                    ..Default::default()
                },
            ),
        };
        let _ = rip;
        crate::boot::write_gdt(mem, &gdt).map_err(Error::Gdt)?;
        sregs.gdt.base = layout::BOOT_GDT;
        sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        let cs = segment(1, code);
        let ds = segment(2, GDT_DATA);
        sregs.cs = cs;
        sregs.ds = ds;
        sregs.es = ds;
        sregs.fs = ds;
        sregs.gs = ds;
        sregs.ss = ds;
        sregs.tr = segment(3, GDT_TSS);
        match entry {
            Entry::Linux64 { .. } => {
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
                sregs.cr3 = layout::PML4;
                sregs.cr4 = X86_CR4_PAE;
                sregs.efer = EFER_LME | EFER_LMA;
            }
            Entry::Pvh { .. } => {
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
                sregs.cr3 = 0;
                sregs.cr4 = 0;
                sregs.efer = 0;
            }
        }
        self.fd.set_sregs(&sregs).map_err(Error::Regs)?;
        self.fd.set_regs(&regs).map_err(Error::Regs)
    }

    /// Runs the guest until the VM ends or this vCPU can't go on; reports through `bus.exit`.
    pub fn run(mut self, bus: Arc<Bus>, vm_name: &str) {
        let span = info_span!("vcpu", vm = vm_name, id = self.id);
        let _g = span.enter();
        loop {
            if bus.exit.reason().is_some() {
                return;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => bus.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => bus.pio_write(port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(addr, data),
                Ok(VcpuExit::Hlt) => {}
                Ok(VcpuExit::Shutdown) => {
                    // A triple fault: what a reset without a reset device looks like, and also
                    // what a crashed guest looks like; the log tells the two from a reset
                    // through the keyboard controller or the ACPI reset register.
                    warn!(regs = %self.regs_summary(), "the guest triple-faulted; treated as a reset");
                    bus.exit.signal(ExitReason::GuestReset);
                    return;
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    let reason = match kind {
                        KVM_SYSTEM_EVENT_RESET => ExitReason::GuestReset,
                        KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::GuestShutdown,
                        other => ExitReason::Error(format!("unexpected system event {other}")),
                    };
                    bus.exit.signal(reason);
                    return;
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    self.fatal(
                        &bus,
                        format!("KVM entry failed: reason {reason:#x} on cpu {cpu}"),
                    );
                    return;
                }
                Ok(VcpuExit::InternalError) => {
                    self.fatal(&bus, "KVM internal error (emulation failure)".into());
                    return;
                }
                Ok(other) => {
                    let what = format!("unhandled vCPU exit {other:?}");
                    self.fatal(&bus, what);
                    return;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    self.fatal(&bus, format!("KVM_RUN failed: {e}"));
                    return;
                }
            }
        }
    }

    /// `rip=… rsp=…` for logs (empty when the registers cannot be read).
    fn regs_summary(&self) -> String {
        self.fd
            .get_regs()
            .map(|r| format!("rip={:#x} rsp={:#x}", r.rip, r.rsp))
            .unwrap_or_default()
    }

    fn fatal(&mut self, bus: &Bus, what: String) {
        let msg = format!("vCPU {}: {what} {}", self.id, self.regs_summary());
        error!("{msg}");
        bus.exit.signal(ExitReason::Error(msg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode() {
        let cs = segment(1, GDT_CODE64);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(1, GDT_CODE32);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
    }
}
