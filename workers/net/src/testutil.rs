//! Test helpers: split virtqueues laid out by hand in plain guest memory behind real
//! `VringRwLock`s (the mock queue's layout lets the used ring overlap the available ring's
//! tail once EVENT_IDX is on, so the vring-level tests place the rings themselves, as
//! ward-block's do), a fake tap over a `SOCK_SEQPACKET` socket pair (which keeps frame
//! boundaries as a tap does), a watch that records what the tap is watched for, and a whole
//! device over them.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, VolatileSlice,
};
use vmm_sys_util::epoll::EventSet;

use crate::backend::{NetBackend, TapWatch, RX_QUEUE, TAP_TOKEN, TX_QUEUE};
use crate::header::{VnetHdr, HDR_LEN};
use crate::metrics::Metrics;
use crate::tap::TapIo;
use crate::GuestMem;

pub const R: u16 = 0;
pub const W: u16 = VRING_DESC_F_WRITE as u16;
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Guest memory of the device tests: 2 MiB at 0.
pub const MEM_SIZE: usize = 0x20_0000;
/// Where the receive and transmit queues live (descriptors, then +0x1000 available ring,
/// +0x2000 used ring).
pub const RX_BASE: u64 = 0x0;
pub const TX_BASE: u64 = 0x3000;
/// Where tests put their buffers.
pub const BUFS: u64 = 0x1_0000;
/// An address past the end of guest memory.
pub const OUTSIDE: u64 = 0x40_0000;
/// Feature bits the tests ack.
pub const V1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub const MRG: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
pub const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

pub fn guest_memory(size: usize) -> GuestMemoryAtomic<GuestMem> {
    GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory"),
    )
}

/// The driver's half of one queue, at `base`.
pub struct Ring {
    pub vring: VringRwLock,
    mem: GuestMemoryAtomic<GuestMem>,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    pub avail_idx: u16,
    used_seen: u16,
    /// Read end of the pipe the device signals on (its "call eventfd").
    call: File,
}

impl Ring {
    pub fn new(mem: &GuestMemoryAtomic<GuestMem>, base: u64, size: u16, event_idx: bool) -> Ring {
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        let vring = VringRwLock::new(mem.clone(), size).expect("vring");
        vring.set_queue_size(size);
        vring.set_queue_info(desc, avail, used).expect("queue info");
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).expect("pipe");
        vring.set_call(Some(File::from(w)));
        Ring {
            vring,
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            call: File::from(r),
        }
    }

    fn m(&self) -> GuestMem {
        (*self.mem.memory()).clone()
    }

    pub fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(index);
        let m = self.m();
        m.write_obj(addr, GuestAddress(at)).unwrap();
        m.write_obj(len, GuestAddress(at + 8)).unwrap();
        m.write_obj(flags, GuestAddress(at + 12)).unwrap();
        m.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Places a chain of (addr, len, flags) parts linked in order, publishes it, returns its
    /// head.
    pub fn chain(&mut self, parts: &[(u64, u32, u16)]) -> u16 {
        let n = u16::try_from(parts.len()).unwrap();
        if self.next_desc + n > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in parts.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == parts.len();
            let flags = if last { flags } else { flags | NEXT };
            self.desc(idx, addr, len, flags, if last { 0 } else { idx + 1 });
        }
        self.next_desc += n;
        self.publish(head);
        head
    }

    /// Places descriptors exactly as given (index, addr, len, flags, next), publishes `head`.
    pub fn raw(&mut self, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        for &(i, addr, len, flags, next) in descs {
            self.desc(i, addr, len, flags, next);
        }
        self.publish(head);
    }

    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let m = self.m();
        m.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.store(
            self.avail_idx,
            GuestAddress(self.avail + 2),
            std::sync::atomic::Ordering::Release,
        )
        .unwrap();
    }

    /// The used entries (head, length) added since the last call.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let m = self.m();
        let idx: u16 = m.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let elem = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = m.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = m.read_obj(GuestAddress(elem + 4)).unwrap();
            out.push((u16::try_from(id).unwrap(), len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Whether the device signalled since the last call.
    pub fn signalled(&self) -> bool {
        self.signals() > 0
    }

    /// How many times the device signalled since the last call (each signal writes 8 bytes).
    pub fn signals(&self) -> usize {
        let mut b = [0u8; 512];
        match (&self.call).read(&mut b) {
            Ok(n) => n / 8,
            Err(_) => 0,
        }
    }

    /// EVENT_IDX: the driver asks for a signal once the used index passes `v`.
    pub fn set_used_event(&self, v: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.m().write_obj(v, GuestAddress(at)).unwrap();
    }

    /// EVENT_IDX: where the device asked to be kicked.
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        self.m().read_obj(GuestAddress(at)).unwrap()
    }
}

/// A tap made of one end of a `SOCK_SEQPACKET` pair; the test holds the other end.
pub struct FakeTap {
    end: File,
    /// Calls of `recv` and `recv_guest`.
    pub reads: AtomicUsize,
    /// Calls of `recv_guest`.
    pub direct_reads: AtomicUsize,
    /// `TUNSETOFFLOAD` values, in order.
    pub offloads: Mutex<Vec<u32>>,
    /// While set, `send` fails with EAGAIN, as a full tap does.
    pub full: AtomicBool,
}

impl TapIo for FakeTap {
    fn send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.full.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        (&self.end).write_vectored(bufs)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        (&self.end).read(buf)
    }

    fn recv_guest(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.direct_reads.fetch_add(1, Ordering::Relaxed);
        crate::tap::readv_guest(self.end.as_fd(), bufs)
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        self.offloads.lock().unwrap().push(flags);
        Ok(())
    }
}

/// A fake tap and the test's end of it ("the network"), both non-blocking.
pub fn fake_tap() -> (FakeTap, File) {
    let (a, b): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    // Room for a few hundred small frames queued at once.
    for fd in [&a, &b] {
        nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::SndBuf, &(4 << 20))
            .expect("SO_SNDBUF");
    }
    let tap = FakeTap {
        end: File::from(a),
        reads: AtomicUsize::new(0),
        direct_reads: AtomicUsize::new(0),
        offloads: Mutex::new(Vec::new()),
        full: AtomicBool::new(false),
    };
    (tap, File::from(b))
}

/// Every frame waiting on the network's end.
pub fn frames_sent(net: &File) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    loop {
        match (&*net).read(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
            Err(e) => panic!("reading the fake tap: {e}"),
        }
    }
}

/// Sends one frame (with its header) from the network towards the worker.
pub fn inject(net: &File, bytes: &[u8]) {
    assert_eq!((&*net).write(bytes).expect("inject"), bytes.len());
}

/// A frame of `len` bytes whose contents depend on `seed`.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A header followed by `frame`.
pub fn with_hdr(h: VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

/// Records every change of what the tap is watched for.
#[derive(Clone, Default)]
pub struct RecordingWatch(pub Arc<Mutex<Vec<EventSet>>>);

impl TapWatch for RecordingWatch {
    fn watch(&self, events: EventSet) -> io::Result<()> {
        self.0.lock().unwrap().push(events);
        Ok(())
    }
}

/// A whole device: the backend over a fake tap, its two queues, the network's end of the tap,
/// and the record of what the tap is watched for.
pub struct Device {
    pub backend: NetBackend<FakeTap>,
    pub net: File,
    pub rx: Ring,
    pub tx: Ring,
    pub mem: GuestMemoryAtomic<GuestMem>,
    pub watch: RecordingWatch,
}

impl Device {
    /// A device whose driver acked `features` (EVENT_IDX among them or not), with queues of
    /// `size` entries.
    pub fn new(features: u64, size: u16) -> Device {
        let event_idx = features & EVENT_IDX != 0;
        let mem = guest_memory(MEM_SIZE);
        let (tap, net) = fake_tap();
        let backend = NetBackend::new(
            tap,
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            1500,
            mem.clone(),
            Arc::new(Metrics::default()),
            tracing::Span::none(),
        );
        let watch = RecordingWatch::default();
        backend.set_watch(Box::new(watch.clone()));
        backend.set_event_idx(event_idx);
        backend.acked_features(features);
        let rx = Ring::new(&mem, RX_BASE, size, event_idx);
        let tx = Ring::new(&mem, TX_BASE, size, event_idx);
        Device {
            backend,
            net,
            rx,
            tx,
            mem,
            watch,
        }
    }

    fn event(&self, token: u16) {
        let vrings = [self.rx.vring.clone(), self.tx.vring.clone()];
        self.backend.handle(token, &vrings);
    }

    pub fn kick_rx(&self) {
        self.event(RX_QUEUE);
    }

    pub fn kick_tx(&self) {
        self.event(TX_QUEUE);
    }

    /// The tap reported something (what exactly does not matter to the device).
    pub fn tap_event(&self) {
        self.event(TAP_TOKEN);
    }

    pub fn count(&self, pick: fn(&Metrics) -> &AtomicU64) -> u64 {
        Metrics::get(pick(self.backend.metrics()))
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .memory()
            .write_slice(bytes, GuestAddress(addr))
            .unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .unwrap();
        v
    }

    /// Calls of the tap's `recv` so far.
    pub fn tap_reads(&self) -> usize {
        self.backend.tap().reads.load(Ordering::Relaxed)
    }

    /// The header of a received frame at `addr`.
    pub fn hdr_at(&self, addr: u64) -> VnetHdr {
        let b = self.read(addr, HDR_LEN);
        VnetHdr::parse(b.as_slice().try_into().unwrap())
    }
}
