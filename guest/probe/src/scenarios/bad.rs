//! `blk-bad:DEV:CASE`: deliberately malformed requests (the probe as a hostile
//! guest). The probe does not judge the device; it reports what happened:
//!
//! `PROBE blk-bad:DEV:CASE status=<OK|IOERR|UNSUPP|NONE|n> used=<0|1> used_len=<n>`
//!
//! where `status` is the status byte we watch (pre-set to the sentinel 0xAA, shown
//! as NONE if untouched) and `used` tells whether a used-ring entry came back
//! within `probe.bad_timeout_ms`. Then a valid 1-sector read of sector 0 shows
//! whether the device still works:
//!
//! `PROBE blk-bad:DEV:CASE after=<OK|IOERR|UNSUPP|n|TIMEOUT|REINIT-FAILED> reinit=<0|1>`
//!
//! `reinit=1` means the driver had to reset and re-initialise the device first,
//! because descriptors were never returned (used=0 or a wrong id) or the device
//! flagged DEVICE_NEEDS_RESET / FAILED.
//!
//! Writes only ever target the last sector (capacity-1); reads use sector 0.

use crate::dma;
use crate::fmt::Line;
use crate::scenarios::blk::fill_pattern;
use crate::scenarios::{device, mark_stale, status_text, Scen};
use crate::time::Deadline;
use crate::virtio::blk::{Blk, Seg, F_INDIRECT_DESC, SECTOR, STATUS_SENTINEL, T_IN, T_OUT};
use crate::virtio::queue::{F_INDIRECT, F_NEXT, F_WRITE};
use crate::Ctx;

const GIB: u64 = 1 << 30;

/// What the device did with one malformed request.
struct Outcome {
    status: u8,
    used: bool,
    used_len: u32,
}

/// Where a descriptor of a hand-built chain points.
#[derive(Clone, Copy)]
enum At {
    Hdr,
    Status,
    /// Offset into the DMA pool.
    Pool(u64),
    /// A raw guest-physical address.
    Raw(u64),
    /// Offset into the device slot's indirect-table page.
    Ind(u64),
}

/// One descriptor of a hand-built chain; `next` indexes the spec list.
#[derive(Clone, Copy)]
struct D {
    at: At,
    len: u32,
    flags: u16,
    next: u16,
}

const fn d(at: At, len: u32, flags: u16, next: u16) -> D {
    D {
        at,
        len,
        flags,
        next,
    }
}

fn resolve(dev: &Blk, head: u16, at: At) -> u64 {
    match at {
        At::Hdr => dev.hdr_addr(head),
        At::Status => dev.status_addr(head),
        At::Pool(off) => dma::base() + off,
        At::Raw(a) => a,
        At::Ind(off) => dev.indirect_addr() + off,
    }
}

/// Writes descriptor `i` of the indirect-table page.
fn write_ind(dev: &Blk, head: u16, i: u64, spec: D) {
    let p = (dev.indirect_addr() + i * 16) as *mut u8;
    // SAFETY: the indirect page belongs to this device slot and no request using it
    // is in flight (bad cases run one at a time, and stuck ones force a reinit).
    unsafe {
        core::ptr::write_volatile(p as *mut u64, resolve(dev, head, spec.at));
        core::ptr::write_volatile(p.add(8) as *mut u32, spec.len);
        core::ptr::write_volatile(p.add(12) as *mut u16, spec.flags);
        core::ptr::write_volatile(p.add(14) as *mut u16, spec.next);
    }
}

/// Allocates descriptors for `chain`, fills them (indices in `next` are
/// translated), writes header and sentinel, fills the indirect page from `ind`,
/// publishes `chain[0]` (or `avail_override`) and notifies. Returns the slot
/// whose status byte to watch, or None if the queue has no room.
fn submit(
    dev: &mut Blk,
    typ: u32,
    sector: u64,
    chain: &[D],
    ind: &[D],
    avail_override: Option<u16>,
) -> Option<u16> {
    let mut descs = [0u16; 8];
    for slot in descs.iter_mut().take(chain.len()) {
        *slot = dev.q.alloc()?;
    }
    let head = descs[0];
    dev.write_hdr(head, typ, sector);
    dev.set_status(head, STATUS_SENTINEL);
    for (i, spec) in ind.iter().enumerate() {
        write_ind(dev, head, i as u64, *spec);
    }
    for (i, spec) in chain.iter().enumerate() {
        let next = descs[usize::from(spec.next) % chain.len()];
        let addr = resolve(dev, head, spec.at);
        dev.q.set_desc(descs[i], addr, spec.len, spec.flags, next);
    }
    match avail_override {
        // The descriptors stay allocated: the device never sees them, so the
        // leak is detected below and forces a reinit.
        Some(entry) => dev.q.push_avail(entry),
        None => dev.q.publish(head, &descs[..chain.len()]),
    }
    dev.notify();
    Some(head)
}

/// Waits for the first used element (any id) and reads the watched status byte.
fn observe(dev: &mut Blk, head: u16, timeout_ms: u64) -> Outcome {
    let deadline = Deadline::after_ms(timeout_ms);
    let mut out = Outcome {
        status: STATUS_SENTINEL,
        used: false,
        used_len: 0,
    };
    loop {
        if let Some(u) = dev.q.pop_used() {
            out.used = true;
            out.used_len = u.len;
            break;
        }
        if deadline.expired() {
            break;
        }
        core::hint::spin_loop();
    }
    out.status = dev.status(head);
    out
}

/// A standard 3-descriptor request: header, one data buffer, status.
fn simple(data: At, len: u32, data_flags: u16) -> [D; 3] {
    [
        d(At::Hdr, 16, F_NEXT, 1),
        d(data, len, data_flags | F_NEXT, 2),
        d(At::Status, 1, F_WRITE, 0),
    ]
}

fn report(sc: &Scen, o: Option<&Outcome>, extra: Option<(&'static str, u64)>) {
    let mut l: Line = sc.out();
    match o {
        Some(o) => {
            l.s("status=");
            status_text(&mut l, o.status)
                .s(" used=")
                .d(u64::from(o.used))
                .s(" used_len=")
                .d(u64::from(o.used_len));
        }
        None => {
            l.s("status=NO-DESCRIPTORS used=0 used_len=0");
        }
    }
    if let Some((k, v)) = extra {
        l.s(" ").s(k).s("=").hx(v);
    }
    l.end();
}

/// Resets the device if the last request left it or the queue in doubt.
/// Returns Err if re-initialisation failed.
fn recover(dev: &mut Blk) -> Result<bool, &'static str> {
    let leaked = dev.q.free_descs() != usize::from(dev.q.size());
    if !leaked && !dev.needs_reset() {
        return Ok(false);
    }
    dev.reinit().map(|()| true).map_err(|e| e.as_str())
}

pub fn run(ctx: &Ctx, sc: &Scen) {
    if sc.nargs() != 2 {
        return sc.fail("usage blk-bad:DEV:CASE");
    }
    let Some((idx, dev)) = device(ctx, sc, 1) else {
        return;
    };
    let cap = dev.capacity;
    let last = cap.saturating_sub(1);
    let ram_end = match ctx.boot.ram_end() {
        0 => 4 * GIB,
        e => e,
    };
    let beyond_ram = ram_end + GIB;
    let t = ctx.cmd.bad_timeout_ms;
    let mut reinit = false;

    // Each entry: (type, sector, chain, indirect table, avail override, extra key).
    let mut one = |dev: &mut Blk,
                   typ: u32,
                   sector: u64,
                   chain: &[D],
                   ind: &[D],
                   avail: Option<u16>,
                   extra: Option<(&'static str, u64)>| {
        let o = submit(dev, typ, sector, chain, ind, avail).map(|h| observe(dev, h, t));
        report(sc, o.as_ref(), extra);
        recover(dev).map(|r| reinit |= r)
    };

    let res = match sc.field(2) {
        b"oob-sector" => one(
            dev,
            T_IN,
            cap,
            &simple(At::Pool(0), 512, F_WRITE),
            &[],
            None,
            None,
        ),
        b"oob-span" => one(
            dev,
            T_IN,
            cap.saturating_sub(4),
            &simple(At::Pool(0), 8 * 512, F_WRITE),
            &[],
            None,
            None,
        ),
        b"desc-oob" => {
            let addrs = [beyond_ram, 0xFFFF_FFFF_FFFF_F000];
            let mut r = Ok(());
            for a in addrs {
                r = one(
                    dev,
                    T_IN,
                    0,
                    &simple(At::Raw(a), 512, F_WRITE),
                    &[],
                    None,
                    Some(("addr", a)),
                );
                if r.is_err() {
                    break;
                }
            }
            r
        }
        b"hdr-short" => {
            let chain = [
                d(At::Hdr, 8, F_NEXT, 1),
                d(At::Pool(0), 512, F_WRITE | F_NEXT, 2),
                d(At::Status, 1, F_WRITE, 0),
            ];
            one(dev, T_IN, 0, &chain, &[], None, None)
        }
        b"no-status" => {
            // SAFETY: nothing in flight on the pool.
            fill_pattern(unsafe { dma::slice(0, 512) }, 0xBAD, last * SECTOR);
            let chain = [d(At::Hdr, 16, F_NEXT, 1), d(At::Pool(0), 512, 0, 0)];
            one(dev, T_OUT, last, &chain, &[], None, None)
        }
        b"status-ro" => one(
            dev,
            T_IN,
            0,
            &[
                d(At::Hdr, 16, F_NEXT, 1),
                d(At::Pool(0), 512, F_WRITE | F_NEXT, 2),
                d(At::Status, 1, 0, 0),
            ],
            &[],
            None,
            None,
        ),
        b"len-unaligned" => one(
            dev,
            T_IN,
            0,
            &simple(At::Pool(0), 100, F_WRITE),
            &[],
            None,
            None,
        ),
        b"data-dir" => one(dev, T_IN, 0, &simple(At::Pool(0), 512, 0), &[], None, None),
        b"bad-type" => one(
            dev,
            0xFF,
            0,
            &simple(At::Pool(0), 512, F_WRITE),
            &[],
            None,
            None,
        ),
        b"write-ro" => {
            // SAFETY: nothing in flight on the pool.
            fill_pattern(unsafe { dma::slice(0, 512) }, 0xBAD, last * SECTOR);
            one(
                dev,
                T_OUT,
                last,
                &simple(At::Pool(0), 512, 0),
                &[],
                None,
                None,
            )
        }
        b"indirect" if dev.features & F_INDIRECT_DESC == 0 => {
            sc.out().s("status=SKIPPED used=0 used_len=0").end();
            Ok(())
        }
        b"indirect" => one(
            dev,
            T_IN,
            0,
            &[d(At::Ind(0), 48, F_INDIRECT, 0)],
            &simple(At::Pool(0), 512, F_WRITE),
            None,
            None,
        ),
        b"indirect-oob" => one(
            dev,
            T_IN,
            0,
            &[d(At::Raw(beyond_ram), 48, F_INDIRECT, 0)],
            &[],
            None,
            None,
        ),
        b"indirect-nested" => {
            // Outer table: header, then an INDIRECT descriptor pointing at an inner
            // table (data + status) 64 bytes further into the same page.
            let tables = [
                d(At::Hdr, 16, F_NEXT, 1),
                d(At::Ind(64), 32, F_INDIRECT, 0),
                d(At::Hdr, 0, 0, 0), // padding up to offset 64
                d(At::Hdr, 0, 0, 0),
                d(At::Pool(0), 512, F_WRITE | F_NEXT, 1),
                d(At::Status, 1, F_WRITE, 0),
            ];
            one(
                dev,
                T_IN,
                0,
                &[d(At::Ind(0), 32, F_INDIRECT, 0)],
                &tables,
                None,
                None,
            )
        }
        b"loop" => {
            // A write to the last sector whose (device-readable) header and data
            // descriptors point at each other: a device walking the chain without a
            // length limit never finishes. All-readable, so that the cycle, not the
            // descriptor order, is the only defect.
            // SAFETY: nothing in flight on the pool.
            fill_pattern(unsafe { dma::slice(0, 512) }, 0xBAD, last * SECTOR);
            let chain = [d(At::Hdr, 16, F_NEXT, 1), d(At::Pool(0), 512, F_NEXT, 0)];
            one(dev, T_OUT, last, &chain, &[], None, None)
        }
        b"huge-len" => one(
            dev,
            T_IN,
            0,
            &simple(At::Raw(ctx.boot.ram_start()), 0xFFFF_F000, F_WRITE),
            &[],
            None,
            None,
        ),
        b"zero-len" => one(
            dev,
            T_IN,
            0,
            &simple(At::Pool(0), 0, F_WRITE),
            &[],
            None,
            None,
        ),
        b"bad-index" => {
            let bogus = dev.q.size();
            one(
                dev,
                T_IN,
                0,
                &[d(At::Status, 1, F_WRITE, 0)],
                &[],
                Some(bogus),
                Some(("index", u64::from(bogus))),
            )
        }
        _ => return sc.fail("unknown-case"),
    };

    let mut l = sc.out();
    match res {
        Err(e) => {
            mark_stale(idx);
            l.s("after=REINIT-FAILED reinit=1 reason=").s(e).end();
        }
        Ok(()) => {
            let seg = [Seg {
                addr: dma::base(),
                len: 512,
            }];
            let r = dev
                .submit(T_IN, 0, &seg, true)
                .and_then(|h| dev.wait(h, ctx.cmd.timeout_ms));
            l.s("after=");
            match r {
                Ok((s, _)) => status_text(&mut l, s),
                Err(_) => {
                    mark_stale(idx);
                    l.s("TIMEOUT")
                }
            };
            l.s(" reinit=").d(u64::from(reinit)).end();
        }
    }
}
