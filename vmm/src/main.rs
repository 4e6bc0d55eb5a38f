//! `ward-vmm`: the core process. Started by the launcher with one end of a control channel; it
//! receives the VM's configuration and descriptors, runs the VM, reports how it ended and exits
//! with a code that says the same (see `ward_ipc::core::exit_code`).

use std::fs::File;
use std::os::fd::RawFd;

use anyhow::Context;
use clap::Parser;
use ward_ipc::channel::Channel;
use ward_ipc::core::{exit_code, CoreToLauncher, ExitReason, LauncherToCore};
use ward_vmm::CoreFds;

#[derive(Parser)]
#[command(
    name = "ward-vmm",
    about = "ward's core process (started by the launcher)"
)]
struct Args {
    /// Inherited descriptor of the control channel to the launcher.
    #[arg(long)]
    control_fd: RawFd,
}

fn main() {
    ward_ipc::log::init("warn");
    let args = Args::parse();
    if args.control_fd < 3 {
        eprintln!("ward-vmm: --control-fd must be an inherited descriptor above 2");
        std::process::exit(exit_code::USAGE);
    }
    // SAFETY: the launcher passes this descriptor to us and nothing else in this process uses it.
    let control = unsafe { Channel::from_raw_fd(args.control_fd) };
    let reason = match serve(&control) {
        Ok(r) => r,
        Err(e) => ExitReason::Error(format!("{e:#}")),
    };
    let _ = control.send(&CoreToLauncher::Exited(reason.clone()), &[]);
    let code = match reason {
        ExitReason::GuestReset => exit_code::GUEST_RESET,
        ExitReason::GuestShutdown => exit_code::GUEST_SHUTDOWN,
        ExitReason::Stopped => exit_code::STOPPED,
        ExitReason::WorkerLost { .. } => exit_code::WORKER_LOST,
        ExitReason::Error(e) => {
            eprintln!("ward-vmm: {e}");
            exit_code::ERROR
        }
    };
    std::process::exit(code);
}

fn serve(control: &Channel) -> anyhow::Result<ExitReason> {
    let mut start = control
        .recv::<LauncherToCore>()
        .context("no start message from the launcher")?;
    let cfg = match std::mem::replace(&mut start.msg, LauncherToCore::Stop) {
        LauncherToCore::Start(cfg) => cfg,
        LauncherToCore::Stop => return Ok(ExitReason::Stopped),
    };
    let file = |r: &mut ward_ipc::channel::Received<LauncherToCore>, i| -> anyhow::Result<File> {
        Ok(File::from(r.take_fd(i)?))
    };
    let fds = CoreFds {
        kernel: file(&mut start, cfg.kernel).context("kernel")?,
        initrd: cfg
            .initrd
            .map(|i| file(&mut start, i))
            .transpose()
            .context("initrd")?,
        serial_out: file(&mut start, cfg.serial_out).context("serial output")?,
        serial_in: cfg
            .serial_in
            .map(|i| file(&mut start, i))
            .transpose()
            .context("serial input")?,
        devices: cfg
            .devices
            .iter()
            .map(|d| {
                start
                    .take_fd(d.socket)
                    .with_context(|| format!("socket of {}", d.name))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let reason = ward_vmm::run(
        &cfg,
        fds,
        || {
            let _ = control.send(&CoreToLauncher::Started, &[]);
        },
        Some(control),
    )?;
    Ok(reason)
}
