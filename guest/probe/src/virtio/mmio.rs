//! The virtio-mmio transport (virtio 1.2 §4.2.2), modern layout (Version 2).
//!
//! All registers are 32 bits wide and little endian. Feature bits are accessed
//! 32 at a time through a selector register. The device configuration space
//! starts at 0x100; it must be accessed with the natural width of each field, and
//! 64-bit fields as two 32-bit reads checked against ConfigGeneration (0xfc).

use crate::cpu::{mmio_read16, mmio_read32, mmio_read8, mmio_write32};
use crate::virtio::blk::InitError;
use crate::virtio::queue::{Queue, QueueMem, QSZ_MAX};

/// VIRTIO_F_VERSION_1, which every driver here requires.
const F_VERSION_1: u64 = 1 << 32;

pub const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"

pub const MAGIC: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

/// Device status bits (virtio 1.2 §2.1).
pub const S_ACKNOWLEDGE: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_NEEDS_RESET: u32 = 0x40;
pub const S_FAILED: u32 = 0x80;

#[derive(Clone, Copy)]
pub struct Mmio {
    pub base: u64,
}

impl Mmio {
    pub fn read(&self, reg: u64) -> u32 {
        mmio_read32(self.base + reg)
    }

    pub fn write(&self, reg: u64, v: u32) {
        mmio_write32(self.base + reg, v);
    }

    pub fn status(&self) -> u32 {
        self.read(STATUS)
    }

    /// ORs bits into the device status register.
    pub fn add_status(&self, bits: u32) {
        self.write(STATUS, self.status() | bits);
    }

    /// Writes 0 to Status and waits (bounded) until the device reads back 0.
    pub fn reset(&self) -> bool {
        self.write(STATUS, 0);
        for _ in 0..1_000_000 {
            if self.status() == 0 {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }

    pub fn device_features(&self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let lo = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let hi = self.read(DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    pub fn set_driver_features(&self, f: u64) {
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, f as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (f >> 32) as u32);
    }

    pub fn config8(&self, off: u64) -> u8 {
        mmio_read8(self.base + CONFIG + off)
    }

    pub fn config16(&self, off: u64) -> u16 {
        mmio_read16(self.base + CONFIG + off)
    }

    pub fn config32(&self, off: u64) -> u32 {
        self.read(CONFIG + off)
    }

    /// A 64-bit config field: two 32-bit reads, retried while the generation
    /// counter changes underneath.
    pub fn config64(&self, off: u64) -> u64 {
        for _ in 0..100 {
            let gen = self.read(CONFIG_GENERATION);
            let lo = self.config32(off);
            let hi = self.config32(off + 4);
            if self.read(CONFIG_GENERATION) == gen {
                return (u64::from(hi) << 32) | u64::from(lo);
            }
        }
        0
    }

    /// Initialisation up to FEATURES_OK (§3.1.1): reset, ACKNOWLEDGE, DRIVER, then the
    /// offered features that are in `wanted`, checked to be kept. Returns the accepted
    /// features; on failure the device is marked FAILED where the spec says so.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, InitError> {
        if !self.reset() {
            return Err(InitError::ResetStuck);
        }
        self.add_status(S_ACKNOWLEDGE);
        self.add_status(S_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.add_status(S_FAILED);
            return Err(InitError::NoVersion1);
        }
        let features = offered & wanted;
        self.set_driver_features(features);
        self.add_status(S_FEATURES_OK);
        if self.status() & S_FEATURES_OK == 0 {
            self.add_status(S_FAILED);
            return Err(InitError::FeaturesRejected);
        }
        Ok(features)
    }

    /// Sets up queue `index` on the rings in `mem`, as large as the device allows (a power of
    /// two, at most QSZ_MAX), and marks it ready. On failure the device is marked FAILED.
    ///
    /// # Safety
    /// `mem` must be ring memory used by nothing but this queue and the device, which must
    /// not be using it any more (it was just reset).
    pub unsafe fn setup_queue(
        &self,
        index: u32,
        mem: *mut QueueMem,
        event_idx: bool,
    ) -> Result<Queue, InitError> {
        self.write(QUEUE_SEL, index);
        if self.read(QUEUE_READY) != 0 {
            self.add_status(S_FAILED);
            return Err(InitError::QueueBusy);
        }
        let max = self.read(QUEUE_NUM_MAX).min(QSZ_MAX as u32);
        if max == 0 {
            self.add_status(S_FAILED);
            return Err(InitError::NoQueue);
        }
        // Largest power of two <= max (split rings are sized in powers of two).
        let size = 1u16 << (31 - max.leading_zeros());
        // SAFETY: exclusive, unused ring memory per the caller's contract.
        let q = unsafe { Queue::new(mem, size, event_idx) };
        self.write(QUEUE_NUM, u32::from(size));
        let (d, a, u) = (q.desc_paddr(), q.avail_paddr(), q.used_paddr());
        self.write(QUEUE_DESC_LOW, d as u32);
        self.write(QUEUE_DESC_HIGH, (d >> 32) as u32);
        self.write(QUEUE_DRIVER_LOW, a as u32);
        self.write(QUEUE_DRIVER_HIGH, (a >> 32) as u32);
        self.write(QUEUE_DEVICE_LOW, u as u32);
        self.write(QUEUE_DEVICE_HIGH, (u >> 32) as u32);
        self.write(QUEUE_READY, 1);
        Ok(q)
    }
}
