//! The confined serve loop every worker runs once it has taken (and checked) its inherited
//! descriptors, in this order:
//!
//! 1. build the `VhostUserDaemon`, which starts the vring threads;
//! 2. [`Hooks::daemon_built`]: the worker wires its backend to those threads (their epoll
//!    handlers), still without reading any guest or client data;
//! 3. install the worker's seccomp filter on every thread of the process (TSYNC): every thread
//!    exists now but the frontend's request thread, which inherits the filter;
//! 4. [`Hooks::before_accept`]: the worker may start watching more listeners (console clients);
//! 5. accept one frontend and close the listening socket (one frontend per life), then serve it
//!    until it goes away; a disconnection, also in the middle of a message, is the normal end.
//!
//! The device's counters ([`Hooks::metrics_json`]) are logged when it stops.

use std::os::unix::net::UnixListener;

use tracing::info;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;
use ward_policy::seccomp::{Profile, SeccompMode};

use crate::GuestMem;

/// Carries a `vhost_user_backend::Error`, which does not implement `std::error::Error`.
#[derive(Debug)]
pub struct DaemonError(pub vhost_user_backend::Error);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DaemonError {}

/// Why [`serve`] failed (beyond what a hook reports).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("Cannot create the vhost-user daemon")]
    Daemon(#[source] DaemonError),
    #[error("Cannot install the seccomp filter")]
    Seccomp(#[source] ward_policy::seccomp::Error),
    #[error("Cannot accept the frontend's connection")]
    Accept(#[source] DaemonError),
    #[error("The vhost-user session failed")]
    Serve(#[source] DaemonError),
}

/// What a worker adds to [`serve`].
pub trait Hooks<B: VhostUserBackend> {
    /// The worker's error, which hooks return and [`ServeError`] converts into.
    type Error: From<ServeError>;

    /// The daemon exists and its vring threads run; the seccomp filter is not installed yet.
    /// Hand the backend what it needs from those threads. Nothing here may read guest or
    /// client data.
    fn daemon_built(&self, _daemon: &VhostUserDaemon<B>) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The filter is installed and the frontend not yet accepted: start watching other
    /// listeners, under the filter.
    fn before_accept(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The device's counters as JSON, logged when it stops.
    fn metrics_json(&self) -> String;
}

/// What [`serve`] runs: the device and its sandbox.
pub struct Device<B> {
    /// The daemon's name (the device name).
    pub name: String,
    pub backend: B,
    /// The (empty) guest memory the backend was given.
    pub mem: GuestMemoryAtomic<GuestMem>,
    /// The listening socket of the vhost-user frontend, blocking.
    pub listener: UnixListener,
    pub profile: Profile,
    pub seccomp: SeccompMode,
}

/// Serves `device` as the module documentation describes. Returns `Ok` once the frontend
/// disconnected.
pub fn serve<B, H>(device: Device<B>, hooks: &H) -> Result<(), H::Error>
where
    B: VhostUserBackend<Bitmap = ()> + Clone + 'static,
    B::Vring: Clone + Send + Sync,
    H: Hooks<B>,
{
    let Device {
        name,
        backend,
        mem,
        listener,
        profile,
        seccomp,
    } = device;
    let mut daemon =
        VhostUserDaemon::new(name, backend, mem).map_err(|e| ServeError::Daemon(DaemonError(e)))?;
    hooks.daemon_built(&daemon)?;

    // Every thread exists now but the frontend's request thread, which inherits the filter.
    ward_policy::seccomp::apply_to_process(profile, seccomp).map_err(ServeError::Seccomp)?;
    // The queue threads add their own filter on their first event.
    crate::queue_thread::arm(profile, seccomp);
    info!("seccomp filter installed; waiting for the frontend");
    #[cfg(debug_assertions)]
    crate::hostile::attempt(profile.name());
    hooks.before_accept()?;

    let mut listener = Listener::from(listener);
    daemon
        .start(&mut listener)
        .map_err(|e| ServeError::Accept(DaemonError(e)))?;
    // One frontend per life: nobody else may connect.
    drop(listener);
    info!("frontend connected");

    let result = daemon.wait();
    info!(metrics = %hooks.metrics_json(), "device stopped");
    match result {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(ServeError::Serve(DaemonError(e)).into()),
    }
}
