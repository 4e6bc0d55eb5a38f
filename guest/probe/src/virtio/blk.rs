//! virtio-blk driver (virtio 1.2 §5.2) on one virtio-mmio transport, one queue.
//!
//! Initialisation (§3.1.1): reset, ACKNOWLEDGE, DRIVER, read device features,
//! write the subset we accept, FEATURES_OK (and check the device kept it), set up
//! queue 0 (QueueSel, QueueNumMax, QueueNum, the three ring addresses,
//! QueueReady=1), DRIVER_OK.
//!
//! A request is a descriptor chain: a 16-byte device-readable header
//! `{ type: u32, reserved: u32, sector: u64 }`, data buffers (device-writable
//! for reads/GET_ID, device-readable for writes), and a 1-byte device-writable
//! status (0 OK, 1 IOERR, 2 UNSUPP). Sectors are always 512 bytes.
//!
//! Config space (offset 0x100): capacity u64 @0 (in 512-byte sectors),
//! size_max u32 @8, seg_max u32 @12, geometry @16, blk_size u32 @20.
//!
//! Each device slot owns a static [`DevMem`]: the rings, one header and one status
//! byte per possible head descriptor (a request's header/status live at the slot
//! of its head), and a page for indirect descriptor tables.

use crate::sync::RacyCell;
use crate::time::Deadline;
use crate::virtio::mmio::{self, Mmio};
use crate::virtio::queue::{Queue, QueueMem, F_NEXT, F_WRITE, QSZ_MAX};

pub const VIRTIO_ID_BLOCK: u32 = 2;

pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
const WANTED: u64 =
    F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
/// Written to the status byte before submitting; a device that never writes the
/// status leaves it there.
pub const STATUS_SENTINEL: u8 = 0xaa;

pub const SECTOR: u64 = 512;
/// Most data descriptors we put in one request.
pub const MAX_SEGS: usize = 16;
const SEG_SIZE: u32 = 4096;

pub const MAX_SLOTS: usize = crate::cmdline::MAX_DEVS;

#[repr(C, align(4096))]
pub struct DevMem {
    queue: QueueMem,
    indirect: [u8; 4096],
    hdr: [[u8; 16]; QSZ_MAX],
    status: [u8; QSZ_MAX],
}

static DEVMEM: RacyCell<[DevMem; MAX_SLOTS]> = RacyCell::new(
    [const {
        DevMem {
            queue: QueueMem::new(),
            indirect: [0; 4096],
            hdr: [[0; 16]; QSZ_MAX],
            status: [0; QSZ_MAX],
        }
    }; MAX_SLOTS],
);

#[derive(Clone, Copy)]
pub enum InitError {
    BadMagic,
    Legacy,
    NotBlock,
    NotConsole,
    NotNet,
    ResetStuck,
    NoVersion1,
    FeaturesRejected,
    QueueBusy,
    NoQueue,
}

impl InitError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMagic => "bad-magic",
            Self::Legacy => "legacy-virtio-mmio-v1",
            Self::NotBlock => "not-a-block-device",
            Self::NotConsole => "not-a-console-device",
            Self::NotNet => "not-a-network-device",
            Self::ResetStuck => "reset-stuck",
            Self::NoVersion1 => "no-version-1",
            Self::FeaturesRejected => "features-rejected",
            Self::QueueBusy => "queue-already-ready",
            Self::NoQueue => "queue-num-max-0",
        }
    }
}

/// Why a request produced no status.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    Timeout,
    NoDescriptors,
}

/// A data buffer of a request.
#[derive(Clone, Copy)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
}

pub struct Blk {
    pub mmio: Mmio,
    pub q: Queue,
    pub features: u64,
    pub capacity: u64,
    pub seg_max: u32,
    pub blk_size: u32,
    mem: *mut DevMem,
}

impl Blk {
    /// Initialises the device at `base` using the static memory of `slot`.
    pub fn init(slot: usize, base: u64) -> Result<Self, InitError> {
        // SAFETY: slot < MAX_SLOTS (the caller's device index is bounded by
        // MAX_DEVS); each slot's memory belongs to the one Blk of that slot.
        let mem = unsafe { core::ptr::addr_of_mut!((*DEVMEM.get())[slot]) };
        let mmio = Mmio { base };
        if mmio.read(mmio::MAGIC) != mmio::MAGIC_VALUE {
            return Err(InitError::BadMagic);
        }
        if mmio.read(mmio::VERSION) != 2 {
            return Err(InitError::Legacy);
        }
        if mmio.read(mmio::DEVICE_ID) != VIRTIO_ID_BLOCK {
            return Err(InitError::NotBlock);
        }
        // SAFETY: `mem` is this slot's exclusively owned memory (see above).
        let q = unsafe { Queue::new(core::ptr::addr_of_mut!((*mem).queue), 1, false) };
        let mut blk = Self {
            mmio,
            q,
            features: 0,
            capacity: 0,
            seg_max: 0,
            blk_size: 0,
            mem,
        };
        blk.setup()?;
        Ok(blk)
    }

    /// Resets the device and runs the whole initialisation again with fresh rings.
    pub fn reinit(&mut self) -> Result<(), InitError> {
        self.setup()
    }

    fn setup(&mut self) -> Result<(), InitError> {
        let m = self.mmio;
        self.features = m.negotiate(WANTED)?;
        // SAFETY: this slot's queue memory; the device was just reset, so it no longer uses
        // the old rings.
        self.q = unsafe {
            m.setup_queue(
                0,
                core::ptr::addr_of_mut!((*self.mem).queue),
                self.features & F_EVENT_IDX != 0,
            )?
        };
        m.add_status(mmio::S_DRIVER_OK);

        self.capacity = m.config64(0);
        self.seg_max = if self.features & F_SEG_MAX != 0 {
            m.config32(12)
        } else {
            0
        };
        self.blk_size = if self.features & F_BLK_SIZE != 0 {
            m.config32(20)
        } else {
            0
        };
        Ok(())
    }

    pub fn read_only(&self) -> bool {
        self.features & F_RO != 0
    }

    /// Whether the device flagged an internal error (DEVICE_NEEDS_RESET) or
    /// gave up (FAILED).
    pub fn needs_reset(&self) -> bool {
        self.mmio.status() & (mmio::S_NEEDS_RESET | mmio::S_FAILED) != 0
    }

    pub fn notify(&self) {
        self.mmio.write(mmio::QUEUE_NOTIFY, 0);
    }

    /// Physical address of the header belonging to head descriptor `slot`.
    pub fn hdr_addr(&self, slot: u16) -> u64 {
        // SAFETY: address computation only; slot < QSZ_MAX by construction
        // (descriptor indices come from the queue's free list).
        unsafe { core::ptr::addr_of!((*self.mem).hdr[usize::from(slot) % QSZ_MAX]) as u64 }
    }

    pub fn status_addr(&self, slot: u16) -> u64 {
        // SAFETY: as in hdr_addr.
        unsafe { core::ptr::addr_of!((*self.mem).status[usize::from(slot) % QSZ_MAX]) as u64 }
    }

    /// A page for indirect descriptor tables (256 descriptors).
    pub fn indirect_addr(&self) -> u64 {
        // SAFETY: address computation only.
        unsafe { core::ptr::addr_of!((*self.mem).indirect) as u64 }
    }

    pub fn write_hdr(&mut self, slot: u16, typ: u32, sector: u64) {
        let p = self.hdr_addr(slot) as *mut u8;
        // SAFETY: 16 bytes of this slot's header, not in flight (we only write the
        // header of a head we just allocated).
        unsafe {
            core::ptr::write_volatile(p as *mut u32, typ);
            core::ptr::write_volatile(p.add(4) as *mut u32, 0);
            core::ptr::write_volatile(p.add(8) as *mut u64, sector);
        }
    }

    pub fn status(&self, slot: u16) -> u8 {
        // SAFETY: reading our own status byte; volatile because the device writes it.
        unsafe { core::ptr::read_volatile(self.status_addr(slot) as *const u8) }
    }

    pub fn set_status(&mut self, slot: u16, v: u8) {
        // SAFETY: as in `status`.
        unsafe { core::ptr::write_volatile(self.status_addr(slot) as *mut u8, v) }
    }

    /// How many data descriptors one request may carry: seg_max when negotiated,
    /// else 1 (like Linux), bounded by MAX_SEGS and the queue size.
    pub fn max_segs(&self) -> usize {
        let dev = if self.seg_max > 0 {
            self.seg_max as usize
        } else {
            1
        };
        dev.min(MAX_SEGS)
            .min(usize::from(self.q.size()).saturating_sub(2))
            .max(1)
    }

    /// Splits `len` bytes at `addr` into data segments: 4 KiB each when that fits
    /// in `max_segs`, else equal sector-aligned pieces. Returns the count.
    pub fn split(&self, addr: u64, len: u32, out: &mut [Seg; MAX_SEGS]) -> usize {
        let n = self.max_segs() as u32;
        let mut seg = SEG_SIZE;
        if len.div_ceil(seg) > n {
            seg = len.div_ceil(n).next_multiple_of(SECTOR as u32);
        }
        let mut count = 0;
        let mut off = 0;
        while off < len && count < MAX_SEGS {
            let l = seg.min(len - off);
            out[count] = Seg {
                addr: addr + u64::from(off),
                len: l,
            };
            count += 1;
            off += l;
        }
        count
    }

    /// Builds and publishes a well-formed request (header, `data`, status),
    /// then notifies. Returns the head descriptor.
    pub fn submit(
        &mut self,
        typ: u32,
        sector: u64,
        data: &[Seg],
        device_writes: bool,
    ) -> Result<u16, IoError> {
        let head = self.queue_request(typ, sector, data, device_writes)?;
        self.notify();
        Ok(head)
    }

    /// Like [`Blk::submit`] without the notification (for batching).
    pub fn queue_request(
        &mut self,
        typ: u32,
        sector: u64,
        data: &[Seg],
        device_writes: bool,
    ) -> Result<u16, IoError> {
        let n = data.len() + 2;
        if data.len() > MAX_SEGS || self.q.free_descs() < n {
            return Err(IoError::NoDescriptors);
        }
        let mut descs = [0u16; MAX_SEGS + 2];
        for d in descs.iter_mut().take(n) {
            *d = self.q.alloc().ok_or(IoError::NoDescriptors)?;
        }
        let head = descs[0];
        self.write_hdr(head, typ, sector);
        self.set_status(head, STATUS_SENTINEL);
        self.q
            .set_desc(descs[0], self.hdr_addr(head), 16, F_NEXT, descs[1]);
        let dflags = if device_writes {
            F_WRITE | F_NEXT
        } else {
            F_NEXT
        };
        for (i, s) in data.iter().enumerate() {
            self.q
                .set_desc(descs[i + 1], s.addr, s.len, dflags, descs[i + 2]);
        }
        self.q
            .set_desc(descs[n - 1], self.status_addr(head), 1, F_WRITE, 0);
        self.q.publish(head, &descs[..n]);
        Ok(head)
    }

    /// Polls the used ring until `head` comes back; other completions are
    /// consumed and dropped. Returns (status byte, used length).
    pub fn wait(&mut self, head: u16, timeout_ms: u64) -> Result<(u8, u32), IoError> {
        let deadline = Deadline::after_ms(timeout_ms);
        loop {
            while let Some(u) = self.q.pop_used() {
                if u.known && u.id == u32::from(head) {
                    return Ok((self.status(head), u.len));
                }
            }
            if deadline.expired() {
                return Err(IoError::Timeout);
            }
            core::hint::spin_loop();
        }
    }

    /// One synchronous request over `len` bytes at `addr`, split into segments.
    pub fn io(
        &mut self,
        typ: u32,
        sector: u64,
        addr: u64,
        len: u32,
        timeout_ms: u64,
    ) -> Result<u8, IoError> {
        let mut segs = [Seg { addr: 0, len: 0 }; MAX_SEGS];
        let n = if len == 0 {
            0
        } else {
            self.split(addr, len, &mut segs)
        };
        let device_writes = typ != T_OUT;
        let head = self.submit(typ, sector, &segs[..n], device_writes)?;
        self.wait(head, timeout_ms).map(|(s, _)| s)
    }
}
