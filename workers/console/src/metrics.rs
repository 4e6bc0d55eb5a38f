//! Per-device counters: plain atomics, bumped on the data path, serialised as one JSON object
//! (dumped to the log when the worker exits).
//!
//! Errors are counted per kind, so a misbehaving guest or client shows up as one counter rising
//! rather than as a flood of log lines. Logs that a guest or a client can trigger go through
//! [`should_log`].

pub use ward_worker::metrics::{should_log, FIRST_LOGGED, LOG_EVERY};

ward_worker::counters! {
    /// Counters of one console device. All are monotonic.
    pub struct Metrics {
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
}
