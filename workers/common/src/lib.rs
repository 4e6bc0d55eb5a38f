//! `ward-worker`: what ward's vhost-user workers (`ward-block`, `ward-console`, `ward-net`)
//! share, and nothing device-specific.
//!
//! - [`mod@serve`]: the confined life of a worker once its descriptors are taken: build the
//!   `VhostUserDaemon`, install the seccomp filter on every thread, accept one frontend, serve
//!   it, and treat its disconnection as the normal end. [`serve::Hooks`] is where a worker
//!   plugs in what differs (wiring its vring thread's epoll before the filter, registering
//!   more listeners after it).
//! - [`queue_thread`]: the narrower filter each queue thread adds on its first event.
//! - [`exit`]: `main`'s glue: the default log filter, the error chain logged on failure, and
//!   the exit code.
//! - [`metrics`]: the [`counters!`] macro behind each worker's `Metrics`, and the rate limit
//!   for logs a guest or a client can trigger.
//! - [`vring`]: small pieces of a `VhostUserBackend` that every worker writes the same way
//!   (configuration-space windows, the exit event, signalling the guest).
//! - `dev` (feature `test-support`): the integration tests' helpers: spawning a worker binary
//!   the way the launcher does and driving a vhost-user frontend session.
//!
//! - `hostile` (debug builds only): a confined worker that tries to break out, for the tests.
//!
//! Each worker keeps its own `Config`, its own `Error` and its own exit codes.

pub mod exit;
#[cfg(debug_assertions)]
pub mod hostile;
pub mod metrics;
pub mod queue_thread;
pub mod serve;
pub mod vring;

#[cfg(feature = "test-support")]
pub mod dev;

pub use serve::{serve, DaemonError, Device, Hooks, ServeError};

/// Guest memory as the workers map it (no dirty-page tracking).
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;
