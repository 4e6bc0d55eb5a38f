//! `ward-console`: the virtio-console backend process. It serves one console port (the guest's
//! `hvc0`) to one VM, writes everything the guest prints to a rotated log, and lets clients
//! attach over a Unix socket, confined by its seccomp filter.
//!
//! The launcher binds the vhost-user socket and the attach socket and opens the two log files,
//! and passes all four as inherited descriptors: this process never opens a path. [`run`]
//! then, in this order:
//!
//! 1. takes ownership of the descriptors, after checking what they are (two listening stream
//!    sockets; two regular files open for reading and writing), makes the attach listener
//!    non-blocking and the log append-only, and creates the handshake timer;
//! 2. builds the device ([`backend::ConsoleBackend`]) and the `VhostUserDaemon`, which starts
//!    the vring thread, and hands the backend that thread's epoll handler;
//! 3. installs the `console` seccomp filter on every thread of the process (TSYNC);
//! 4. only then registers the attach listener (clients may attach before the frontend comes),
//!    accepts the frontend's connection and serves it until it goes away.
//!
//! The daemon, the filter and the frontend (steps 2 to 4) go through [`ward_worker::serve()`],
//! the serve loop all workers share.
//!
//! When the frontend disconnects the VM is gone: the process exits with status 0, which closes
//! every client.
//!
//! # The device
//!
//! virtio device ID 3, one port, no `VIRTIO_CONSOLE_F_SIZE`, `F_MULTIPORT` or
//! `F_EMERG_WRITE`: queue 0 is the receiveq (input for the guest), queue 1 the transmitq (the
//! guest's output). See [`queue`] for how chains are validated, [`attach`] for the attach
//! protocol and [`clients`] for how it is served, and [`log`] for the rotation.
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
//! virtio-queue's own unthrottled ring errors off). Everything the device logs is inside one
//! span, `console{device=NAME}`. Lines a guest or a client can trigger are rate limited
//! ([`metrics::should_log`]) and counted in [`metrics::Metrics`], which is logged as JSON when
//! the device stops.

pub mod attach;
pub mod backend;
pub mod clients;
pub mod log;
pub mod metrics;
pub mod queue;
pub mod registry;
#[cfg(test)]
mod testutil;

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use nix::sys::stat::{fstat, SFlag};
use tracing::{info, info_span};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::timerfd::TimerFd;
use ward_policy::seccomp::{Profile, SeccompMode};
use ward_worker::{Device, Hooks, ServeError};

use crate::attach::Limits;
use crate::backend::ConsoleBackend;
use crate::clients::Clients;
use crate::metrics::Metrics;
use crate::registry::HandlerRegistry;

pub use ward_worker::GuestMem;

/// Default `--log-max`: 1 MiB.
pub const DEFAULT_LOG_MAX: u64 = 1 << 20;

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
    /// Setting up the vhost-user daemon or the attach listener, accepting the frontend or
    /// serving it failed.
    pub const SERVE: i32 = 5;
}

/// The worker's configuration, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Inherited listening Unix stream socket for the vhost-user frontend.
    pub socket_fd: RawFd,
    /// Inherited listening Unix stream socket for console clients.
    pub attach_fd: RawFd,
    /// Inherited current log, open for reading and writing.
    pub log_fd: RawFd,
    /// Inherited previous log, open for reading and writing.
    pub log_old_fd: RawFd,
    /// Size at which the log is rotated.
    pub log_max: u64,
    /// Device name for logs ("console").
    pub name: String,
    pub seccomp: SeccompMode,
}

/// Why a [`Config`] is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("Descriptor {0} is not an inherited descriptor (must be 3 or above)")]
    StdioFd(RawFd),
    #[error("The sockets and the logs must be different descriptors")]
    SameFd,
    #[error("Device name {0:?} must be 1 to 32 characters of [A-Za-z0-9_-]")]
    Name(String),
    #[error("Log size {0} is below the minimum of {min} bytes", min = log::MIN_MAX)]
    LogMax(u64),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fds = [self.socket_fd, self.attach_fd, self.log_fd, self.log_old_fd];
        if let Some(&fd) = fds.iter().find(|&&fd| fd < 3) {
            return Err(ConfigError::StdioFd(fd));
        }
        let mut sorted = fds;
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
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
        if self.log_max < log::MIN_MAX {
            return Err(ConfigError::LogMax(self.log_max));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Descriptor {0} ({1}) is not open")]
    NotOpen(RawFd, &'static str, #[source] nix::Error),
    #[error("Cannot inspect descriptor {0} ({1})")]
    Inspect(RawFd, &'static str, #[source] nix::Error),
    #[error("Descriptor {0} ({1}) is not a listening Unix stream socket")]
    NotListening(RawFd, &'static str),
    #[error("Descriptor {0} ({1}) is not a regular file")]
    NotAFile(RawFd, &'static str),
    #[error("Descriptor {0} ({1}) must be open for reading and writing (rotation copies the log)")]
    NotReadWrite(RawFd, &'static str),
    #[error("Cannot set the flags of descriptor {0} ({1})")]
    Flags(RawFd, &'static str, #[source] nix::Error),
    #[error("Cannot make the vhost-user listening socket blocking")]
    Blocking(#[source] std::io::Error),
    #[error("Cannot create the handshake timer")]
    Timer(#[source] std::io::Error),
    #[error("Cannot watch the attach socket")]
    Attach(#[source] std::io::Error),
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
            | Error::NotListening(..)
            | Error::NotAFile(..)
            | Error::NotReadWrite(..)
            | Error::Flags(..)
            | Error::Blocking(_) => exit_code::BAD_FD,
            Error::Run(ServeError::Seccomp(_)) => exit_code::SECCOMP,
            Error::Timer(_) | Error::Attach(_) | Error::Run(_) => exit_code::SERVE,
        }
    }
}

/// Takes ownership of an inherited descriptor, once it is known to be open.
fn take_fd(fd: RawFd, what: &'static str) -> Result<OwnedFd, Error> {
    fcntl(fd, FcntlArg::F_GETFD).map_err(|e| Error::NotOpen(fd, what, e))?;
    // SAFETY: `fd` is open (F_GETFD succeeded). The launcher handed it to this process for its
    // exclusive use and nothing else in the process refers to it: it is taken once, and
    // `Config::validate` made sure the four descriptors are different numbers.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn take_listener(fd: RawFd, what: &'static str) -> Result<UnixListener, Error> {
    let owned = take_fd(fd, what)?;
    let listening =
        getsockopt(&owned, sockopt::AcceptConn).map_err(|e| Error::Inspect(fd, what, e))?;
    let kind = getsockopt(&owned, sockopt::SockType).map_err(|e| Error::Inspect(fd, what, e))?;
    if !listening || kind != SockType::Stream {
        return Err(Error::NotListening(fd, what));
    }
    Ok(UnixListener::from(owned))
}

/// Takes a log file: a regular file open for reading and writing. Returns it and its size.
fn take_log(fd: RawFd, what: &'static str, append: bool) -> Result<(File, u64), Error> {
    let owned = take_fd(fd, what)?;
    let st = fstat(fd).map_err(|e| Error::Inspect(fd, what, e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Error::NotAFile(fd, what));
    }
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::Inspect(fd, what, e))?;
    let flags = OFlag::from_bits_truncate(flags);
    if flags & OFlag::O_ACCMODE != OFlag::O_RDWR {
        return Err(Error::NotReadWrite(fd, what));
    }
    // The current log is written at its end, also after it was truncated by a rotation.
    if append && !flags.contains(OFlag::O_APPEND) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_APPEND))
            .map_err(|e| Error::Flags(fd, what, e))?;
    }
    Ok((File::from(owned), u64::try_from(st.st_size).unwrap_or(0)))
}

/// Runs the worker: see the crate documentation for the order of events.
pub fn run(cfg: Config) -> Result<(), Error> {
    let span = info_span!("console", device = %cfg.name);
    let _entered = span.enter();

    let listener = take_listener(cfg.socket_fd, "socket")?;
    // A non-blocking listener would make the daemon's accept loop spin.
    listener.set_nonblocking(false).map_err(Error::Blocking)?;
    let attach = take_listener(cfg.attach_fd, "attach socket")?;
    clients::set_nonblocking(&attach)
        .map_err(|e| Error::Flags(cfg.attach_fd, "attach socket", e))?;
    let (cur, size) = take_log(cfg.log_fd, "log", true)?;
    let (old, _) = take_log(cfg.log_old_fd, "old log", false)?;
    let timer =
        TimerFd::new().map_err(|e| Error::Timer(std::io::Error::from_raw_os_error(e.errno())))?;
    clients::set_nonblocking(&timer).map_err(|e| Error::Timer(e.into()))?;
    info!(
        log_size = size,
        log_max = cfg.log_max,
        seccomp = %cfg.seccomp,
        "starting"
    );

    let metrics = Arc::new(Metrics::default());
    let log = log::Log::new(cur, old, cfg.log_max, size);
    let clients = Clients::new(attach, timer, Limits::default(), metrics.clone());
    let mem = GuestMemoryAtomic::new(GuestMem::new());
    let backend = Arc::new(ConsoleBackend::new(
        log,
        clients,
        mem.clone(),
        metrics.clone(),
        span.clone(),
    ));
    let device = Device {
        name: cfg.name.clone(),
        backend: backend.clone(),
        mem,
        listener,
        profile: Profile::Console,
        seccomp: cfg.seccomp,
    };
    ward_worker::serve(device, &Wiring { backend, metrics })
}

/// What the console adds to the serve loop: the vring thread's epoll for the backend before the
/// filter, and the attach listener (clients may attach before the frontend comes) after it.
struct Wiring {
    backend: Arc<ConsoleBackend>,
    metrics: Arc<Metrics>,
}

impl Hooks<Arc<ConsoleBackend>> for Wiring {
    type Error = Error;

    fn daemon_built(&self, daemon: &VhostUserDaemon<Arc<ConsoleBackend>>) -> Result<(), Error> {
        for handler in daemon.get_epoll_handlers().iter().take(1) {
            self.backend
                .set_registry(Box::new(HandlerRegistry(Arc::downgrade(handler))));
        }
        Ok(())
    }

    fn before_accept(&self) -> Result<(), Error> {
        self.backend.start_clients().map_err(Error::Attach)
    }

    fn metrics_json(&self) -> String {
        self.metrics.to_json()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn cfg() -> Config {
        Config {
            socket_fd: 3,
            attach_fd: 4,
            log_fd: 5,
            log_old_fd: 6,
            log_max: DEFAULT_LOG_MAX,
            name: "console".into(),
            seccomp: SeccompMode::Enforce,
        }
    }

    #[test]
    fn validation() {
        assert_eq!(cfg().validate(), Ok(()));
        let bad = [
            (
                Config {
                    socket_fd: 2,
                    ..cfg()
                },
                ConfigError::StdioFd(2),
            ),
            (
                Config {
                    log_old_fd: 3,
                    ..cfg()
                },
                ConfigError::SameFd,
            ),
            (
                Config {
                    attach_fd: 5,
                    ..cfg()
                },
                ConfigError::SameFd,
            ),
            (
                Config {
                    name: "../x".into(),
                    ..cfg()
                },
                ConfigError::Name("../x".into()),
            ),
            (
                Config {
                    name: String::new(),
                    ..cfg()
                },
                ConfigError::Name(String::new()),
            ),
            (
                Config {
                    log_max: 100,
                    ..cfg()
                },
                ConfigError::LogMax(100),
            ),
        ];
        for (c, e) in bad {
            assert_eq!(c.validate(), Err(e), "{c:?}");
        }
    }

    #[test]
    fn missing_descriptors_are_reported_as_bad_fds() {
        // A descriptor number far above anything this test process has open.
        let e = take_listener(4000, "socket").unwrap_err();
        assert!(matches!(e, Error::NotOpen(4000, "socket", _)), "{e:?}");
        assert_eq!(e.exit_code(), exit_code::BAD_FD);
    }

    #[test]
    fn logs_must_be_readable_regular_files() {
        let memfd =
            nix::sys::memfd::memfd_create(c"log", nix::sys::memfd::MemFdCreateFlag::empty())
                .unwrap();
        let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
        // Write-only: rotation could not copy it.
        let wo = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(wo);
        let e = take_log(fd, "log", true).unwrap_err();
        assert!(matches!(e, Error::NotReadWrite(_, "log")), "{e:?}");
        assert_eq!(e.exit_code(), exit_code::BAD_FD);
        // Read-write: taken, and made append-only.
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(rw);
        let (f, size) = take_log(fd, "log", true).unwrap();
        assert_eq!(size, 0);
        let flags = OFlag::from_bits_truncate(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(flags.contains(OFlag::O_APPEND));
        // A socket is not a log.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(a);
        assert!(matches!(
            take_log(fd, "old log", false),
            Err(Error::NotAFile(_, "old log"))
        ));
    }
}
