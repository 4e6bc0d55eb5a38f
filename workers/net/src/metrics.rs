//! Per-device counters: plain atomics, bumped on the data path, serialised as one JSON object
//! (logged when the worker exits; a control channel may ask for it later).
//!
//! Every dropped frame is counted under its reason, so a misbehaving guest shows up as one
//! counter rising rather than as a flood of log lines. Logs that a guest (or the network) can
//! trigger go through [`should_log`].

pub use ward_worker::metrics::{should_log, FIRST_LOGGED, LOG_EVERY};

ward_worker::counters! {
    /// Counters of one network device. All are monotonic.
    pub struct Metrics {
        /// Frames the guest sent that were written to the tap.
        tx_frames,
        /// Bytes of those frames (without the 12-byte virtio-net header).
        tx_bytes,
        /// Frames read from the tap and placed in the guest's receive buffers.
        rx_frames,
        /// Bytes of those frames (without the header).
        rx_bytes,
        /// Of those frames, the ones read from the tap straight into the guest's buffers (the
        /// others went through the bounce buffer: the guest had posted less than the longest
        /// frame, or no MRG_RXBUF).
        rx_direct,
        /// Interrupts raised for the receive queue (the guest asked for them: EVENT_IDX).
        rx_signals,
        /// Interrupts raised for the transmit queue.
        tx_signals,

        /// TX drop: the chain does not end (loop, index out of range, broken indirect table).
        tx_bad_chain,
        /// TX drop: more descriptors than the device accepts in one chain.
        tx_too_many_descriptors,
        /// TX drop: a device-writable descriptor in a transmit chain.
        tx_write_only,
        /// TX drop: a buffer (partly) outside guest memory.
        tx_out_of_memory,
        /// TX drop: fewer bytes than the 12-byte virtio-net header.
        tx_short,
        /// TX drop: a frame longer than 65550 bytes.
        tx_too_big,
        /// TX drop: unknown header flags, or NEEDS_CSUM without VIRTIO_NET_F_CSUM.
        tx_bad_flags,
        /// TX drop: an unknown or unnegotiated gso_type, or a zero gso_size.
        tx_bad_gso,
        /// TX drop: segmentation offload without VIRTIO_NET_F_CSUM negotiated.
        tx_gso_without_csum,
        /// TX drop: hdr_len, or csum_start + csum_offset, beyond the frame.
        tx_bad_offsets,
        /// TX drop: the tap refused the frame (an error other than EAGAIN, or a short write).
        tx_tap_errors,
        /// The tap was full (EAGAIN): the chain was kept and the worker waited for EPOLLOUT.
        tx_would_block,

        /// RX: a receive chain that does not end, or has too many descriptors (returned empty).
        rx_bad_chain,
        /// RX: a device-readable descriptor in a receive chain (returned empty).
        rx_read_only,
        /// RX: a receive buffer (partly) outside guest memory (returned empty).
        rx_out_of_memory,
        /// RX: a receive chain that cannot even hold the header (returned empty).
        rx_too_small,
        /// RX drop: without VIRTIO_NET_F_MRG_RXBUF, the next receive chain cannot hold the frame.
        rx_no_room,
        /// RX drop: the tap returned fewer bytes than the header.
        rx_short,
        /// RX drop: the tap returned a frame longer than 65550 bytes.
        rx_too_big,
        /// RX: reading the tap failed (other than EAGAIN); the worker stops reading it until the
        /// guest kicks the receive queue.
        rx_tap_errors,
        /// Times the guest had no receive buffers and the worker stopped reading the tap until the
        /// guest kicked the receive queue.
        rx_no_buffers,

        /// TUNSETOFFLOAD failed.
        offload_errors,
        /// Changing what the vring thread watches the tap for failed.
        watch_errors,
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
        Metrics::bump(&m.tx_frames);
        Metrics::add(&m.tx_bytes, 1514);
        let j = m.to_json();
        assert!(j.starts_with("{\"tx_frames\":1,\"tx_bytes\":1514,"), "{j}");
        assert!(j.ends_with("\"notify_errors\":0}"), "{j}");
        assert_eq!(j.matches(':').count(), 32);
    }
}
