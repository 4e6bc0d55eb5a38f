//! `ward-net`: ward's vhost-user-net worker. Started by the launcher with a listening socket
//! and a tap as inherited descriptors; see the library documentation for what it does and
//! `ward_net::exit_code` for how it ends.

use std::os::fd::RawFd;

use clap::Parser;
use ward_ipc::core::SeccompMode;
use ward_net::{exit_code, Config, ConfigError, Mac};

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

fn main() {
    ward_ipc::log::init(ward_worker::exit::DEFAULT_LOG);
    let mut args = Args::parse();
    let confine = args.confine.take();
    ward_worker::exit::main(
        confine.as_deref(),
        || Config::try_from(args),
        exit_code::USAGE,
        ward_net::run,
        ward_net::Error::exit_code,
    )
}
