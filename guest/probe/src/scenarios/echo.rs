//! `echo-serial:N`: reads N bytes from the serial port (polled), then prints them back, so a test
//! can check that what it writes to the VMM's console input reaches the guest. Prints
//! `waiting n=<N>` first (the test's cue to type), then `OK got=<bytes>` (non-printable bytes as
//! `_`) or `FAIL timeout got=<what arrived>` after `probe.timeout_ms`.

use crate::scenarios::{Ctx, Scen};
use crate::time::Deadline;

const MAX: usize = 64;

pub fn run(ctx: &Ctx, sc: &Scen) {
    let Some(n) = sc.num(1).filter(|&n| n > 0 && n as usize <= MAX) else {
        sc.fail("usage echo-serial:N (1..=64)");
        return;
    };
    let n = n as usize;
    sc.out().s("waiting n=").d(n as u64).end();
    let mut got = [0u8; MAX];
    let mut len = 0;
    let deadline = Deadline::after_ms(ctx.cmd.timeout_ms);
    while len < n && !deadline.expired() {
        match crate::serial::try_get() {
            Some(b) => {
                got[len] = if b.is_ascii_graphic() { b } else { b'_' };
                len += 1;
            }
            None => core::hint::spin_loop(),
        }
    }
    let mut line = sc.out();
    if len == n {
        line.s("OK got=");
    } else {
        line.s("FAIL timeout got=");
    }
    line.b(&got[..len]).end();
}
