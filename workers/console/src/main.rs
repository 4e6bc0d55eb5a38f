//! `ward-console`: ward's virtio-console worker. Started by the launcher with its sockets and
//! log files as inherited descriptors; see the library documentation for what it does and
//! `ward_console::exit_code` for how it ends.

use std::os::fd::RawFd;

use clap::Parser;
use ward_console::{exit_code, Config, ConfigError, DEFAULT_LOG_MAX};
use ward_ipc::core::SeccompMode;

#[derive(Parser, Debug)]
#[command(
    name = "ward-console",
    about = "ward's virtio-console worker (started by the launcher)"
)]
struct Args {
    /// Inherited descriptor of a listening Unix stream socket for the vhost-user frontend.
    #[arg(long)]
    socket_fd: RawFd,
    /// Inherited descriptor of a listening Unix stream socket for console clients.
    #[arg(long)]
    attach_fd: RawFd,
    /// Inherited descriptor of the current log, open for reading and writing.
    #[arg(long)]
    log_fd: RawFd,
    /// Inherited descriptor of the previous log (rotated into), open for reading and writing.
    #[arg(long)]
    log_old_fd: RawFd,
    /// Size in bytes at which the log is rotated (at least 4096).
    #[arg(long, default_value_t = DEFAULT_LOG_MAX)]
    log_max: u64,
    /// Device name, for logs.
    #[arg(long)]
    name: String,
    /// Seccomp filter mode: enforce, log or off.
    #[arg(long, default_value = "enforce")]
    seccomp: SeccompMode,
    /// Confinement to enter before anything else (JSON, from the launcher; see
    /// ward_policy::sandbox). Without it the worker runs unconfined but for seccomp.
    #[arg(long, value_name = "JSON")]
    confine: Option<String>,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let cfg = Config {
            socket_fd: a.socket_fd,
            attach_fd: a.attach_fd,
            log_fd: a.log_fd,
            log_old_fd: a.log_old_fd,
            log_max: a.log_max,
            name: a.name,
            seccomp: a.seccomp,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() {
    ward_ipc::log::init(ward_worker::exit::DEFAULT_LOG);
    let mut args = Args::parse();
    let confine = args.confine.take();
    ward_worker::exit::main(
        confine.as_deref(),
        || Config::try_from(args),
        exit_code::USAGE,
        ward_console::run,
        ward_console::Error::exit_code,
    )
}
