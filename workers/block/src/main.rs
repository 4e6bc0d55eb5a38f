//! `ward-block`: ward's vhost-user-blk worker. Started by the launcher with a listening socket
//! and a disk image as inherited descriptors; see the library documentation for what it does
//! and `ward_block::exit_code` for how it ends.

use std::os::fd::RawFd;

use clap::Parser;
use ward_block::{exit_code, Config, ConfigError};
use ward_ipc::core::SeccompMode;

#[derive(Parser, Debug)]
#[command(
    name = "ward-block",
    about = "ward's vhost-user-blk worker (started by the launcher)"
)]
struct Args {
    /// Inherited descriptor of a listening Unix stream socket for the vhost-user frontend.
    #[arg(long)]
    socket_fd: RawFd,
    /// Inherited descriptor of the disk image (raw), opened by the launcher.
    #[arg(long)]
    image_fd: RawFd,
    /// Serve the disk read-only (VIRTIO_BLK_F_RO); writes fail.
    #[arg(long)]
    readonly: bool,
    /// Device name, for logs and as the default device ID.
    #[arg(long)]
    name: String,
    /// Seccomp filter mode: enforce, log or off.
    #[arg(long, default_value = "enforce")]
    seccomp: SeccompMode,
    /// Confinement to enter before anything else (JSON, from the launcher; see
    /// ward_policy::sandbox). Without it the worker runs unconfined but for seccomp.
    #[arg(long, value_name = "JSON")]
    confine: Option<String>,
    /// Device ID the guest reads with GET_ID (at most 20 bytes); defaults to the name.
    #[arg(long)]
    serial: Option<String>,
    /// Image format (raw or qcow2); by default, what the image's header says.
    #[arg(long, value_parser = parse_format)]
    format: Option<ward_image::Format>,
    /// A backing file as NAME=FD: the name the image stores for it, and its inherited
    /// descriptor (repeatable).
    #[arg(long = "backing", value_parser = parse_backing)]
    backing: Vec<(String, RawFd)>,
}

fn parse_format(s: &str) -> Result<ward_image::Format, String> {
    ward_image::Format::from_name(s).ok_or_else(|| format!("unknown format {s:?} (raw or qcow2)"))
}

fn parse_backing(s: &str) -> Result<(String, RawFd), String> {
    let (name, fd) = s.rsplit_once('=').ok_or("expected NAME=FD")?;
    let fd = fd
        .parse()
        .map_err(|_| format!("{fd:?} is not a descriptor number"))?;
    Ok((name.to_string(), fd))
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let cfg = Config {
            socket_fd: a.socket_fd,
            image_fd: a.image_fd,
            readonly: a.readonly,
            name: a.name,
            serial: a.serial,
            seccomp: a.seccomp,
            format: a.format,
            backing: a.backing,
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
        ward_block::run,
        ward_block::Error::exit_code,
    )
}
