//! virtio-console scenarios (the guest's hvc0, served by the console worker).
//!
//! * `cons-echo:DEV:N`: writes `ward-probe console ready\n`, reads N bytes that
//!   the host types, writes `echo:<bytes>\n` back, and prints `OK got=<bytes>`
//!   (non-printable bytes as `_`) or `FAIL timeout got=<what arrived>`.
//! * `cons-write:DEV:LINES`: writes LINES lines of 64 bytes,
//!   `cons line <6 digits> ` padded with `.` and ended by `\n`, one request per
//!   line; prints `OK lines=<n> bytes=<n>`.
//! * `cons-bad:DEV`: hands the device malformed transmit chains (a device-writable
//!   buffer, an address outside guest memory, a zero length, a length far past
//!   the end of memory), then a good line `after-bad\n`; prints `OK returned=<n>`
//!   with how many of the malformed chains came back (`FAIL ...` if the good
//!   line was not consumed).

use core::mem::MaybeUninit;

use crate::scenarios::Scen;
use crate::sync::RacyCell;
use crate::time::Deadline;
use crate::virtio::console::Cons;
use crate::virtio::queue::F_WRITE;
use crate::Ctx;

const MAX_ECHO: usize = 64;

struct Slot {
    cons: MaybeUninit<Cons>,
    ready: bool,
}

static SLOTS: RacyCell<[Slot; crate::cmdline::MAX_DEVS]> = RacyCell::new(
    [const {
        Slot {
            cons: MaybeUninit::uninit(),
            ready: false,
        }
    }; crate::cmdline::MAX_DEVS],
);

/// The initialised console driver for the device index in field 1 of `sc`.
fn console(ctx: &Ctx, sc: &Scen) -> Option<&'static mut Cons> {
    let (idx, addr) = crate::scenarios::device_addr(ctx, sc, 1)?;
    // SAFETY: boot CPU only; scenarios run one after another.
    let slot = unsafe { &mut (*SLOTS.get())[idx] };
    if !slot.ready {
        match Cons::init(idx, addr) {
            Ok(c) => {
                slot.cons.write(c);
                slot.ready = true;
            }
            Err(e) => {
                sc.fail(e.as_str());
                return None;
            }
        }
    }
    // SAFETY: ready means written.
    Some(unsafe { slot.cons.assume_init_mut() })
}

pub fn echo(ctx: &Ctx, sc: &Scen) {
    let Some(n) = sc.num(2).filter(|&n| n > 0 && n as usize <= MAX_ECHO) else {
        return sc.fail("usage cons-echo:DEV:N (N 1..=64)");
    };
    let Some(c) = console(ctx, sc) else { return };
    if c.write(b"ward-probe console ready\n", ctx.cmd.timeout_ms)
        .is_err()
    {
        return sc.fail("tx-timeout");
    }
    sc.out().s("waiting n=").d(n).end();
    let n = n as usize;
    let mut got = [0u8; MAX_ECHO];
    let mut len = 0;
    let deadline = Deadline::after_ms(ctx.cmd.timeout_ms);
    while len < n && !deadline.expired() {
        len += c.read(&mut got[len..n]);
        core::hint::spin_loop();
    }
    let mut reply = [0u8; MAX_ECHO + 6];
    reply[..5].copy_from_slice(b"echo:");
    reply[5..5 + len].copy_from_slice(&got[..len]);
    reply[5 + len] = b'\n';
    let sent = c.write(&reply[..len + 6], ctx.cmd.timeout_ms).is_ok();
    for b in &mut got[..len] {
        if !b.is_ascii_graphic() {
            *b = b'_';
        }
    }
    let mut line = sc.out();
    if len == n && sent {
        line.s("OK got=");
    } else if len == n {
        line.s("FAIL tx-timeout got=");
    } else {
        line.s("FAIL timeout got=");
    }
    line.b(&got[..len]).end();
}

pub fn write(ctx: &Ctx, sc: &Scen) {
    let Some(lines) = sc.num(2) else {
        return sc.fail("usage cons-write:DEV:LINES");
    };
    let Some(c) = console(ctx, sc) else { return };
    let mut buf = [b'.'; 64];
    buf[63] = b'\n';
    for i in 0..lines {
        buf[..10].copy_from_slice(b"cons line ");
        let mut v = i % 1_000_000;
        for k in (0..6).rev() {
            buf[10 + k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        buf[16] = b' ';
        if c.write(&buf, ctx.cmd.timeout_ms).is_err() {
            sc.out().s("FAIL tx-timeout line=").d(i).end();
            return;
        }
    }
    sc.out()
        .s("OK lines=")
        .d(lines)
        .s(" bytes=")
        .d(lines * 64)
        .end();
}

pub fn bad(ctx: &Ctx, sc: &Scen) {
    let Some(c) = console(ctx, sc) else { return };
    let good = c.tx_addr();
    // (address, length, flags) of each malformed single-descriptor chain.
    let cases: [(u64, u32, u16); 4] = [
        (good, 64, F_WRITE),
        (0xffff_ffff_0000, 64, 0),
        (good, 0, 0),
        (good, u32::MAX, 0),
    ];
    let mut heads = [0u16; 4];
    for (i, &(addr, len, flags)) in cases.iter().enumerate() {
        let Some(d) = c.txq.alloc() else {
            return sc.fail("no-descriptors");
        };
        c.txq.set_desc(d, addr, len, flags, 0);
        c.txq.publish(d, &[d]);
        heads[i] = d;
    }
    c.notify_tx();
    let mut returned = 0u64;
    let deadline = Deadline::after_ms(ctx.cmd.bad_timeout_ms);
    while returned < cases.len() as u64 && !deadline.expired() {
        while let Some(u) = c.txq.pop_used() {
            if u.known && heads.contains(&(u.id as u16)) {
                returned += 1;
            }
        }
        core::hint::spin_loop();
    }
    if c.write(b"after-bad\n", ctx.cmd.timeout_ms).is_err() {
        sc.out()
            .s("FAIL good-line-not-consumed returned=")
            .d(returned)
            .end();
        return;
    }
    sc.out().s("OK returned=").d(returned).end();
}
