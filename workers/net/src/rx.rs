//! The receive queue (queue 0): frames from the tap to the guest.
//!
//! A frame comes from the tap with the 12-byte virtio-net header the kernel writes in front of
//! it, and goes into receive chains (device-writable buffers):
//!
//! - with `VIRTIO_NET_F_MRG_RXBUF`, over as many chains as it needs, each filled before the
//!   next; `num_buffers` in the header (first chain) says how many;
//! - without it, into one chain, which must hold it all (`num_buffers` is 1); a frame the next
//!   chain cannot hold is dropped (`rx_no_room`) and the chain kept for the next frame.
//!
//! With MRG_RXBUF, chains enough for the longest frame are taken first and the frame is read
//! with one `readv` straight into them (`rx_direct`): the kernel's copy is the only one, as in
//! vhost-net. The chains the frame did not need stay with the device for the next frames (and
//! go back to the available ring when the queue stops, so the ring's base counts only chains
//! the guest got back). When the guest has posted less than the longest frame, or without
//! MRG_RXBUF, the frame is read into a bounce buffer and copied into the chains once it is
//! known how many it needs.
//!
//! The guest is signalled after every frame (if it asked to be: EVENT_IDX, or no
//! `VRING_AVAIL_F_NO_INTERRUPT`), not once the tap is drained, as QEMU does (vhost-net every 64
//! frames): a guest waiting for data starts on the first frame while the worker reads the next
//! ones, and one that is already busy (NAPI polling, notifications off) costs only the check.
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
//! | smaller than the header (every receive buffer must hold one)  | returned empty                     | `rx_too_small` |
//!
//! | frame from the tap                                            | what happens  | counter |
//! |---------------------------------------------------------------|---------------|---------|
//! | shorter than the header                                       | dropped       | `rx_short` |
//! | longer than 65550 bytes                                       | dropped       | `rx_too_big` |
//! | no MRG_RXBUF and the next chain is too small                  | dropped       | `rx_no_room` |
//! | otherwise                                                     | delivered     | `rx_frames`, `rx_bytes` (`rx_direct`) |
//!
//! A chain returned empty is a driver bug; Linux counts it as a length error and reposts the
//! buffer. It is always returned before the chains of the frame that is being placed, so the
//! chains of one frame stay consecutive in the used ring, as MRG_RXBUF requires.

use std::io;

use tracing::warn;
use vhost_user_backend::VringRwLock;
use vm_memory::GuestMemoryBackend;

use crate::header::{HDR_LEN, MAX_FRAME, NUM_BUFFERS_OFFSET};
use crate::metrics::{should_log, Metrics};
use crate::ring::{self, Buffers, ChainFault, Ctx};
use crate::tap::{TapIo, MAX_IOV};

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
    /// The held chains are the last ones taken from the ring (no chain after the first of them
    /// was returned empty), so they can be put back.
    contiguous: bool,
    /// Whether the guest wants to hear of the chains returned since the last look.
    signal: ring::Signal,
}

impl Default for RxState {
    fn default() -> Self {
        RxState {
            buf: vec![0u8; BOUNCE].into_boxed_slice(),
            pending: None,
            held: Vec::new(),
            contiguous: true,
            signal: ring::Signal::default(),
        }
    }
}

impl RxState {
    /// Forgets the waiting frame and the chains taken for it: the queue was stopped or the
    /// device reset, and those chains belong to a ring that is gone.
    pub fn clear(&mut self) {
        self.pending = None;
        self.held.clear();
        self.contiguous = true;
        self.signal.reset();
    }

    /// The queue stops: puts the held chains back on the available ring when no frame waits
    /// for them and they were the last ones taken, so that the ring's base (GET_VRING_BASE)
    /// counts only the chains the guest got back. Then [`RxState::clear`] forgets them.
    pub fn give_back(&mut self, vring: &VringRwLock) {
        if self.pending.is_some() || !self.contiguous {
            return;
        }
        for _ in 0..self.held.len() {
            ring::unpop(vring);
        }
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

/// Total bytes of the held chains.
fn room(held: &[Held]) -> u64 {
    held.iter().map(|h| h.bufs.len).sum()
}

/// What became of the chain [`take`] looked at.
enum Take {
    /// The available ring is empty.
    Empty,
    /// Held for the frames to come.
    Held,
    /// Unusable, returned empty (and counted).
    Returned,
}

/// Takes the next available chain: held if it can carry (part of) a frame, returned empty at
/// once otherwise.
fn take<T>(ctx: &Ctx<'_, T>, vring: &VringRwLock, st: &mut RxState) -> Take {
    if st.held.is_empty() {
        st.contiguous = true;
    }
    let Some(chain) = ring::pop(ctx, vring) else {
        return Take::Empty;
    };
    let head = chain.head_index();
    match ring::collect(ctx.mem, chain, true) {
        // Every receive buffer must hold the header (virtio 1.2, 5.1.6.3.1), also with
        // MRG_RXBUF, where any held chain may become the first of a frame.
        Ok(bufs) if bufs.len >= HDR_LEN as u64 => {
            st.held.push(Held { head, bufs });
            return Take::Held;
        }
        Ok(bufs) => count(
            &ctx.metrics.rx_too_small,
            "receive chain returned empty",
            &format_args!("{} bytes", bufs.len),
        ),
        Err(f) => count(
            chain_counter(ctx.metrics, f),
            "receive chain returned empty",
            &f,
        ),
    }
    // Returned before the held chains: they can no longer be put back.
    if !st.held.is_empty() {
        st.contiguous = false;
    }
    ring::complete_all(ctx, vring, &[(head, 0)]);
    Take::Returned
}

/// How a read straight into the held chains went.
enum Direct {
    /// A frame was delivered.
    Delivered,
    /// A frame was read and dropped (counted); the chains stay held.
    Dropped,
    TapEmpty,
    TapError,
    /// The held chains cannot be read into directly: go through the bounce buffer.
    Fallback,
}

/// Reads the next frame straight into the held chains, which hold [`BOUNCE`] bytes or more,
/// and delivers it: one copy (the kernel's) instead of two.
fn read_direct<T: TapIo>(ctx: &Ctx<'_, T>, vring: &VringRwLock, st: &mut RxState) -> Direct {
    let mut slices = Vec::with_capacity(st.held.len());
    let mut left = BOUNCE;
    'chains: for h in &st.held {
        for &(addr, len) in &h.bufs.segs {
            if left == 0 {
                break 'chains;
            }
            let n = left.min(len as usize);
            match ctx.mem.get_slice(addr, n) {
                Ok(s) => slices.push(s),
                // Across a memory region boundary (or gone since the chain was taken).
                Err(_) => return Direct::Fallback,
            }
            left -= n;
        }
    }
    if slices.len() > MAX_IOV {
        return Direct::Fallback;
    }
    let got = loop {
        match ctx.tap.recv_guest(&slices) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => break other,
        }
    };
    match got {
        Ok(0) => {
            count(
                &ctx.metrics.rx_tap_errors,
                "cannot read the tap",
                &"end of file",
            );
            Direct::TapError
        }
        Ok(n) if n < HDR_LEN => {
            count(&ctx.metrics.rx_short, "frame from the tap dropped", &n);
            Direct::Dropped
        }
        Ok(n) if n > HDR_LEN + MAX_FRAME => {
            count(&ctx.metrics.rx_too_big, "frame from the tap dropped", &n);
            Direct::Dropped
        }
        Ok(n) => {
            Metrics::bump(&ctx.metrics.rx_direct);
            complete_frame(ctx, vring, &mut st.held, n, None);
            Direct::Delivered
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Direct::TapEmpty,
        Err(e) => {
            count(&ctx.metrics.rx_tap_errors, "cannot read the tap", &e);
            Direct::TapError
        }
    }
}

/// One pass: reads frames and places them until the guest's buffers or the tap run out, or
/// `*work` reaches [`BUDGET`]. Returns whether any chain was taken from the ring, whether any
/// went to the used ring since the guest was last signalled (each frame is, as it lands), and
/// why it stopped.
///
/// With MRG_RXBUF, chains for the longest frame are taken first (and kept across frames), so
/// the frame is read straight into them; with fewer buffers than that, or without MRG_RXBUF,
/// the frame goes through the bounce buffer.
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
            if mrg {
                while room(&st.held) < BOUNCE as u64 && *work < BUDGET {
                    match take(ctx, vring, st) {
                        Take::Empty => break,
                        Take::Held => taken = true,
                        Take::Returned => {
                            taken = true;
                            used = true;
                            *work += 1;
                        }
                    }
                }
            }
            if *work >= BUDGET {
                return (taken, used, Outcome::Budget);
            }
            if mrg && room(&st.held) >= BOUNCE as u64 {
                match read_direct(ctx, vring, st) {
                    Direct::Delivered => {
                        *work += 1;
                        st.signal.notify(ctx, vring, &ctx.metrics.rx_signals);
                        used = false;
                        continue;
                    }
                    Direct::Dropped => {
                        *work += 1;
                        continue;
                    }
                    Direct::TapEmpty => return (taken, used, Outcome::TapEmpty),
                    Direct::TapError => return (taken, used, Outcome::TapError),
                    Direct::Fallback => {}
                }
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
            let enough = if mrg {
                room(&st.held) >= len as u64
            } else {
                !st.held.is_empty()
            };
            if enough {
                break;
            }
            if *work >= BUDGET {
                return (taken, used, Outcome::Budget);
            }
            match take(ctx, vring, st) {
                Take::Empty => return (taken, used, Outcome::NoBuffers),
                Take::Held => taken = true,
                Take::Returned => {
                    taken = true;
                    used = true;
                    *work += 1;
                }
            }
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
        complete_frame(ctx, vring, &mut st.held, len, Some(&mut st.buf));
        st.signal.notify(ctx, vring, &ctx.metrics.rx_signals);
        used = false;
    }
}

/// Returns the first of the `held` chains that hold a frame of `len` bytes (header included),
/// filled in order, to the guest, with `num_buffers` in the header saying how many they are.
/// `bounce` holds the frame when it has to be copied into them; `None` when it was read
/// straight into them. The chains hold it (checked by the caller).
fn complete_frame<T>(
    ctx: &Ctx<'_, T>,
    vring: &VringRwLock,
    held: &mut Vec<Held>,
    len: usize,
    bounce: Option<&mut [u8]>,
) {
    // How many chains the frame takes: just enough of the held ones.
    let mut room = 0u64;
    let n = held
        .iter()
        .position(|h| {
            room += h.bufs.len;
            room >= len as u64
        })
        .map_or(held.len(), |i| i + 1);
    let chains: Vec<Held> = held.drain(..n).collect();
    // `n` is at most the ring size.
    let num_buffers = u16::try_from(chains.len())
        .unwrap_or(u16::MAX)
        .to_le_bytes();
    // Each chain filled before the next: all of each but the last, the rest of the frame in it.
    let mut left = len as u64;
    let lens: Vec<u32> = chains
        .iter()
        .map(|c| {
            let l = left.min(c.bufs.len);
            left -= l;
            // At most a frame's length.
            u32::try_from(l).unwrap_or(u32::MAX)
        })
        .collect();

    let copied = match bounce {
        Some(buf) => {
            buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num_buffers);
            let mut done = 0;
            chains.iter().try_for_each(|c| {
                done += c.bufs.write_from(ctx.mem, &buf[done..len])?;
                Ok(())
            })
        }
        None => chains[0]
            .bufs
            .write_at(ctx.mem, NUM_BUFFERS_OFFSET as u64, &num_buffers)
            .map(|_| ()),
    };
    let lens = match copied {
        Ok(()) => {
            Metrics::bump(&ctx.metrics.rx_frames);
            Metrics::add(&ctx.metrics.rx_bytes, (len - HDR_LEN) as u64);
            lens
        }
        Err(f) => {
            // Checked against this same memory when the chain was taken; cannot happen.
            count(&ctx.metrics.rx_out_of_memory, "frame dropped", &f);
            vec![0; chains.len()]
        }
    };
    // All of the frame's chains at once: see ring::complete_all.
    let used: Vec<(u16, u32)> = chains.iter().map(|c| c.head).zip(lens).collect();
    ring::complete_all(ctx, vring, &used);
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
            st.signal.notify(ctx, vring, &ctx.metrics.rx_signals);
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
