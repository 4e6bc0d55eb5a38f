//! The vhost-user-blk device as `vhost-user-backend` sees it: features, configuration space,
//! and the queue handler that runs in the library's vring thread.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use ward_worker::vring::{self, lock};

use crate::disk::{Disk, SECTOR_SIZE};
use crate::metrics::Metrics;
use crate::request::{self, Completion};
use crate::GuestMem;

/// Queues the device offers.
pub const NUM_QUEUES: usize = 1;
/// Largest queue the driver may configure.
pub const QUEUE_SIZE: usize = 256;
/// Data segments per request the driver may use (VIRTIO_BLK_F_SEG_MAX): a full queue less the
/// header and status descriptors, as QEMU advertises.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Size of the configuration space we serve.
pub const CONFIG_SIZE: usize = std::mem::size_of::<virtio_blk_config>();

/// One vhost-user-blk device serving one [`Disk`].
pub struct BlockBackend {
    disk: Disk,
    features: u64,
    config: [u8; CONFIG_SIZE],
    event_idx: AtomicBool,
    acked_features: AtomicU64,
    mem: Mutex<GuestMemoryAtomic<GuestMem>>,
    metrics: Arc<Metrics>,
    /// The device's span, entered by the library's threads when they call into us.
    span: tracing::Span,
}

impl BlockBackend {
    pub fn new(
        disk: Disk,
        mem: GuestMemoryAtomic<GuestMem>,
        metrics: Arc<Metrics>,
        span: tracing::Span,
    ) -> Self {
        let mut features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if disk.readonly() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let config = config_space(&disk);
        BlockBackend {
            disk,
            features,
            config,
            event_idx: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            mem: Mutex::new(mem),
            metrics,
            span,
        }
    }

    fn memory(&self) -> GuestMemoryAtomic<GuestMem> {
        lock(&self.mem).clone()
    }

    /// Serves everything the driver has made available, then signals it if it asked to be.
    /// With EVENT_IDX, notifications stay off while we work and we look again after turning
    /// them back on, so a request made in between is not missed.
    pub fn process_queue(&self, vring: &VringRwLock) {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    self.ring_error("cannot disable notifications", &e);
                }
            }
            let served = self.serve_available(vring);
            if served {
                self.notify(vring);
            }
            if !event_idx {
                break;
            }
            match vring.enable_notification() {
                // More arrived meanwhile; but a ring we cannot read must not make this spin.
                Ok(true) if served => continue,
                Ok(_) => break,
                Err(e) => {
                    self.ring_error("cannot enable notifications", &e);
                    break;
                }
            }
        }
    }

    /// Serves the chains available now. Returns whether any was taken from the ring.
    fn serve_available(&self, vring: &VringRwLock) -> bool {
        let atomic = self.memory();
        let mem = atomic.memory();
        let taken = {
            let mut state = vring.get_mut();
            state
                .get_queue_mut()
                .iter(mem.clone())
                .map(|iter| iter.collect::<Vec<_>>())
        };
        let chains = match taken {
            Ok(chains) => chains,
            Err(e) => {
                self.ring_error("cannot read the available ring", &e);
                return false;
            }
        };
        let any = !chains.is_empty();
        for chain in chains {
            let Completion { head, used_len } =
                request::process(&mem, chain, &self.disk, &self.metrics);
            if let Err(e) = vring.add_used(head, used_len) {
                self.ring_error("cannot complete a request", &e);
            }
        }
        any
    }

    fn notify(&self, vring: &VringRwLock) {
        vring::notify(
            vring,
            &self.metrics.notify_errors,
            &self.metrics.ring_errors,
        );
    }

    fn ring_error(&self, what: &str, e: &dyn std::fmt::Display) {
        vring::ring_error(&self.metrics.ring_errors, what, e);
    }
}

/// `struct virtio_blk_config`, little endian, for the features we offer: capacity, seg_max,
/// blk_size and num_queues; everything else is zero.
fn config_space(disk: &Disk) -> [u8; CONFIG_SIZE] {
    use std::mem::offset_of;
    let mut c = [0u8; CONFIG_SIZE];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(virtio_blk_config, capacity),
        &disk.sectors().to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &(NUM_QUEUES as u16).to_le_bytes(),
    );
    // DISCARD and WRITE_ZEROES: one range of at most 1 GiB per request, any alignment, and
    // WRITE_ZEROES may deallocate.
    let max = crate::request::MAX_RANGE_SECTORS.to_le_bytes();
    put(offset_of!(virtio_blk_config, max_discard_sectors), &max);
    put(
        offset_of!(virtio_blk_config, max_discard_seg),
        &1u32.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, discard_sector_alignment),
        &1u32.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_sectors),
        &max,
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_seg),
        &1u32.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, write_zeroes_may_unmap),
        &[1u8],
    );
    c
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        let _g = self.span.enter();
        debug!(features = format_args!("{features:#x}"), "driver features");
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// Any window of the configuration space; the part of it beyond the end is left out, so an
    /// out-of-range request gets a short (possibly empty) answer, which the library turns into
    /// an error reply.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        vring::config_window(&self.config, offset, size)
    }

    /// No field of our configuration space is writable (no VIRTIO_BLK_F_CONFIG_WCE).
    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the virtio-blk configuration space is read-only",
        ))
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        *lock(&self.mem) = mem;
        Ok(())
    }

    /// See [`vring::exit_event`].
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        vring::exit_event(&self.span)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        ward_worker::queue_thread::enter();
        let _g = self.span.enter();
        if evset != EventSet::IN {
            warn!(?evset, "unexpected event set");
            return Ok(());
        }
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.process_queue(vring),
            None => warn!(device_event, "event for an unknown queue"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd};

    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID};
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    fn backend(readonly: bool, mem: GuestMemoryAtomic<GuestMem>) -> BlockBackend {
        let fd = nix::sys::memfd::memfd_create(c"img", nix::sys::memfd::MemFdCreateFlag::empty())
            .unwrap();
        let f = File::from(fd);
        f.set_len(1024 * 1024 + 300).unwrap();
        let disk = Disk::new(f, readonly, "serial-1").unwrap();
        BlockBackend::new(
            disk,
            mem,
            Arc::new(Metrics::default()),
            tracing::Span::none(),
        )
    }

    fn empty_mem() -> GuestMemoryAtomic<GuestMem> {
        GuestMemoryAtomic::new(GuestMemoryMmap::new())
    }

    #[test]
    fn features_depend_on_readonly() {
        let rw = backend(false, empty_mem()).features();
        let ro = backend(true, empty_mem()).features();
        // VERSION_1, EVENT_IDX, INDIRECT_DESC, FLUSH, SEG_MAX, BLK_SIZE, PROTOCOL_FEATURES.
        for bit in [32, 29, 28, 9, 2, 6, 30] {
            assert_ne!(rw & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
        // A writable disk takes DISCARD and WRITE_ZEROES; a read-only one does not.
        let ranges = (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        assert_eq!(rw & ranges, ranges);
        assert_eq!(ro, (rw & !ranges) | (1 << VIRTIO_BLK_F_RO));
    }

    #[test]
    fn config_space_fields() {
        let b = backend(false, empty_mem());
        let c = b.get_config(0, CONFIG_SIZE as u32);
        assert_eq!(c.len(), CONFIG_SIZE);
        // 1 MiB + 300 bytes: 2048 whole sectors.
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 1);
    }

    #[test]
    fn config_reads_are_clamped() {
        let b = backend(false, empty_mem());
        let all = b.get_config(0, CONFIG_SIZE as u32);
        assert_eq!(b.get_config(20, 4), all[20..24]);
        assert_eq!(
            b.get_config(CONFIG_SIZE as u32 - 2, 8),
            all[CONFIG_SIZE - 2..]
        );
        assert!(b.get_config(CONFIG_SIZE as u32, 4).is_empty());
        assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
        assert_eq!(b.get_config(0, u32::MAX), all);
        assert!(b.set_config(0, &[1, 2, 3]).is_err());
    }

    fn vring_over(
        atomic: &GuestMemoryAtomic<GuestMem>,
        desc: u64,
        avail: u64,
        used: u64,
        event_idx: bool,
    ) -> VringRwLock {
        let vring = VringRwLock::new(atomic.clone(), 16).unwrap();
        vring.set_queue_size(16);
        vring.set_queue_info(desc, avail, used).unwrap();
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        vring
    }

    /// The vring path: chains are completed in the used ring and the call eventfd fires, also
    /// with EVENT_IDX (used_event 0: "signal once the first chain is used"). The rings are laid
    /// out by hand: the mock's layout lets the used ring overlap the available ring's tail.
    #[test]
    fn queue_completes_chains_and_signals() {
        const DESC: u64 = 0;
        const AVAIL: u64 = 0x1000;
        const USED: u64 = 0x2000;
        for event_idx in [false, true] {
            let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let atomic = GuestMemoryAtomic::new(gm);
            let b = backend(false, atomic.clone());
            b.set_event_idx(event_idx);
            let mem = atomic.memory();
            let vring = vring_over(&atomic, DESC, AVAIL, USED, event_idx);
            let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            // SAFETY: dup returns a fresh descriptor, owned by the File from now on.
            let dup = unsafe { File::from_raw_fd(libc::dup(call.as_raw_fd())) };
            vring.set_call(Some(dup));

            // Two GET_ID chains (header, 20-byte buffer, status) at heads 0 and 3.
            let mut hdr = [0u8; 16];
            hdr[0..4].copy_from_slice(&VIRTIO_BLK_T_GET_ID.to_le_bytes());
            mem.write_slice(&hdr, GuestAddress(0x4000)).unwrap();
            for i in 0..2u16 {
                let base = 3 * i;
                let descs = [
                    SplitDescriptor::new(0x4000, 16, 1, base + 1),
                    SplitDescriptor::new(0x5000 + 0x100 * u64::from(i), 20, 3, base + 2),
                    SplitDescriptor::new(0x6000 + u64::from(i), 1, 2, 0),
                ];
                for (j, d) in descs.iter().enumerate() {
                    let at = DESC + 16 * (u64::from(base) + j as u64);
                    mem.write_obj(RawDescriptor::from(*d), GuestAddress(at))
                        .unwrap();
                }
                mem.write_obj(base, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
                    .unwrap();
            }
            mem.write_obj(2u16, GuestAddress(AVAIL + 2)).unwrap();

            b.process_queue(&vring);

            let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
            assert_eq!(used_idx, 2);
            for i in 0..2u64 {
                let elem = GuestAddress(USED + 4 + 8 * i);
                assert_eq!(mem.read_obj::<u32>(elem).unwrap(), 3 * i as u32);
                assert_eq!(mem.read_obj::<u32>(elem.unchecked_add(4)).unwrap(), 21);
                assert_eq!(
                    mem.read_obj::<u8>(GuestAddress(0x6000 + i)).unwrap(),
                    VIRTIO_BLK_S_OK as u8
                );
                let mut id = [0u8; 20];
                mem.read_slice(&mut id, GuestAddress(0x5000 + 0x100 * i))
                    .unwrap();
                assert_eq!(&id[..9], b"serial-1\0");
            }
            assert!(call.read().is_ok(), "no signal with event_idx={event_idx}");
            if event_idx {
                // avail_event tells the driver where we stopped: kick us for the next one.
                let avail_event: u16 = mem.read_obj(GuestAddress(USED + 4 + 8 * 16)).unwrap();
                assert_eq!(avail_event, 2);
            }
            assert_eq!(b.metrics.get_ids.load(Ordering::Relaxed), 2);
        }
    }

    #[test]
    fn broken_available_ring_does_not_spin_or_panic() {
        let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let atomic = GuestMemoryAtomic::new(gm);
        let b = backend(false, atomic.clone());
        b.set_event_idx(true);
        // The available ring lies outside guest memory.
        let vring = vring_over(&atomic, 0, 0x4000_0000, 0x2000, true);
        b.process_queue(&vring);
        assert!(b.metrics.ring_errors.load(Ordering::Relaxed) >= 1);
    }
}
