//! Per-device counters: plain atomics, bumped on the data path, serialised as one JSON object
//! (dumped to the log when the worker exits; a control channel may ask for it later).
//!
//! Errors are counted per kind, so a misbehaving guest shows up as one counter rising rather
//! than as a flood of log lines. Logs that a guest can trigger go through [`should_log`].

pub use ward_worker::metrics::{should_log, FIRST_LOGGED, LOG_EVERY};

ward_worker::counters! {
    /// Counters of one block device. All are monotonic.
    pub struct Metrics {
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
}
