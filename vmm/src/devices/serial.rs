//! The 8250 UART at 0x3f8 (vm-superio), its interrupt as an irqfd, its output to a descriptor
//! the launcher handed over (the terminal or a log file).

use std::fs::File;
use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's IRQ line: the eventfd is registered with KVM as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Serial output that never blocks the guest on a slow reader: a write that would block or
/// fails is dropped (the guest's console is best effort, the VM is not).
pub struct Output(pub File);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Ok(n) => Ok(n),
            Err(_) => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Output>,
}

impl Serial {
    pub fn new(irq: EventFd, out: File) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), Output(out)),
        }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn write(&mut self, offset: u8, v: u8) {
        if let Err(e) = self.uart.write(offset, v) {
            tracing::debug!(error = ?e, "serial write");
        }
    }

    /// Queues input for the guest; returns how much fit in the UART's FIFO.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let n = bytes.len().min(room);
        if n == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or(0)
    }
}
