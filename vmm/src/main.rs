//! `ward-vmm`: the core process. Started by the launcher with one end of a control channel; it
//! receives the VM's configuration and descriptors, runs the VM, reports how it ended and exits
//! with a code that says the same (see `ward_ipc::core::exit_code`).

use std::fs::File;
use std::os::fd::RawFd;

use anyhow::Context;
use clap::Parser;
use ward_ipc::channel::Channel;
use ward_ipc::core::{exit_code, CoreToLauncher, ExitReason, LauncherToCore};
use ward_policy::sandbox::{self, Confinement};
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
    /// Inherited descriptor of an open `/dev/kvm` (without it, the core opens it).
    #[arg(long)]
    kvm_fd: Option<RawFd>,
    /// Confinement to enter before anything else (JSON, from the launcher; see
    /// ward_policy::sandbox).
    #[arg(long, value_name = "JSON")]
    confine: Option<String>,
}

fn main() {
    ward_ipc::log::init("warn");
    let args = Args::parse();
    if args.control_fd < 3 {
        eprintln!("ward-vmm: --control-fd must be an inherited descriptor above 2");
        std::process::exit(exit_code::USAGE);
    }
    let kvm = match args.kvm_fd {
        Some(fd) if fd > 2 && fd != args.control_fd => {
            // SAFETY: the launcher passes this descriptor (an open /dev/kvm) to us alone, and it
            // is not the control channel's.
            Some(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        }
        Some(fd) => {
            eprintln!("ward-vmm: --kvm-fd {fd} must be an inherited descriptor above 2");
            std::process::exit(exit_code::USAGE);
        }
        None => None,
    };
    // SAFETY: the launcher passes this descriptor to us and nothing else in this process uses it.
    let control = unsafe { Channel::from_raw_fd(args.control_fd) };
    // First, single-threaded, before anything is read: the confinement.
    if let Some(json) = &args.confine {
        match Confinement::parse(json).and_then(|c| sandbox::enter(&c)) {
            Ok(report) => tracing::info!(%report, "confined"),
            Err(e) => {
                let why = format!("cannot enter the confinement: {e}");
                eprintln!("ward-vmm: {why}");
                let _ = control.send(&CoreToLauncher::Exited(ExitReason::Error(why)), &[]);
                std::process::exit(exit_code::CONFINE);
            }
        }
    }
    let reason = match serve(&control, kvm) {
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

fn serve(control: &Channel, kvm: Option<File>) -> anyhow::Result<ExitReason> {
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
        kvm,
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
