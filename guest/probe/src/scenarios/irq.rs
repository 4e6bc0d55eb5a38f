//! `blk-irq:DEV`: completion by interrupt instead of polling.
//!
//! Path of the interrupt: the virtio-mmio device raises its IRQ line (the GSI from
//! `virtio_mmio.device=...:IRQ`, mapped through MADT interrupt source overrides),
//! the I/O APIC redirection entry for that pin turns it into vector
//! [`VEC_DEVICE`] for our local APIC (fixed delivery, physical destination,
//! edge, active high), and the CPU, halted in `sti; hlt`, enters the handler. The
//! handler reads InterruptStatus (0x60), acknowledges those bits (0x64) so the
//! line drops (QEMU keeps it level-high while bits are set), sends EOI and counts.
//!
//! A periodic local APIC timer ([`VEC_TIMER`]) wakes the `hlt` regularly so the
//! TSC deadline is checked even if the device interrupt never arrives. The legacy
//! PICs are masked. Interrupts are only ever enabled inside `sti; hlt; cli`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::apic::{mask_pic, IoApic, Lapic};
use crate::cpu::{mmio_read32, mmio_write32, sti_hlt_cli};
use crate::dma;
use crate::idt::{self, VEC_DEVICE, VEC_SPURIOUS, VEC_TIMER};
use crate::scenarios::{device, mark_stale, status_text, Scen};
use crate::time::Deadline;
use crate::virtio::blk::{Seg, T_IN};
use crate::virtio::mmio::{INTERRUPT_ACK, INTERRUPT_STATUS};
use crate::Ctx;

const DEFAULT_IOAPIC: u64 = 0xfec0_0000;
/// Local APIC timer period in bus clocks / 16 (about 17 ms at KVM's 1 GHz).
const TIMER_COUNT: u32 = 0x10_0000;

static DEV_MMIO: AtomicU64 = AtomicU64::new(0);
static DEV_IRQS: AtomicU32 = AtomicU32::new(0);
static LAST_ISR: AtomicU32 = AtomicU32::new(0);
static TIMER_TICKS: AtomicU32 = AtomicU32::new(0);

/// Called from the interrupt stubs (interrupts disabled, on the boot CPU).
pub fn on_interrupt(vector: u8) {
    match vector {
        VEC_DEVICE => {
            let base = DEV_MMIO.load(Ordering::Relaxed);
            if base != 0 {
                let isr = mmio_read32(base + INTERRUPT_STATUS);
                mmio_write32(base + INTERRUPT_ACK, isr);
                LAST_ISR.store(isr, Ordering::Relaxed);
            }
            DEV_IRQS.fetch_add(1, Ordering::Relaxed);
        }
        VEC_TIMER => {
            TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    Lapic::current().eoi();
}

pub fn run(ctx: &Ctx, sc: &Scen) {
    if sc.nargs() != 1 {
        return sc.fail("usage blk-irq:DEV");
    }
    let Some((idx, dev)) = device(ctx, sc, 1) else {
        return;
    };
    let gsi = ctx.acpi.irq_to_gsi(ctx.cmd.devs[idx].irq);
    // The I/O APIC whose GSI range holds ours; without a MADT assume one at the
    // standard address serving GSI 0 upwards.
    let default = [(DEFAULT_IOAPIC, 0)];
    let candidates = if ctx.acpi.nioapics == 0 {
        &default[..]
    } else {
        &ctx.acpi.ioapics[..ctx.acpi.nioapics]
    };
    let Some((ioapic, pin)) = candidates.iter().find_map(|&(base, gsi_base)| {
        let io = IoApic::new(base);
        gsi.checked_sub(gsi_base)
            .filter(|&p| p < io.pins())
            .map(|p| (io, p))
    }) else {
        return sc.fail("irq-not-on-ioapic");
    };

    // Drop anything pending so the line is low and the next completion makes an edge.
    while dev.q.pop_used().is_some() {}
    let pending = dev.mmio.read(INTERRUPT_STATUS);
    if pending != 0 {
        dev.mmio.write(INTERRUPT_ACK, pending);
    }
    DEV_MMIO.store(dev.mmio.base, Ordering::Relaxed);
    DEV_IRQS.store(0, Ordering::Relaxed);
    LAST_ISR.store(0, Ordering::Relaxed);
    TIMER_TICKS.store(0, Ordering::Relaxed);

    idt::install_irq_gates();
    mask_pic();
    let lapic = Lapic::current();
    lapic.enable(VEC_SPURIOUS);
    ioapic.route_edge(pin, VEC_DEVICE, lapic.id());
    lapic.timer_periodic(VEC_TIMER, TIMER_COUNT);

    let seg = [Seg {
        addr: dma::base(),
        len: 512,
    }];
    let submitted = dev.submit(T_IN, 0, &seg, true);
    let deadline = Deadline::after_ms(ctx.cmd.timeout_ms);
    while submitted.is_ok() && DEV_IRQS.load(Ordering::Relaxed) == 0 && !deadline.expired() {
        sti_hlt_cli();
    }
    lapic.timer_stop();
    ioapic.mask(pin);
    DEV_MMIO.store(0, Ordering::Relaxed);

    let irqs = DEV_IRQS.load(Ordering::Relaxed);
    let isr = LAST_ISR.load(Ordering::Relaxed);
    let ticks = TIMER_TICKS.load(Ordering::Relaxed);
    let status = submitted.and_then(|h| dev.wait(h, ctx.cmd.timeout_ms));
    let mut l = sc.out();
    if irqs > 0 {
        l.s("OK interrupts=")
            .d(u64::from(irqs))
            .s(" isr=")
            .hx(u64::from(isr));
    } else {
        l.s("FAIL no-interrupt interrupts=0 isr=")
            .hx(u64::from(isr));
    }
    l.s(" status=");
    match status {
        Ok((s, _)) => {
            status_text(&mut l, s);
        }
        Err(_) => {
            mark_stale(idx);
            l.s("TIMEOUT");
        }
    }
    l.s(" gsi=")
        .d(u64::from(gsi))
        .s(" timer_ticks=")
        .d(u64::from(ticks))
        .end();
}

/// `mmio-isr:DEV:N`: what the two register accesses of every virtio-mmio interrupt cost:
/// N reads of InterruptStatus, then N writes of 0 to InterruptACK (which acknowledges
/// nothing), timed with the TSC. Reports `OK n=N read_cycles=R ack_cycles=W isr=V`, cycles
/// per access, and the last InterruptStatus read.
pub fn isr_cost(ctx: &Ctx, sc: &Scen) {
    if sc.nargs() != 2 {
        return sc.fail("usage mmio-isr:DEV:N");
    }
    let Some((_, base)) = crate::scenarios::device_addr(ctx, sc, 1) else {
        return;
    };
    let n = match sc.num(2) {
        Some(n) if n > 0 => n,
        _ => return sc.fail("bad-count"),
    };
    let mut isr = 0;
    let t0 = crate::cpu::rdtsc();
    for _ in 0..n {
        isr = mmio_read32(base + INTERRUPT_STATUS);
    }
    let t1 = crate::cpu::rdtsc();
    for _ in 0..n {
        mmio_write32(base + INTERRUPT_ACK, 0);
    }
    let t2 = crate::cpu::rdtsc();
    sc.out()
        .s("OK n=")
        .d(n)
        .s(" read_cycles=")
        .d((t1 - t0) / n)
        .s(" ack_cycles=")
        .d((t2 - t1) / n)
        .s(" isr=")
        .hx(u64::from(isr))
        .end();
}
