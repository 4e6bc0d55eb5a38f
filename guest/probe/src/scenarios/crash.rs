//! `crash:KIND`: deliberately kill the guest, to check the crash reporting path
//! (and a VMM's handling of a guest that resets or faults).
//!
//! * `ud2`   - invalid opcode: `PROBE PANIC exception vector=6 ...`, then reset
//! * `pf`    - read at 8 GiB, which is not mapped: `... vector=14 ... cr2=0x200000000`
//! * `panic` - a Rust panic: `PROBE PANIC <file>:<line>`, then reset
//!
//! None of these return; scenarios after a crash never run.

use core::arch::asm;

use crate::scenarios::Scen;

pub fn run(sc: &Scen) {
    match sc.field(1) {
        // SAFETY: deliberately raises #UD, which the exception handler reports
        // before resetting; nothing runs afterwards.
        b"ud2" => unsafe { asm!("ud2", options(nomem, nostack)) },
        b"pf" => {
            // SAFETY: deliberately faults: only the first 4 GiB are mapped.
            let v = unsafe { core::ptr::read_volatile(0x2_0000_0000 as *const u64) };
            sc.out().s("FAIL no-fault value=").hx(v).end();
        }
        b"panic" => panic!("crash:panic"),
        _ => sc.fail("usage crash:ud2|pf|panic"),
    }
}
