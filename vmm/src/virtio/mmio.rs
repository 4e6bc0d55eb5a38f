//! The virtio-mmio transport (version 2, "modern"), register by register (virtio 1.2, 4.2.2).
//!
//! The data path never comes here: QueueNotify writes go to an ioeventfd that the worker reads,
//! and the worker's used-buffer notifications go to an irqfd. Because the core never sees those
//! interrupts, InterruptStatus reports "used buffer" whenever the device is live; drivers then
//! look at their used rings, which is what they would do anyway.
//!
//! Where KVM can map memory read-only, reads do not come here either: the guest reads a copy
//! of the registers that every write brings up to date ([`super::regpage`]).

use std::sync::Arc;

use tracing::{error, info, warn};

use super::regpage::RegisterPage;
use super::status;
use super::vhost_user::{QueueSetup, VhostUserDevice};
use crate::memory::GuestRam;

/// What the transport needs from the device behind it. The vhost-user frontend is the real one;
/// tests use a fake to drive the register state machine.
pub trait Backend: Send {
    fn device_features(&self) -> u64;
    fn queue_num(&self) -> usize;
    fn config(&self) -> &[u8];
    /// Signals queue `index`'s kick (a QueueNotify that no ioeventfd caught).
    fn kick(&self, index: usize);
    fn activate(
        &mut self,
        ram: &GuestRam,
        driver_features: u64,
        queues: &[Option<QueueSetup>],
    ) -> Result<(), super::vhost_user::Error>;
    fn reset(&mut self) -> Result<(), super::vhost_user::Error>;
}

impl Backend for VhostUserDevice {
    fn device_features(&self) -> u64 {
        self.device_features
    }
    fn queue_num(&self) -> usize {
        self.queue_num
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn kick(&self, index: usize) {
        if let Some(k) = self.kicks.get(index) {
            let _ = k.write(1);
        }
    }
    fn activate(
        &mut self,
        ram: &GuestRam,
        driver_features: u64,
        queues: &[Option<QueueSetup>],
    ) -> Result<(), super::vhost_user::Error> {
        VhostUserDevice::activate(self, ram, driver_features, queues)
    }
    fn reset(&mut self) -> Result<(), super::vhost_user::Error> {
        VhostUserDevice::reset(self)
    }
}

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4452_4157; // "WARD"
const QUEUE_MAX: u16 = 256;
const INT_VRING: u32 = 1;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
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
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of the QueueNotify register, where the ioeventfds are registered.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;
/// Offset of the InterruptACK register, which needs nothing from the core.
pub const INTERRUPT_ACK_OFFSET: u64 = reg::INTERRUPT_ACK;

#[derive(Debug, Clone, Copy, Default)]
struct Queue {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// One virtio-mmio device window.
pub struct VirtioMmio<B: Backend = VhostUserDevice> {
    name: String,
    device_id: u32,
    backend: B,
    ram: Arc<GuestRam>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    live: bool,
    /// The copy of the registers the guest reads, when KVM maps one.
    page: Option<RegisterPage>,
    /// Limits the warnings a guest can cause by misusing the registers.
    odd_access: crate::ratelimit::Limiter,
}

fn set_half(word: &mut u64, high: bool, v: u32) {
    if high {
        *word = (*word & 0xffff_ffff) | (u64::from(v) << 32);
    } else {
        *word = (*word & !0xffff_ffff) | u64::from(v);
    }
}

impl<B: Backend> VirtioMmio<B> {
    pub fn new(name: String, device_id: u32, backend: B, ram: Arc<GuestRam>) -> Self {
        let queues = vec![Queue::default(); backend.queue_num()];
        VirtioMmio {
            name,
            device_id,
            backend,
            ram,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            live: false,
            page: None,
            odd_access: crate::ratelimit::Limiter::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Serves the guest's reads from `page` from now on (KVM maps it over the window): it gets
    /// the configuration space and every register's value now, and every write keeps it up to
    /// date.
    pub fn attach_page(&mut self, page: RegisterPage) {
        page.fill(reg::CONFIG as usize, self.backend.config());
        self.page = Some(page);
        self.render();
    }

    /// Writes every register's value, as [`VirtioMmio::read`] gives it, into the page.
    fn render(&self) {
        let Some(page) = &self.page else {
            return;
        };
        let mut v = [0u8; 4];
        for off in (0..reg::CONFIG).step_by(4) {
            self.read(off, &mut v);
            page.store(off as usize, u32::from_le_bytes(v));
        }
    }

    fn queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, if the driver may still configure it.
    fn queue_mut(&mut self) -> Option<&mut Queue> {
        if self.live {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            let start = (offset - reg::CONFIG) as usize;
            let cfg = self.backend.config();
            for (i, b) in data.iter_mut().enumerate() {
                *b = start
                    .checked_add(i)
                    .and_then(|j| cfg.get(j))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 {
            if let Some(count) = self.odd_access.hit() {
                warn!(device = %self.name, offset, len = data.len(), count, "non-32-bit register read");
            }
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.backend.device_features() as u32,
                1 => (self.backend.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.queue().map_or(0, |_| u32::from(QUEUE_MAX)),
            reg::QUEUE_READY => self.queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS if self.live => INT_VRING,
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX, // no shared memory regions
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A write the guest made (the only accesses that exit where the registers are mapped).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.write_register(offset, data);
        self.render();
    }

    fn write_register(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // Block devices have nothing writable the core must honour (writeback toggling is
            // not offered); ignore, like a read-only register.
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            if let Some(count) = self.odd_access.hit() {
                warn!(device = %self.name, offset, len = data.len(), count, "non-32-bit register write");
            }
            return;
        };
        let v = u32::from_le_bytes(bytes);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => set_half(&mut self.driver_features, false, v),
                        1 => set_half(&mut self.driver_features, true, v),
                        _ => {}
                    }
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.queue_mut() {
                    // Sizes must be powers of two up to QueueNumMax; others leave the queue
                    // unusable, and the worker would refuse them anyway.
                    q.size = if v.is_power_of_two() && v <= u32::from(QUEUE_MAX) {
                        v as u16
                    } else {
                        0
                    };
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queue_mut() {
                    q.ready = v == 1;
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                if let Some(q) = self.queue_mut() {
                    set_half(&mut q.desc, offset == reg::QUEUE_DESC_HIGH, v);
                }
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.queue_mut() {
                    set_half(&mut q.avail, offset == reg::QUEUE_DRIVER_HIGH, v);
                }
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.queue_mut() {
                    set_half(&mut q.used, offset == reg::QUEUE_DEVICE_HIGH, v);
                }
            }
            reg::QUEUE_NOTIFY => {
                // Only reached when the value matches no ioeventfd (a queue that doesn't exist).
                self.backend.kick(v as usize);
            }
            reg::INTERRUPT_ACK | reg::SHM_SEL => {}
            reg::STATUS => self.set_status(v),
            _ => {
                if let Some(count) = self.odd_access.hit() {
                    warn!(device = %self.name, offset, count, "write to unknown register");
                }
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let new = v & !self.status;
        let mut st = v;
        if new & status::FEATURES_OK != 0 {
            let unknown = self.driver_features & !self.backend.device_features();
            if unknown != 0 || self.driver_features & super::VIRTIO_F_VERSION_1 == 0 {
                if let Some(count) = self.odd_access.hit() {
                    warn!(device = %self.name, features = self.driver_features, count, "driver features refused");
                }
                st &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && !self.live {
            if st & status::FEATURES_OK == 0 {
                st &= !status::DRIVER_OK;
            } else {
                // The worker may signal as soon as its first queue starts, while the others
                // are still being set up: another vCPU reading the page meanwhile must already
                // find "used buffer", or its driver would take the interrupt for someone
                // else's. (A failed start renders the page again, without it.)
                if let Some(page) = &self.page {
                    page.store(reg::INTERRUPT_STATUS as usize, INT_VRING);
                }
                match self.activate() {
                    Ok(()) => self.live = true,
                    Err(e) => {
                        error!(device = %self.name, error = %e, "cannot start the device");
                        st |= status::DEVICE_NEEDS_RESET;
                    }
                }
            }
        }
        self.status = st;
    }

    fn activate(&mut self) -> Result<(), super::vhost_user::Error> {
        let queues: Vec<Option<QueueSetup>> = self
            .queues
            .iter()
            .map(|q| {
                (q.ready && q.size != 0).then_some(QueueSetup {
                    size: q.size,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                })
            })
            .collect();
        self.backend
            .activate(&self.ram, self.driver_features, &queues)?;
        info!(device = %self.name, features = format_args!("{:#x}", self.driver_features), "device started");
        Ok(())
    }

    fn reset(&mut self) {
        if self.live {
            if let Err(e) = self.backend.reset() {
                error!(device = %self.name, error = %e, "cannot stop the device's queues");
            }
        }
        self.live = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(|q| *q = Queue::default());
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
