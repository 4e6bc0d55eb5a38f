//! virtio-console driver (virtio 1.2 §5.3), one port, no MULTIPORT: queue 0 is
//! receiveq (the device fills our buffers with what the host typed), queue 1 is
//! transmitq (we hand the device our output).
//!
//! Each device slot owns a static [`ConsMem`]: both rings, RX_BUFS receive
//! buffers kept posted, and a transmit buffer. Receive buffers are single
//! device-writable descriptors; a used receive buffer is copied out and posted
//! again at once.

use crate::sync::RacyCell;
use crate::time::Deadline;
use crate::virtio::blk::{InitError, IoError};
use crate::virtio::mmio::{self, Mmio};
use crate::virtio::queue::{Queue, QueueMem, F_WRITE, QSZ_MAX};

pub const VIRTIO_ID_CONSOLE: u32 = 3;
const F_VERSION_1: u64 = 1 << 32;

const RX_BUFS: usize = 8;
const RX_LEN: usize = 256;
pub const TX_LEN: usize = 4096;
const RXQ: u32 = 0;
const TXQ: u32 = 1;

pub const MAX_SLOTS: usize = crate::cmdline::MAX_DEVS;

#[repr(C, align(4096))]
pub struct ConsMem {
    rxq: QueueMem,
    txq: QueueMem,
    tx: [u8; TX_LEN],
    rx: [[u8; RX_LEN]; RX_BUFS],
}

static CONSMEM: RacyCell<[ConsMem; MAX_SLOTS]> = RacyCell::new(
    [const {
        ConsMem {
            rxq: QueueMem::new(),
            txq: QueueMem::new(),
            tx: [0; TX_LEN],
            rx: [[0; RX_LEN]; RX_BUFS],
        }
    }; MAX_SLOTS],
);

pub struct Cons {
    pub mmio: Mmio,
    pub rxq: Queue,
    pub txq: Queue,
    pub features: u64,
    mem: *mut ConsMem,
    /// Receive buffer index of each posted head descriptor.
    rx_of: [u8; QSZ_MAX],
}

impl Cons {
    /// Initialises the device at `base` using the static memory of `slot`.
    pub fn init(slot: usize, base: u64) -> Result<Self, InitError> {
        // SAFETY: slot < MAX_SLOTS (device indices are bounded by MAX_DEVS); each
        // slot's memory belongs to the one Cons of that slot.
        let mem = unsafe { core::ptr::addr_of_mut!((*CONSMEM.get())[slot]) };
        let mmio = Mmio { base };
        if mmio.read(mmio::MAGIC) != mmio::MAGIC_VALUE {
            return Err(InitError::BadMagic);
        }
        if mmio.read(mmio::VERSION) != 2 {
            return Err(InitError::Legacy);
        }
        if mmio.read(mmio::DEVICE_ID) != VIRTIO_ID_CONSOLE {
            return Err(InitError::NotConsole);
        }
        // SAFETY: this slot's exclusively owned queue memory (see above).
        let (rxq, txq) = unsafe {
            (
                Queue::new(core::ptr::addr_of_mut!((*mem).rxq), 1, false),
                Queue::new(core::ptr::addr_of_mut!((*mem).txq), 1, false),
            )
        };
        let mut c = Self {
            mmio,
            rxq,
            txq,
            features: 0,
            mem,
            rx_of: [0; QSZ_MAX],
        };
        c.setup()?;
        Ok(c)
    }

    fn setup(&mut self) -> Result<(), InitError> {
        let m = self.mmio;
        self.features = m.negotiate(F_VERSION_1)?;
        // SAFETY: this slot's own ring memory; the device was just reset, so it no longer
        // uses the old rings.
        unsafe {
            self.rxq = m.setup_queue(RXQ, core::ptr::addr_of_mut!((*self.mem).rxq), false)?;
            self.txq = m.setup_queue(TXQ, core::ptr::addr_of_mut!((*self.mem).txq), false)?;
        }
        m.add_status(mmio::S_DRIVER_OK);
        for i in 0..RX_BUFS.min(usize::from(self.rxq.size())) {
            self.post_rx(i);
        }
        m.write(mmio::QUEUE_NOTIFY, RXQ);
        Ok(())
    }

    fn rx_addr(&self, i: usize) -> u64 {
        // SAFETY: address computation only; i < RX_BUFS.
        unsafe { core::ptr::addr_of!((*self.mem).rx[i % RX_BUFS]) as u64 }
    }

    pub fn tx_addr(&self) -> u64 {
        // SAFETY: address computation only.
        unsafe { core::ptr::addr_of!((*self.mem).tx) as u64 }
    }

    /// Posts receive buffer `i` (without notifying).
    fn post_rx(&mut self, i: usize) {
        let Some(d) = self.rxq.alloc() else { return };
        self.rx_of[usize::from(d)] = i as u8;
        self.rxq
            .set_desc(d, self.rx_addr(i), RX_LEN as u32, F_WRITE, 0);
        self.rxq.publish(d, &[d]);
    }

    /// Copies what the host sent since the last call into `out` (as much as fits;
    /// a buffer that does not fit whole stays for the next call) and posts the
    /// consumed buffers again. Returns the number of bytes copied.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        let mut reposted = false;
        while self.rxq.has_used() {
            let Some(u) = self.rxq.pop_used() else { break };
            if !u.known {
                continue;
            }
            let i = usize::from(self.rx_of[u.id as usize % QSZ_MAX]);
            let len = (u.len as usize).min(RX_LEN);
            let take = len.min(out.len() - n);
            // SAFETY: our own receive buffer, which the device has returned.
            let src = unsafe { core::slice::from_raw_parts(self.rx_addr(i) as *const u8, take) };
            out[n..n + take].copy_from_slice(src);
            n += take;
            self.post_rx(i);
            reposted = true;
            if n == out.len() {
                break;
            }
        }
        if reposted {
            self.mmio.write(mmio::QUEUE_NOTIFY, RXQ);
        }
        n
    }

    /// Sends `data` (in pieces of at most TX_LEN), waiting for each piece to be
    /// consumed.
    pub fn write(&mut self, data: &[u8], timeout_ms: u64) -> Result<(), IoError> {
        for piece in data.chunks(TX_LEN) {
            // SAFETY: our transmit buffer; the previous piece has been consumed.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    piece.as_ptr(),
                    self.tx_addr() as *mut u8,
                    piece.len(),
                )
            };
            let d = self.txq.alloc().ok_or(IoError::NoDescriptors)?;
            self.txq
                .set_desc(d, self.tx_addr(), piece.len() as u32, 0, 0);
            self.txq.publish(d, &[d]);
            self.notify_tx();
            self.wait_tx(d, timeout_ms)?;
        }
        Ok(())
    }

    pub fn notify_tx(&self) {
        self.mmio.write(mmio::QUEUE_NOTIFY, TXQ);
    }

    /// Polls the transmit queue until `head` comes back.
    pub fn wait_tx(&mut self, head: u16, timeout_ms: u64) -> Result<u32, IoError> {
        let deadline = Deadline::after_ms(timeout_ms);
        loop {
            while let Some(u) = self.txq.pop_used() {
                if u.known && u.id == u32::from(head) {
                    return Ok(u.len);
                }
            }
            if deadline.expired() {
                return Err(IoError::Timeout);
            }
            core::hint::spin_loop();
        }
    }
}
