//! The transmit queue (queue 1): frames from the guest to the tap.
//!
//! Each available chain is one frame: its device-readable bytes are the 12-byte virtio-net
//! header followed by the Ethernet frame, cut into descriptors any way the driver likes (the
//! header may share a descriptor with data or not). The chain is copied into a bounce buffer,
//! so the header that is checked is the header that is sent (the guest cannot change it in
//! between), checked, and written to the tap in one `writev` (header, frame).
//!
//! | chain                                                         | what happens          | counter |
//! |---------------------------------------------------------------|-----------------------|---------|
//! | does not end, or more than 1024 descriptors                   | dropped               | `tx_bad_chain`, `tx_too_many_descriptors` |
//! | a device-writable descriptor                                  | dropped               | `tx_write_only` |
//! | a buffer outside guest memory                                 | dropped               | `tx_out_of_memory` |
//! | fewer than 12 bytes                                           | dropped               | `tx_short` |
//! | a frame longer than 65550 bytes                               | dropped               | `tx_too_big` |
//! | a header [`crate::header::validate_tx`] refuses               | dropped               | `tx_bad_flags`, `tx_bad_gso`, `tx_gso_without_csum`, `tx_bad_offsets` |
//! | the tap refuses it (EIO when the link is down, EINVAL, …)     | dropped               | `tx_tap_errors` |
//! | the tap is full (EAGAIN)                                      | kept for later        | `tx_would_block` |
//! | valid                                                         | sent                  | `tx_frames`, `tx_bytes` |
//!
//! Every chain taken goes back to the used ring with length 0 (the device writes nothing into
//! transmit buffers), dropped or not, so the guest is never left waiting. A chain the tap had no
//! room for is put back on the available ring and the caller waits for the tap to become
//! writable (EPOLLOUT). At most [`BUDGET`] chains are served per call, so the receive side gets
//! its turn on the same thread.

use std::io::{self, IoSlice};
use std::ops::Deref;
use std::sync::atomic::AtomicU64;

use tracing::warn;
use vhost_user_backend::VringRwLock;
use virtio_queue::DescriptorChain;

use crate::header::{validate_tx, HdrFault, VnetHdr, HDR_LEN, MAX_FRAME};
use crate::metrics::{should_log, Metrics};
use crate::ring::{self, ChainFault, Ctx};
use crate::tap::TapIo;
use crate::GuestMem;

/// Chains served per call at most.
pub const BUDGET: usize = 256;
/// The longest chain accepted: header and frame.
pub const MAX_CHAIN: usize = HDR_LEN + MAX_FRAME;

/// How a call to [`process`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The available ring is empty (and, with EVENT_IDX, the driver will kick for more).
    Drained,
    /// The tap is full: a chain waits on the ring until the tap is writable.
    Blocked,
    /// [`BUDGET`] chains were served; there may be more.
    Budget,
}

/// The transmit side's own memory: a bounce buffer for one chain.
pub struct TxState {
    buf: Box<[u8]>,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            buf: vec![0u8; MAX_CHAIN].into_boxed_slice(),
        }
    }
}

/// Why a frame was dropped. Each kind has its counter (see the module table).
#[derive(Debug)]
pub enum Fault {
    Chain(ChainFault),
    Short(u64),
    TooBig(u64),
    Header(HdrFault),
    Tap(io::Error),
    ShortWrite { wrote: usize, len: usize },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Chain(c) => write!(f, "{c}"),
            Fault::Short(n) => write!(f, "{n} bytes, short of the virtio-net header"),
            Fault::TooBig(n) => write!(f, "{n} bytes, more than a header and {MAX_FRAME}"),
            Fault::Header(h) => write!(f, "{h}"),
            Fault::Tap(e) => write!(f, "the tap refused the frame: {e}"),
            Fault::ShortWrite { wrote, len } => write!(f, "the tap took {wrote} of {len} bytes"),
        }
    }
}

impl Fault {
    pub fn counter<'m>(&self, m: &'m Metrics) -> &'m AtomicU64 {
        match self {
            Fault::Chain(ChainFault::NoEnd) => &m.tx_bad_chain,
            Fault::Chain(ChainFault::TooMany(_)) => &m.tx_too_many_descriptors,
            Fault::Chain(ChainFault::WrongDirection) => &m.tx_write_only,
            Fault::Chain(ChainFault::OutOfMemory { .. }) => &m.tx_out_of_memory,
            Fault::Short(_) => &m.tx_short,
            Fault::TooBig(_) => &m.tx_too_big,
            Fault::Header(HdrFault::Flags(_) | HdrFault::CsumNotNegotiated) => &m.tx_bad_flags,
            Fault::Header(
                HdrFault::GsoType(_) | HdrFault::GsoNotNegotiated(_) | HdrFault::GsoSizeZero,
            ) => &m.tx_bad_gso,
            Fault::Header(HdrFault::GsoWithoutCsum) => &m.tx_gso_without_csum,
            Fault::Header(HdrFault::HdrLen { .. } | HdrFault::Csum { .. }) => &m.tx_bad_offsets,
            Fault::Tap(_) | Fault::ShortWrite { .. } => &m.tx_tap_errors,
        }
    }
}

/// What became of one chain.
#[derive(Debug)]
pub enum Sent {
    /// Written to the tap: this many frame bytes (without the header).
    Frame(usize),
    Dropped(Fault),
    /// The tap had no room; nothing was written.
    WouldBlock,
}

/// Sends one chain to the tap: gathers it into `buf`, checks it, writes it.
pub fn send_chain<M, T>(ctx: &Ctx<'_, T>, chain: DescriptorChain<M>, buf: &mut [u8]) -> Sent
where
    M: Deref<Target = GuestMem>,
    T: TapIo,
{
    let bufs = match ring::collect(ctx.mem, chain, false) {
        Ok(b) => b,
        Err(f) => return Sent::Dropped(Fault::Chain(f)),
    };
    if bufs.len < HDR_LEN as u64 {
        return Sent::Dropped(Fault::Short(bufs.len));
    }
    let total = match usize::try_from(bufs.len) {
        Ok(n) if n <= MAX_CHAIN && n <= buf.len() => n,
        _ => return Sent::Dropped(Fault::TooBig(bufs.len)),
    };
    if let Err(f) = bufs.read_into(ctx.mem, &mut buf[..total]) {
        return Sent::Dropped(Fault::Chain(f));
    }
    let (hdr, frame) = buf[..total].split_at(HDR_LEN);
    let parsed = VnetHdr::parse(hdr.try_into().expect("HDR_LEN bytes"));
    if let Err(h) = validate_tx(&parsed, frame.len(), ctx.acked) {
        return Sent::Dropped(Fault::Header(h));
    }
    loop {
        return match ctx.tap.send(&[IoSlice::new(hdr), IoSlice::new(frame)]) {
            Ok(n) if n == total => Sent::Frame(frame.len()),
            Ok(n) => Sent::Dropped(Fault::ShortWrite {
                wrote: n,
                len: total,
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::WouldBlock,
            Err(e) => Sent::Dropped(Fault::Tap(e)),
        };
    }
}

fn report(fault: &Fault, head: u16, metrics: &Metrics) {
    let n = Metrics::bump(fault.counter(metrics));
    if should_log(n) {
        warn!(head, count = n, "transmit frame dropped: {fault}");
    }
}

/// Serves chains until the ring is empty, the tap is full, or `*work` reaches [`BUDGET`].
/// Returns whether any chain was completed, and why it stopped.
fn round<T: TapIo>(
    ctx: &Ctx<'_, T>,
    vring: &VringRwLock,
    st: &mut TxState,
    work: &mut usize,
) -> (bool, Outcome) {
    let mut completed = false;
    loop {
        if *work >= BUDGET {
            return (completed, Outcome::Budget);
        }
        let Some(chain) = ring::pop(ctx, vring) else {
            return (completed, Outcome::Drained);
        };
        let head = chain.head_index();
        match send_chain(ctx, chain, &mut st.buf) {
            Sent::Frame(len) => {
                Metrics::bump(&ctx.metrics.tx_frames);
                Metrics::add(&ctx.metrics.tx_bytes, len as u64);
            }
            Sent::Dropped(fault) => report(&fault, head, ctx.metrics),
            Sent::WouldBlock => {
                ring::unpop(vring);
                Metrics::bump(&ctx.metrics.tx_would_block);
                return (completed, Outcome::Blocked);
            }
        }
        ring::complete(ctx.metrics, vring, head, 0);
        completed = true;
        *work += 1;
    }
}

/// Serves the transmit queue: see the module documentation. With EVENT_IDX, once the ring is
/// empty notifications are turned back on and the ring is looked at once more, so a chain
/// made available meanwhile is not missed; while the tap is full or the budget is spent they
/// stay off (the caller resumes on EPOLLOUT instead).
pub fn process<T: TapIo>(ctx: &Ctx<'_, T>, vring: &VringRwLock, st: &mut TxState) -> Outcome {
    let mut work = 0;
    let mut idle_rounds = 0;
    loop {
        let (completed, outcome) = round(ctx, vring, st, &mut work);
        if completed {
            ring::notify(ctx.metrics, vring, &ctx.metrics.tx_signals);
        }
        if outcome != Outcome::Drained || !ctx.event_idx {
            return outcome;
        }
        if !ring::rearm(ctx.metrics, vring, completed, &mut idle_rounds) {
            return Outcome::Drained;
        }
    }
}

#[cfg(test)]
#[path = "tx_tests.rs"]
mod tests;
