//! Block I/O scenarios: blk-info, blk-write, blk-read, blk-flush, blk-burst.
//!
//! Data written by blk-write and checked by blk-read follows
//! [`pattern_byte`]`(seed, absolute byte offset on the disk)`, so a test host can
//! verify the disk image independently.

use crate::cpu::rdtsc;
use crate::dma;
use crate::scenarios::{device, mark_stale, status_text, Scen};
use crate::time::Deadline;
use crate::virtio::blk::{IoError, Seg, MAX_SEGS, SECTOR, S_OK, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use crate::virtio::queue::QSZ_MAX;
use crate::Ctx;

/// Largest single request of blk-write/blk-read.
const CHUNK: u64 = 64 * 1024;
const GET_ID_LEN: usize = 20;

const PATTERN_K: u64 = 0x9E37_79B9_7F4A_7C15;
const PATTERN_S: u64 = 0xD1B5_4A32_D192_ED03;

/// The disk pattern (the reference definition). `off` is the absolute byte
/// offset on the disk.
pub fn pattern_byte(seed: u64, off: u64) -> u8 {
    (off.wrapping_mul(PATTERN_K) ^ seed.wrapping_mul(PATTERN_S)).rotate_left(29) as u8
}

/// Incremental form of [`pattern_byte`] for consecutive offsets, with as few
/// instructions per byte as possible (under PVM this guest runs in KVM's
/// instruction emulator, where every instruction costs microseconds): the low
/// byte of `x.rotate_left(29)` is bits 35..43 of `x`, and `off * K` advances by
/// `K` per byte.
struct PatternIter {
    v: u64,
    s: u64,
}

impl PatternIter {
    fn new(seed: u64, start: u64) -> Self {
        Self {
            v: start.wrapping_mul(PATTERN_K),
            s: seed.wrapping_mul(PATTERN_S),
        }
    }

    #[inline(always)]
    fn next_byte(&mut self) -> u8 {
        let b = ((self.v ^ self.s) >> 35) as u8;
        self.v = self.v.wrapping_add(PATTERN_K);
        b
    }

    /// The next 8 bytes as a little-endian word (one memory access instead of 8).
    #[inline(always)]
    fn next_word(&mut self) -> u64 {
        let mut w = 0;
        for i in 0..8 {
            w |= u64::from(self.next_byte()) << (8 * i);
        }
        w
    }
}

/// Fills `buf` with the pattern for disk offset `start`.
pub fn fill_pattern(buf: &mut [u8], seed: u64, start: u64) {
    let mut p = PatternIter::new(seed, start);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&p.next_word().to_le_bytes());
    }
    for b in words.into_remainder() {
        *b = p.next_byte();
    }
}

/// Compares `buf` with the pattern for disk offset `start`: returns the number
/// of differing bytes and the offset (relative to `buf`) of the first one.
fn check_pattern(buf: &[u8], seed: u64, start: u64) -> (u64, Option<usize>) {
    let mut p = PatternIter::new(seed, start);
    let (mut bad, mut first) = (0u64, None);
    let mut words = buf.chunks_exact(8);
    for (wi, w) in (&mut words).enumerate() {
        let expect = p.next_word().to_le_bytes();
        if w != expect {
            for (i, (a, b)) in w.iter().zip(expect).enumerate() {
                if *a != b {
                    bad += 1;
                    first.get_or_insert(wi * 8 + i);
                }
            }
        }
    }
    let tail = buf.len() - words.remainder().len();
    for (i, &b) in words.remainder().iter().enumerate() {
        if b != p.next_byte() {
            bad += 1;
            first.get_or_insert(tail + i);
        }
    }
    (bad, first)
}

/// `blk-info:DEV`
pub fn info(ctx: &Ctx, sc: &Scen) {
    if sc.nargs() != 1 {
        return sc.fail("usage blk-info:DEV");
    }
    let Some((idx, dev)) = device(ctx, sc, 1) else {
        return;
    };
    // SAFETY: no request is using the pool; the slice dies before the request.
    unsafe { dma::slice(0, GET_ID_LEN) }.fill(0);
    let id_status = dev.io(
        T_GET_ID,
        0,
        dma::base(),
        GET_ID_LEN as u32,
        ctx.cmd.timeout_ms,
    );
    let mut id = [0u8; GET_ID_LEN];
    let mut id_len = 0;
    match id_status {
        Ok(S_OK) => {
            // SAFETY: the request completed; nothing else uses the pool.
            let raw = unsafe { dma::slice(0, GET_ID_LEN) };
            for &c in raw.iter().take_while(|&&c| c != 0) {
                // Keep the value one token: no spaces or control characters.
                id[id_len] = if (0x21..0x7f).contains(&c) { c } else { b'_' };
                id_len += 1;
            }
        }
        Ok(_) => {}
        Err(_) => mark_stale(idx),
    }
    sc.out()
        .s("OK capacity=")
        .d(dev.capacity)
        .s(" features=")
        .hx(dev.features)
        .s(" ro=")
        .d(u64::from(dev.read_only()))
        .s(" blk_size=")
        .d(u64::from(dev.blk_size))
        .s(" seg_max=")
        .d(u64::from(dev.seg_max))
        .s(" id=")
        .b(&id[..id_len])
        .end();
}

/// Parses `NAME:DEV:SECTOR:COUNT:SEED`.
fn rw_args(sc: &Scen) -> Option<(u64, u64, u64)> {
    if sc.nargs() != 4 {
        return None;
    }
    Some((sc.num(2)?, sc.num(3)?, sc.num(4)?))
}

fn io_fail(sc: &Scen, idx: usize, e: IoError) {
    mark_stale(idx);
    sc.fail(match e {
        IoError::Timeout => "timeout",
        IoError::NoDescriptors => "no-descriptors",
    });
}

/// `blk-write:DEV:SECTOR:COUNT:SEED`
pub fn write(ctx: &Ctx, sc: &Scen) {
    let Some((sector, count, seed)) = rw_args(sc) else {
        return sc.fail("usage blk-write:DEV:SECTOR:COUNT:SEED");
    };
    let Some((idx, dev)) = device(ctx, sc, 1) else {
        return;
    };
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK / SECTOR);
        let start = (sector + done) * SECTOR;
        let len = (n * SECTOR) as usize;
        // SAFETY: no request is in flight; the slice is dropped before submitting.
        fill_pattern(unsafe { dma::slice(0, len) }, seed, start);
        match dev.io(
            T_OUT,
            sector + done,
            dma::base(),
            len as u32,
            ctx.cmd.timeout_ms,
        ) {
            Ok(S_OK) => {}
            Ok(s) => {
                let mut l = sc.out();
                l.s("OK status=");
                status_text(&mut l, s).s(" sector=").d(sector + done).end();
                return;
            }
            Err(e) => return io_fail(sc, idx, e),
        }
        done += n;
    }
    sc.out().s("OK status=OK").end();
}

/// `blk-read:DEV:SECTOR:COUNT:SEED`
pub fn read(ctx: &Ctx, sc: &Scen) {
    let Some((sector, count, seed)) = rw_args(sc) else {
        return sc.fail("usage blk-read:DEV:SECTOR:COUNT:SEED");
    };
    let Some((idx, dev)) = device(ctx, sc, 1) else {
        return;
    };
    let mut mismatches = 0u64;
    let mut first = None;
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK / SECTOR);
        let start = (sector + done) * SECTOR;
        let len = (n * SECTOR) as usize;
        // Poison the buffer so stale data from an earlier request cannot match.
        // SAFETY: nothing in flight; slice dropped before the request.
        unsafe { dma::slice(0, len) }.fill(!pattern_byte(seed, start));
        match dev.io(
            T_IN,
            sector + done,
            dma::base(),
            len as u32,
            ctx.cmd.timeout_ms,
        ) {
            Ok(S_OK) => {}
            Ok(s) => {
                let mut l = sc.out();
                l.s("FAIL status=");
                status_text(&mut l, s).s(" sector=").d(sector + done).end();
                return;
            }
            Err(e) => return io_fail(sc, idx, e),
        }
        // SAFETY: the request completed; no other slice of the pool is alive.
        let (bad, at) = check_pattern(unsafe { dma::slice(0, len) }, seed, start);
        mismatches += bad;
        if first.is_none() {
            first = at.map(|a| start + a as u64);
        }
        done += n;
    }
    match first {
        None => sc.out().s("OK mismatches=0").end(),
        Some(f) => sc
            .out()
            .s("FAIL mismatches=")
            .d(mismatches)
            .s(" first=")
            .d(f)
            .end(),
    }
}

/// `blk-flush:DEV`
pub fn flush(ctx: &Ctx, sc: &Scen) {
    if sc.nargs() != 1 {
        return sc.fail("usage blk-flush:DEV");
    }
    let Some((idx, dev)) = device(ctx, sc, 1) else {
        return;
    };
    match dev.io(T_FLUSH, 0, 0, 0, ctx.cmd.timeout_ms) {
        Ok(s) => {
            let mut l = sc.out();
            l.s("OK status=");
            status_text(&mut l, s).end();
        }
        Err(e) => io_fail(sc, idx, e),
    }
}

/// Seed of `blk-burst`'s random order: fixed, so that every run (and every VMM)
/// sees the same offsets.
const BURST_SEED: u64 = 0x2545_F491_4F6C_DD1D;

/// The offsets of `blk-burst`: request `i` goes to unit (SIZE-aligned slot) `i mod
/// units` in sequential order, or to a pseudo-random unit in random order
/// (xorshift64 from [`BURST_SEED`], scaled to `0..units` by a 64x64->128 multiply,
/// a handful of instructions per request, as few as the sequential order's).
enum Order {
    Seq,
    Rand(u64),
}

impl Order {
    #[inline(always)]
    fn unit(&mut self, i: u64, units: u64) -> u64 {
        match self {
            Order::Seq => i % units,
            Order::Rand(x) => {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                ((u128::from(*x) * u128::from(units)) >> 64) as u64
            }
        }
    }
}

/// `blk-burst:DEV:N:SIZE:OP[:ORDER]`: N requests of SIZE bytes, as many in flight
/// as the queue and the buffer pool allow, at successive offsets wrapping at
/// capacity (ORDER `seq`, the default) or at pseudo-random SIZE-aligned offsets
/// over the whole disk from a fixed seed (ORDER `rand`).
pub fn burst(ctx: &Ctx, sc: &Scen) {
    let usage = "usage blk-burst:DEV:N:SIZE:read|write[:seq|rand]";
    if sc.nargs() != 4 && sc.nargs() != 5 {
        return sc.fail(usage);
    }
    let (Some(total), Some(size)) = (sc.num(2), sc.num(3)) else {
        return sc.fail(usage);
    };
    let typ = match sc.field(4) {
        b"read" => T_IN,
        b"write" => T_OUT,
        _ => return sc.fail(usage),
    };
    let mut order = match sc.field(5) {
        b"" | b"seq" => Order::Seq,
        b"rand" => Order::Rand(BURST_SEED),
        _ => return sc.fail(usage),
    };
    if size == 0 || size % SECTOR != 0 || size > dma::POOL_SIZE as u64 {
        return sc.fail("bad-size");
    }
    let Some((idx, dev)) = device(ctx, sc, 1) else {
        return;
    };
    let sectors_per_req = size / SECTOR;
    let units = dev.capacity / sectors_per_req;
    if units == 0 {
        return sc.fail("disk-too-small");
    }
    let mut segs = [Seg { addr: 0, len: 0 }; MAX_SEGS];
    let nseg = dev.split(0, size as u32, &mut segs);
    let descs_per_req = nseg + 2;
    let slots = (dma::POOL_SIZE / size as usize)
        .min(usize::from(dev.q.size()) / descs_per_req)
        .min(QSZ_MAX);
    if slots == 0 {
        return sc.fail("queue-too-small");
    }
    if typ == T_OUT {
        // SAFETY: nothing in flight.
        unsafe { dma::slice(0, dma::POOL_SIZE) }.fill(0x5a);
    }
    let mut free_slots = [0u16; QSZ_MAX];
    for (i, s) in free_slots.iter_mut().enumerate().take(slots) {
        *s = i as u16;
    }
    let mut nfree = slots;
    let mut slot_of_head = [0u16; QSZ_MAX];
    let (mut submitted, mut completed, mut errors) = (0u64, 0u64, 0u64);
    let mut deadline = Deadline::after_ms(ctx.cmd.timeout_ms);
    let start = rdtsc();
    while completed < total {
        let mut pushed = false;
        while submitted < total && nfree > 0 && dev.q.free_descs() >= descs_per_req {
            nfree -= 1;
            let slot = free_slots[nfree];
            let addr = dma::base() + u64::from(slot) * size;
            let n = dev.split(addr, size as u32, &mut segs);
            let sector = order.unit(submitted, units) * sectors_per_req;
            let Ok(head) = dev.queue_request(typ, sector, &segs[..n], typ == T_IN) else {
                break;
            };
            slot_of_head[usize::from(head)] = slot;
            submitted += 1;
            pushed = true;
        }
        if pushed {
            dev.notify();
        }
        while let Some(u) = dev.q.pop_used() {
            if !u.known {
                errors += 1;
                continue;
            }
            let head = u.id as u16;
            if dev.status(head) != S_OK {
                errors += 1;
            }
            free_slots[nfree] = slot_of_head[usize::from(head)];
            nfree += 1;
            completed += 1;
            deadline = Deadline::after_ms(ctx.cmd.timeout_ms);
        }
        if deadline.expired() {
            mark_stale(idx);
            sc.out()
                .s("FAIL timeout completed=")
                .d(completed)
                .s(" errors=")
                .d(errors)
                .end();
            return;
        }
    }
    let cycles = rdtsc() - start;
    sc.out()
        .s("OK requests=")
        .d(total)
        .s(" cycles=")
        .d(cycles)
        .s(" errors=")
        .d(errors)
        .end();
}
