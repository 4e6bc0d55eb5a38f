//! `ward-console`: ward's virtio-console worker. Started by the launcher with its sockets and
//! log files as inherited descriptors; see the library documentation for what it does and
//! `ward_console::exit_code` for how it ends.

use std::os::fd::RawFd;

use clap::Parser;
use tracing::error;
use ward_console::{exit_code, Config, ConfigError, DEFAULT_LOG_MAX};
use ward_ipc::core::SeccompMode;

/// Default log filter. virtio-queue logs some guest-caused ring errors itself, without a rate
/// limit; we count those ourselves (and log them rate-limited), so its own lines stay off.
const DEFAULT_LOG: &str = "warn,virtio_queue=off";

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

/// The error and its causes, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn main() {
    ward_ipc::log::init(DEFAULT_LOG);
    let code = match Config::try_from(Args::parse()) {
        Err(e) => {
            error!("{}", chain(&e));
            exit_code::USAGE
        }
        Ok(cfg) => match ward_console::run(cfg) {
            Ok(()) => exit_code::OK,
            Err(e) => {
                error!("{}", chain(&e));
                e.exit_code()
            }
        },
    };
    std::process::exit(code);
}
