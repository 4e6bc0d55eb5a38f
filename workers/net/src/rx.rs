//! The receive queue (queue 0): frames from the tap to the guest.
//!
//! A frame is read from the tap, with the 12-byte virtio-net header the kernel writes in front
//! of it, into a bounce buffer, and copied into receive chains (device-writable buffers):
//!
//! - with `VIRTIO_NET_F_MRG_RXBUF`, over as many chains as it needs, each filled before the
//!   next; `num_buffers` in the header (first chain) says how many;
//! - without it, into one chain, which must hold it all (`num_buffers` is 1); a frame the next
//!   chain cannot hold is dropped (`rx_no_room`) and the chain kept for the next frame.
//!
//! The tap is read only when the guest has made receive chains available. When there are none,
//! the frame already read waits in the bounce buffer (with the chains taken for it so far), the
//! caller stops watching the tap for input, and, with EVENT_IDX, notifications are turned on so
//! the guest's next buffers kick the queue: the kernel queues (or drops) what arrives meanwhile,
//! and the worker does not spin.
//!
//! | receive chain                                                 | what happens                       | counter |
//! |---------------------------------------------------------------|------------------------------------|---------|
//! | does not end, or more than 1024 descriptors                   | returned empty (used length 0)     | `rx_bad_chain` |
//! | a device-readable descriptor                                  | returned empty                     | `rx_read_only` |
//! | a buffer outside guest memory                                 | returned empty                     | `rx_out_of_memory` |
//! | first chain of a frame smaller than the header; a later one empty | returned empty                 | `rx_too_small` |
//!
//! | frame from the tap                                            | what happens  | counter |
//! |---------------------------------------------------------------|---------------|---------|
//! | shorter than the header                                       | dropped       | `rx_short` |
//! | longer than 65550 bytes                                       | dropped       | `rx_too_big` |
//! | no MRG_RXBUF and the next chain is too small                  | dropped       | `rx_no_room` |
//! | otherwise                                                     | delivered     | `rx_frames`, `rx_bytes` |
//!
//! A chain returned empty is a driver bug; Linux counts it as a length error and reposts the
//! buffer. It is always returned before the chains of the frame that is being placed, so the
//! chains of one frame stay consecutive in the used ring, as MRG_RXBUF requires.

use std::io;

use tracing::warn;
use vhost_user_backend::VringRwLock;

use crate::header::{HDR_LEN, MAX_FRAME, NUM_BUFFERS_OFFSET};
use crate::metrics::{should_log, Metrics};
use crate::ring::{self, Buffers, ChainFault, Ctx};
use crate::tap::TapIo;

/// Frames (delivered or dropped) and unusable chains handled per call at most.
pub const BUDGET: usize = 256;
/// The bounce buffer: the longest frame accepted, its header, and one byte to tell a longer
/// frame (which the tap would cut to the buffer) from one that fits.
pub const BOUNCE: usize = HDR_LEN + MAX_FRAME + 1;

/// How a call to [`process`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest has no (more) receive buffers: stop reading the tap until it kicks.
    NoBuffers,
    /// Everything the tap had was delivered.
    TapEmpty,
    /// [`BUDGET`] units of work were done; the tap may have more.
    Budget,
    /// Reading the tap failed: stop reading it until the guest kicks.
    TapError,
}

/// A receive chain taken from the ring for the frame being placed.
#[derive(Debug)]
struct Held {
    head: u16,
    bufs: Buffers,
}

/// The receive side's memory between events: the bounce buffer, the frame in it that waits
/// for receive buffers, and the chains already taken for it.
pub struct RxState {
    buf: Box<[u8]>,
    /// Length (header included) of the frame in `buf` that is not delivered yet.
    pending: Option<usize>,
    held: Vec<Held>,
}

impl Default for RxState {
    fn default() -> Self {
        RxState {
            buf: vec![0u8; BOUNCE].into_boxed_slice(),
            pending: None,
            held: Vec::new(),
        }
    }
}

impl RxState {
    /// Forgets the waiting frame and the chains taken for it: the queue was stopped or the
    /// device reset, and those chains belong to a ring that is gone.
    pub fn clear(&mut self) {
        self.pending = None;
        self.held.clear();
    }

    /// Whether a frame waits for receive buffers.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

fn count(counter: &std::sync::atomic::AtomicU64, what: &str, detail: &dyn std::fmt::Display) {
    let n = Metrics::bump(counter);
    if should_log(n) {
        warn!(count = n, "{what}: {detail}");
    }
}

fn chain_counter(m: &Metrics, f: ChainFault) -> &std::sync::atomic::AtomicU64 {
    match f {
        ChainFault::NoEnd | ChainFault::TooMany(_) => &m.rx_bad_chain,
        ChainFault::WrongDirection => &m.rx_read_only,
        ChainFault::OutOfMemory { .. } => &m.rx_out_of_memory,
    }
}

/// One pass: reads frames and places them until the guest's buffers or the tap run out, or
/// `*work` reaches [`BUDGET`]. Returns whether any chain was taken from the ring, whether any
/// went to the used ring, and why it stopped.
fn round<T: TapIo>(
    ctx: &Ctx<'_, T>,
    vring: &VringRwLock,
    st: &mut RxState,
    mrg: bool,
    work: &mut usize,
) -> (bool, bool, Outcome) {
    let mut taken = false;
    let mut used = false;
    loop {
        if st.pending.is_none() {
            if *work >= BUDGET {
                return (taken, used, Outcome::Budget);
            }
            if st.held.is_empty() && !ring::has_available(ctx, vring) {
                return (taken, used, Outcome::NoBuffers);
            }
            match ctx.tap.recv(&mut st.buf) {
                // A tap does not end; if it ever says so, reading it again would spin.
                Ok(0) => {
                    count(
                        &ctx.metrics.rx_tap_errors,
                        "cannot read the tap",
                        &"end of file",
                    );
                    return (taken, used, Outcome::TapError);
                }
                Ok(n) if n < HDR_LEN => {
                    *work += 1;
                    count(&ctx.metrics.rx_short, "frame from the tap dropped", &n);
                }
                Ok(n) if n > HDR_LEN + MAX_FRAME => {
                    *work += 1;
                    count(&ctx.metrics.rx_too_big, "frame from the tap dropped", &n);
                }
                Ok(n) => st.pending = Some(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (taken, used, Outcome::TapEmpty);
                }
                Err(e) => {
                    count(&ctx.metrics.rx_tap_errors, "cannot read the tap", &e);
                    return (taken, used, Outcome::TapError);
                }
            }
            continue;
        }
        let len = st.pending.expect("checked above");

        // Take chains until the frame fits (MRG_RXBUF) or there is one (without it).
        loop {
            let room: u64 = st.held.iter().map(|h| h.bufs.len).sum();
            let enough = if mrg {
                room >= len as u64
            } else {
                !st.held.is_empty()
            };
            if enough {
                break;
            }
            if *work >= BUDGET {
                return (taken, used, Outcome::Budget);
            }
            let Some(chain) = ring::pop(ctx, vring) else {
                return (taken, used, Outcome::NoBuffers);
            };
            taken = true;
            let head = chain.head_index();
            let fault = match ring::collect(ctx.mem, chain, true) {
                Ok(bufs) => {
                    let least = if st.held.is_empty() {
                        HDR_LEN as u64
                    } else {
                        1
                    };
                    if bufs.len >= least {
                        st.held.push(Held { head, bufs });
                        continue;
                    }
                    count(
                        &ctx.metrics.rx_too_small,
                        "receive chain returned empty",
                        &format_args!("{} bytes", bufs.len),
                    );
                    None
                }
                Err(f) => Some(f),
            };
            if let Some(f) = fault {
                count(
                    chain_counter(ctx.metrics, f),
                    "receive chain returned empty",
                    &f,
                );
            }
            *work += 1;
            ring::complete(ctx.metrics, vring, head, 0);
            used = true;
        }

        *work += 1;
        st.pending = None;
        if !mrg && st.held[0].bufs.len < len as u64 {
            count(
                &ctx.metrics.rx_no_room,
                "frame from the tap dropped",
                &format_args!("{len} bytes for a {}-byte buffer", st.held[0].bufs.len),
            );
            continue;
        }
        deliver(ctx, vring, st, len);
        used = true;
    }
}

/// Copies the frame in the bounce buffer (`len` bytes with its header) into the held chains,
/// in order, and returns them to the guest. The chains hold it (checked by the caller).
fn deliver<T>(ctx: &Ctx<'_, T>, vring: &VringRwLock, st: &mut RxState, len: usize) {
    // How many chains the frame takes: just enough of the held ones.
    let mut room = 0u64;
    let n = st
        .held
        .iter()
        .position(|h| {
            room += h.bufs.len;
            room >= len as u64
        })
        .map_or(st.held.len(), |i| i + 1);
    let chains: Vec<Held> = st.held.drain(..n).collect();
    // `n` is at most the ring size.
    let num_buffers = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    st.buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num_buffers.to_le_bytes());

    let mut lens = Vec::with_capacity(chains.len());
    let mut done = 0;
    let mut failed = None;
    for c in &chains {
        match c.bufs.write_from(ctx.mem, &st.buf[done..len]) {
            Ok(w) => {
                done += w;
                // At most the chain's length, which came from u32 descriptor lengths of a
                // chain the iterator bounds.
                lens.push(u32::try_from(w).unwrap_or(u32::MAX));
            }
            Err(f) => {
                failed = Some(f);
                break;
            }
        }
    }
    if let Some(f) = failed {
        // Checked against this same memory when the chain was taken; cannot happen.
        count(&ctx.metrics.rx_out_of_memory, "frame dropped", &f);
        lens = vec![0; chains.len()];
    } else {
        Metrics::bump(&ctx.metrics.rx_frames);
        Metrics::add(&ctx.metrics.rx_bytes, (len - HDR_LEN) as u64);
    }
    for (c, l) in chains.iter().zip(lens) {
        ring::complete(ctx.metrics, vring, c.head, l);
    }
}

/// Serves the receive queue: see the module documentation.
pub fn process<T: TapIo>(
    ctx: &Ctx<'_, T>,
    vring: &VringRwLock,
    st: &mut RxState,
    mrg: bool,
) -> Outcome {
    let mut work = 0;
    let mut idle_rounds = 0;
    loop {
        let (taken, used, outcome) = round(ctx, vring, st, mrg, &mut work);
        if used {
            ring::notify(ctx.metrics, vring);
        }
        if outcome != Outcome::NoBuffers || !ctx.event_idx {
            return outcome;
        }
        // Out of buffers: ask for a kick when the guest adds some, and look once more in case
        // it did just now.
        if !ring::rearm(ctx.metrics, vring, taken, &mut idle_rounds) {
            return Outcome::NoBuffers;
        }
    }
}

#[cfg(test)]
#[path = "rx_tests.rs"]
mod tests;
