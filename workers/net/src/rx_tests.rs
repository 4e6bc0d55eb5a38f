//! Unit tests of the receive path: frames written into the network's end of a fake tap (a
//! `SOCK_SEQPACKET` pair, which keeps frame boundaries as a tap does), delivered by a whole
//! device into receive chains a hand-driven queue offers, with and without MRG_RXBUF and
//! EVENT_IDX.

use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::epoll::EventSet;

use super::*;
use crate::header::VnetHdr;
use crate::testutil::{inject, payload, with_hdr, Device, BUFS, EVENT_IDX, MRG, OUTSIDE, R, V1, W};

/// The header a tap puts in front of a checksummed frame (num_buffers: whatever was there).
fn tap_hdr() -> VnetHdr {
    VnetHdr {
        flags: 2, // DATA_VALID
        num_buffers: 0xeeee,
        ..VnetHdr::default()
    }
}

/// Receive buffer `i`: 4 KiB apart.
fn buf(i: u64) -> u64 {
    BUFS + 0x1000 * i
}

#[test]
fn one_frame_in_one_chain_without_mrg() {
    let mut d = Device::new(V1, 16);
    // The header in its own descriptor, as older Linux drivers post them.
    let head = d.rx.chain(&[(buf(0), 12, W), (buf(1), 1514, W)]);
    d.rx.chain(&[(buf(2), 12, W), (buf(3), 1514, W)]);
    let frame = payload(100, 1);
    inject(&d.net, &with_hdr(tap_hdr(), &frame));
    d.kick_rx();
    assert_eq!(d.rx.used(), vec![(head, 112)]);
    assert!(d.rx.signalled());
    let h = d.hdr_at(buf(0));
    assert_eq!(h.flags, 2);
    assert_eq!(h.num_buffers, 1);
    assert_eq!(d.read(buf(1), 100), frame);
    assert_eq!(d.count(|m| &m.rx_frames), 1);
    assert_eq!(d.count(|m| &m.rx_bytes), 100);
    // The tap stays watched: there may be more frames, and the guest may have more buffers.
    assert_eq!(d.backend.watching(), EventSet::IN);
}

#[test]
fn mrg_spreads_a_frame_over_several_chains() {
    let mut d = Device::new(V1 | MRG, 16);
    let heads: Vec<u16> = (0..4).map(|i| d.rx.chain(&[(buf(i), 256, W)])).collect();
    let frame = payload(700, 2);
    inject(&d.net, &with_hdr(tap_hdr(), &frame));
    d.kick_rx();
    // 712 bytes: two full chains and 200 bytes of a third, consecutive in the used ring.
    assert_eq!(
        d.rx.used(),
        vec![(heads[0], 256), (heads[1], 256), (heads[2], 200)]
    );
    assert_eq!(d.hdr_at(buf(0)).num_buffers, 3);
    let mut got = d.read(buf(0) + 12, 244);
    got.extend(d.read(buf(1), 256));
    got.extend(d.read(buf(2), 200));
    assert_eq!(got, frame);
    // The fourth chain takes the next frame alone.
    let small = payload(30, 3);
    inject(&d.net, &with_hdr(tap_hdr(), &small));
    d.tap_event();
    assert_eq!(d.rx.used(), vec![(heads[3], 42)]);
    assert_eq!(d.hdr_at(buf(3)).num_buffers, 1);
    assert_eq!(d.read(buf(3) + 12, 30), small);
}

#[test]
fn mrg_frame_waits_for_more_buffers_without_reading_the_tap() {
    let mut d = Device::new(V1 | MRG | EVENT_IDX, 16);
    d.rx.set_used_event(0);
    let h0 = d.rx.chain(&[(buf(0), 256, W)]);
    let h1 = d.rx.chain(&[(buf(1), 256, W)]);
    let big = payload(700, 4);
    let next = payload(80, 5);
    inject(&d.net, &with_hdr(tap_hdr(), &big));
    inject(&d.net, &with_hdr(tap_hdr(), &next));
    d.kick_rx();
    // Read, but no room yet: nothing used, the tap no longer watched, a kick asked for at the
    // next buffer the driver adds.
    assert!(d.rx.used().is_empty());
    assert!(d.backend.rx_pending());
    assert_eq!(d.tap_reads(), 1);
    assert_eq!(d.backend.watching(), EventSet::empty());
    assert_eq!(d.rx.avail_event(), 2);
    // The tap cannot make us read while we wait.
    d.tap_event();
    assert_eq!(d.tap_reads(), 1);

    let h2 = d.rx.chain(&[(buf(2), 256, W)]);
    d.kick_rx();
    assert_eq!(d.rx.used(), vec![(h0, 256), (h1, 256), (h2, 200)]);
    assert_eq!(d.hdr_at(buf(0)).num_buffers, 3);
    assert_eq!(d.read(buf(2), 200), big[500..]);
    assert!(!d.backend.rx_pending());
    // The second frame was not read: there was no buffer left for it.
    assert_eq!(d.tap_reads(), 1);
    let h3 = d.rx.chain(&[(buf(3), 256, W)]);
    d.kick_rx();
    assert_eq!(d.rx.used(), vec![(h3, 92)]);
    assert_eq!(d.read(buf(3) + 12, 80), next);
}

#[test]
fn no_receive_buffers_means_no_tap_reads_until_a_kick() {
    let mut d = Device::new(V1 | EVENT_IDX, 16);
    let frame = payload(64, 6);
    inject(&d.net, &with_hdr(tap_hdr(), &frame));
    // The driver starts the queue without buffers.
    d.kick_rx();
    assert_eq!(d.tap_reads(), 0);
    assert_eq!(d.backend.watching(), EventSet::empty());
    assert_eq!(d.count(|m| &m.rx_no_buffers), 1);
    assert_eq!(d.rx.avail_event(), 0);
    d.tap_event();
    assert_eq!(d.tap_reads(), 0);
    // Buffers and a kick: the frame arrives and the tap is watched again.
    let head = d.rx.chain(&[(buf(0), 2048, W)]);
    d.kick_rx();
    assert_eq!(d.rx.used(), vec![(head, 76)]);
    assert_eq!(d.read(buf(0) + 12, 64), frame);
    // Out of buffers again after the one frame: the tap is not read for the next.
    assert_eq!(d.tap_reads(), 1);
    assert_eq!(d.backend.watching(), EventSet::empty());
    assert!(d.watch.0.lock().unwrap().is_empty());
}

#[test]
fn without_mrg_a_frame_too_big_for_the_chain_is_dropped_and_the_chain_kept() {
    let mut d = Device::new(V1, 16);
    let head = d.rx.chain(&[(buf(0), 100, W)]);
    let big = payload(200, 7);
    let small = payload(50, 8);
    inject(&d.net, &with_hdr(tap_hdr(), &big));
    inject(&d.net, &with_hdr(tap_hdr(), &small));
    d.kick_rx();
    assert_eq!(d.rx.used(), vec![(head, 62)]);
    assert_eq!(d.read(buf(0) + 12, 50), small);
    assert_eq!(d.count(|m| &m.rx_no_room), 1);
    assert_eq!(d.count(|m| &m.rx_frames), 1);
}

#[test]
fn unusable_receive_chains_are_returned_empty_before_the_frame() {
    let mut d = Device::new(V1 | MRG, 16);
    let read_only = d.rx.chain(&[(buf(0), 2048, R)]);
    let outside = d.rx.chain(&[(buf(1), 12, W), (OUTSIDE, 2048, W)]);
    let tiny = d.rx.chain(&[(buf(2), 8, W)]);
    // A loop: descriptors 10 -> 11 -> 10.
    d.rx.raw(
        &[(10, buf(3), 64, W | 1, 11), (11, buf(4), 64, W | 1, 10)],
        10,
    );
    let good = d.rx.chain(&[(buf(5), 2048, W)]);
    let frame = payload(100, 9);
    inject(&d.net, &with_hdr(tap_hdr(), &frame));
    d.kick_rx();
    assert_eq!(
        d.rx.used(),
        vec![
            (read_only, 0),
            (outside, 0),
            (tiny, 0),
            (10, 0),
            (good, 112)
        ]
    );
    assert_eq!(d.read(buf(5) + 12, 100), frame);
    assert_eq!(d.hdr_at(buf(5)).num_buffers, 1);
    let picks: [fn(&Metrics) -> &std::sync::atomic::AtomicU64; 4] = [
        |m| &m.rx_read_only,
        |m| &m.rx_out_of_memory,
        |m| &m.rx_too_small,
        |m| &m.rx_bad_chain,
    ];
    for pick in picks {
        assert_eq!(d.count(pick), 1);
    }
    // Untouched: nothing was written into the chains returned empty.
    assert!(d.read(buf(0), 64).iter().all(|&b| b == 0));
}

#[test]
fn short_and_oversized_frames_from_the_tap_are_dropped() {
    let mut d = Device::new(V1 | MRG, 16);
    let head = d.rx.chain(&[(buf(0), 4096, W)]);
    inject(&d.net, &[1, 2, 3, 4, 5]);
    inject(&d.net, &with_hdr(tap_hdr(), &payload(MAX_FRAME + 1, 10)));
    let frame = payload(60, 11);
    inject(&d.net, &with_hdr(tap_hdr(), &frame));
    d.kick_rx();
    assert_eq!(d.rx.used(), vec![(head, 72)]);
    assert_eq!(d.read(buf(0) + 12, 60), frame);
    assert_eq!(d.count(|m| &m.rx_short), 1);
    assert_eq!(d.count(|m| &m.rx_too_big), 1);
}

#[test]
fn the_largest_frame_fills_seventeen_chains() {
    let mut d = Device::new(V1 | MRG, 32);
    // 65562 bytes over 4 KiB chains: 16 full ones and 26 bytes of the 17th.
    let heads: Vec<u16> = (0..20).map(|i| d.rx.chain(&[(buf(i), 4096, W)])).collect();
    let frame = payload(MAX_FRAME, 12);
    inject(&d.net, &with_hdr(tap_hdr(), &frame));
    d.kick_rx();
    let used = d.rx.used();
    assert_eq!(used.len(), 17);
    assert!(used[..16].iter().zip(&heads).all(|(u, h)| *u == (*h, 4096)));
    assert_eq!(used[16], (heads[16], 26));
    assert_eq!(d.hdr_at(buf(0)).num_buffers, 17);
    let mut got = d.read(buf(0) + 12, 4084);
    for i in 1..17 {
        got.extend(d.read(buf(i), if i == 16 { 26 } else { 4096 }));
    }
    assert_eq!(got, frame);
}

#[test]
fn a_tap_that_ends_is_not_read_again_until_a_kick() {
    let mut d = Device::new(V1, 16);
    d.rx.chain(&[(buf(0), 2048, W)]);
    let net = std::mem::replace(&mut d.net, crate::testutil::fake_tap().1);
    drop(net);
    d.kick_rx();
    assert_eq!(d.tap_reads(), 1);
    assert_eq!(d.count(|m| &m.rx_tap_errors), 1);
    assert_eq!(d.backend.watching(), EventSet::empty());
    d.tap_event();
    assert_eq!(d.tap_reads(), 1);
    assert!(d.rx.used().is_empty());
}

#[test]
fn the_work_per_event_is_bounded() {
    let mut d = Device::new(V1, 256);
    for i in 0..256 {
        d.rx.chain(&[(BUFS + 0x100 * i, 0x100, W)]);
    }
    for i in 0..300u32 {
        inject(&d.net, &with_hdr(tap_hdr(), &payload(60, i as u8)));
    }
    d.kick_rx();
    assert_eq!(d.rx.used().len(), BUDGET);
    // Stopped at the budget: input still watched, and EPOLLOUT to come back soon.
    assert_eq!(d.backend.watching(), EventSet::IN | EventSet::OUT);
    d.tap_event();
    // Every buffer is used: the rest waits for the guest.
    assert!(d.rx.used().is_empty());
    assert_eq!(d.backend.watching(), EventSet::empty());
    for i in 0..44 {
        d.rx.chain(&[(BUFS + 0x100 * i, 0x100, W)]);
    }
    d.kick_rx();
    assert_eq!(d.rx.used().len(), 44);
    assert_eq!(d.count(|m| &m.rx_frames), 300);
}

#[test]
fn event_idx_signals_only_when_the_driver_asks() {
    let mut d = Device::new(V1 | EVENT_IDX, 16);
    d.rx.set_used_event(0);
    d.rx.chain(&[(buf(0), 2048, W)]);
    d.rx.chain(&[(buf(1), 2048, W)]);
    inject(&d.net, &with_hdr(tap_hdr(), &payload(60, 13)));
    d.kick_rx();
    assert_eq!(d.rx.used().len(), 1);
    assert!(d.rx.signalled());
    // used_event is still 0: the second frame is not signalled.
    inject(&d.net, &with_hdr(tap_hdr(), &payload(60, 14)));
    d.tap_event();
    assert_eq!(d.rx.used().len(), 1);
    assert!(!d.rx.signalled());
}

#[test]
fn each_frame_is_signalled_as_it_lands() {
    // Without EVENT_IDX and with interrupts on, three frames in the tap are three signals,
    // not one once the tap is drained: the guest can start on the first.
    let mut d = Device::new(V1, 16);
    for i in 0..3 {
        d.rx.chain(&[(buf(i), 2048, W)]);
    }
    for i in 0..3 {
        inject(&d.net, &with_hdr(tap_hdr(), &payload(60, 30 + i)));
    }
    d.kick_rx();
    assert_eq!(d.rx.used().len(), 3);
    assert_eq!(d.rx.signals(), 3);
}

#[test]
fn frames_are_read_straight_into_buffers_that_hold_the_longest_frame() {
    let mut d = Device::new(V1 | MRG, 32);
    let heads: Vec<u16> = (0..20).map(|i| d.rx.chain(&[(buf(i), 4096, W)])).collect();
    let frames = [payload(100, 20), payload(5000, 21), payload(60, 22)];
    for f in &frames {
        inject(&d.net, &with_hdr(tap_hdr(), f));
    }
    d.kick_rx();
    // Each frame in the next chains, in order; the second over two of them.
    assert_eq!(
        d.rx.used(),
        vec![
            (heads[0], 112),
            (heads[1], 4096),
            (heads[2], 916),
            (heads[3], 72)
        ]
    );
    assert_eq!(d.hdr_at(buf(0)).num_buffers, 1);
    assert_eq!(d.hdr_at(buf(1)).num_buffers, 2);
    assert_eq!(d.hdr_at(buf(3)).num_buffers, 1);
    assert_eq!(d.hdr_at(buf(1)).flags, 2);
    assert_eq!(d.read(buf(0) + 12, 100), frames[0]);
    let mut second = d.read(buf(1) + 12, 4084);
    second.extend(d.read(buf(2), 916));
    assert_eq!(second, frames[1]);
    assert_eq!(d.read(buf(3) + 12, 60), frames[2]);
    assert_eq!(d.count(|m| &m.rx_frames), 3);
    assert_eq!(d.count(|m| &m.rx_direct), 3);
    assert_eq!(d.count(|m| &m.rx_bytes), 5160);
    // The chains taken but not needed stay held: the next frame takes the next. The 16 left
    // (64 KiB) are short of the longest frame: it goes through the bounce buffer.
    inject(&d.net, &with_hdr(tap_hdr(), &payload(40, 23)));
    d.tap_event();
    assert_eq!(d.rx.used(), vec![(heads[4], 52)]);
    assert_eq!(d.count(|m| &m.rx_frames), 4);
    assert_eq!(d.count(|m| &m.rx_direct), 3);
}

#[test]
fn direct_reads_drop_short_and_oversized_frames_and_keep_the_buffers() {
    let mut d = Device::new(V1 | MRG, 32);
    let heads: Vec<u16> = (0..20).map(|i| d.rx.chain(&[(buf(i), 4096, W)])).collect();
    inject(&d.net, &[1, 2, 3, 4, 5]);
    inject(&d.net, &with_hdr(tap_hdr(), &payload(MAX_FRAME + 1, 24)));
    let frame = payload(60, 25);
    inject(&d.net, &with_hdr(tap_hdr(), &frame));
    d.kick_rx();
    assert_eq!(d.rx.used(), vec![(heads[0], 72)]);
    assert_eq!(d.read(buf(0) + 12, 60), frame);
    assert_eq!(d.hdr_at(buf(0)).num_buffers, 1);
    assert_eq!(d.count(|m| &m.rx_short), 1);
    assert_eq!(d.count(|m| &m.rx_too_big), 1);
    assert_eq!(d.count(|m| &m.rx_direct), 1);
}

#[test]
fn held_chains_behind_a_chain_returned_empty_stay_held_and_in_order() {
    let mut d = Device::new(V1 | MRG, 32);
    let first = d.rx.chain(&[(buf(0), 4096, W)]);
    let read_only = d.rx.chain(&[(buf(1), 4096, R)]);
    let rest: Vec<u16> = (2..20).map(|i| d.rx.chain(&[(buf(i), 4096, W)])).collect();
    inject(&d.net, &with_hdr(tap_hdr(), &payload(100, 26)));
    d.kick_rx();
    // The bad chain goes back empty as soon as it is seen, the frame into the first chain.
    assert_eq!(d.rx.used(), vec![(read_only, 0), (first, 112)]);
    assert_eq!(d.count(|m| &m.rx_read_only), 1);
    // The chains after it could not be put back (the used ring has the bad one already):
    // they are held, and the next frames take them in order, each once.
    for (i, head) in rest.iter().take(3).enumerate() {
        let f = payload(30 + i, 27 + i as u8);
        inject(&d.net, &with_hdr(tap_hdr(), &f));
        d.tap_event();
        assert_eq!(d.rx.used(), vec![(*head, 42 + i as u32)]);
        assert_eq!(d.read(buf(2 + i as u64) + 12, f.len()), f);
    }
    assert_eq!(d.count(|m| &m.rx_frames), 4);
}

#[test]
fn stopping_the_queue_gives_the_held_chains_back() {
    let mut d = Device::new(V1 | MRG, 32);
    for i in 0..20 {
        d.rx.chain(&[(buf(i), 4096, W)]);
    }
    inject(&d.net, &with_hdr(tap_hdr(), &payload(100, 30)));
    d.kick_rx();
    assert_eq!(d.rx.used().len(), 1);
    // Sixteen more chains were taken to hold the longest frame; stopping puts them back, so
    // the base is the one chain used.
    d.backend.stop_vring(0).unwrap();
    assert_eq!(d.rx.vring.queue_next_avail(), 1);
}

#[test]
fn a_frame_over_several_chains_is_published_with_one_index_store() {
    // The guest polls the used index on another CPU while frames of three chains land: it
    // must never see an index that ends inside a frame (Linux would drop the frame).
    use std::sync::atomic::{AtomicBool, AtomicU16, Ordering::Relaxed};
    use std::sync::Arc;
    let mut d = Device::new(V1 | MRG, 256);
    let used_idx = GuestAddress(crate::testutil::RX_BASE + 0x2000 + 2);
    let mem = d.mem.clone();
    let (stop, started, last) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU16::new(0)),
    );
    let watcher = {
        let (stop, started, last) = (stop.clone(), started.clone(), last.clone());
        std::thread::spawn(move || {
            let mut torn = Vec::new();
            while !stop.load(Relaxed) {
                let idx: u16 = mem
                    .memory()
                    .load(used_idx, std::sync::atomic::Ordering::Acquire)
                    .unwrap();
                if !idx.is_multiple_of(3) {
                    torn.push(idx);
                }
                last.store(idx, Relaxed);
                started.store(true, Relaxed);
            }
            torn
        })
    };
    while !started.load(Relaxed) {
        std::thread::yield_now();
    }
    let frame = payload(700, 50);
    let mut frames = 0;
    for _ in 0..1000 {
        for i in 0..3 {
            d.rx.chain(&[(buf(i), 256, W)]);
        }
        inject(&d.net, &with_hdr(tap_hdr(), &frame));
        // New buffers: the driver kicks.
        d.kick_rx();
        frames += d.rx.used().len() / 3;
    }
    // The watcher looked before the first frame and after the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while last.load(Relaxed) != 3000 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    stop.store(true, Relaxed);
    let torn = watcher.join().unwrap();
    assert_eq!(frames, 1000);
    assert_eq!(d.count(|m| &m.rx_frames), 1000);
    assert_eq!(last.load(Relaxed), 3000, "the watcher saw the last frame");
    assert!(
        torn.is_empty(),
        "the guest saw part of a frame {} times, at {:?}…",
        torn.len(),
        &torn[..torn.len().min(10)]
    );
}

#[test]
fn a_used_ring_outside_memory_or_a_bad_head_publishes_nothing() {
    // The frame's third used element would lie outside guest memory: none of its chains is
    // published, rather than the first two.
    let mem = crate::testutil::guest_memory(crate::testutil::MEM_SIZE);
    let vring = VringRwLock::new(mem.clone(), 16).unwrap();
    vring.set_queue_size(16);
    let used = crate::testutil::MEM_SIZE as u64 - 4 - 2 * 8;
    vring.set_queue_info(0, 0x1000, used).unwrap();
    vring.set_queue_ready(true);
    let metrics = Metrics::default();
    let m = mem.memory();
    let ctx = Ctx {
        mem: &m,
        tap: &(),
        metrics: &metrics,
        acked: V1 | MRG,
        event_idx: false,
    };
    ring::complete_all(&ctx, &vring, &[(0, 256), (1, 256), (2, 200)]);
    let idx: u16 = m.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(idx, 0);
    assert_eq!(vring.get_ref().get_queue().next_used(), 0);
    assert_eq!(Metrics::get(&metrics.ring_errors), 1);
    // A head the queue does not have (the guest's word, unchecked by the library): nothing.
    ring::complete_all(&ctx, &vring, &[(0, 256), (16, 100)]);
    let idx: u16 = m.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(idx, 0);
    assert_eq!(Metrics::get(&metrics.ring_errors), 2);
    // Two fit: both published at once.
    ring::complete_all(&ctx, &vring, &[(0, 256), (1, 100)]);
    let idx: u16 = m.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(idx, 2);
    let elem: u64 = m.read_obj(GuestAddress(used + 4 + 8)).unwrap();
    assert_eq!(elem, 1 | (100 << 32));
}

#[test]
fn event_idx_counts_every_chain_of_a_frame() {
    // A frame over three chains moves the used index from 0 to 3: a driver asking to hear of
    // index 2 (used_event = 1) is signalled, although the frame's first chain is at 0.
    let mut d = Device::new(V1 | MRG | EVENT_IDX, 16);
    d.rx.set_used_event(1);
    for i in 0..6 {
        d.rx.chain(&[(buf(i), 256, W)]);
    }
    inject(&d.net, &with_hdr(tap_hdr(), &payload(700, 51)));
    d.kick_rx();
    assert_eq!(d.rx.used().len(), 3);
    assert_eq!(d.rx.signals(), 1);
    assert_eq!(d.count(|m| &m.rx_signals), 1);
    // The next frame (index 3 to 6) passes no used_event the driver set: no signal.
    inject(&d.net, &with_hdr(tap_hdr(), &payload(700, 52)));
    d.tap_event();
    assert_eq!(d.rx.used().len(), 3);
    assert_eq!(d.rx.signals(), 0);
    // Once the driver asks for index 7 (used_event = 6)... the index is 6, so the next frame
    // is signalled.
    d.rx.set_used_event(6);
    for i in 0..3 {
        d.rx.chain(&[(buf(i), 256, W)]);
    }
    inject(&d.net, &with_hdr(tap_hdr(), &payload(700, 53)));
    // The device ran out of buffers and asked for a kick when there are more.
    d.kick_rx();
    assert_eq!(d.rx.used().len(), 3);
    assert_eq!(d.rx.signals(), 1);
    assert_eq!(d.count(|m| &m.rx_signals), 2);
}

#[test]
fn without_event_idx_a_driver_can_turn_interrupts_off() {
    // VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags: no signal.
    let mut d = Device::new(V1, 16);
    d.write(crate::testutil::RX_BASE + 0x1000, &1u16.to_le_bytes());
    d.rx.chain(&[(buf(0), 2048, W)]);
    d.rx.chain(&[(buf(1), 2048, W)]);
    inject(&d.net, &with_hdr(tap_hdr(), &payload(60, 54)));
    d.kick_rx();
    assert_eq!(d.rx.used().len(), 1);
    assert!(!d.rx.signalled());
    d.write(crate::testutil::RX_BASE + 0x1000, &0u16.to_le_bytes());
    inject(&d.net, &with_hdr(tap_hdr(), &payload(60, 55)));
    d.tap_event();
    assert_eq!(d.rx.used().len(), 1);
    assert!(d.rx.signalled());
}
