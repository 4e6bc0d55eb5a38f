//! Unit tests of the device: features, configuration space, offloads, and the transmit queue
//! as the vring thread drives it (used ring, notifications, EAGAIN and EPOLLOUT, the budget).
//! The receive queue's are in `rx_tests.rs`.

use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};

use super::*;
use crate::header::VnetHdr;
use crate::testutil::{
    frames_sent, guest_memory, payload, with_hdr, Device, BUFS, EVENT_IDX, R, V1, W,
};

fn device_features(b: &NetBackend<crate::testutil::FakeTap>) -> u64 {
    b.features()
}

#[test]
fn features_offered() {
    let d = Device::new(V1, 16);
    let f = device_features(&d.backend);
    // VERSION_1 (32), EVENT_IDX (29), PROTOCOL_FEATURES (30), and the net bits: CSUM (0),
    // GUEST_CSUM (1), MTU (3), MAC (5), GUEST_TSO4/6 (7, 8), HOST_TSO4/6 (11, 12),
    // MRG_RXBUF (15), STATUS (16).
    let expected: u64 = [32, 29, 30, 0, 1, 3, 5, 7, 8, 11, 12, 15, 16]
        .iter()
        .fold(0, |a, b| a | (1 << b));
    assert_eq!(f, expected);
    assert_eq!(d.backend.num_queues(), 2);
    assert_eq!(
        d.backend.protocol_features(),
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    );
}

#[test]
fn config_space_is_virtio_net_config() {
    let d = Device::new(V1, 16);
    assert_eq!(CONFIG_SIZE, 24);
    let c = d.backend.get_config(0, CONFIG_SIZE as u32);
    assert_eq!(c.len(), CONFIG_SIZE);
    assert_eq!(&c[0..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "status: LINK_UP");
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "max_virtqueue_pairs");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500, "mtu");
    assert!(c[12..].iter().all(|&b| b == 0));
    // Windows are clamped; past the end is empty (the library replies with an error).
    assert_eq!(d.backend.get_config(6, 2), c[6..8]);
    assert_eq!(d.backend.get_config(20, 8), c[20..]);
    assert!(d.backend.get_config(24, 4).is_empty());
    assert!(d.backend.get_config(u32::MAX, u32::MAX).is_empty());
    assert!(d.backend.set_config(0, &[0; 6]).is_err());
    assert_eq!(
        config_space([2, 0, 0, 0, 0, 1], 9000)[10..12],
        9000u16.to_le_bytes()
    );
}

#[test]
fn offloads_follow_the_driver_and_reset() {
    let d = Device::new(0, 16);
    let guest = (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6);
    d.backend.acked_features(V1 | guest);
    d.backend
        .acked_features(V1 | (1 << VIRTIO_NET_F_GUEST_CSUM));
    d.backend.reset_device();
    let offloads = d.backend.tap().offloads.lock().unwrap().clone();
    // Device::new acked nothing (0), then full TSO, then checksum only, then the reset.
    assert_eq!(
        offloads,
        vec![
            0,
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
            libc::TUN_F_CSUM,
            0
        ]
    );
}

#[test]
fn transmit_drops_the_bad_and_sends_the_rest_in_order() {
    let mut d = Device::new(V1, 16);
    d.tx.set_used_event(0);
    let a = payload(60, 1);
    let b = payload(1514, 2);
    d.write(BUFS, &with_hdr(VnetHdr::default(), &a));
    d.write(BUFS + 0x1000, &VnetHdr::default().to_bytes());
    d.write(BUFS + 0x2000, &b);
    let h0 = d.tx.chain(&[(BUFS, 72, R)]);
    let h1 = d.tx.chain(&[(BUFS, 12, R), (BUFS + 0x100, 60, W)]);
    let h2 =
        d.tx.chain(&[(BUFS + 0x1000, 12, R), (BUFS + 0x2000, 1514, R)]);
    d.kick_tx();
    assert_eq!(
        frames_sent(&d.net),
        vec![
            with_hdr(VnetHdr::default(), &a),
            with_hdr(VnetHdr::default(), &b)
        ]
    );
    assert_eq!(d.tx.used(), vec![(h0, 0), (h1, 0), (h2, 0)]);
    assert!(d.tx.signalled());
    assert_eq!(d.count(|m| &m.tx_frames), 2);
    assert_eq!(d.count(|m| &m.tx_bytes), 1574);
    assert_eq!(d.count(|m| &m.tx_write_only), 1);
    assert_eq!(d.backend.watching(), EventSet::empty());
}

#[test]
fn a_full_tap_keeps_the_chain_until_it_is_writable() {
    let mut d = Device::new(V1 | EVENT_IDX, 16);
    d.tx.set_used_event(0);
    let f: Vec<Vec<u8>> = (0..2)
        .map(|i| with_hdr(VnetHdr::default(), &payload(100, i)))
        .collect();
    d.write(BUFS, &f[0]);
    d.write(BUFS + 0x1000, &f[1]);
    let h0 = d.tx.chain(&[(BUFS, 112, R)]);
    let h1 = d.tx.chain(&[(BUFS + 0x1000, 112, R)]);
    d.backend.tap().full.store(true, Ordering::Relaxed);
    d.kick_tx();
    // Nothing sent, nothing completed, nothing lost: the worker waits for EPOLLOUT.
    assert!(frames_sent(&d.net).is_empty());
    assert!(d.tx.used().is_empty());
    assert_eq!(d.backend.watching(), EventSet::OUT);
    assert_eq!(d.count(|m| &m.tx_would_block), 1);
    // A kick meanwhile tries again and waits again.
    d.kick_tx();
    assert!(d.tx.used().is_empty());
    assert_eq!(d.count(|m| &m.tx_would_block), 2);

    d.backend.tap().full.store(false, Ordering::Relaxed);
    d.tap_event();
    assert_eq!(frames_sent(&d.net), f);
    assert_eq!(d.tx.used(), vec![(h0, 0), (h1, 0)]);
    assert!(d.tx.signalled());
    assert_eq!(d.backend.watching(), EventSet::empty());
    // Drained: the driver is asked to kick for the next chain.
    assert_eq!(d.tx.avail_event(), 2);
    assert_eq!(d.count(|m| &m.tx_frames), 2);
}

#[test]
fn transmit_work_per_event_is_bounded() {
    let mut d = Device::new(V1, 256);
    d.write(BUFS, &with_hdr(VnetHdr::default(), &payload(60, 3)));
    for _ in 0..256 {
        d.tx.chain(&[(BUFS, 72, R)]);
    }
    d.kick_tx();
    assert_eq!(d.tx.used().len(), tx::BUDGET);
    // Stopped at the budget: EPOLLOUT brings the worker back after the other events.
    assert_eq!(d.backend.watching(), EventSet::OUT);
    d.tap_event();
    assert_eq!(d.backend.watching(), EventSet::empty());
    assert_eq!(frames_sent(&d.net).len(), 256);
}

#[test]
fn both_directions_share_the_watch() {
    let mut d = Device::new(V1, 16);
    d.rx.chain(&[(BUFS + 0x8000, 2048, W)]);
    d.rx.chain(&[(BUFS + 0x9000, 2048, W)]);
    d.kick_rx();
    assert_eq!(d.backend.watching(), EventSet::IN);
    d.write(BUFS, &with_hdr(VnetHdr::default(), &payload(60, 4)));
    d.tx.chain(&[(BUFS, 72, R)]);
    d.backend.tap().full.store(true, Ordering::Relaxed);
    d.kick_tx();
    assert_eq!(d.backend.watching(), EventSet::IN | EventSet::OUT);
    d.backend.tap().full.store(false, Ordering::Relaxed);
    d.tap_event();
    assert_eq!(d.backend.watching(), EventSet::IN);
    assert_eq!(frames_sent(&d.net).len(), 1);
    let history = d.watch.0.lock().unwrap().clone();
    assert_eq!(
        history,
        vec![EventSet::IN, EventSet::IN | EventSet::OUT, EventSet::IN]
    );
}

#[test]
fn stopping_the_receive_queue_forgets_the_waiting_frame() {
    let mut d = Device::new(V1 | crate::testutil::MRG, 16);
    d.rx.chain(&[(BUFS, 256, W)]);
    crate::testutil::inject(&d.net, &with_hdr(VnetHdr::default(), &payload(700, 5)));
    d.kick_rx();
    assert!(d.backend.rx_pending());
    d.backend.stop_vring(0).unwrap();
    assert!(!d.backend.rx_pending());
    assert_eq!(d.backend.watching(), EventSet::empty());
}

#[test]
fn queues_not_started_are_not_served() {
    let mut d = Device::new(V1, 16);
    d.write(BUFS, &with_hdr(VnetHdr::default(), &payload(60, 6)));
    d.tx.chain(&[(BUFS, 72, R)]);
    d.tx.vring.set_enabled(false);
    d.kick_tx();
    assert!(frames_sent(&d.net).is_empty());
    d.rx.chain(&[(BUFS + 0x1000, 2048, W)]);
    d.rx.vring.set_queue_ready(false);
    d.kick_rx();
    assert_eq!(d.tap_reads(), 0);
    assert_eq!(d.backend.watching(), EventSet::empty());
}

#[test]
fn broken_rings_do_not_spin_or_panic() {
    let mem = guest_memory(0x10_0000);
    let (tap, _net) = crate::testutil::fake_tap();
    let b = NetBackend::new(
        tap,
        [2, 0, 0, 0, 0, 1],
        1500,
        mem.clone(),
        Arc::new(Metrics::default()),
        tracing::Span::none(),
    );
    b.set_event_idx(true);
    // Both available rings lie outside guest memory.
    let vrings: Vec<VringRwLock> = (0..2)
        .map(|i| {
            let v = VringRwLock::new(mem.clone(), 16).unwrap();
            v.set_queue_size(16);
            v.set_queue_info(0x1000 * i, 0x4000_0000, 0x8000 + 0x1000 * i)
                .unwrap();
            v.set_queue_event_idx(true);
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect();
    b.handle(RX_QUEUE, &vrings);
    b.handle(TX_QUEUE, &vrings);
    b.handle(TAP_TOKEN, &vrings);
    b.handle(77, &vrings);
    b.handle(TX_QUEUE, &vrings[..1]);
    assert!(Metrics::get(&b.metrics().ring_errors) >= 2);
}
