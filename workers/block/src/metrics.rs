//! Per-device counters: plain atomics, bumped on the data path, serialised as one JSON object
//! (dumped to the log when the worker exits; a control channel may ask for it later).
//!
//! Errors are counted per kind, so a misbehaving guest shows up as one counter rising rather
//! than as a flood of log lines. Logs that a guest can trigger go through [`should_log`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Counters of one block device. All are monotonic.
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
    /// Descriptor chains taken from the available ring.
    requests,
    /// Successful VIRTIO_BLK_T_IN requests.
    reads,
    /// Successful VIRTIO_BLK_T_OUT requests.
    writes,
    /// Successful VIRTIO_BLK_T_FLUSH requests.
    flushes,
    /// Successful VIRTIO_BLK_T_GET_ID requests.
    get_ids,
    /// Successful VIRTIO_BLK_T_DISCARD requests.
    discards,
    /// Successful VIRTIO_BLK_T_WRITE_ZEROES requests.
    write_zeroes,
    /// Bytes read from the image into guest memory.
    read_bytes,
    /// Bytes written from guest memory to the image.
    write_bytes,
    /// Chains that end without a writable status byte in guest memory (completed with length 0).
    no_status,
    /// Chains that do not end: a loop, a descriptor index out of range, a nested or malformed
    /// indirect table, or a descriptor the device cannot read (completed with length 0).
    bad_chain,
    /// Chains with more descriptors than the device accepts.
    too_many_descriptors,
    /// Descriptors whose buffer lies (partly) outside guest memory.
    out_of_memory,
    /// A device-readable descriptor after a device-writable one.
    bad_order,
    /// Fewer than 16 readable bytes for the request header.
    bad_header,
    /// Data of the wrong direction, zero length, or not a multiple of 512 bytes.
    bad_data,
    /// Sectors beyond the end of the image (or overflowing the arithmetic).
    out_of_range,
    /// Writes to a read-only disk.
    readonly,
    /// Requests of an unknown type (answered VIRTIO_BLK_S_UNSUPP).
    unsupported,
    /// Failed reads, writes or flushes of the image.
    io_errors,
    /// The available or used ring could not be accessed, or a head index was out of range.
    ring_errors,
    /// Signalling the guest (the call eventfd) failed.
    notify_errors,
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
}

/// Occurrences of a guest-triggered event that are all logged.
pub const FIRST_LOGGED: u64 = 5;
/// After the first few, every this-many-th occurrence is logged.
pub const LOG_EVERY: u64 = 1000;

/// Rate limit for logs a guest can trigger: given the new value of the counter of that event,
/// log the first [`FIRST_LOGGED`] occurrences, then every [`LOG_EVERY`]th.
pub fn should_log(count: u64) -> bool {
    count <= FIRST_LOGGED || count.is_multiple_of(LOG_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_every_counter() {
        let m = Metrics::default();
        Metrics::bump(&m.reads);
        Metrics::add(&m.read_bytes, 4096);
        let j = m.to_json();
        assert!(j.starts_with("{\"requests\":0,\"reads\":1,"), "{j}");
        assert!(j.contains("\"read_bytes\":4096"), "{j}");
        assert!(j.ends_with("\"notify_errors\":0}"), "{j}");
        assert_eq!(j.matches(':').count(), 22);
    }

    #[test]
    fn rate_limit_logs_first_few_then_every_thousandth() {
        let logged: Vec<u64> = (1..=3000).filter(|&n| should_log(n)).collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5, 1000, 2000, 3000]);
    }
}
