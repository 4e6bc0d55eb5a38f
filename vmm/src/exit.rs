//! How any thread of the core says "this VM is over": the first reason wins, and the main loop
//! wakes up on the eventfd.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;
use ward_ipc::core::ExitReason;

pub struct ExitSignal {
    pub evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    pub fn signal(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
