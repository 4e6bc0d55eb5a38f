//! Test helpers: a split virtqueue laid out by hand in plain guest memory, driven as a driver
//! would (descriptors, available ring, used ring, `used_event`), behind a real `VringRwLock`.
//! (The mock queue's layout lets the used ring overlap the available ring's tail, so the
//! vring-level tests place the rings themselves, as ward-block's do.)

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMem;

pub const R: u16 = 0;
pub const W: u16 = VRING_DESC_F_WRITE as u16;
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Entries per test queue.
pub const QSIZE: u16 = 16;

/// Guest memory of `size` bytes at 0.
pub fn guest_memory(size: usize) -> GuestMemoryAtomic<GuestMem> {
    GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory"),
    )
}

pub fn memfd(name: &std::ffi::CStr) -> File {
    File::from(
        nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::empty())
            .expect("memfd_create"),
    )
}

/// A whole file's contents.
pub fn contents(f: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().expect("metadata").len();
    let mut v = vec![0u8; usize::try_from(len).expect("small file")];
    f.read_exact_at(&mut v, 0).expect("read file");
    v
}

/// The driver's half of one queue: descriptor table at `base`, available ring at
/// `base + 0x1000`, used ring at `base + 0x2000`.
pub struct Ring {
    pub vring: VringRwLock,
    mem: GuestMemoryAtomic<GuestMem>,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    pub avail_idx: u16,
    used_seen: u16,
    call: EventFd,
}

impl Ring {
    pub fn new(mem: &GuestMemoryAtomic<GuestMem>, base: u64, event_idx: bool) -> Ring {
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        let vring = VringRwLock::new(mem.clone(), QSIZE).expect("vring");
        vring.set_queue_size(QSIZE);
        vring.set_queue_info(desc, avail, used).expect("queue info");
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let call = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let dup = call.try_clone().expect("dup");
        // SAFETY: `into_raw_fd` hands over a descriptor nothing else owns.
        vring.set_call(Some(unsafe { File::from_raw_fd(dup.into_raw_fd()) }));
        Ring {
            vring,
            mem: mem.clone(),
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            call,
        }
    }

    fn write<T: vm_memory::ByteValued>(&self, v: T, at: u64) {
        self.mem
            .memory()
            .write_obj(v, GuestAddress(at))
            .expect("write guest memory");
    }

    fn read<T: vm_memory::ByteValued>(&self, at: u64) -> T {
        self.mem
            .memory()
            .read_obj(GuestAddress(at))
            .expect("read guest memory")
    }

    /// Writes descriptor `index` as given.
    pub fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.write(d, self.desc + 16 * u64::from(index));
    }

    /// Places a chain of (addr, len, flags) parts linked in order and publishes it; returns
    /// its head.
    pub fn chain(&mut self, parts: &[(u64, u32, u16)]) -> u16 {
        let n = u16::try_from(parts.len()).expect("short chain");
        if self.next_desc + n > QSIZE {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in parts.iter().enumerate() {
            let idx = head + u16::try_from(i).expect("short chain");
            let last = i + 1 == parts.len();
            let flags = if last { flags } else { flags | NEXT };
            self.desc(idx, addr, len, flags, if last { 0 } else { idx + 1 });
        }
        self.next_desc += n;
        self.publish(head);
        head
    }

    /// Makes `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        self.write(head, self.avail + 4 + 2 * slot);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write(self.avail_idx, self.avail + 2);
    }

    /// Asks for a signal once the device used up to what was seen (EVENT_IDX).
    pub fn want_signal(&self) {
        self.write(self.used_seen, self.avail + 4 + 2 * u64::from(QSIZE));
    }

    /// `avail_event`: where the device asks to be kicked next (EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        self.read(self.used + 4 + 8 * u64::from(QSIZE))
    }

    /// Chains used since the last call, as (head, used length).
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.read(self.used + 2);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let elem = self.used + 4 + 8 * u64::from(self.used_seen % QSIZE);
            out.push((self.read(elem), self.read(elem + 4)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Whether the device signalled since the last call.
    pub fn signalled(&self) -> bool {
        self.call.read().is_ok()
    }

    pub fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, GuestAddress(at))
            .expect("read guest memory");
        v
    }

    pub fn fill(&self, at: u64, data: &[u8]) {
        self.mem
            .memory()
            .write_slice(data, GuestAddress(at))
            .expect("write guest memory");
    }
}
