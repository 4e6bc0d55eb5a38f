//! The i8042 controller (only its reset command matters) and the ACPI hardware-reduced sleep
//! control register: both end the VM.

use std::sync::Arc;

use ward_ipc::core::ExitReason;

use crate::exit::ExitSignal;

pub use crate::layout::{SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};

/// Ends the VM as a guest reset when the i8042 is told to pulse the reset line.
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.signal(ExitReason::GuestReset);
        Ok(())
    }
}

pub struct I8042 {
    dev: vm_superio::I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            dev: vm_superio::I8042Device::new(ResetTrigger(exit)),
        }
    }

    /// `port` is 0x60 or 0x64.
    pub fn read(&mut self, port: u16) -> u8 {
        self.dev.read((port - 0x60) as u8)
    }

    pub fn write(&mut self, port: u16, v: u8) {
        let _ = self.dev.write((port - 0x60) as u8, v);
    }
}

/// SLP_EN with SLP_TYP 5 (the `_S5_` the DSDT declares) powers the VM off.
pub struct SleepControl(pub Arc<ExitSignal>);

impl SleepControl {
    pub fn write(&self, v: u8) {
        if crate::acpi::is_s5_request(v) {
            self.0.signal(ExitReason::GuestShutdown);
        }
    }
}
