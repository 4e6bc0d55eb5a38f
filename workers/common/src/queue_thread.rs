//! Per-thread filters for a worker's queue threads.
//!
//! vhost-user-backend starts a worker's queue ("vring worker") threads itself, before the
//! process filter exists, and runs none of the worker's code on them until an event arrives, so
//! they cannot be given a filter of their own when they start. Instead [`serve`] arms the
//! queue filter (`Profile::queue`) once the process filter is in place, and every backend calls
//! [`enter`] first thing in `handle_event`: the first call on each thread adds the queue filter
//! to that thread, before the handler reads a ring, a frame or a byte from a client. From then
//! on the thread holds only what both filters allow: no new threads, no vhost-user messages, no
//! ioctls, no new filters.
//!
//! [`serve`]: crate::serve::serve

use std::cell::Cell;
use std::sync::OnceLock;

use tracing::{error, info};
use ward_policy::seccomp::{Profile, SeccompMode};

/// The queue filter and its mode, set once per process by `serve`.
static ARMED: OnceLock<(Profile, SeccompMode)> = OnceLock::new();

thread_local! {
    /// Whether this thread added the queue filter already.
    static ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// Makes the next [`enter`] on each thread install `profile`'s queue filter in `mode`. A
/// profile without one (or a second call) changes nothing.
pub fn arm(profile: Profile, mode: SeccompMode) {
    if let Some(queue) = profile.queue() {
        let _ = ARMED.set((queue, mode));
    }
}

/// Adds the armed queue filter to the calling thread, once per thread; nothing when none is
/// armed (unit tests drive backends without `serve`). A thread that cannot narrow its filter
/// ends the process with `exit::CONFINE`: nothing runs less confined than its policy says.
pub fn enter() {
    if ENTERED.with(Cell::get) {
        return;
    }
    ENTERED.with(|e| e.set(true));
    let Some(&(profile, mode)) = ARMED.get() else {
        return;
    };
    if let Err(e) = ward_policy::seccomp::apply_to_thread(profile, mode) {
        error!(
            "cannot install the queue thread's filter: {}",
            crate::exit::chain(&e)
        );
        std::process::exit(crate::exit::CONFINE);
    }
    info!(filter = profile.name(), "queue thread filter installed");
    #[cfg(debug_assertions)]
    crate::hostile::attempt_on_queue_thread(profile.name().trim_end_matches("_queue"));
}
