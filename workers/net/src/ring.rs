//! What both queues share: walking a descriptor chain into the guest buffers of one direction
//! (with every check a hostile chain needs), taking chains from the available ring, completing
//! them, and signalling the guest.
//!
//! Nothing here panics on guest data, and no byte outside guest memory is touched: every buffer
//! is checked against guest memory before it is used, and copies go through `vm-memory`.

use std::ops::Deref;
use std::sync::atomic::Ordering;

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

/// Returns a chain to the driver with `len` bytes written into it.
pub fn complete(metrics: &Metrics, vring: &VringRwLock, head: u16, len: u32) {
    if let Err(e) = vring.add_used(head, len) {
        ring_error(metrics, "cannot return a chain", &e);
    }
}

/// Signals the guest if it asked to be (EVENT_IDX) or always (without it).
pub fn notify(metrics: &Metrics, vring: &VringRwLock) {
    ward_worker::vring::notify(vring, &metrics.notify_errors, &metrics.ring_errors);
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
