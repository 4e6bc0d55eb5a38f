//! Interrupt descriptor table: exception reporting and the few interrupt vectors
//! the `blk-irq` scenario uses.
//!
//! Exceptions 0-31 get stubs that push the vector (and a dummy error code where
//! the CPU pushes none), then call [`exception`], which prints
//! `PROBE PANIC exception ...` and resets: a bug shows up as a report instead of a
//! silent triple fault. Interrupt stubs save the caller-saved registers and call
//! [`irq_dispatch`] with the vector.
//!
//! 64-bit IDT gate (16 bytes): offset[15:0], selector, IST, type/attr (0x8E =
//! present, DPL0, 64-bit interrupt gate), offset[31:16], offset[63:32], reserved.
//!
//! Stack alignment: on interrupt delivery in 64-bit mode the CPU aligns RSP to 16
//! and pushes 5 qwords (no error code), so after the 9 pushes of the interrupt
//! stub RSP is 16-byte aligned again, as the ABI wants at a call.

use core::arch::{asm, global_asm};

use crate::fmt::line;
use crate::sync::RacyCell;

pub const VEC_DEVICE: u8 = 0x40;
pub const VEC_TIMER: u8 = 0x41;
pub const VEC_SPURIOUS: u8 = 0xff;

#[repr(C, align(16))]
struct Idt([u64; 512]);

static IDT: RacyCell<Idt> = RacyCell::new(Idt([0; 512]));

extern "C" {
    static probe_exc_stubs: u8;
    fn probe_irq_device();
    fn probe_irq_timer();
    fn probe_irq_spurious();
}

global_asm!(
    r#"
    .macro PROBE_EXC_NOERR vec
    .balign 16
    pushq $0
    pushq $\vec
    jmp .Lexc_common
    .endm
    .macro PROBE_EXC_ERR vec
    .balign 16
    pushq $\vec
    jmp .Lexc_common
    .endm
    .macro PROBE_IRQ name, vec
    .globl \name
    .balign 16
\name:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movl $\vec, %edi
    call {irq}
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    iretq
    .endm

    .pushsection .text.probe_idt, "ax", @progbits
    .balign 16
    .globl probe_exc_stubs
probe_exc_stubs:
    PROBE_EXC_NOERR 0
    PROBE_EXC_NOERR 1
    PROBE_EXC_NOERR 2
    PROBE_EXC_NOERR 3
    PROBE_EXC_NOERR 4
    PROBE_EXC_NOERR 5
    PROBE_EXC_NOERR 6
    PROBE_EXC_NOERR 7
    PROBE_EXC_ERR 8
    PROBE_EXC_NOERR 9
    PROBE_EXC_ERR 10
    PROBE_EXC_ERR 11
    PROBE_EXC_ERR 12
    PROBE_EXC_ERR 13
    PROBE_EXC_ERR 14
    PROBE_EXC_NOERR 15
    PROBE_EXC_NOERR 16
    PROBE_EXC_ERR 17
    PROBE_EXC_NOERR 18
    PROBE_EXC_NOERR 19
    PROBE_EXC_NOERR 20
    PROBE_EXC_ERR 21
    PROBE_EXC_NOERR 22
    PROBE_EXC_NOERR 23
    PROBE_EXC_NOERR 24
    PROBE_EXC_NOERR 25
    PROBE_EXC_NOERR 26
    PROBE_EXC_NOERR 27
    PROBE_EXC_NOERR 28
    PROBE_EXC_ERR 29
    PROBE_EXC_ERR 30
    PROBE_EXC_NOERR 31
.Lexc_common:
    movq (%rsp), %rdi           /* vector */
    movq 8(%rsp), %rsi          /* error code */
    movq 16(%rsp), %rdx         /* faulting rip */
    movq %cr2, %rcx
    andq $-16, %rsp
    call {exc}
.Lexc_hang:
    cli
    hlt
    jmp .Lexc_hang

    PROBE_IRQ probe_irq_device, {vdev}
    PROBE_IRQ probe_irq_timer, {vtimer}

    .globl probe_irq_spurious
    .balign 16
probe_irq_spurious:
    iretq
    .popsection
    "#,
    irq = sym irq_dispatch,
    exc = sym exception,
    vdev = const VEC_DEVICE,
    vtimer = const VEC_TIMER,
    options(att_syntax)
);

fn set_gate(vector: u8, handler: u64) {
    let lo = (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((handler >> 16) & 0xffff) << 48);
    let hi = handler >> 32;
    // SAFETY: boot CPU only, interrupts disabled while gates change; the IDT is
    // a static that lives forever.
    unsafe {
        let idt = &mut (*IDT.get()).0;
        idt[usize::from(vector) * 2] = lo;
        idt[usize::from(vector) * 2 + 1] = hi;
    }
}

/// Installs the exception gates and loads the IDT on this CPU.
pub fn init() {
    // probe_exc_stubs is a label in our text; the stubs are 16 bytes apart.
    let base = core::ptr::addr_of!(probe_exc_stubs) as u64;
    for v in 0..32u8 {
        set_gate(v, base + u64::from(v) * 16);
    }
    load();
}

/// Loads the IDT register (also used by APs).
pub fn load() {
    #[repr(C, packed)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let p = Ptr {
        limit: 4095,
        base: IDT.get() as u64,
    };
    // SAFETY: the IDT is a static, so it outlives the IDTR.
    unsafe { asm!("lidt [{}]", in(reg) &p, options(nostack, readonly)) }
}

/// Installs the interrupt gates of the `blk-irq` scenario.
pub fn install_irq_gates() {
    set_gate(VEC_DEVICE, probe_irq_device as *const () as u64);
    set_gate(VEC_TIMER, probe_irq_timer as *const () as u64);
    set_gate(VEC_SPURIOUS, probe_irq_spurious as *const () as u64);
}

extern "C" fn irq_dispatch(vector: u64) {
    crate::scenarios::irq::on_interrupt(vector as u8);
}

extern "C" fn exception(vector: u64, err: u64, rip: u64, cr2: u64) -> ! {
    line()
        .s("PROBE PANIC exception vector=")
        .d(vector)
        .s(" err=")
        .hx(err)
        .s(" rip=")
        .hx(rip)
        .s(" cr2=")
        .hx(cr2)
        .end();
    crate::cpu::reset()
}
