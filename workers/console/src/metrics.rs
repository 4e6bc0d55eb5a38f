//! Per-device counters: plain atomics, bumped on the data path, serialised as one JSON object
//! (dumped to the log when the worker exits).
//!
//! Errors are counted per kind, so a misbehaving guest or client shows up as one counter rising
//! rather than as a flood of log lines. Logs that a guest or a client can trigger go through
//! [`should_log`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Counters of one console device. All are monotonic.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
        }

        impl Metrics {
            /// The counters as a flat JSON object, in declaration order.
            pub fn to_json(&self) -> String {
                let mut out = String::from("{");
                $(
                    if out.len() > 1 {
                        out.push(',');
                    }
                    // Writing to a String cannot fail.
                    let _ = write!(
                        out,
                        "\"{}\":{}",
                        stringify!($name),
                        self.$name.load(Ordering::Relaxed)
                    );
                )*
                out.push('}');
                out
            }
        }
    };
}

counters! {
    /// Chains taken from the transmitq (guest output), valid or not.
    tx_chains,
    /// Bytes of guest output taken from valid transmitq chains.
    tx_bytes,
    /// Receiveq chains filled with input and returned to the guest.
    rx_chains,
    /// Bytes of input written into receiveq buffers.
    rx_bytes,
    /// Bytes written to the log.
    log_bytes,
    /// Times the log was rotated into the old log.
    log_rotations,
    /// Failed log writes, truncations or copies.
    log_errors,
    /// Chains that do not end: a loop, a descriptor index out of range, a nested or malformed
    /// indirect table, or a descriptor the device cannot read (returned with length 0).
    bad_chain,
    /// Chains with more descriptors than the device accepts.
    too_many_descriptors,
    /// A device-writable descriptor in a transmitq chain, or a device-readable one in a
    /// receiveq chain.
    wrong_direction,
    /// Descriptors whose buffer lies (partly) outside guest memory.
    out_of_memory,
    /// Chains without a single byte of buffer.
    empty_chain,
    /// Transmitq chains longer than the device accepts.
    too_long,
    /// The available or used ring could not be accessed, or a head index was out of range.
    ring_errors,
    /// Signalling the guest (the call eventfd) failed.
    notify_errors,
    /// Clients that attached interactively (`attach` or `attach force`).
    attached,
    /// Clients that attached to watch (`watch`).
    watchers,
    /// Interactive clients replaced by `attach force`.
    takeovers,
    /// Clients answered `busy`.
    busy,
    /// Clients answered `error`: malformed or overlong first line.
    handshake_errors,
    /// Clients answered `error` because no first line came in time.
    handshake_timeouts,
    /// Accepting a client, reading from or writing to one, or watching it failed.
    client_errors,
    /// Bytes of output dropped because a client's output buffer was full.
    client_dropped_bytes,
    /// Bytes of input read from the interactive client.
    input_bytes,
    /// Bytes watchers sent, which are discarded.
    discarded_input_bytes,
}

impl Metrics {
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

    #[test]
    fn json_lists_every_counter() {
        let m = Metrics::default();
        Metrics::bump(&m.tx_chains);
        Metrics::add(&m.tx_bytes, 4096);
        let j = m.to_json();
        assert!(j.starts_with("{\"tx_chains\":1,\"tx_bytes\":4096,"), "{j}");
        assert!(j.ends_with("\"discarded_input_bytes\":0}"), "{j}");
        assert_eq!(j.matches(':').count(), 25);
    }

    #[test]
    fn rate_limit_logs_first_few_then_every_thousandth() {
        let logged: Vec<u64> = (1..=3000).filter(|&n| should_log(n)).collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5, 1000, 2000, 3000]);
    }
}
