//! The probe guest: a tiny freestanding x86-64 kernel for testing VMMs.
//!
//! Booted through PVH by ward, QEMU microvm, Cloud Hypervisor or Firecracker, it
//! finds virtio-mmio devices (block, console, network) on the command line, runs
//! the scenarios named by `probe.run=`, reports `PROBE ...` lines on the COM1
//! UART and resets the machine. See README.md for the command line and the output protocol.
//!
//! Module map: `entry` (PVH note, 32->64-bit boot, AP trampoline), `cpu`/`time`
//! (instructions, TSC), `serial`/`fmt` (output), `bootinfo`/`cmdline`/`acpi`
//! (what the VMM tells us), `idt`/`apic` (exceptions, interrupts, IPIs),
//! `virtio` (transport, virtqueue, block, console and network drivers), `inet`
//! (Ethernet, ARP, IPv4, UDP frames), `dma` (data buffers),
//! `scenarios` (the tests themselves), `mem` (memcpy and friends).

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod acpi;
mod apic;
mod bootinfo;
mod cmdline;
mod cpu;
mod dma;
mod entry;
mod fmt;
mod idt;
mod inet;
mod mem;
mod scenarios;
mod serial;
mod sync;
mod time;
mod virtio;

use core::mem::MaybeUninit;

use acpi::AcpiInfo;
use bootinfo::BootInfo;
use cmdline::Cmdline;
use fmt::line;
use sync::RacyCell;

/// Everything learnt at boot. Written once by the boot CPU before any scenario
/// (and any AP) runs, read-only afterwards.
pub struct Ctx {
    pub boot: BootInfo,
    pub cmd: Cmdline,
    pub acpi: AcpiInfo,
}

// MaybeUninit keeps this (large) static in .bss instead of the image.
static CTX: RacyCell<MaybeUninit<Ctx>> = RacyCell::new(MaybeUninit::uninit());

/// Called by the entry code in 64-bit mode with the physical address of
/// `struct hvm_start_info`.
extern "C" fn probe_main(start_info: u64) -> ! {
    // KVM starts the guest TSC near 0 at vCPU creation, so this is roughly the
    // time from VM start to Rust code (reported as boot_tsc).
    let boot_tsc = cpu::rdtsc();
    serial::init();
    idt::init();
    let tsc_src = time::init();

    // SAFETY: boot CPU, nothing else is running and nobody holds a reference to
    // CTX yet; after this block it is only read.
    unsafe {
        let boot = BootInfo::parse(start_info);
        let cmd = Cmdline::parse(boot.cmdline);
        let acpi = AcpiInfo::parse(boot.rsdp);
        (*CTX.get()).write(Ctx { boot, cmd, acpi });
    }
    // SAFETY: initialised above, never written again.
    let ctx: &'static Ctx = unsafe { (*CTX.get()).assume_init_ref() };

    line()
        .s("PROBE READY mem=")
        .d(ctx.boot.usable_ram())
        .s(" cpus=")
        .d(ctx.acpi.cpus as u64)
        .s(" cmdline_devices=")
        .d(ctx.cmd.ndevs as u64)
        .end();
    report_devices(ctx);
    line()
        .s("PROBE INFO start_info=")
        .hx(ctx.boot.start_info)
        .s(" magic_ok=")
        .d(u64::from(ctx.boot.magic_ok))
        .s(" version=")
        .d(u64::from(ctx.boot.version))
        .s(" memmap_entries=")
        .d(ctx.boot.memmap_len as u64)
        .s(" ram_end=")
        .hx(ctx.boot.ram_end())
        .s(" rsdp=")
        .hx(ctx.acpi.rsdp)
        .s(" rsdp_src=")
        .s(ctx.acpi.rsdp_source)
        .s(" ioapics=")
        .d(ctx.acpi.nioapics as u64)
        .s(" boot_tsc=")
        .d(boot_tsc)
        .s(" tsc_khz=")
        .d(time::tsc_khz())
        .s(" tsc_src=")
        .s(tsc_src)
        .s(" bad_devs=")
        .d(ctx.cmd.bad_devs as u64)
        .end();
    line().s("PROBE INFO cmdline: ").b(ctx.boot.cmdline).end();

    scenarios::run_all(ctx);

    line().s("PROBE DONE").end();
    cpu::reset()
}

/// `PROBE DEV <i> addr=0x.. irq=<n> magic_ok=<0|1> version=<n> device_id=<n>`
fn report_devices(ctx: &Ctx) {
    for (i, d) in ctx.cmd.devs[..ctx.cmd.ndevs].iter().enumerate() {
        let m = virtio::mmio::Mmio { base: d.addr };
        let (magic, version, id) = if cpu::phys_mapped(d.addr, 0x100) {
            (
                m.read(virtio::mmio::MAGIC),
                m.read(virtio::mmio::VERSION),
                m.read(virtio::mmio::DEVICE_ID),
            )
        } else {
            (0, 0, 0)
        };
        line()
            .s("PROBE DEV ")
            .d(i as u64)
            .s(" addr=")
            .hx(d.addr)
            .s(" irq=")
            .d(u64::from(d.irq))
            .s(" magic_ok=")
            .d(u64::from(magic == virtio::mmio::MAGIC_VALUE))
            .s(" version=")
            .d(u64::from(version))
            .s(" device_id=")
            .d(u64::from(id))
            .end();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // The message would need core::fmt; the location is enough to find the bug.
    let mut l = line();
    l.s("PROBE PANIC ");
    match info.location() {
        Some(loc) => {
            l.s(loc.file()).s(":").d(u64::from(loc.line()));
        }
        None => {
            l.s("unknown location");
        }
    }
    l.end();
    cpu::reset()
}
