//! `smp`: report the CPUs from the MADT and start the application processors.
//!
//! `PROBE smp cpus=<n> apic_ids=<id,id,...>` first. Then each AP other than the
//! boot CPU gets the classic INIT - SIPI - SIPI sequence (Intel SDM vol. 3
//! §9.4.4): INIT, ~10 ms, STARTUP with vector 0x08 (real-mode entry at 0x8000,
//! where the trampoline from `entry.rs` was copied), ~200 us, a second STARTUP if
//! the AP has not shown up. Each AP switches to long mode, prints
//! `PROBE smp ap=<apic id> up` under the serial spin lock, counts itself and halts.
//! APs are started one at a time. Finally `PROBE smp OK up=<n> expected=<m>` or
//! `PROBE smp FAIL timeout up=<n> expected=<m>`.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::apic::{Lapic, ICR_INIT, ICR_STARTUP};
use crate::entry::{ap_trampoline, AP_MAX, AP_TRAMPOLINE};
use crate::fmt::line;
use crate::idt::{self, VEC_SPURIOUS};
use crate::scenarios::Scen;
use crate::time::{delay_us, Deadline};
use crate::Ctx;

static APS_UP: AtomicU32 = AtomicU32::new(0);

/// 64-bit entry of every AP (called from entry.rs with its stack slot).
pub extern "C" fn ap_main(_slot: u64) -> ! {
    idt::load();
    let id = Lapic::current().id();
    line().s("PROBE smp ap=").d(u64::from(id)).s(" up").end();
    APS_UP.fetch_add(1, Ordering::SeqCst);
    crate::cpu::halt_forever()
}

pub fn run(ctx: &Ctx, sc: &Scen) {
    if sc.nargs() != 0 {
        return sc.fail("usage smp");
    }
    if ctx.acpi.madt == 0 {
        return sc.fail("no-madt");
    }
    let ids = &ctx.acpi.apic_ids[..ctx.acpi.cpus.min(ctx.acpi.apic_ids.len())];
    let mut l = sc.out();
    l.s("cpus=").d(ctx.acpi.cpus as u64).s(" apic_ids=");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            l.s(",");
        }
        l.d(u64::from(*id));
    }
    l.end();

    let lapic = Lapic::current();
    let me = lapic.id();
    let expected = ids.iter().filter(|&&id| id != me).count().min(AP_MAX);
    if expected == 0 {
        return sc.out().s("OK up=0 expected=0").end();
    }
    let tramp = ap_trampoline();
    if !ctx.boot.is_ram(AP_TRAMPOLINE, 4096) {
        return sc.fail("trampoline-page-not-ram");
    }
    // SAFETY: 0x8000 is RAM (checked against the memmap) that we do not otherwise
    // use: start_info, the command line and the memmap were copied at boot.
    unsafe {
        core::ptr::copy_nonoverlapping(tramp.as_ptr(), AP_TRAMPOLINE as *mut u8, tramp.len())
    };

    idt::install_irq_gates();
    lapic.enable(VEC_SPURIOUS);
    let vector = (AP_TRAMPOLINE >> 12) as u32;
    for (started, &id) in ids.iter().filter(|&&id| id != me).take(AP_MAX).enumerate() {
        let started = started as u32;
        lapic.send_ipi(id, ICR_INIT);
        delay_us(10_000);
        lapic.send_ipi(id, ICR_STARTUP | vector);
        delay_us(200);
        if APS_UP.load(Ordering::SeqCst) == started {
            lapic.send_ipi(id, ICR_STARTUP | vector);
        }
        let deadline = Deadline::after_ms(ctx.cmd.bad_timeout_ms.max(1000));
        while APS_UP.load(Ordering::SeqCst) == started && !deadline.expired() {
            core::hint::spin_loop();
        }
        if APS_UP.load(Ordering::SeqCst) == started {
            break;
        }
    }
    let up = APS_UP.load(Ordering::SeqCst);
    if up as usize == expected {
        sc.out()
            .s("OK up=")
            .d(u64::from(up))
            .s(" expected=")
            .d(expected as u64)
            .end();
    } else {
        sc.out()
            .s("FAIL timeout up=")
            .d(u64::from(up))
            .s(" expected=")
            .d(expected as u64)
            .end();
    }
}
