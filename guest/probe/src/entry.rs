//! Boot entry: the PVH ELF note, the 32-bit PVH entry point, the switch to long
//! mode, and the real-mode trampoline used to start application processors.
//!
//! PVH boot protocol (xen/include/public/arch-x86/hvm/start_info.h, also what
//! QEMU, Firecracker and Cloud Hypervisor implement): the loader reads the ELF
//! note `XEN_ELFNOTE_PHYS32_ENTRY` (type 18, name "Xen") and jumps to that
//! physical address in 32-bit protected mode, paging off, CS/DS/ES/SS flat 4 GiB,
//! interrupts off, %ebx = physical address of `struct hvm_start_info`. The GDTR is
//! not guaranteed to be valid, so we load our own GDT immediately.
//!
//! Long mode needs: CR4.PAE, a PML4 in CR3, EFER.LME, then CR0.PG; the far jump to
//! a 64-bit code segment (L=1) finally enters 64-bit mode. We identity-map the
//! first 4 GiB with 2 MiB pages (PML4[0] -> one PDPT -> four page directories),
//! which covers our image, low RAM and the usual MMIO windows (virtio-mmio at e.g.
//! 0xd0000000 or 0xfeb00000, IOAPIC 0xfec00000, local APIC 0xfee00000). The last
//! GiB is mapped uncached (PCD|PWT), as befits MMIO.
//!
//! CR0.MP=1/EM=0/TS=0 and CR4.OSFXSR|OSXMMEXCPT are set so that any SSE that slips
//! in through the precompiled `core` works; we never enable XSAVE (CR4.OSXSAVE).
//!
//! Application processors start in real mode at `vector << 12` after INIT-SIPI-SIPI.
//! The trampoline (`probe_ap_tramp_start..probe_ap_tramp_end`) is copied to
//! [`AP_TRAMPOLINE`] by the `smp` scenario; it loads the GDT, enables protected
//! mode and jumps into this image, where the same long-mode switch runs, then each
//! AP takes a stack slot with `lock xadd` and calls `ap_main`.

use core::arch::global_asm;
use core::sync::atomic::AtomicU32;

use crate::sync::RacyCell;

/// Physical address the AP trampoline is copied to (SIPI vector 0x08).
pub const AP_TRAMPOLINE: u64 = 0x8000;
/// Maximum number of APs we can give a stack to.
pub const AP_MAX: usize = 16;
const AP_STACK_SIZE: usize = 16 * 1024;
const BOOT_STACK_SIZE: usize = 64 * 1024;

/// PML4, PDPT and four page directories, contiguous: the entry code addresses them
/// as base + 0x0000, + 0x1000 and + 0x2000 + 0x1000 * n.
#[repr(C, align(4096))]
struct PageTables([u64; 512 * 6]);

#[repr(C, align(16))]
struct Stack<const N: usize>([u8; N]);

static PAGE_TABLES: RacyCell<PageTables> = RacyCell::new(PageTables([0; 512 * 6]));
static BOOT_STACK: RacyCell<Stack<BOOT_STACK_SIZE>> = RacyCell::new(Stack([0; BOOT_STACK_SIZE]));
static AP_STACKS: RacyCell<[Stack<AP_STACK_SIZE>; AP_MAX]> =
    RacyCell::new([const { Stack([0; AP_STACK_SIZE]) }; AP_MAX]);
/// Next free AP stack slot (`lock xadd` from each AP's entry code).
pub static AP_NEXT_SLOT: AtomicU32 = AtomicU32::new(0);

extern "C" {
    static probe_ap_tramp_start: u8;
    static probe_ap_tramp_end: u8;
}

/// The trampoline code as bytes (to be copied below 1 MiB).
pub fn ap_trampoline() -> &'static [u8] {
    // SAFETY: both symbols are labels in the same section of this image; the bytes
    // between them are the trampoline code, which is never modified.
    unsafe {
        let start = core::ptr::addr_of!(probe_ap_tramp_start);
        let end = core::ptr::addr_of!(probe_ap_tramp_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

global_asm!(
    r#"
    /* ---- PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY ---------------------------- */
    .pushsection .note.pvh, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 8                 /* descsz */
    .long 18                /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start         /* 64-bit like Linux; loaders read the low 32 bits */
    .popsection

    /* ---- GDT: null, 0x08 64-bit code, 0x10 flat data, 0x18 32-bit code ------ */
    /* Accessed bits are preset so the CPU never writes to the table.            */
    .pushsection .data.probe_gdt, "aw", @progbits
    .balign 16
.Lgdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CF9B000000FFFF
.Lgdt_end:
    .balign 8
.Lgdt_ptr:
    .word .Lgdt_end - .Lgdt - 1
    .quad .Lgdt
    .popsection

    /* Shared long-mode switch for the BSP and the APs (32-bit code, paging off). */
    .macro PROBE_ENTER_LONG target
    movl %cr4, %eax
    orl $0x620, %eax            /* PAE(5) | OSFXSR(9) | OSXMMEXCPT(10) */
    movl %eax, %cr4
    movl ${pt}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      /* IA32_EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    andl $0x9FFFFFF3, %eax      /* clear CD(30) NW(29) TS(3) EM(2) */
    orl $0x80010023, %eax       /* PG(31) WP(16) NE(5) MP(1) PE(0) */
    movl %eax, %cr0
    ljmpl $0x08, $\target
    .endm

    .pushsection .text.entry, "ax", @progbits
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    movl %ebx, %esi             /* start_info pointer, kept in esi until main */
    lgdtl .Lgdt_ptr
    ljmpl $0x18, $.Lpvh32
.Lpvh32:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs

    /* Zero .bss: loaders are not required to (linux-loader does not). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT (present, writable) */
    movl ${pt}, %edi
    leal 0x1003(%edi), %eax
    movl %eax, (%edi)
    /* PDPT[0..3] -> PD[0..3] */
    leal 0x2003(%edi), %eax
    xorl %ecx, %ecx
.Lfill_pdpt:
    movl %eax, 0x1000(%edi,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jne .Lfill_pdpt
    /* PD entries: 2048 x 2 MiB identity, P|RW|PS; >= 3 GiB also PWT|PCD */
    xorl %ecx, %ecx
.Lfill_pd:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    cmpl $1536, %ecx
    jb .Lpd_cached
    orl $0x18, %eax
.Lpd_cached:
    movl %eax, 0x2000(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne .Lfill_pd

    PROBE_ENTER_LONG .Lpvh64

    .code64
.Lpvh64:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    leaq {stack}+{stack_size}(%rip), %rsp
    xorl %ebp, %ebp
    fninit
    movl %esi, %edi             /* main(start_info) */
    call {main}
.Lhang:
    cli
    hlt
    jmp .Lhang

    /* ---- AP path: 32-bit protected mode, reached from the trampoline -------- */
    .code32
.Lap32:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    PROBE_ENTER_LONG .Lap64

    .code64
.Lap64:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %eax
    lock xaddl %eax, {ap_slot}(%rip)
    cmpl ${ap_max}, %eax
    jae .Lhang
    movl %eax, %edi             /* ap_main(slot) */
    incl %eax
    imull ${ap_stack_size}, %eax
    leaq {ap_stacks}(%rip), %rsp
    addq %rax, %rsp
    xorl %ebp, %ebp
    fninit
    call {ap_main}
    jmp .Lhang

    /* ---- AP real-mode trampoline (copied below 1 MiB, position independent) */
    /* After SIPI: CS = vector << 8, IP = 0, real mode. DS := CS so the GDT
       pointer can be addressed relative to the trampoline start.                */
    .code16
    .globl probe_ap_tramp_start
probe_ap_tramp_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl .Ltramp_gdt_ptr - probe_ap_tramp_start
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, $.Lap32
    .balign 4
.Ltramp_gdt_ptr:
    .word .Lgdt_end - .Lgdt - 1
    .long .Lgdt
    .globl probe_ap_tramp_end
probe_ap_tramp_end:
    .code64
    .popsection
    "#,
    pt = sym PAGE_TABLES,
    stack = sym BOOT_STACK,
    stack_size = const BOOT_STACK_SIZE,
    main = sym crate::probe_main,
    ap_slot = sym AP_NEXT_SLOT,
    ap_max = const AP_MAX,
    ap_stacks = sym AP_STACKS,
    ap_stack_size = const AP_STACK_SIZE,
    ap_main = sym crate::scenarios::smp::ap_main,
    options(att_syntax)
);
