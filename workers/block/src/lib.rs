//! `ward-block`: the vhost-user-blk backend process. It serves one raw disk image to one VM,
//! confined by its seccomp filter.
//!
//! The launcher opens the image and binds a listening Unix socket, and passes both as inherited
//! descriptors: this process never opens a path. [`run`] then, in this order:
//!
//! 1. takes ownership of the two descriptors, after checking what they are;
//! 2. builds the device ([`backend::BlockBackend`]) and the `VhostUserDaemon`, which starts the
//!    vring thread;
//! 3. installs the `block` seccomp filter on every thread of the process (TSYNC);
//! 4. only then accepts the frontend's connection and serves it until it goes away.
//!
//! The daemon, the filter and the frontend (steps 2 to 4) go through [`ward_worker::serve()`],
//! the serve loop all workers share.
//!
//! When the frontend disconnects the VM is gone: the process exits with status 0 and the
//! launcher decides what comes next.
//!
//! # Exit codes
//!
//! See [`exit_code`]: 0 after the frontend disconnected, and a distinct non-zero code per
//! failure class, which the launcher reports. A panic aborts (SIGABRT) in release builds and
//! exits with 101 in debug builds; a seccomp violation kills the process with SIGSYS.
//!
//! # Logs
//!
//! `tracing` to stderr, filtered by `WARD_LOG` (`RUST_LOG` syntax; default `warn`, with
//! virtio-queue's own unthrottled ring errors off). Everything
//! the device logs is inside one span, `block{device=vda}`. Lines a guest can trigger are
//! rate limited ([`metrics::should_log`]) and counted in [`metrics::Metrics`], which is logged
//! as JSON when the device stops.

pub mod backend;
pub mod disk;
pub mod metrics;
pub mod request;

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use nix::sys::stat::{fstat, SFlag};
use tracing::{info, info_span};
use vm_memory::GuestMemoryAtomic;
use ward_policy::seccomp::{Profile, SeccompMode};
use ward_worker::{Device, Hooks, ServeError};

use crate::backend::BlockBackend;
use crate::disk::{Disk, ID_BYTES};
use crate::metrics::Metrics;

pub use ward_worker::GuestMem;

/// Process exit codes.
pub mod exit_code {
    /// The frontend disconnected (the VM is gone).
    pub const OK: i32 = 0;
    /// The command line is invalid (clap exits with the same code).
    pub const USAGE: i32 = 2;
    /// An inherited descriptor is missing or is not what it should be.
    pub const BAD_FD: i32 = 3;
    /// The seccomp filter could not be installed.
    pub const SECCOMP: i32 = 4;
    /// Setting up the vhost-user daemon, accepting the frontend or serving it failed.
    pub const SERVE: i32 = 5;
    /// The image (or a backing file) is corrupt, unsupported, or its chain is incomplete.
    pub const IMAGE: i32 = 6;
}

/// The worker's configuration, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Inherited listening Unix stream socket for the vhost-user frontend.
    pub socket_fd: RawFd,
    /// Inherited descriptor of the disk image.
    pub image_fd: RawFd,
    pub readonly: bool,
    /// Device name for logs ("vda"); also the GET_ID answer when there is no serial.
    pub name: String,
    pub serial: Option<String>,
    pub seccomp: SeccompMode,
    /// Image format; `None`: what the image's header says.
    pub format: Option<ward_image::Format>,
    /// Inherited descriptors of the backing files, by the name the images store for them.
    pub backing: Vec<(String, RawFd)>,
}

/// Why a [`Config`] is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("Descriptor {0} is not an inherited descriptor (must be 3 or above)")]
    StdioFd(RawFd),
    #[error("The socket, the image and the backing files must be different descriptors")]
    SameFd,
    #[error("Device name {0:?} must be 1 to 32 characters of [A-Za-z0-9_-]")]
    Name(String),
    #[error("Device ID {0:?} is longer than {ID_BYTES} bytes")]
    IdTooLong(String),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fds: Vec<RawFd> = [self.socket_fd, self.image_fd]
            .into_iter()
            .chain(self.backing.iter().map(|(_, fd)| *fd))
            .collect();
        if let Some(&fd) = fds.iter().find(|&&fd| fd < 3) {
            return Err(ConfigError::StdioFd(fd));
        }
        let mut sorted = fds.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != fds.len() {
            return Err(ConfigError::SameFd);
        }
        let name_ok = (1..=32).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(ConfigError::Name(self.name.clone()));
        }
        if self.id().len() > ID_BYTES {
            return Err(ConfigError::IdTooLong(self.id().to_string()));
        }
        Ok(())
    }

    /// The GET_ID answer: the serial, or else the name.
    pub fn id(&self) -> &str {
        self.serial.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Descriptor {0} ({1}) is not open")]
    NotOpen(RawFd, &'static str, #[source] nix::Error),
    #[error("Cannot inspect descriptor {0} ({1})")]
    Inspect(RawFd, &'static str, #[source] nix::Error),
    #[error("Descriptor {0} is not a listening Unix stream socket")]
    NotListening(RawFd),
    #[error("Descriptor {0} is neither a regular file nor a block device")]
    NotAnImage(RawFd),
    #[error("Image descriptor {0} is open read-only but --readonly was not given")]
    ImageReadOnly(RawFd),
    #[error("Cannot set up the disk")]
    Disk(#[source] disk::Error),
    #[error("Cannot make the listening socket blocking")]
    Blocking(#[source] std::io::Error),
    /// Building the daemon, installing the filter, accepting or serving the frontend.
    #[error(transparent)]
    Run(#[from] ServeError),
}

impl Error {
    /// The exit code that reports this error (see [`exit_code`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotOpen(..)
            | Error::Inspect(..)
            | Error::NotListening(_)
            | Error::NotAnImage(_)
            | Error::ImageReadOnly(_)
            | Error::Blocking(_)
            | Error::Disk(disk::Error::Size(_)) => exit_code::BAD_FD,
            Error::Disk(disk::Error::IdTooLong(_)) => exit_code::USAGE,
            Error::Disk(disk::Error::Image(_) | disk::Error::MissingBacking(_)) => exit_code::IMAGE,
            Error::Run(ServeError::Seccomp(_)) => exit_code::SECCOMP,
            Error::Run(_) => exit_code::SERVE,
        }
    }
}

/// Takes ownership of an inherited descriptor, once it is known to be open.
fn take_fd(fd: RawFd, what: &'static str) -> Result<OwnedFd, Error> {
    fcntl(fd, FcntlArg::F_GETFD).map_err(|e| Error::NotOpen(fd, what, e))?;
    // SAFETY: `fd` is open (F_GETFD succeeded). The launcher handed it to this process for its
    // exclusive use and nothing else in the process refers to it: it is taken once, and
    // `Config::validate` made sure the socket and the image are different numbers.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn take_listener(fd: RawFd) -> Result<UnixListener, Error> {
    let owned = take_fd(fd, "socket")?;
    let listening =
        getsockopt(&owned, sockopt::AcceptConn).map_err(|e| Error::Inspect(fd, "socket", e))?;
    let kind =
        getsockopt(&owned, sockopt::SockType).map_err(|e| Error::Inspect(fd, "socket", e))?;
    if !listening || kind != SockType::Stream {
        return Err(Error::NotListening(fd));
    }
    let listener = UnixListener::from(owned);
    // A non-blocking listener would make the daemon's accept loop spin.
    listener.set_nonblocking(false).map_err(Error::Blocking)?;
    Ok(listener)
}

fn take_image(fd: RawFd, readonly: bool) -> Result<File, Error> {
    let owned = take_fd(fd, "image")?;
    let st = fstat(fd).map_err(|e| Error::Inspect(fd, "image", e))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG && kind != SFlag::S_IFBLK {
        return Err(Error::NotAnImage(fd));
    }
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::Inspect(fd, "image", e))?;
    if !readonly && OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_RDONLY {
        return Err(Error::ImageReadOnly(fd));
    }
    Ok(File::from(owned))
}

/// Runs the worker: see the crate documentation for the order of events.
pub fn run(cfg: Config) -> Result<(), Error> {
    let span = info_span!("block", device = %cfg.name);
    let _entered = span.enter();

    let listener = take_listener(cfg.socket_fd)?;
    let image = take_image(cfg.image_fd, cfg.readonly)?;
    let backing = cfg
        .backing
        .iter()
        .map(|(name, fd)| Ok((name.clone(), take_image(*fd, true)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let disk =
        Disk::open(image, cfg.format, cfg.readonly, cfg.id(), backing).map_err(Error::Disk)?;
    info!(
        sectors = disk.sectors(),
        readonly = cfg.readonly,
        seccomp = %cfg.seccomp,
        "starting"
    );

    let metrics = Arc::new(Metrics::default());
    let mem = GuestMemoryAtomic::new(GuestMem::new());
    let backend = Arc::new(BlockBackend::new(
        disk,
        mem.clone(),
        metrics.clone(),
        span.clone(),
    ));
    let device = Device {
        name: cfg.name.clone(),
        backend,
        mem,
        listener,
        profile: Profile::Block,
        seccomp: cfg.seccomp,
    };
    ward_worker::serve(device, &Wiring { metrics })
}

/// What the block device adds to the serve loop: nothing but its counters.
struct Wiring {
    metrics: Arc<Metrics>,
}

impl Hooks<Arc<BlockBackend>> for Wiring {
    type Error = Error;

    fn metrics_json(&self) -> String {
        self.metrics.to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            socket_fd: 3,
            image_fd: 4,
            readonly: false,
            name: "vda".into(),
            serial: None,
            seccomp: SeccompMode::Enforce,
            format: None,
            backing: Vec::new(),
        }
    }

    #[test]
    fn backing_descriptors_must_be_distinct_and_inherited() {
        let mut c = cfg();
        c.backing = vec![("base.raw".into(), 5)];
        assert_eq!(c.validate(), Ok(()));
        c.backing.push(("other".into(), 4));
        assert_eq!(c.validate(), Err(ConfigError::SameFd));
        c.backing = vec![("base.raw".into(), 1)];
        assert_eq!(c.validate(), Err(ConfigError::StdioFd(1)));
    }

    #[test]
    fn validation() {
        assert_eq!(cfg().validate(), Ok(()));
        assert_eq!(cfg().id(), "vda");
        let c = Config {
            serial: Some("S".repeat(20)),
            ..cfg()
        };
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.id(), "S".repeat(20));
        let bad = [
            Config {
                socket_fd: 2,
                ..cfg()
            },
            Config {
                image_fd: 3,
                ..cfg()
            },
            Config {
                name: String::new(),
                ..cfg()
            },
            Config {
                name: "a b".into(),
                ..cfg()
            },
            Config {
                name: "../x".into(),
                ..cfg()
            },
            Config {
                name: "x".repeat(21),
                ..cfg()
            },
            Config {
                serial: Some("S".repeat(21)),
                ..cfg()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn missing_descriptors_are_reported_as_bad_fds() {
        // A descriptor number far above anything this test process has open.
        let e = take_listener(4000).unwrap_err();
        assert!(matches!(e, Error::NotOpen(4000, "socket", _)), "{e:?}");
        assert_eq!(e.exit_code(), exit_code::BAD_FD);
    }
}
