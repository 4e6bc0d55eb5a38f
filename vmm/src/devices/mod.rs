//! Devices that live in the core: the serial port, the i8042 (reset only), the ACPI sleep
//! register, and the dispatch of vCPU port and MMIO exits to them and to the virtio windows.

pub mod legacy;
pub mod serial;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::exit::ExitSignal;
use crate::layout;
use crate::virtio::mmio::VirtioMmio;

/// Everything a vCPU exit can reach.
pub struct Bus {
    pub serial: Mutex<serial::Serial>,
    pub i8042: Mutex<legacy::I8042>,
    pub sleep: legacy::SleepControl,
    pub virtio: Vec<Arc<Mutex<VirtioMmio>>>,
    pub exit: Arc<ExitSignal>,
    /// Guest reads and writes of virtio registers that exited to the core (where the registers
    /// are mapped read-only, only writes do: see `virtio::regpage`).
    pub virtio_exits: Exits,
}

/// Counts of register accesses that exited, by direction.
#[derive(Debug, Default)]
pub struct Exits {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

/// Guest accesses to MMIO nothing is mapped at, logged within a rate limit.
static UNMAPPED: crate::ratelimit::Limiter = crate::ratelimit::Limiter::new();

const I8042_DATA: u16 = 0x60;
const I8042_CMD: u16 = 0x64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a vCPU thread panicked mid-access; the device state is still
    // plain data, so keep going rather than take the VM down twice.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bus {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return;
        };
        match port {
            p if (layout::SERIAL_PORT..layout::SERIAL_PORT + 8).contains(&p) => {
                *first = lock(&self.serial).read((p - layout::SERIAL_PORT) as u8);
            }
            I8042_DATA | I8042_CMD => *first = lock(&self.i8042).read(port),
            p if p == legacy::SLEEP_CONTROL_PORT || p == legacy::SLEEP_STATUS_PORT => *first = 0,
            _ => {}
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match port {
            p if (layout::SERIAL_PORT..layout::SERIAL_PORT + 8).contains(&p) => {
                lock(&self.serial).write((p - layout::SERIAL_PORT) as u8, v);
            }
            I8042_DATA | I8042_CMD => lock(&self.i8042).write(port, v),
            legacy::SLEEP_CONTROL_PORT => self.sleep.write(v),
            _ => {}
        }
    }

    fn virtio_at(&self, addr: u64) -> Option<(&Arc<Mutex<VirtioMmio>>, u64)> {
        let off = addr.checked_sub(layout::VIRTIO_MMIO_BASE)?;
        let idx = usize::try_from(off / layout::VIRTIO_MMIO_SIZE).ok()?;
        Some((self.virtio.get(idx)?, off % layout::VIRTIO_MMIO_SIZE))
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.virtio_at(addr) {
            Some((dev, off)) => {
                self.virtio_exits.reads.fetch_add(1, Ordering::Relaxed);
                lock(dev).read(off, data)
            }
            None => {
                if let Some(count) = UNMAPPED.hit() {
                    warn!(
                        addr = format_args!("{addr:#x}"),
                        count, "read of unmapped MMIO"
                    );
                }
                data.fill(0xff);
            }
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        match self.virtio_at(addr) {
            Some((dev, off)) => {
                self.virtio_exits.writes.fetch_add(1, Ordering::Relaxed);
                lock(dev).write(off, data)
            }
            None => {
                if let Some(count) = UNMAPPED.hit() {
                    warn!(
                        addr = format_args!("{addr:#x}"),
                        count, "write to unmapped MMIO"
                    );
                }
            }
        }
    }
}
