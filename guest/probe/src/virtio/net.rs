//! virtio-net driver (virtio 1.2 §5.1): one queue pair, queue 0 receiveq (the
//! device fills our buffers with frames from the host), queue 1 transmitq.
//!
//! Features: VERSION_1, MAC, STATUS and MTU, nothing else. Without checksum or
//! segmentation offloads and without MRG_RXBUF, every frame either way is
//! preceded by a 12-byte `struct virtio_net_hdr_v1` (flags u8, gso_type u8,
//! hdr_len u16, gso_size u16, csum_start u16, csum_offset u16, num_buffers u16):
//! all zero on transmit; on receive flags and gso_type 0 and num_buffers 1. A
//! receive buffer must hold the header and a whole 1514-byte frame.
//!
//! Config space (0x100): mac[6] @0, status u16 @6 (bit 0 LINK_UP),
//! max_virtqueue_pairs u16 @8, mtu u16 @10 (each read with its natural width).
//!
//! Each device slot owns a static [`NetMem`]: both rings, [`RX_BUFS`] receive
//! buffers and [`TX_BUFS`] transmit buffers of [`BUF_LEN`] bytes, each handed to
//! the device as one descriptor with the header at offset 0 and the frame at
//! [`HDR_LEN`]. Receive buffers are kept posted. A used receive buffer belongs to
//! the caller until it posts it again ([`Net::repost`]) or transmits it in place
//! ([`Net::send_rx`], for echoing); then it goes back to the receive ring when
//! the device has consumed it.

use crate::sync::RacyCell;
use crate::time::Deadline;
use crate::virtio::blk::{InitError, IoError};
use crate::virtio::mmio::{self, Mmio};
use crate::virtio::queue::{Queue, QueueMem, F_WRITE, QSZ_MAX};

pub const VIRTIO_ID_NET: u32 = 1;
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_STATUS: u64 = 1 << 16;
pub const F_VERSION_1: u64 = 1 << 32;
const WANTED: u64 = F_VERSION_1 | F_MAC | F_STATUS | F_MTU;

/// `struct virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const HDR_NUM_BUFFERS: usize = 10;
pub const S_LINK_UP: u16 = 1;

pub const BUF_LEN: usize = 2048;
pub const RX_BUFS: usize = 32;
pub const TX_BUFS: usize = 16;
const RXQ: u32 = 0;
const TXQ: u32 = 1;

/// `tx_of` of a transmit head that carries none of our buffers (hand-built chains).
const TX_NONE: u8 = 0xff;
/// `tx_of` flag: the head carries receive buffer `tx_of & 0x7f`.
const TX_RX: u8 = 0x80;

pub const MAX_SLOTS: usize = crate::cmdline::MAX_DEVS;

#[repr(C, align(4096))]
pub struct NetMem {
    rxq: QueueMem,
    txq: QueueMem,
    rx: [[u8; BUF_LEN]; RX_BUFS],
    tx: [[u8; BUF_LEN]; TX_BUFS],
}

static NETMEM: RacyCell<[NetMem; MAX_SLOTS]> = RacyCell::new(
    [const {
        NetMem {
            rxq: QueueMem::new(),
            txq: QueueMem::new(),
            rx: [[0; BUF_LEN]; RX_BUFS],
            tx: [[0; BUF_LEN]; TX_BUFS],
        }
    }; MAX_SLOTS],
);

pub struct Net {
    pub mmio: Mmio,
    pub rxq: Queue,
    pub txq: Queue,
    pub features: u64,
    pub mac: [u8; 6],
    pub status: u16,
    pub max_pairs: u16,
    pub mtu: u16,
    mem: *mut NetMem,
    /// Receive buffer of each posted receive head.
    rx_of: [u8; QSZ_MAX],
    /// What each transmit head carries: a transmit buffer index, `TX_RX | i` for
    /// a receive buffer sent in place, or `TX_NONE`.
    tx_of: [u8; QSZ_MAX],
    /// Bit i set: transmit buffer i is free.
    tx_free: u32,
    /// Transmit chains the device has not given back yet.
    tx_inflight: usize,
    /// Receive buffers were posted since the last notification.
    rx_kick: bool,
}

impl Net {
    /// Initialises the device at `base` using the static memory of `slot`.
    pub fn init(slot: usize, base: u64) -> Result<Self, InitError> {
        // SAFETY: slot < MAX_SLOTS (device indices are bounded by MAX_DEVS); each
        // slot's memory belongs to the one Net of that slot.
        let mem = unsafe { core::ptr::addr_of_mut!((*NETMEM.get())[slot]) };
        let mmio = Mmio { base };
        if mmio.read(mmio::MAGIC) != mmio::MAGIC_VALUE {
            return Err(InitError::BadMagic);
        }
        if mmio.read(mmio::VERSION) != 2 {
            return Err(InitError::Legacy);
        }
        if mmio.read(mmio::DEVICE_ID) != VIRTIO_ID_NET {
            return Err(InitError::NotNet);
        }
        // SAFETY: this slot's exclusively owned queue memory (see above).
        let (rxq, txq) = unsafe {
            (
                Queue::new(core::ptr::addr_of_mut!((*mem).rxq), 1, false),
                Queue::new(core::ptr::addr_of_mut!((*mem).txq), 1, false),
            )
        };
        let mut n = Self {
            mmio,
            rxq,
            txq,
            features: 0,
            mac: [0; 6],
            status: 0,
            max_pairs: 0,
            mtu: 0,
            mem,
            rx_of: [0; QSZ_MAX],
            tx_of: [TX_NONE; QSZ_MAX],
            tx_free: 0,
            tx_inflight: 0,
            rx_kick: false,
        };
        n.setup()?;
        Ok(n)
    }

    /// Resets the device and initialises it again with fresh rings; every
    /// buffer is ours again.
    pub fn reinit(&mut self) -> Result<(), InitError> {
        self.setup()
    }

    fn setup(&mut self) -> Result<(), InitError> {
        let m = self.mmio;
        self.features = m.negotiate(WANTED)?;
        // SAFETY: this slot's own ring memory; the device was just reset, so it no longer
        // uses the old rings.
        unsafe {
            self.rxq = m.setup_queue(RXQ, core::ptr::addr_of_mut!((*self.mem).rxq), false)?;
            self.txq = m.setup_queue(TXQ, core::ptr::addr_of_mut!((*self.mem).txq), false)?;
        }
        self.tx_of = [TX_NONE; QSZ_MAX];
        self.tx_free = (1u32 << TX_BUFS) - 1;
        self.tx_inflight = 0;
        m.add_status(mmio::S_DRIVER_OK);

        for (i, b) in self.mac.iter_mut().enumerate() {
            *b = if self.features & F_MAC != 0 {
                m.config8(i as u64)
            } else {
                0
            };
        }
        self.status = if self.features & F_STATUS != 0 {
            m.config16(6)
        } else {
            S_LINK_UP
        };
        self.max_pairs = m.config16(8);
        self.mtu = if self.features & F_MTU != 0 {
            m.config16(10)
        } else {
            1500
        };
        for i in 0..RX_BUFS.min(usize::from(self.rxq.size())) {
            self.post_rx(i);
        }
        self.kick_rx();
        Ok(())
    }

    fn rx_addr(&self, i: usize) -> u64 {
        // SAFETY: address computation only.
        unsafe { core::ptr::addr_of!((*self.mem).rx[i % RX_BUFS]) as u64 }
    }

    fn tx_addr(&self, i: usize) -> u64 {
        // SAFETY: address computation only.
        unsafe { core::ptr::addr_of!((*self.mem).tx[i % TX_BUFS]) as u64 }
    }

    /// Physical address of transmit buffer `i` (for hand-built chains).
    pub fn tx_paddr(&self, i: usize) -> u64 {
        self.tx_addr(i)
    }

    /// Receive buffer `i`, header first. Only for a buffer the device returned
    /// and that is not posted or being transmitted again.
    pub fn rx_buf(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: our own buffer, which (per the caller's use) the device does
        // not own right now; the slice lives no longer than the borrow of self.
        unsafe { core::slice::from_raw_parts_mut(self.rx_addr(i) as *mut u8, BUF_LEN) }
    }

    /// Transmit buffer `i`, header first. Only for a buffer from [`Net::tx_alloc`]
    /// that has not been sent yet.
    pub fn tx_buf(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: as in rx_buf, for a free transmit buffer.
        unsafe { core::slice::from_raw_parts_mut(self.tx_addr(i) as *mut u8, BUF_LEN) }
    }

    /// Posts receive buffer `i` (the notification follows in `kick_rx`).
    fn post_rx(&mut self, i: usize) {
        let Some(d) = self.rxq.alloc() else { return };
        self.rx_of[usize::from(d)] = i as u8;
        self.rxq
            .set_desc(d, self.rx_addr(i), BUF_LEN as u32, F_WRITE, 0);
        self.rxq.publish(d, &[d]);
        self.rx_kick = true;
    }

    fn kick_rx(&mut self) {
        if self.rx_kick {
            self.rx_kick = false;
            self.mmio.write(mmio::QUEUE_NOTIFY, RXQ);
        }
    }

    /// Gives receive buffer `i` back to the device.
    pub fn repost(&mut self, i: usize) {
        self.post_rx(i);
        self.kick_rx();
    }

    /// The next filled receive buffer: (buffer index, bytes the device wrote,
    /// header included). The buffer is the caller's until it is reposted or sent.
    pub fn pop_rx(&mut self) -> Option<(usize, usize)> {
        while let Some(u) = self.rxq.pop_used() {
            if !u.known {
                continue;
            }
            let i = usize::from(self.rx_of[u.id as usize % QSZ_MAX]);
            return Some((i, u.len as usize));
        }
        None
    }

    /// A free transmit buffer, taking back what the device has finished with.
    pub fn tx_alloc(&mut self) -> Option<usize> {
        self.reap_tx();
        if self.tx_free == 0 {
            return None;
        }
        let i = self.tx_free.trailing_zeros() as usize;
        self.tx_free &= !(1 << i);
        Some(i)
    }

    /// [`Net::tx_alloc`], waiting up to `timeout_ms` for a buffer.
    pub fn tx_alloc_wait(&mut self, timeout_ms: u64) -> Result<usize, IoError> {
        let deadline = Deadline::after_ms(timeout_ms);
        loop {
            if let Some(i) = self.tx_alloc() {
                return Ok(i);
            }
            if deadline.expired() {
                return Err(IoError::Timeout);
            }
            core::hint::spin_loop();
        }
    }

    /// Hands the device `len` bytes (header included) of transmit buffer `i`,
    /// which stays in use until the device gives it back. Returns the head.
    pub fn send(&mut self, i: usize, len: usize) -> Result<u16, IoError> {
        let addr = self.tx_addr(i);
        self.send_one(addr, len, i as u8)
    }

    /// Transmits `len` bytes (header included) of receive buffer `i` in place;
    /// the buffer is posted again once the device has consumed it.
    pub fn send_rx(&mut self, i: usize, len: usize) -> Result<u16, IoError> {
        let addr = self.rx_addr(i);
        self.send_one(addr, len, TX_RX | i as u8)
    }

    fn send_one(&mut self, addr: u64, len: usize, what: u8) -> Result<u16, IoError> {
        let Some(d) = self.txq.alloc() else {
            self.give_back(what);
            return Err(IoError::NoDescriptors);
        };
        self.txq.set_desc(d, addr, len.min(BUF_LEN) as u32, 0, 0);
        self.publish_tx(d, &[d], what);
        self.notify_tx();
        Ok(d)
    }

    /// Publishes a hand-built transmit chain (without notifying); its head comes
    /// back through [`Net::pop_tx`], and then transmit buffer `buf` (if any, from
    /// [`Net::tx_alloc`]) is free again.
    pub fn publish_raw(&mut self, head: u16, descs: &[u16], buf: Option<usize>) {
        let what = buf.map_or(TX_NONE, |b| (b % TX_BUFS) as u8);
        self.publish_tx(head, descs, what);
    }

    fn publish_tx(&mut self, head: u16, descs: &[u16], what: u8) {
        self.tx_of[usize::from(head) % QSZ_MAX] = what;
        self.tx_inflight += 1;
        self.txq.publish(head, descs);
    }

    pub fn notify_tx(&self) {
        self.mmio.write(mmio::QUEUE_NOTIFY, TXQ);
    }

    /// A buffer the device no longer holds goes back where it belongs.
    fn give_back(&mut self, what: u8) {
        match what {
            TX_NONE => {}
            w if w & TX_RX != 0 => self.post_rx(usize::from(w & !TX_RX)),
            w => self.tx_free |= 1 << (usize::from(w) % TX_BUFS),
        }
    }

    /// Takes back the next transmit chain the device has finished with and
    /// returns its head.
    pub fn pop_tx(&mut self) -> Option<u16> {
        let u = self.txq.pop_used()?;
        if !u.known {
            return Some(u.id as u16);
        }
        let slot = u.id as usize % QSZ_MAX;
        let what = core::mem::replace(&mut self.tx_of[slot], TX_NONE);
        self.tx_inflight = self.tx_inflight.saturating_sub(1);
        self.give_back(what);
        self.kick_rx();
        Some(u.id as u16)
    }

    /// Takes back every finished transmit chain.
    pub fn reap_tx(&mut self) {
        while self.pop_tx().is_some() {}
    }

    /// Waits until the device has given back every transmit chain.
    pub fn flush_tx(&mut self, timeout_ms: u64) -> Result<(), IoError> {
        let deadline = Deadline::after_ms(timeout_ms);
        loop {
            self.reap_tx();
            if self.tx_inflight == 0 {
                return Ok(());
            }
            if deadline.expired() {
                return Err(IoError::Timeout);
            }
            core::hint::spin_loop();
        }
    }
}
