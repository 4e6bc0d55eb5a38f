//! Scenario dispatch: `probe.run=SCEN[,SCEN...]`, each `name:arg:arg...`.
//!
//! Every scenario reports lines `PROBE <scenario text> ...`; a scenario whose own
//! preconditions fail prints `PROBE <scenario text> FAIL <reason>`.
//!
//! Devices are initialised lazily on first use and kept for later scenarios. A
//! scenario that leaves a device in an unknown state marks it stale, and the next
//! user resets and re-initialises it.

pub mod bad;
pub mod blk;
pub mod cons;
pub mod crash;
pub mod echo;
pub mod idle;
pub mod irq;
pub mod net;
pub mod smp;

use core::mem::MaybeUninit;

use crate::cmdline::{parse_num, MAX_DEVS};
use crate::fmt::{line, Line};
use crate::sync::RacyCell;
use crate::virtio::blk::{Blk, STATUS_SENTINEL};
use crate::Ctx;

const MAX_FIELDS: usize = 8;

/// One parsed scenario item.
pub struct Scen {
    pub text: &'static [u8],
    fields: [&'static [u8]; MAX_FIELDS],
    n: usize,
}

impl Scen {
    fn parse(text: &'static [u8]) -> Self {
        let mut s = Self {
            text,
            fields: [&[]; MAX_FIELDS],
            n: 0,
        };
        for f in text.split(|&b| b == b':') {
            if s.n == MAX_FIELDS {
                s.n += 1; // too many: makes every arity check fail
                break;
            }
            s.fields[s.n] = f;
            s.n += 1;
        }
        s
    }

    pub fn name(&self) -> &'static [u8] {
        self.fields[0]
    }

    /// Number of arguments after the name.
    pub fn nargs(&self) -> usize {
        self.n - 1
    }

    pub fn field(&self, i: usize) -> &'static [u8] {
        if i < self.n.min(MAX_FIELDS) {
            self.fields[i]
        } else {
            &[]
        }
    }

    pub fn num(&self, i: usize) -> Option<u64> {
        parse_num(self.field(i))
    }

    /// A line starting with `PROBE <text> `.
    pub fn out(&self) -> Line {
        let mut l = line();
        l.s("PROBE ").b(self.text).s(" ");
        l
    }

    pub fn fail(&self, reason: &str) {
        self.out().s("FAIL ").s(reason).end();
    }
}

/// Appends a virtio-blk status byte as text.
pub fn status_text(l: &mut Line, s: u8) -> &mut Line {
    match s {
        0 => l.s("OK"),
        1 => l.s("IOERR"),
        2 => l.s("UNSUPP"),
        STATUS_SENTINEL => l.s("NONE"),
        n => l.d(u64::from(n)),
    }
}

/// Per-device driver state. `Option<Blk>` would put the table into .data (the
/// None niche is not all-zero), so "initialised" is a separate zero-able flag.
struct DevSlot {
    blk: MaybeUninit<Blk>,
    ready: bool,
    stale: bool,
}

static DEVS: RacyCell<[DevSlot; MAX_DEVS]> = RacyCell::new(
    [const {
        DevSlot {
            blk: MaybeUninit::uninit(),
            ready: false,
            stale: false,
        }
    }; MAX_DEVS],
);

/// The device index in field `i` of `sc` and its MMIO address, or prints `FAIL <reason>`
/// and returns None (no such index, no such device, or its window not mapped).
pub fn device_addr(ctx: &Ctx, sc: &Scen, i: usize) -> Option<(usize, u64)> {
    let Some(idx) = sc.num(i).map(|v| v as usize) else {
        sc.fail("bad-device-index");
        return None;
    };
    if idx >= ctx.cmd.ndevs {
        sc.fail("no-such-device");
        return None;
    }
    let addr = ctx.cmd.devs[idx].addr;
    if !crate::cpu::phys_mapped(addr, 0x200) {
        sc.fail("device-not-mapped");
        return None;
    }
    Some((idx, addr))
}

/// The initialised driver for the device index in field `i` of `sc`, or prints
/// `FAIL <reason>` and returns None.
pub fn device(ctx: &Ctx, sc: &Scen, i: usize) -> Option<(usize, &'static mut Blk)> {
    let (idx, addr) = device_addr(ctx, sc, i)?;
    // SAFETY: boot CPU only (scenarios run sequentially); each call hands out the
    // slot's driver for the duration of one scenario.
    let slot = unsafe { &mut (*DEVS.get())[idx] };
    let result = if !slot.ready {
        Blk::init(idx, addr).map(|b| {
            slot.blk.write(b);
            slot.ready = true;
        })
    } else if slot.stale {
        // SAFETY: ready == true means blk was written.
        unsafe { slot.blk.assume_init_mut() }.reinit()
    } else {
        Ok(())
    };
    if let Err(e) = result {
        slot.stale = true;
        sc.fail(e.as_str());
        return None;
    }
    slot.stale = false;
    // SAFETY: ready (checked or set above).
    Some((idx, unsafe { slot.blk.assume_init_mut() }))
}

/// Makes the next user of device `idx` reset and re-initialise it.
pub fn mark_stale(idx: usize) {
    // SAFETY: boot CPU only; no reference into DEVS is used across this call by
    // the callers (they only pass the index).
    unsafe { (*DEVS.get())[idx].stale = true };
}

pub fn run_all(ctx: &Ctx) {
    for item in ctx.cmd.run.split(|&b| b == b',').filter(|s| !s.is_empty()) {
        let sc = Scen::parse(item);
        match sc.name() {
            b"blk-info" => blk::info(ctx, &sc),
            b"blk-write" => blk::write(ctx, &sc),
            b"blk-read" => blk::read(ctx, &sc),
            b"blk-flush" => blk::flush(ctx, &sc),
            b"blk-burst" => blk::burst(ctx, &sc),
            b"blk-bad" => bad::run(ctx, &sc),
            b"blk-irq" => irq::run(ctx, &sc),
            b"mmio-isr" => irq::isr_cost(ctx, &sc),
            b"smp" => smp::run(ctx, &sc),
            b"crash" => crash::run(&sc),
            b"idle" => idle::run(&sc),
            b"echo-serial" => echo::run(ctx, &sc),
            b"cons-echo" => cons::echo(ctx, &sc),
            b"cons-write" => cons::write(ctx, &sc),
            b"cons-bad" => cons::bad(ctx, &sc),
            b"net-info" => net::info(ctx, &sc),
            b"net-send" => net::send(ctx, &sc),
            b"net-recv" => net::recv(ctx, &sc),
            b"net-echo" => net::echo(ctx, &sc),
            b"net-blast" => net::blast(ctx, &sc),
            b"net-sink" => net::sink(ctx, &sc),
            b"net-bad" => net::bad(ctx, &sc),
            _ => sc.fail("unknown-scenario"),
        }
    }
}
