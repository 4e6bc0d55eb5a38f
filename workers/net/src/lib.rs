//! `ward-net`: the vhost-user-net backend process. It serves one TAP device to one VM as a
//! virtio-net device with one queue pair, confined by its seccomp filter.
//!
//! The launcher creates the tap ([`tap::open_tap`]: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! 12-byte virtio-net header) and binds a listening Unix socket, and passes both as inherited
//! descriptors: this process never opens a path, creates a socket or a network device. [`run`]
//! then, in this order:
//!
//! 1. takes ownership of the two descriptors, after checking what they are (a listening stream
//!    socket; a tap with the flags and header size above), and makes the tap non-blocking;
//! 2. builds the device ([`backend::NetBackend`]) and the `VhostUserDaemon`, which starts the
//!    vring thread, and gives the device the means to register the tap in that thread's epoll;
//! 3. installs the `net` seccomp filter on every thread of the process (TSYNC);
//! 4. only then accepts the frontend's connection and serves it until it goes away: no guest
//!    data is read and no frame moves before the filter is in place.
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
//! virtio-queue's own unthrottled ring errors off). Everything the device logs is inside one
//! span, `net{device=NAME}`. Lines a guest (or the network) can trigger are rate limited
//! ([`metrics::should_log`]) and counted in [`metrics::Metrics`], which is logged as JSON when
//! the device stops.

pub mod backend;
pub mod header;
pub mod metrics;
pub mod ring;
pub mod rx;
pub mod tap;
pub mod tx;

#[cfg(test)]
mod testutil;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use tracing::{info, info_span};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use ward_policy::seccomp::{Profile, SeccompMode};
use ward_worker::{Device, Hooks, ServeError};

use crate::backend::{EpollWatch, NetBackend};
use crate::metrics::Metrics;
use crate::tap::Tap;

pub use ward_worker::GuestMem;

/// Process exit codes.
pub mod exit_code {
    /// The frontend disconnected (the VM is gone).
    pub const OK: i32 = 0;
    /// The command line is invalid (clap exits with the same code).
    pub const USAGE: i32 = 2;
    /// An inherited descriptor is missing or is not what it should be (not a listening socket;
    /// not a tap with IFF_TAP, IFF_NO_PI, IFF_VNET_HDR and a 12-byte header).
    pub const BAD_FD: i32 = 3;
    /// The seccomp filter could not be installed.
    pub const SECCOMP: i32 = 4;
    /// Setting up the vhost-user daemon, accepting the frontend or serving it failed.
    pub const SERVE: i32 = 5;
}

/// Smallest MTU the device advertises: the least an IPv4 host must handle.
pub const MIN_MTU: u16 = 68;

/// An Ethernet address, `52:54:00:12:34:56` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("{s:?} is not a MAC address (six hex octets: 52:54:00:12:34:56)");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The worker's configuration, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Inherited listening Unix stream socket for the vhost-user frontend.
    pub socket_fd: RawFd,
    /// Inherited tap descriptor, made by [`tap::open_tap`].
    pub tap_fd: RawFd,
    /// Device name for logs.
    pub name: String,
    /// The guest's MAC address (configuration space).
    pub mac: Mac,
    /// The MTU the device advertises (configuration space).
    pub mtu: u16,
    pub seccomp: SeccompMode,
}

/// Why a [`Config`] is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("Descriptor {0} is not an inherited descriptor (must be 3 or above)")]
    StdioFd(RawFd),
    #[error("The socket and the tap must be different descriptors")]
    SameFd,
    #[error("Device name {0:?} must be 1 to 32 characters of [A-Za-z0-9_-]")]
    Name(String),
    #[error("MAC address {0} is not a unicast address")]
    Mac(Mac),
    #[error("MTU {0} is below {MIN_MTU}")]
    Mtu(u16),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for fd in [self.socket_fd, self.tap_fd] {
            if fd < 3 {
                return Err(ConfigError::StdioFd(fd));
            }
        }
        if self.socket_fd == self.tap_fd {
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
        // Multicast (I/G bit) and all-zero addresses cannot name one host.
        if self.mac.0[0] & 1 != 0 || self.mac.0 == [0; 6] {
            return Err(ConfigError::Mac(self.mac));
        }
        if self.mtu < MIN_MTU {
            return Err(ConfigError::Mtu(self.mtu));
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
    #[error("Descriptor {0} is not a listening Unix stream socket")]
    NotListening(RawFd),
    #[error("Descriptor {0} is not a usable tap")]
    Tap(RawFd, #[source] tap::Error),
    #[error("Cannot make the listening socket blocking")]
    Blocking(#[source] std::io::Error),
    #[error("The vhost-user daemon has no vring thread")]
    NoVringThread,
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
            | Error::Tap(..)
            | Error::Blocking(_) => exit_code::BAD_FD,
            Error::Run(ServeError::Seccomp(_)) => exit_code::SECCOMP,
            Error::NoVringThread | Error::Run(_) => exit_code::SERVE,
        }
    }
}

/// Takes ownership of an inherited descriptor, once it is known to be open.
fn take_fd(fd: RawFd, what: &'static str) -> Result<OwnedFd, Error> {
    fcntl(fd, FcntlArg::F_GETFD).map_err(|e| Error::NotOpen(fd, what, e))?;
    // SAFETY: `fd` is open (F_GETFD succeeded). The launcher handed it to this process for its
    // exclusive use and nothing else in the process refers to it: it is taken once, and
    // `Config::validate` made sure the socket and the tap are different numbers.
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

fn take_tap(fd: RawFd) -> Result<Tap, Error> {
    Tap::from_inherited(take_fd(fd, "tap")?).map_err(|e| Error::Tap(fd, e))
}

/// Runs the worker: see the crate documentation for the order of events.
pub fn run(cfg: Config) -> Result<(), Error> {
    let span = info_span!("net", device = %cfg.name);
    let _entered = span.enter();

    let listener = take_listener(cfg.socket_fd)?;
    let tap = take_tap(cfg.tap_fd)?;
    info!(
        tap = tap.name(),
        mac = %cfg.mac,
        mtu = cfg.mtu,
        seccomp = %cfg.seccomp,
        "starting"
    );

    let tap_fd = tap.as_raw_fd();
    let metrics = Arc::new(Metrics::default());
    let mem = GuestMemoryAtomic::new(GuestMem::new());
    let backend = Arc::new(NetBackend::new(
        tap,
        cfg.mac.0,
        cfg.mtu,
        mem.clone(),
        metrics.clone(),
        span.clone(),
    ));
    let device = Device {
        name: cfg.name.clone(),
        backend: backend.clone(),
        mem,
        listener,
        profile: Profile::Net,
        seccomp: cfg.seccomp,
    };
    ward_worker::serve(
        device,
        &Wiring {
            backend,
            tap_fd,
            metrics,
        },
    )
}

/// What the network device adds to the serve loop: before the filter, the means to register
/// the tap in the vring thread's epoll. No frame moves before the frontend is accepted.
struct Wiring {
    backend: Arc<NetBackend<Tap>>,
    tap_fd: RawFd,
    metrics: Arc<Metrics>,
}

impl Hooks<Arc<NetBackend<Tap>>> for Wiring {
    type Error = Error;

    /// One vring thread serves both queues (the default of `queues_per_thread`); the tap is
    /// registered in its epoll. The backend keeps the tap open as long as the handler lives.
    fn daemon_built(&self, daemon: &VhostUserDaemon<Arc<NetBackend<Tap>>>) -> Result<(), Error> {
        let handler = daemon
            .get_epoll_handlers()
            .into_iter()
            .next()
            .ok_or(Error::NoVringThread)?;
        self.backend.set_watch(Box::new(EpollWatch::new(
            Arc::downgrade(&handler),
            self.tap_fd,
        )));
        Ok(())
    }

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
            tap_fd: 4,
            name: "net0".into(),
            mac: "52:54:00:12:34:56".parse().unwrap(),
            mtu: 1500,
            seccomp: SeccompMode::Enforce,
        }
    }

    #[test]
    fn mac_addresses() {
        let m: Mac = "52:54:00:ab:CD:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:f",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:+f",
            "52:54:00:ab:cd:00f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation() {
        assert_eq!(cfg().validate(), Ok(()));
        let bad = [
            Config {
                socket_fd: 2,
                ..cfg()
            },
            Config { tap_fd: 3, ..cfg() },
            Config {
                name: String::new(),
                ..cfg()
            },
            Config {
                name: "../x".into(),
                ..cfg()
            },
            Config {
                name: "x".repeat(33),
                ..cfg()
            },
            Config {
                mac: Mac([0x01, 0, 0x5e, 0, 0, 1]),
                ..cfg()
            },
            Config {
                mac: Mac([0; 6]),
                ..cfg()
            },
            Config { mtu: 67, ..cfg() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert_eq!(
            Config { tap_fd: 3, ..cfg() }.validate(),
            Err(ConfigError::SameFd)
        );
        assert_eq!(Config { mtu: 68, ..cfg() }.validate(), Ok(()));
        assert_eq!(
            Config {
                mtu: u16::MAX,
                ..cfg()
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn missing_descriptors_are_reported_as_bad_fds() {
        // A descriptor number far above anything this test process has open.
        let e = take_listener(4000).unwrap_err();
        assert!(matches!(e, Error::NotOpen(4000, "socket", _)), "{e:?}");
        assert_eq!(e.exit_code(), exit_code::BAD_FD);
        let e = take_tap(4001).unwrap_err();
        assert!(matches!(e, Error::NotOpen(4001, "tap", _)), "{e:?}");
    }
}
