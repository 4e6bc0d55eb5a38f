//! Thin wrappers around privileged x86 instructions: port I/O, MSRs, TSC, CPUID,
//! MMIO, halting and resetting the machine.
//!
//! Deliberately avoided (the PVM KVM back end cannot emulate them, and they are
//! not needed): `int3`, `xsave`/`xrstor`, `cmpxchg16b`.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory-safety effect on this program; the ports we use
    // (UART, i8042, PIC) are harmless to poke, absent devices ignore writes.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: see `outb`; reads of absent ports return 0xff.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nostack, preserves_flags)) }
    v
}

/// Reads the time stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist (else #GP, which our exception handler reports).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must not break the running system.
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
            options(nostack, preserves_flags));
    }
}

/// CPUID leaf/subleaf -> (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    #[allow(unused_unsafe)]
    // SAFETY: cpuid is always available in long mode and has no side effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, sub) };
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// 32-bit volatile MMIO read at a physical (= virtual, identity-mapped) address.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: callers pass addresses below 4 GiB (all identity-mapped) that name
    // device registers or RAM; a read has no effect on Rust-visible memory.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// 8-bit volatile MMIO read (device configuration fields that are bytes).
pub fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: as for mmio_read32.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// 16-bit volatile MMIO read (device configuration fields that are u16).
pub fn mmio_read16(addr: u64) -> u16 {
    // SAFETY: as for mmio_read32.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

/// 32-bit volatile MMIO write.
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: callers pass device register addresses below 4 GiB, never memory
    // that Rust code owns.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Everything below 4 GiB is identity-mapped; nothing above is.
pub fn phys_mapped(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= 1 << 32)
}

/// Enables interrupts for exactly one `hlt`: `sti` delays interrupt recognition by
/// one instruction, so a pending interrupt wakes the `hlt` instead of being taken
/// before it. The handler therefore always interrupts this asm block, never
/// compiled Rust code (which on this target may use the red zone).
pub fn sti_hlt_cli() {
    // SAFETY: the IDT has gates for every vector that can be enabled here.
    unsafe { asm!("sti", "hlt", "cli", options(nostack)) }
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli+hlt just parks the CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Resets the machine: first the i8042 "pulse reset line" command (what
/// Firecracker, Cloud Hypervisor and PC machines implement), then a triple fault
/// (an exception with an empty IDT: #UD -> #GP -> #DF -> shutdown), which every
/// KVM-based VMM sees as KVM_EXIT_SHUTDOWN. `ud2`, not `int3`: PVM cannot emulate
/// breakpoints.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    // Give the i8042 reset a moment to take effect.
    for _ in 0..1000 {
        let _ = inb(0x80);
    }
    #[repr(C, packed)]
    struct NullIdt {
        limit: u16,
        base: u64,
    }
    let null = NullIdt { limit: 0, base: 0 };
    // SAFETY: deliberately crashes the machine; nothing runs after this.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) &null, options(nostack)) }
    halt_forever()
}
