//! Pieces of a `VhostUserBackend` that every worker writes the same way.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use tracing::warn;
use vhost_user_backend::{VringRwLock, VringT};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::metrics::{bump, should_log};

/// Locks `m`, also when it is poisoned: that means a panic elsewhere (which aborts the process
/// in release builds), and what the workers keep under their locks stays consistent between
/// their own statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// GET_CONFIG: any window of the configuration space `config`; the part of it beyond the end
/// is left out, so an out-of-range request gets a short (possibly empty) answer, which the
/// library turns into an error reply.
pub fn config_window(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(config.len());
    let end = start
        .saturating_add(usize::try_from(size).unwrap_or(usize::MAX))
        .min(config.len());
    config[start..end].to_vec()
}

/// `VhostUserBackend::exit_event`: lets the library stop the vring thread when the daemon is
/// dropped (the handler joins it); without one, dropping the daemon would wait forever. Called
/// while the daemon is built, before the seccomp filter is installed.
pub fn exit_event(span: &tracing::Span) -> Option<(EventConsumer, EventNotifier)> {
    match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
        Ok(pair) => Some(pair),
        Err(e) => {
            let _g = span.enter();
            warn!(error = %e, "cannot create the vring thread's exit event");
            None
        }
    }
}

/// Signals the guest if it asked to be (EVENT_IDX) or always (without it), and says whether it
/// did. A failed signal is counted in `notify_errors`, a used ring that cannot be read in
/// `ring_errors`.
pub fn notify(vring: &VringRwLock, notify_errors: &AtomicU64, ring_errors: &AtomicU64) -> bool {
    match vring.needs_notification() {
        Ok(false) => false,
        Ok(true) => match vring.signal_used_queue() {
            Ok(()) => true,
            Err(e) => {
                count_notify_error(notify_errors, &e);
                false
            }
        },
        Err(e) => {
            ring_error(ring_errors, "cannot read used_event", &e);
            false
        }
    }
}

/// Counts a failed signal of the guest in `notify_errors`, and logs it (rate-limited).
pub fn count_notify_error(notify_errors: &AtomicU64, e: &dyn std::fmt::Display) {
    let n = bump(notify_errors);
    if should_log(n) {
        warn!(error = %e, count = n, "cannot signal the guest");
    }
}

/// Counts a ring that could not be accessed in `ring_errors`, and logs `what` (rate-limited).
pub fn ring_error(ring_errors: &AtomicU64, what: &str, e: &dyn std::fmt::Display) {
    let n = bump(ring_errors);
    if should_log(n) {
        warn!(error = %e, count = n, "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_windows_are_clamped() {
        let c: Vec<u8> = (0..12).collect();
        assert_eq!(config_window(&c, 0, 12), c);
        assert_eq!(config_window(&c, 4, 4), [4, 5, 6, 7]);
        assert_eq!(config_window(&c, 10, 8), [10, 11]);
        assert!(config_window(&c, 12, 4).is_empty());
        assert!(config_window(&c, u32::MAX, u32::MAX).is_empty());
        assert_eq!(config_window(&c, 0, u32::MAX), c);
    }

    #[test]
    fn poisoned_locks_still_lock() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn exit_events_are_made() {
        assert!(exit_event(&tracing::Span::none()).is_some());
    }
}
