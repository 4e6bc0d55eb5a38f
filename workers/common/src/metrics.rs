//! Counters and rate-limited logging, the same in every worker.
//!
//! A worker declares its counters with [`counters!`](crate::counters): plain atomics, bumped
//! on the data path and serialised as one flat JSON object (logged when the worker stops).
//! Errors are counted per kind, so a misbehaving guest or client shows up as one counter rising
//! rather than as a flood of log lines; logs that a guest or a client can trigger go through
//! [`should_log`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Declares a worker's counters: a struct of `AtomicU64` fields (all monotonic) with
/// `Default`, `to_json` (a flat JSON object, in declaration order) and the `bump`, `add` and
/// `get` helpers.
///
/// ```
/// ward_worker::counters! {
///     /// Counters of one device.
///     pub struct Metrics {
///         /// Requests served.
///         requests,
///         /// Bytes moved.
///         bytes,
///     }
/// }
/// let m = Metrics::default();
/// Metrics::bump(&m.requests);
/// assert_eq!(m.to_json(), "{\"requests\":1,\"bytes\":0}");
/// ```
#[macro_export]
macro_rules! counters {
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis struct $ty:ident {
            $( $(#[doc = $doc:literal])* $name:ident ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Default)]
        $vis struct $ty {
            $( $(#[doc = $doc])* pub $name: ::std::sync::atomic::AtomicU64, )*
        }

        impl $ty {
            /// The counters as a flat JSON object, in declaration order.
            pub fn to_json(&self) -> String {
                $crate::metrics::to_json(&[$((stringify!($name), &self.$name)),*])
            }

            /// Adds one to `counter` and returns the new value.
            pub fn bump(counter: &::std::sync::atomic::AtomicU64) -> u64 {
                $crate::metrics::bump(counter)
            }

            /// Adds `n` to `counter`.
            pub fn add(counter: &::std::sync::atomic::AtomicU64, n: u64) {
                $crate::metrics::add(counter, n)
            }

            /// The value of `counter` now.
            pub fn get(counter: &::std::sync::atomic::AtomicU64) -> u64 {
                $crate::metrics::get(counter)
            }
        }
    };
}

/// `{"name":value,…}` for the counters in the order given.
pub fn to_json(counters: &[(&str, &AtomicU64)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in counters.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "\"{name}\":{}", value.load(Ordering::Relaxed));
    }
    out.push('}');
    out
}

/// Adds one to `counter` and returns the new value.
pub fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
}

/// Adds `n` to `counter`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The value of `counter` now.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Occurrences of a guest- or client-triggered event that are all logged.
pub const FIRST_LOGGED: u64 = 5;
/// After the first few, every this-many-th occurrence is logged.
pub const LOG_EVERY: u64 = 1000;

/// Rate limit for logs a guest or a client can trigger: given the new value of the counter of
/// that event, log the first [`FIRST_LOGGED`] occurrences, then every [`LOG_EVERY`]th.
pub fn should_log(count: u64) -> bool {
    count <= FIRST_LOGGED || count.is_multiple_of(LOG_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::counters! {
        /// Test counters.
        struct Counters {
            /// First.
            first,
            second,
        }
    }

    #[test]
    fn json_lists_every_counter_in_order() {
        let c = Counters::default();
        assert_eq!(c.to_json(), "{\"first\":0,\"second\":0}");
        assert_eq!(Counters::bump(&c.second), 1);
        Counters::add(&c.first, 4096);
        assert_eq!(Counters::get(&c.first), 4096);
        assert_eq!(c.to_json(), "{\"first\":4096,\"second\":1}");
        assert_eq!(to_json(&[]), "{}");
    }

    #[test]
    fn rate_limit_logs_first_few_then_every_thousandth() {
        let logged: Vec<u64> = (1..=3000).filter(|&n| should_log(n)).collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5, 1000, 2000, 3000]);
    }
}
