//! Unit tests of the transmit path, one chain at a time: chains placed by a mock driver
//! (`virtio_queue::mock`) in plain guest memory, sent to a fake tap (a `SOCK_SEQPACKET` pair)
//! whose other end the test reads. The queue-level behaviour (used ring, notifications,
//! EAGAIN, the watch on the tap) is in `backend_tests.rs`.

use std::fs::File;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::testutil::{fake_tap, frames_sent, payload, with_hdr, FakeTap, NEXT, R, W};

const QSIZE: u16 = 16;
const MEM: usize = 0x40_0000;
const HDR: u64 = 0x8000;
const DATA: u64 = 0x10_0000;
const INDIRECT: u64 = 0x9000;
const OUTSIDE: u64 = 0x100_0000;
/// What a Linux guest acks: checksum and TSO offload towards the host.
const OFFLOADS: u64 =
    (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6);

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

struct Fx {
    mem: GuestMem,
    tap: FakeTap,
    net: File,
    metrics: Metrics,
    st: TxState,
    acked: u64,
}

impl Fx {
    fn new(acked: u64) -> Fx {
        let (tap, net) = fake_tap();
        Fx {
            mem: GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
            tap,
            net,
            metrics: Metrics::default(),
            st: TxState::default(),
            acked,
        }
    }

    fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Sends descriptors stored as given (flags and next as written), head at index 0.
    fn send_raw(&mut self, descs: &[RawDescriptor]) -> Sent {
        let vq = MockSplitQueue::new(&self.mem, QSIZE);
        let chain = vq.build_multiple_desc_chains(descs).unwrap();
        let ctx = Ctx {
            mem: &self.mem,
            tap: &self.tap,
            metrics: &self.metrics,
            acked: self.acked,
            event_idx: false,
        };
        send_chain(&ctx, chain, &mut self.st.buf)
    }

    /// Sends a chain of (addr, len, flags) parts linked in order.
    fn send(&mut self, parts: &[(u64, u32, u16)]) -> Sent {
        let vq = MockSplitQueue::new(&self.mem, QSIZE);
        let descs: Vec<RawDescriptor> = parts.iter().map(|&(a, l, f)| raw(a, l, f, 0)).collect();
        let chain = vq.build_desc_chain(&descs).unwrap();
        let ctx = Ctx {
            mem: &self.mem,
            tap: &self.tap,
            metrics: &self.metrics,
            acked: self.acked,
            event_idx: false,
        };
        send_chain(&ctx, chain, &mut self.st.buf)
    }

    /// Asserts a chain was dropped for a fault counted in `counter`, and nothing was sent.
    fn assert_dropped(&self, sent: Sent, counter: Counter) {
        let Sent::Dropped(fault) = sent else {
            panic!("not dropped: {sent:?}");
        };
        assert!(
            std::ptr::eq(fault.counter(&self.metrics), counter(&self.metrics)),
            "wrong counter for {fault}"
        );
        assert!(frames_sent(&self.net).is_empty());
    }
}

fn hdr(flags: u32, gso: u32, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> VnetHdr {
    VnetHdr {
        flags: flags as u8,
        gso_type: gso as u8,
        hdr_len,
        gso_size,
        csum_start: start,
        csum_offset: off,
        num_buffers: 0,
    }
}

const NEEDS: u32 = VIRTIO_NET_HDR_F_NEEDS_CSUM;

/// Picks one counter out of the metrics.
type Counter = fn(&Metrics) -> &AtomicU64;

// ---- frames that go out ----

#[test]
fn header_and_frame_in_separate_descriptors() {
    let mut fx = Fx::new(0);
    let frame = payload(1514, 1);
    fx.put(HDR, &VnetHdr::default().to_bytes());
    fx.put(DATA, &frame);
    let s = fx.send(&[(HDR, 12, R), (DATA, 1514, R)]);
    assert!(matches!(s, Sent::Frame(1514)), "{s:?}");
    assert_eq!(
        frames_sent(&fx.net),
        vec![with_hdr(VnetHdr::default(), &frame)]
    );
}

#[test]
fn header_sharing_a_descriptor_or_split_over_several() {
    let mut fx = Fx::new(OFFLOADS);
    let h = hdr(NEEDS, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16);
    let whole = with_hdr(h, &payload(9000, 2));
    fx.put(DATA, &whole);
    // All in one descriptor.
    let s = fx.send(&[(DATA, whole.len() as u32, R)]);
    assert!(matches!(s, Sent::Frame(9000)), "{s:?}");
    // The header cut 5 + 7, the frame over three more descriptors, one of them empty.
    let s = fx.send(&[
        (DATA, 5, R),
        (DATA + 5, 7, R),
        (DATA + 12, 100, R),
        (DATA + 112, 0, R),
        (DATA + 112, 8900, R),
    ]);
    assert!(matches!(s, Sent::Frame(9000)), "{s:?}");
    assert_eq!(frames_sent(&fx.net), vec![whole.clone(), whole]);
}

#[test]
fn indirect_chains_are_followed() {
    let mut fx = Fx::new(0);
    let frame = payload(60, 3);
    fx.put(HDR, &VnetHdr::default().to_bytes());
    fx.put(DATA, &frame);
    for (i, d) in [raw(HDR, 12, R | NEXT, 1), raw(DATA, 60, R, 0)]
        .iter()
        .enumerate()
    {
        fx.mem
            .write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let s = fx.send_raw(&[raw(INDIRECT, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
    assert!(matches!(s, Sent::Frame(60)), "{s:?}");
    assert_eq!(
        frames_sent(&fx.net),
        vec![with_hdr(VnetHdr::default(), &frame)]
    );
}

#[test]
fn largest_frame_passes_one_more_byte_does_not() {
    let mut fx = Fx::new(OFFLOADS);
    let h = hdr(NEEDS, VIRTIO_NET_HDR_GSO_TCPV6, 74, 1428, 54, 16);
    let whole = with_hdr(h, &payload(MAX_FRAME + 1, 4));
    fx.put(DATA, &whole);
    let s = fx.send(&[(DATA, (HDR_LEN + MAX_FRAME) as u32, R)]);
    assert!(matches!(s, Sent::Frame(MAX_FRAME)), "{s:?}");
    assert_eq!(
        frames_sent(&fx.net),
        vec![whole[..HDR_LEN + MAX_FRAME].to_vec()]
    );
    let s = fx.send(&[(DATA, 12, R), (DATA + 12, MAX_FRAME as u32 + 1, R)]);
    fx.assert_dropped(s, |m| &m.tx_too_big);
}

// ---- malformed chains: dropped, counted, nothing sent ----

#[test]
fn write_only_descriptor_in_a_transmit_chain() {
    let mut fx = Fx::new(0);
    fx.put(HDR, &VnetHdr::default().to_bytes());
    let s = fx.send(&[(HDR, 12, R), (DATA, 60, W)]);
    fx.assert_dropped(s, |m| &m.tx_write_only);
    let s = fx.send(&[(HDR, 72, W)]);
    fx.assert_dropped(s, |m| &m.tx_write_only);
}

#[test]
fn buffers_outside_guest_memory() {
    let mut fx = Fx::new(0);
    fx.put(HDR, &VnetHdr::default().to_bytes());
    let s = fx.send(&[(HDR, 12, R), (OUTSIDE, 60, R)]);
    fx.assert_dropped(s, |m| &m.tx_out_of_memory);
    // Starts inside, ends outside.
    let s = fx.send(&[(HDR, 12, R), (MEM as u64 - 30, 60, R)]);
    fx.assert_dropped(s, |m| &m.tx_out_of_memory);
    // Wraps around the address space.
    let s = fx.send(&[(HDR, 12, R), (u64::MAX - 10, 60, R)]);
    fx.assert_dropped(s, |m| &m.tx_out_of_memory);
}

#[test]
fn shorter_than_the_header() {
    let mut fx = Fx::new(0);
    let s = fx.send(&[(HDR, 11, R)]);
    fx.assert_dropped(s, |m| &m.tx_short);
    let s = fx.send(&[(HDR, 5, R), (HDR + 5, 0, R), (HDR + 5, 6, R)]);
    fx.assert_dropped(s, |m| &m.tx_short);
}

#[test]
fn chains_that_do_not_end_or_are_too_long() {
    let mut fx = Fx::new(0);
    fx.put(HDR, &VnetHdr::default().to_bytes());
    // A loop: 0 -> 1 -> 0.
    let s = fx.send_raw(&[raw(HDR, 12, R | NEXT, 1), raw(DATA, 60, R | NEXT, 0)]);
    fx.assert_dropped(s, |m| &m.tx_bad_chain);
    // A next index beyond the queue.
    let s = fx.send_raw(&[raw(HDR, 12, R | NEXT, 200)]);
    fx.assert_dropped(s, |m| &m.tx_bad_chain);
    // An indirect table of 1100 one-byte descriptors.
    let n = 1100u16;
    for i in 0..n {
        let d = if i + 1 == n {
            raw(DATA, 1, R, 0)
        } else {
            raw(DATA, 1, R | NEXT, i + 1)
        };
        fx.mem
            .write_obj(d, GuestAddress(0x20_0000 + 16 * u64::from(i)))
            .unwrap();
    }
    let s = fx.send_raw(&[raw(
        0x20_0000,
        16 * u32::from(n),
        VRING_DESC_F_INDIRECT as u16,
        0,
    )]);
    fx.assert_dropped(s, |m| &m.tx_too_many_descriptors);
}

#[test]
fn headers_that_ask_for_what_was_not_offered_or_point_outside() {
    let cases: [(u64, VnetHdr, usize, Counter); 7] = [
        // UFO is not offered.
        (
            OFFLOADS,
            hdr(NEEDS, VIRTIO_NET_HDR_GSO_UDP, 42, 1400, 34, 6),
            3000,
            |m| &m.tx_bad_gso,
        ),
        // TSO4 without HOST_TSO4.
        (
            1 << VIRTIO_NET_F_CSUM,
            hdr(NEEDS, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16),
            3000,
            |m| &m.tx_bad_gso,
        ),
        // TSO with HOST_TSO4 but without CSUM (an invalid negotiation the device must survive).
        (
            1 << VIRTIO_NET_F_HOST_TSO4,
            hdr(NEEDS, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16),
            3000,
            |m| &m.tx_gso_without_csum,
        ),
        // NEEDS_CSUM without CSUM.
        (0, hdr(NEEDS, 0, 0, 0, 34, 16), 60, |m| &m.tx_bad_flags),
        // DATA_VALID is a receive flag.
        (OFFLOADS, hdr(2, 0, 0, 0, 0, 0), 60, |m| &m.tx_bad_flags),
        // hdr_len beyond the frame.
        (
            OFFLOADS,
            hdr(NEEDS, VIRTIO_NET_HDR_GSO_TCPV4, 3001, 1448, 34, 16),
            3000,
            |m| &m.tx_bad_offsets,
        ),
        // The checksum field beyond the frame.
        (OFFLOADS, hdr(NEEDS, 0, 0, 0, 50, 9), 60, |m| {
            &m.tx_bad_offsets
        }),
    ];
    for (acked, h, len, counter) in cases {
        let mut fx = Fx::new(acked);
        fx.put(DATA, &with_hdr(h, &payload(len, 5)));
        let s = fx.send(&[(DATA, (HDR_LEN + len) as u32, R)]);
        fx.assert_dropped(s, counter);
    }
}

// ---- the tap's answers ----

#[test]
fn a_full_tap_sends_nothing_and_says_so() {
    let mut fx = Fx::new(0);
    fx.put(DATA, &with_hdr(VnetHdr::default(), &payload(60, 6)));
    fx.tap.full.store(true, Ordering::Relaxed);
    let s = fx.send(&[(DATA, 72, R)]);
    assert!(matches!(s, Sent::WouldBlock), "{s:?}");
    assert!(frames_sent(&fx.net).is_empty());
    fx.tap.full.store(false, Ordering::Relaxed);
    let s = fx.send(&[(DATA, 72, R)]);
    assert!(matches!(s, Sent::Frame(60)), "{s:?}");
}

#[test]
fn a_tap_error_drops_the_frame() {
    let mut fx = Fx::new(0);
    fx.put(DATA, &with_hdr(VnetHdr::default(), &payload(60, 7)));
    // The far end is gone: EPIPE (SIGPIPE is ignored by the Rust runtime).
    let (tap, net) = fake_tap();
    drop(net);
    fx.tap = tap;
    let s = fx.send(&[(DATA, 72, R)]);
    let Sent::Dropped(fault) = s else {
        panic!("{s:?}");
    };
    assert!(matches!(fault, Fault::Tap(_)), "{fault}");
    assert!(std::ptr::eq(
        fault.counter(&fx.metrics),
        &fx.metrics.tx_tap_errors
    ));
}
