//! The two virtqueues: guest output taken from the transmitq, input placed in the receiveq.
//!
//! The guest is hostile. Nothing here panics on guest data, and no byte outside guest memory
//! is read or written: every buffer of a chain is checked against guest memory before any of
//! it is used, and a chain that fails a check is returned unused.
//!
//! # Validation, and how each failure is answered
//!
//! | chain                                                          | counter                | used len |
//! |----------------------------------------------------------------|------------------------|----------|
//! | does not end (loop, index out of range, nested or malformed    | `bad_chain`            | 0        |
//! | indirect table, descriptor table not in guest memory)          |                        |          |
//! | more than [`MAX_DESCRIPTORS`] descriptors                      | `too_many_descriptors` | 0        |
//! | transmitq: a device-writable descriptor; receiveq: a readable  | `wrong_direction`      | 0        |
//! | transmitq: more than [`MAX_OUTPUT_CHAIN`] bytes                | `too_long`             | 0        |
//! | a buffer (partly) outside guest memory, or wrapping around     | `out_of_memory`        | 0        |
//! | no byte at all                                                 | `empty_chain`          | 0        |
//! | valid transmitq chain: its bytes go to the log and the clients | `tx_chains`            | 0        |
//! | valid receiveq chain: filled with pending input, in order      | `rx_chains`            | written  |
//!
//! Framing is free, as the spec requires: output is the readable bytes of a chain in order,
//! whatever the descriptors; zero-length descriptors inside a chain are skipped.
//!
//! # Notifications
//!
//! With `VIRTIO_RING_F_EVENT_IDX`, notifications stay off while a queue is worked on and are
//! turned back on afterwards, with a second look at the ring so a chain made available in
//! between is not missed; the guest is signalled only when `needs_notification` says so. The
//! receiveq is only worked on while input is pending: then re-enabling notifications sets
//! `avail_event` to where we stopped, so the guest kicks as soon as it posts a buffer.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;

use tracing::warn;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend};

use crate::metrics::{should_log, Metrics};
use crate::GuestMem;

/// Most descriptors one chain may have. Linux uses one or a few; accepting the 65535 an
/// indirect table can hold would only let a guest make us allocate.
pub const MAX_DESCRIPTORS: usize = 1024;
/// Longest transmitq chain accepted, in bytes. Linux sends at most a page per chain for hvc.
pub const MAX_OUTPUT_CHAIN: u64 = 1 << 20;
/// Input waiting for receive buffers, at most (a client may add up to a handshake line more).
pub const INPUT_MAX: usize = 4096;
/// Output collected from the transmitq is handed on once it reaches this size.
const OUTPUT_BATCH: usize = 64 * 1024;

/// Why a chain was returned unused. Each kind has its counter (see the module table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    BadChain,
    TooManyDescriptors(usize),
    WrongDirection,
    TooLong(u64),
    OutOfMemory { addr: u64, len: u64 },
    Empty,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::BadChain => write!(f, "descriptor chain does not end"),
            Fault::TooManyDescriptors(n) => write!(f, "{n} descriptors in one chain"),
            Fault::WrongDirection => write!(f, "descriptor of the wrong direction"),
            Fault::TooLong(n) => write!(f, "{n} bytes in one chain"),
            Fault::OutOfMemory { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} is not in guest memory")
            }
            Fault::Empty => write!(f, "chain without a byte of buffer"),
        }
    }
}

impl Fault {
    fn counter<'m>(&self, m: &'m Metrics) -> &'m AtomicU64 {
        match self {
            Fault::BadChain => &m.bad_chain,
            Fault::TooManyDescriptors(_) => &m.too_many_descriptors,
            Fault::WrongDirection => &m.wrong_direction,
            Fault::TooLong(_) => &m.too_long,
            Fault::OutOfMemory { .. } => &m.out_of_memory,
            Fault::Empty => &m.empty_chain,
        }
    }
}

/// Input waiting for the guest to post receive buffers.
#[derive(Debug)]
pub struct Input {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Input {
    pub fn new(cap: usize) -> Input {
        Input {
            buf: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// Bytes that may still be read from the client before reading stops.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.buf.len())
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends `data`; the caller keeps to [`Input::room`] (up to a handshake line beyond).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
    }

    /// Takes everything pending (as the guest would).
    #[cfg(test)]
    pub fn take(&mut self) -> Vec<u8> {
        self.buf.drain(..).collect()
    }
}

/// The descriptors of a chain that ends properly, or why it does not.
fn descriptors<M>(chain: DescriptorChain<M>) -> Result<Vec<Descriptor>, Fault>
where
    M: Deref<Target = GuestMem>,
{
    // The chain iterator stops at the end of the chain, but also on a loop (it yields at most
    // queue-size descriptors), a next index out of range, a nested or malformed indirect table,
    // a descriptor it cannot read, or 4 GiB in total. Only a last descriptor without NEXT is a
    // proper end.
    let mut descs = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    for d in chain {
        count += 1;
        if descs.len() < MAX_DESCRIPTORS {
            descs.push(d);
        }
        last = Some(d);
    }
    if last.is_none_or(|d| d.has_next()) {
        return Err(Fault::BadChain);
    }
    if count > MAX_DESCRIPTORS {
        return Err(Fault::TooManyDescriptors(count));
    }
    Ok(descs)
}

/// The non-empty buffers of `descs`, all of them `writable` or not, checked to lie in guest
/// memory; and their total length, at most `max`.
fn buffers(
    mem: &GuestMem,
    descs: &[Descriptor],
    writable: bool,
    max: u64,
) -> Result<Vec<(GuestAddress, usize)>, Fault> {
    if descs.iter().any(|d| d.is_write_only() != writable) {
        return Err(Fault::WrongDirection);
    }
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total > max {
        return Err(Fault::TooLong(total));
    }
    if total == 0 {
        return Err(Fault::Empty);
    }
    let mut out = Vec::with_capacity(descs.len());
    for d in descs.iter().filter(|d| d.len() > 0) {
        let len = u64::from(d.len());
        let bad = || Fault::OutOfMemory {
            addr: d.addr().0,
            len,
        };
        let n = usize::try_from(len).map_err(|_| bad())?;
        if !mem.check_range(d.addr(), n) {
            return Err(bad());
        }
        out.push((d.addr(), n));
    }
    Ok(out)
}

/// Appends the bytes of one transmitq chain to `out`; returns how many. On a fault nothing is
/// appended.
pub fn read_output<M>(
    mem: &GuestMem,
    chain: DescriptorChain<M>,
    out: &mut Vec<u8>,
) -> Result<usize, Fault>
where
    M: Deref<Target = GuestMem>,
{
    let descs = descriptors(chain)?;
    let bufs = buffers(mem, &descs, false, MAX_OUTPUT_CHAIN)?;
    let start = out.len();
    for (addr, len) in bufs {
        let at = out.len();
        out.resize(at + len, 0);
        if mem.read_slice(&mut out[at..], addr).is_err() {
            // Checked above; guest memory does not shrink under a request.
            out.truncate(start);
            return Err(Fault::OutOfMemory {
                addr: addr.0,
                len: len as u64,
            });
        }
    }
    Ok(out.len() - start)
}

/// Fills one receiveq chain with pending input, in order; returns the bytes written (the used
/// length). On a fault nothing is taken from `input`.
pub fn write_input<M>(
    mem: &GuestMem,
    chain: DescriptorChain<M>,
    input: &mut Input,
) -> Result<u32, Fault>
where
    M: Deref<Target = GuestMem>,
{
    let descs = descriptors(chain)?;
    let bufs = buffers(mem, &descs, true, u64::from(u32::MAX))?;
    let data = input.buf.make_contiguous();
    let mut done = 0usize;
    for (addr, len) in bufs {
        let n = len.min(data.len() - done);
        if n == 0 {
            break;
        }
        if mem.write_slice(&data[done..done + n], addr).is_err() {
            return Err(Fault::OutOfMemory {
                addr: addr.0,
                len: len as u64,
            });
        }
        done += n;
    }
    input.buf.drain(..done);
    // At most INPUT_MAX plus a line: fits.
    Ok(u32::try_from(done).unwrap_or(u32::MAX))
}

/// What working on a queue needs besides the vring.
pub struct Ctx<'a> {
    pub mem: &'a GuestMemoryAtomic<GuestMem>,
    pub event_idx: bool,
    pub metrics: &'a Metrics,
}

impl Ctx<'_> {
    /// Takes every chain the guest made available on the transmitq, hands their bytes to `sink`
    /// (in batches, in order, after the chains went back to the guest), and signals the guest if
    /// it asked to be. `buf` is scratch space.
    pub fn drain_output(
        &self,
        vring: &VringRwLock,
        buf: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]),
    ) {
        if !ready(vring) {
            return;
        }
        loop {
            self.disable(vring);
            let atomic = self.mem.memory();
            let taken = {
                let mut state = vring.get_mut();
                state
                    .get_queue_mut()
                    .iter(atomic.clone())
                    .map(|iter| iter.collect::<Vec<_>>())
            };
            let chains = taken.unwrap_or_else(|e| {
                self.ring_error("cannot read the transmitq's available ring", &e);
                Vec::new()
            });
            let served = !chains.is_empty();
            buf.clear();
            for chain in chains {
                let head = chain.head_index();
                Metrics::bump(&self.metrics.tx_chains);
                match read_output(&atomic, chain, buf) {
                    Ok(n) => Metrics::add(&self.metrics.tx_bytes, n as u64),
                    Err(f) => self.fault(&f, head, "transmitq"),
                }
                if let Err(e) = vring.add_used(head, 0) {
                    self.ring_error("cannot return a transmitq chain", &e);
                }
                if buf.len() >= OUTPUT_BATCH {
                    sink(buf);
                    buf.clear();
                }
            }
            if served {
                self.notify(vring);
            }
            if !buf.is_empty() {
                sink(buf);
            }
            // More arrived meanwhile; but a ring we cannot read must not make this spin.
            if !(self.enable(vring) && served) {
                break;
            }
        }
    }

    /// Places pending input into the receive buffers the guest posted, as far as they go, and
    /// signals the guest if it asked to be.
    pub fn fill_input(&self, vring: &VringRwLock, input: &mut Input) {
        if input.is_empty() || !ready(vring) {
            return;
        }
        let mut retried = false;
        loop {
            self.disable(vring);
            let atomic = self.mem.memory();
            let mut used = false;
            while !input.is_empty() {
                let next = {
                    let mut state = vring.get_mut();
                    state
                        .get_queue_mut()
                        .iter(atomic.clone())
                        .map(|mut iter| iter.next())
                };
                let chain = match next {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(e) => {
                        self.ring_error("cannot read the receiveq's available ring", &e);
                        break;
                    }
                };
                let head = chain.head_index();
                let len = match write_input(&atomic, chain, input) {
                    Ok(n) => {
                        Metrics::bump(&self.metrics.rx_chains);
                        Metrics::add(&self.metrics.rx_bytes, u64::from(n));
                        n
                    }
                    Err(f) => {
                        self.fault(&f, head, "receiveq");
                        0
                    }
                };
                if let Err(e) = vring.add_used(head, len) {
                    self.ring_error("cannot return a receiveq chain", &e);
                }
                used = true;
            }
            if used {
                self.notify(vring);
            }
            // Buffers posted while we looked, and input left for them: once more (and, when
            // nothing could be used this time, only once, so a broken ring cannot make this
            // spin).
            let more = self.enable(vring);
            let again = more && !input.is_empty() && (used || !retried);
            if !again {
                break;
            }
            retried |= !used;
        }
    }

    fn disable(&self, vring: &VringRwLock) {
        if self.event_idx {
            if let Err(e) = vring.disable_notification() {
                self.ring_error("cannot disable notifications", &e);
            }
        }
    }

    /// Re-enables notifications (EVENT_IDX only); returns whether chains arrived meanwhile.
    fn enable(&self, vring: &VringRwLock) -> bool {
        if !self.event_idx {
            return false;
        }
        match vring.enable_notification() {
            Ok(more) => more,
            Err(e) => {
                self.ring_error("cannot enable notifications", &e);
                false
            }
        }
    }

    fn notify(&self, vring: &VringRwLock) {
        ward_worker::vring::notify(
            vring,
            &self.metrics.notify_errors,
            &self.metrics.ring_errors,
        );
    }

    fn fault(&self, fault: &Fault, head: u16, queue: &str) {
        let n = Metrics::bump(fault.counter(self.metrics));
        if should_log(n) {
            warn!(head, count = n, queue, "chain dropped: {fault}");
        }
    }

    fn ring_error(&self, what: &str, e: &dyn std::fmt::Display) {
        ward_worker::vring::ring_error(&self.metrics.ring_errors, what, e);
    }
}

/// Whether the driver set the queue up and the frontend enabled it: only then may data pass.
pub fn ready(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.get_queue().ready() && state.is_enabled()
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
