//! `ward-net`: ward's vhost-user-net worker. Started by the launcher with a listening socket
//! and a tap as inherited descriptors; see the library documentation for what it does and
//! `ward_net::exit_code` for how it ends.

use std::os::fd::RawFd;

use clap::Parser;
use tracing::error;
use ward_ipc::core::SeccompMode;
use ward_net::{exit_code, Config, ConfigError, Mac};

/// Default log filter. virtio-queue logs some guest-caused ring errors itself, without a rate
/// limit; we count those ourselves (and log them rate-limited), so its own lines stay off.
const DEFAULT_LOG: &str = "warn,virtio_queue=off";

#[derive(Parser, Debug)]
#[command(
    name = "ward-net",
    about = "ward's vhost-user-net worker (started by the launcher)"
)]
struct Args {
    /// Inherited descriptor of a listening Unix stream socket for the vhost-user frontend.
    #[arg(long)]
    socket_fd: RawFd,
    /// Inherited tap descriptor (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header), made by
    /// the launcher.
    #[arg(long)]
    tap_fd: RawFd,
    /// Device name, for logs.
    #[arg(long)]
    name: String,
    /// The guest's MAC address, e.g. 52:54:00:12:34:56.
    #[arg(long)]
    mac: Mac,
    /// The MTU the device advertises to the guest.
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
    /// Seccomp filter mode: enforce, log or off.
    #[arg(long, default_value = "enforce")]
    seccomp: SeccompMode,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let cfg = Config {
            socket_fd: a.socket_fd,
            tap_fd: a.tap_fd,
            name: a.name,
            mac: a.mac,
            mtu: a.mtu,
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
        Ok(cfg) => match ward_net::run(cfg) {
            Ok(()) => exit_code::OK,
            Err(e) => {
                error!("{}", chain(&e));
                e.exit_code()
            }
        },
    };
    std::process::exit(code);
}
