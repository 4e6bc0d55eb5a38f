//! The core's main thread once the VM runs: waits for the end of the VM (any thread signalling
//! [`ExitSignal`]), a worker's socket closing, a stop request from the launcher, and serial input.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use tracing::{info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use ward_ipc::channel::Channel;
use ward_ipc::core::{ExitReason, LauncherToCore};

use crate::devices::Bus;
use crate::exit::ExitSignal;

pub struct Inputs<'a> {
    pub exit: &'a ExitSignal,
    pub bus: &'a Bus,
    pub serial_in: Option<&'a File>,
    /// A second handle on each device's vhost-user socket, watched for the peer closing.
    pub watch: &'a [(String, UnixStream)],
    pub control: Option<&'a Channel>,
}

const EXIT: u64 = 0;
const SERIAL_IN: u64 = 1;
const CONTROL: u64 = 2;
const DEVICE_BASE: u64 = 16;

pub fn run(i: Inputs<'_>) -> std::io::Result<ExitReason> {
    let epoll = Epoll::new()?;
    let add = |fd: i32, events: EventSet, token: u64| {
        epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    };
    add(i.exit.evt.as_raw_fd(), EventSet::IN, EXIT)?;
    if let Some(f) = i.serial_in {
        match add(f.as_raw_fd(), EventSet::IN, SERIAL_IN) {
            // Regular files and /dev/null cannot be polled: there is no input to wait for.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            r => r?,
        }
    }
    if let Some(c) = i.control {
        add(c.as_raw_fd(), EventSet::IN, CONTROL)?;
    }
    for (n, (_, s)) in i.watch.iter().enumerate() {
        // Only hang-ups: the vCPU threads own the request/reply traffic on this socket.
        add(
            s.as_raw_fd(),
            EventSet::READ_HANG_UP,
            DEVICE_BASE + n as u64,
        )?;
    }
    let mut events = vec![EpollEvent::default(); 8 + i.watch.len()];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match ev.data() {
                EXIT => {}
                SERIAL_IN => {
                    let Some(mut f) = i.serial_in else { continue };
                    let mut buf = [0u8; 64];
                    match f.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            // End of input: stop watching it, the guest keeps running.
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                f.as_raw_fd(),
                                EpollEvent::default(),
                            );
                        }
                        Ok(k) => {
                            let taken = i
                                .bus
                                .serial
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .input(&buf[..k]);
                            if taken < k {
                                warn!(dropped = k - taken, "serial input FIFO full");
                            }
                        }
                    }
                }
                CONTROL => {
                    let Some(c) = i.control else { continue };
                    match c.recv::<LauncherToCore>() {
                        Ok(r) => match r.msg {
                            LauncherToCore::Stop => i.exit.signal(ExitReason::Stopped),
                            LauncherToCore::Start(_) => warn!("ignoring a second start request"),
                        },
                        Err(ward_ipc::channel::Error::Closed) => {
                            // The launcher is gone; nobody would hear about this VM any more.
                            i.exit.signal(ExitReason::Stopped);
                        }
                        Err(e) => warn!(error = %e, "bad control message"),
                    }
                }
                t => {
                    let idx = (t - DEVICE_BASE) as usize;
                    if let Some((name, _)) = i.watch.get(idx) {
                        i.exit.signal(ExitReason::WorkerLost {
                            device: name.clone(),
                            detail: "vhost-user connection closed".into(),
                        });
                    }
                }
            }
        }
        if let Some(reason) = i.exit.reason() {
            info!(%reason, "VM ended");
            return Ok(reason);
        }
    }
}
