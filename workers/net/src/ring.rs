//! What both queues share: walking a descriptor chain into the guest buffers of one direction
//! (with every check a hostile chain needs), taking chains from the available ring, completing
//! them, and signalling the guest.
//!
//! Nothing here panics on guest data, and no byte outside guest memory is touched: every buffer
//! is checked against guest memory before it is used, and copies go through `vm-memory`.

use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::metrics::Metrics;
use crate::GuestMem;

/// Most descriptors one chain may have. Linux uses at most MAX_SKB_FRAGS + 2 per frame; an
/// indirect table may hold thousands, and walking that many would only let a guest make us work.
pub const MAX_DESCRIPTORS: usize = 1024;

/// What the data path works with during one event.
pub struct Ctx<'a, T> {
    /// Guest memory, as it is for the whole event.
    pub mem: &'a GuestMem,
    pub tap: &'a T,
    pub metrics: &'a Metrics,
    /// The features the driver acked.
    pub acked: u64,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
}

/// Why a chain cannot be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainFault {
    #[error("Descriptor chain does not end")]
    NoEnd,
    #[error("{0} descriptors in one chain")]
    TooMany(usize),
    #[error("Descriptor of the wrong direction for this queue")]
    WrongDirection,
    #[error("Buffer {addr:#x}+{len:#x} is not in guest memory")]
    OutOfMemory { addr: u64, len: u32 },
}

/// The guest buffers of a chain, in order, each non-empty and inside guest memory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Buffers {
    pub segs: Vec<(GuestAddress, u32)>,
    /// Total bytes.
    pub len: u64,
}

/// Walks `chain`: every descriptor must be device-writable (`writable`) or device-readable
/// (not `writable`), its buffer inside guest memory, and the chain must end within
/// [`MAX_DESCRIPTORS`]. Empty descriptors are skipped.
pub fn collect<M>(
    mem: &GuestMem,
    chain: DescriptorChain<M>,
    writable: bool,
) -> Result<Buffers, ChainFault>
where
    M: Deref<Target = GuestMem>,
{
    // The chain iterator stops at the end of the chain, but also on a loop (it yields at most
    // queue-size descriptors), an index out of range, a nested or malformed indirect table, or
    // a descriptor it cannot read. Only a last descriptor without NEXT is a proper end.
    let mut out = Buffers::default();
    let mut count = 0usize;
    let mut last = None;
    for d in chain {
        count += 1;
        if count > MAX_DESCRIPTORS {
            return Err(ChainFault::TooMany(count));
        }
        if d.is_write_only() != writable {
            return Err(ChainFault::WrongDirection);
        }
        last = Some(d);
        if d.len() == 0 {
            continue;
        }
        let in_memory = usize::try_from(d.len()).is_ok_and(|n| mem.check_range(d.addr(), n));
        if !in_memory {
            return Err(ChainFault::OutOfMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        out.segs.push((d.addr(), d.len()));
        out.len += u64::from(d.len());
    }
    match last {
        Some(d) if !d.has_next() => Ok(out),
        _ => Err(ChainFault::NoEnd),
    }
}

impl Buffers {
    /// Copies the first `dst.len()` bytes of the buffers out of guest memory.
    pub fn read_into(&self, mem: &GuestMem, dst: &mut [u8]) -> Result<(), ChainFault> {
        let mut done = 0;
        for &(addr, len) in &self.segs {
            if done == dst.len() {
                break;
            }
            let n = (dst.len() - done).min(len as usize);
            mem.read_slice(&mut dst[done..done + n], addr)
                .map_err(|_| ChainFault::OutOfMemory { addr: addr.0, len })?;
            done += n;
        }
        Ok(())
    }

    /// Copies as much of `src` as fits into the buffers; returns how much that was.
    pub fn write_from(&self, mem: &GuestMem, src: &[u8]) -> Result<usize, ChainFault> {
        self.write_at(mem, 0, src)
    }

    /// Copies as much of `src` as fits into the buffers from byte `offset` of them on; returns
    /// how much that was.
    pub fn write_at(&self, mem: &GuestMem, offset: u64, src: &[u8]) -> Result<usize, ChainFault> {
        let mut skip = offset;
        let mut done = 0;
        for &(addr, len) in &self.segs {
            if done == src.len() {
                break;
            }
            if skip >= u64::from(len) {
                skip -= u64::from(len);
                continue;
            }
            // `skip` < `len` here, a u32.
            let start = addr
                .checked_add(skip)
                .ok_or(ChainFault::OutOfMemory { addr: addr.0, len })?;
            let room = (u64::from(len) - skip) as usize;
            skip = 0;
            let n = (src.len() - done).min(room);
            mem.write_slice(&src[done..done + n], start)
                .map_err(|_| ChainFault::OutOfMemory { addr: addr.0, len })?;
            done += n;
        }
        Ok(done)
    }
}

/// Whether the queue may carry data: started by the frontend and enabled.
pub fn live(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.is_enabled() && state.get_queue().ready()
}

/// Takes the next available chain, if any. A ring that cannot be read counts as empty (and is
/// counted).
pub fn pop<'m, T>(ctx: &Ctx<'m, T>, vring: &VringRwLock) -> Option<DescriptorChain<&'m GuestMem>> {
    let mut state = vring.get_mut();
    match state.get_queue_mut().iter(ctx.mem) {
        Ok(mut it) => it.next(),
        Err(e) => {
            ring_error(ctx.metrics, "cannot read the available ring", &e);
            None
        }
    }
}

/// Puts the chain [`pop`] took last back, for the next attempt.
pub fn unpop(vring: &VringRwLock) {
    vring.get_mut().get_queue_mut().go_to_previous_position();
}

/// Whether the driver has made chains available that were not taken yet.
pub fn has_available<T>(ctx: &Ctx<'_, T>, vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    match queue.avail_idx(ctx.mem, Ordering::Acquire) {
        Ok(idx) => idx.0 != queue.next_avail(),
        Err(e) => {
            ring_error(ctx.metrics, "cannot read the available index", &e);
            false
        }
    }
}

/// Returns `chains` (head, bytes written) to the driver together: their used elements are
/// written first, and then the used index moves past all of them with one store.
///
/// A MRG_RXBUF frame spans several chains, and Linux drops a frame whose chains are not all in
/// the used ring when it looks (a length error, `rx_length_errors`). `virtio-queue`'s
/// `add_used` stores the index after each element, so a guest polling the ring (NAPI) while a
/// frame's chains are returned one by one can see part of it; it has no way to return several
/// at once, hence this. QEMU and vhost-net also write the index once per frame.
///
/// It leaves the library's count of chains added since the last notification check alone:
/// the receive queue decides about notifications with [`Signal`], not the library.
pub fn complete_all(ctx: &Ctx<'_, impl Sized>, vring: &VringRwLock, chains: &[(u16, u32)]) {
    if chains.is_empty() {
        return;
    }
    let mut state = vring.get_mut();
    let q = state.get_queue_mut();
    let (size, used) = (q.size(), q.used_ring());
    // The heads are what the guest put in the available ring: the library hands them over
    // unchecked (its add_used checks them, as this does, before anything is written).
    if let Some(&(head, _)) = chains.iter().find(|&&(head, _)| head >= size) {
        ring_error(
            ctx.metrics,
            "cannot return chains",
            &format_args!("head {head} is out of range for a queue of {size}"),
        );
        return;
    }
    let next = Wrapping(q.next_used());
    for (i, &(head, len)) in chains.iter().enumerate() {
        let slot = (next + Wrapping(i as u16)).0 % size.max(1);
        // struct virtq_used_elem { le32 id; le32 len; }
        let elem = (u64::from(head) | (u64::from(len) << 32)).to_le();
        let addr = used
            .checked_add(USED_RING_HEADER + u64::from(slot) * USED_ELEMENT)
            .map(GuestAddress);
        if addr.and_then(|a| ctx.mem.write_obj(elem, a).ok()).is_none() {
            ring_error(
                ctx.metrics,
                "cannot return chains",
                &"used ring not in guest memory",
            );
            return;
        }
    }
    let new = next + Wrapping(chains.len() as u16);
    let stored = used
        .checked_add(2)
        .map(GuestAddress)
        .and_then(|a| ctx.mem.store(new.0.to_le(), a, Ordering::Release).ok());
    if stored.is_none() {
        ring_error(
            ctx.metrics,
            "cannot return chains",
            &"used index not in guest memory",
        );
        return;
    }
    q.set_next_used(new.0);
}

/// Offset of the first element in the used ring (after flags and idx).
const USED_RING_HEADER: u64 = 4;
/// Size of one used element.
const USED_ELEMENT: u64 = 8;
/// Offset of the first element in the available ring (after flags and idx).
const AVAIL_RING_HEADER: u64 = 4;
/// VRING_AVAIL_F_NO_INTERRUPT: without EVENT_IDX, the driver does not want interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Notification decisions for a queue whose chains go back through [`complete_all`]: the
/// used index as of the last decision, which EVENT_IDX's test needs (virtio 1.2, 2.7.10:
/// signal when `used_event` lies between that index and the current one).
#[derive(Debug, Default)]
pub struct Signal {
    last: Option<Wrapping<u16>>,
    /// The ring (used ring address, size) the last decision was about: a decision about
    /// another one (the queue was set up again without this side hearing of a stop) starts
    /// afresh.
    ring: (u64, u16),
}

impl Signal {
    /// Forgets the last decision: the queue restarts (the first decision then signals).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Signals the guest if it asked to be told that the used index moved since the last
    /// decision, and counts it in `signals`.
    pub fn notify(&mut self, ctx: &Ctx<'_, impl Sized>, vring: &VringRwLock, signals: &AtomicU64) {
        if self.wanted(ctx, vring) {
            match vring.signal_used_queue() {
                Ok(()) => {
                    Metrics::bump(signals);
                }
                Err(e) => ward_worker::vring::count_notify_error(&ctx.metrics.notify_errors, &e),
            }
        }
    }

    fn wanted(&mut self, ctx: &Ctx<'_, impl Sized>, vring: &VringRwLock) -> bool {
        let state = vring.get_ref();
        let q = state.get_queue();
        let new = Wrapping(q.next_used());
        let ring = (q.used_ring(), q.size());
        if ring != self.ring {
            self.ring = ring;
            self.last = None;
        }
        // The used index (stored by complete_all) before the driver's word is read.
        fence(Ordering::SeqCst);
        let flags_or_event = if ctx.event_idx {
            // used_event follows the available ring's elements.
            q.avail_ring()
                .checked_add(AVAIL_RING_HEADER + 2 * u64::from(q.size()))
        } else {
            Some(q.avail_ring())
        };
        let word = flags_or_event
            .map(GuestAddress)
            .and_then(|a| ctx.mem.load::<u16>(a, Ordering::Relaxed).ok())
            .map(u16::from_le);
        let Some(word) = word else {
            ring_error(
                ctx.metrics,
                "cannot read used_event",
                &"not in guest memory",
            );
            // Better an interrupt too many than a guest left waiting.
            return true;
        };
        if !ctx.event_idx {
            return word & AVAIL_F_NO_INTERRUPT == 0;
        }
        let used_event = Wrapping(word);
        match self.last.replace(new) {
            None => true,
            Some(old) => new - used_event - Wrapping(1) < new - old,
        }
    }
}

/// Returns a chain to the driver with `len` bytes written into it.
pub fn complete(metrics: &Metrics, vring: &VringRwLock, head: u16, len: u32) {
    if let Err(e) = vring.add_used(head, len) {
        ring_error(metrics, "cannot return a chain", &e);
    }
}

/// Signals the guest if it asked to be (EVENT_IDX) or always (without it).
/// `signals` counts the times it did.
pub fn notify(metrics: &Metrics, vring: &VringRwLock, signals: &AtomicU64) {
    if ward_worker::vring::notify(vring, &metrics.notify_errors, &metrics.ring_errors) {
        Metrics::bump(signals);
    }
}

/// After a queue ran out of work (EVENT_IDX only): turns notifications back on and says whether
/// the driver made more available meanwhile, in which case the caller must look again.
/// `idle_rounds` counts consecutive looks that took nothing: a ring whose index says "more"
/// but yields nothing (corrupt) must not make the caller spin, so the second such look ends.
pub fn rearm(
    metrics: &Metrics,
    vring: &VringRwLock,
    progress: bool,
    idle_rounds: &mut u32,
) -> bool {
    if progress {
        *idle_rounds = 0;
    } else {
        *idle_rounds += 1;
    }
    match vring.enable_notification() {
        Ok(more) => more && *idle_rounds < 2,
        Err(e) => {
            ring_error(metrics, "cannot enable notifications", &e);
            false
        }
    }
}

pub fn ring_error(metrics: &Metrics, what: &str, e: &dyn std::fmt::Display) {
    ward_worker::vring::ring_error(&metrics.ring_errors, what, e);
}
