//! Unit tests of the queues: single chains placed by a mock driver (`virtio_queue::mock`), and
//! whole queues driven through a `VringRwLock` over hand-laid rings, with and without
//! EVENT_IDX.

use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::testutil::{guest_memory, Ring, NEXT, R, W};

const MEM_SIZE: u64 = 0x10_0000;
const DATA: u64 = 0x2_0000;
const INDIRECT: u64 = 0x8_0000;
/// Address past the end of guest memory.
const OUTSIDE: u64 = 0x20_0000;

/// A chain as (addr, len, flags) parts.
type Parts<'a> = &'a [(u64, u32, u16)];

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

struct Fx {
    mem: GuestMem,
}

impl Fx {
    fn new() -> Fx {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
        Fx { mem }
    }

    fn put(&self, at: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
    }

    fn get(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// Reads a chain of (addr, len, flags) parts linked in order as transmitq output.
    fn output(&self, parts: &[(u64, u32, u16)]) -> (Result<usize, Fault>, Vec<u8>) {
        let vq = MockSplitQueue::new(&self.mem, 16);
        let descs: Vec<RawDescriptor> = parts.iter().map(|&(a, l, f)| raw(a, l, f, 0)).collect();
        let chain = vq.build_desc_chain(&descs).unwrap();
        let mut out = b"earlier".to_vec();
        let r = read_output(&self.mem, chain, &mut out);
        (r, out[7..].to_vec())
    }

    /// Same, with descriptors stored exactly as given (head at index 0).
    fn output_raw(&self, descs: &[RawDescriptor]) -> Result<usize, Fault> {
        let vq = MockSplitQueue::new(&self.mem, 16);
        let chain = vq.build_multiple_desc_chains(descs).unwrap();
        read_output(&self.mem, chain, &mut Vec::new())
    }

    fn input(&self, parts: &[(u64, u32, u16)], input: &mut Input) -> Result<u32, Fault> {
        let vq = MockSplitQueue::new(&self.mem, 16);
        let descs: Vec<RawDescriptor> = parts.iter().map(|&(a, l, f)| raw(a, l, f, 0)).collect();
        let chain = vq.build_desc_chain(&descs).unwrap();
        write_input(&self.mem, chain, input)
    }
}

fn input_of(data: &[u8]) -> Input {
    let mut i = Input::new(INPUT_MAX);
    i.push(data);
    i
}

// ---- transmitq chains ----

#[test]
fn output_is_the_readable_bytes_in_order() {
    let fx = Fx::new();
    fx.put(DATA, b"hello, ");
    fx.put(DATA + 0x100, b"world\n");
    let (r, out) = fx.output(&[(DATA, 7, R), (DATA + 0x200, 0, R), (DATA + 0x100, 6, R)]);
    assert_eq!(r, Ok(13));
    assert_eq!(out, b"hello, world\n");
}

#[test]
fn output_through_an_indirect_table() {
    let fx = Fx::new();
    fx.put(DATA, b"abcdef");
    let table = [raw(DATA, 3, R | NEXT, 1), raw(DATA + 3, 3, R, 0)];
    for (i, d) in table.iter().enumerate() {
        fx.mem
            .write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let vq = MockSplitQueue::new(&fx.mem, 16);
    let chain = vq
        .build_multiple_desc_chains(&[raw(INDIRECT, 32, VRING_DESC_F_INDIRECT as u16, 0)])
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(read_output(&fx.mem, chain, &mut out), Ok(6));
    assert_eq!(out, b"abcdef");
}

#[test]
fn write_only_descriptor_in_output_drops_the_chain() {
    let fx = Fx::new();
    fx.put(DATA, b"secret");
    for parts in [
        &[(DATA, 6, W)][..],
        &[(DATA, 3, R), (DATA + 3, 3, W)],
        &[(DATA, 0, W), (DATA, 6, R)],
    ] {
        let (r, out) = fx.output(parts);
        assert_eq!(r, Err(Fault::WrongDirection), "{parts:?}");
        assert!(out.is_empty(), "nothing appended for {parts:?}");
    }
}

#[test]
fn output_outside_guest_memory_drops_the_chain() {
    let fx = Fx::new();
    for parts in [
        &[(OUTSIDE, 16, R)][..],
        // Runs off the end of memory.
        &[(MEM_SIZE - 8, 16, R)],
        // Wraps the address space.
        &[(u64::MAX - 7, 16, R)],
        // A good buffer, then a bad one: nothing of the good one is kept.
        &[(DATA, 16, R), (OUTSIDE, 1, R)],
    ] {
        let (r, out) = fx.output(parts);
        assert!(
            matches!(r, Err(Fault::OutOfMemory { .. })),
            "{parts:?}: {r:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn empty_and_overlong_output_chains_are_dropped() {
    let fx = Fx::new();
    assert_eq!(fx.output(&[(DATA, 0, R)]).0, Err(Fault::Empty));
    assert_eq!(
        fx.output(&[(DATA, 0, R), (DATA, 0, R)]).0,
        Err(Fault::Empty)
    );
    let over = u32::try_from(MAX_OUTPUT_CHAIN + 1).unwrap();
    assert_eq!(
        fx.output(&[(DATA, over, R)]).0,
        Err(Fault::TooLong(MAX_OUTPUT_CHAIN + 1))
    );
    // Absurd lengths, even split over descriptors, never make us read or allocate them.
    assert_eq!(
        fx.output(&[(DATA, u32::MAX, R), (DATA, u32::MAX, R)]).0,
        Err(Fault::BadChain),
        "the chain iterator stops at 4 GiB"
    );
    assert_eq!(
        fx.output(&[(DATA, 0xffff_0000, R)]).0,
        Err(Fault::TooLong(0xffff_0000))
    );
    // Exactly the limit is fine, if it is in memory (it is not here: 1 MiB of 1 MiB at DATA).
    let max = u32::try_from(MAX_OUTPUT_CHAIN).unwrap();
    assert!(matches!(
        fx.output(&[(DATA, max, R)]).0,
        Err(Fault::OutOfMemory { .. })
    ));
}

#[test]
fn chains_that_do_not_end_are_dropped() {
    let fx = Fx::new();
    // A loop.
    let r = fx.output_raw(&[raw(DATA, 4, R | NEXT, 1), raw(DATA, 4, R | NEXT, 0)]);
    assert_eq!(r, Err(Fault::BadChain));
    // A next index past the queue.
    let r = fx.output_raw(&[raw(DATA, 4, R | NEXT, 200)]);
    assert_eq!(r, Err(Fault::BadChain));
    // An indirect table outside guest memory.
    let r = fx.output_raw(&[raw(OUTSIDE, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
    assert_eq!(r, Err(Fault::BadChain));
}

#[test]
fn too_many_descriptors_are_dropped() {
    let fx = Fx::new();
    let n = MAX_DESCRIPTORS + 1;
    for i in 0..n {
        let last = i + 1 == n;
        let d = raw(
            DATA,
            1,
            if last { R } else { R | NEXT },
            if last { 0 } else { (i + 1) as u16 },
        );
        fx.mem
            .write_obj(d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let r = fx.output_raw(&[raw(
        INDIRECT,
        (16 * n) as u32,
        VRING_DESC_F_INDIRECT as u16,
        0,
    )]);
    assert_eq!(r, Err(Fault::TooManyDescriptors(n)));
}

// ---- receiveq chains ----

#[test]
fn input_fills_writable_buffers_in_order() {
    let fx = Fx::new();
    fx.put(DATA, &[0xee; 0x200]);
    let mut input = input_of(b"hello world");
    let used = fx.input(&[(DATA, 4, W), (DATA + 0x100, 100, W)], &mut input);
    assert_eq!(used, Ok(11));
    assert!(input.is_empty());
    assert_eq!(fx.get(DATA, 5), b"hell\xee");
    assert_eq!(fx.get(DATA + 0x100, 8), b"o world\xee");
}

#[test]
fn input_longer_than_the_buffers_waits_for_the_next_chain() {
    let fx = Fx::new();
    let mut input = input_of(b"0123456789");
    assert_eq!(fx.input(&[(DATA, 4, W)], &mut input), Ok(4));
    assert_eq!(input.len(), 6);
    assert_eq!(fx.input(&[(DATA + 0x10, 100, W)], &mut input), Ok(6));
    assert_eq!(fx.get(DATA, 4), b"0123");
    assert_eq!(fx.get(DATA + 0x10, 6), b"456789");
}

#[test]
fn malformed_receive_chains_take_no_input() {
    let fx = Fx::new();
    fx.put(DATA, &[0xee; 16]);
    let cases: [(Parts, Fault); 4] = [
        (&[(DATA, 16, R)], Fault::WrongDirection),
        (&[(DATA, 8, W), (DATA + 8, 8, R)], Fault::WrongDirection),
        (&[(DATA, 0, W)], Fault::Empty),
        (
            &[(DATA, 8, W), (OUTSIDE, 8, W)],
            Fault::OutOfMemory {
                addr: OUTSIDE,
                len: 8,
            },
        ),
    ];
    for (parts, fault) in cases {
        let mut input = input_of(b"abc");
        assert_eq!(fx.input(parts, &mut input), Err(fault), "{parts:?}");
        assert_eq!(input.len(), 3);
        assert_eq!(fx.get(DATA, 16), [0xee; 16], "guest memory untouched");
    }
}

// ---- whole queues ----

const TX_BASE: u64 = 0x4000;

fn ctx<'a>(mem: &'a GuestMemoryAtomic<GuestMem>, event_idx: bool, m: &'a Metrics) -> Ctx<'a> {
    Ctx {
        mem,
        event_idx,
        metrics: m,
    }
}

#[test]
fn transmitq_is_drained_bad_chains_dropped_and_counted() {
    for event_idx in [false, true] {
        let mem = guest_memory(MEM_SIZE as usize);
        let metrics = Metrics::default();
        let mut ring = Ring::new(&mem, TX_BASE, event_idx);
        ring.fill(DATA, b"first ");
        ring.fill(DATA + 0x100, b"NOT THIS");
        ring.fill(DATA + 0x200, b"second\n");
        let a = ring.chain(&[(DATA, 6, R)]);
        let bad = ring.chain(&[(DATA + 0x100, 8, W)]);
        let oom = ring.chain(&[(OUTSIDE, 8, R)]);
        let b = ring.chain(&[(DATA + 0x200, 7, R)]);
        ring.want_signal();
        let mut got = Vec::new();
        ctx(&mem, event_idx, &metrics).drain_output(&ring.vring, &mut Vec::new(), &mut |bytes| {
            got.extend_from_slice(bytes)
        });
        assert_eq!(got, b"first second\n");
        let used: Vec<_> = [a, bad, oom, b]
            .iter()
            .map(|&h| (u32::from(h), 0))
            .collect();
        assert_eq!(ring.used(), used, "every chain returned, length 0");
        assert!(ring.signalled(), "event_idx={event_idx}");
        if event_idx {
            assert_eq!(ring.avail_event(), 4, "kick me at the next chain");
        }
        assert_eq!(Metrics::get(&metrics.tx_chains), 4);
        assert_eq!(Metrics::get(&metrics.tx_bytes), 13);
        assert_eq!(Metrics::get(&metrics.wrong_direction), 1);
        assert_eq!(Metrics::get(&metrics.out_of_memory), 1);

        // The next kick is served as usual.
        ring.fill(DATA, b"third");
        let c = ring.chain(&[(DATA, 5, R)]);
        ring.want_signal();
        got.clear();
        ctx(&mem, event_idx, &metrics).drain_output(&ring.vring, &mut Vec::new(), &mut |bytes| {
            got.extend_from_slice(bytes)
        });
        assert_eq!(got, b"third");
        assert_eq!(ring.used(), vec![(u32::from(c), 0)]);
        assert!(ring.signalled());
    }
}

#[test]
fn receiveq_gets_pending_input_as_buffers_come() {
    for event_idx in [false, true] {
        let mem = guest_memory(MEM_SIZE as usize);
        let metrics = Metrics::default();
        let mut ring = Ring::new(&mem, 0, event_idx);
        let mut input = input_of(b"typed");
        // No buffers yet: the input waits, and the guest is asked to kick on its next one.
        ctx(&mem, event_idx, &metrics).fill_input(&ring.vring, &mut input);
        assert_eq!(input.len(), 5);
        assert!(ring.used().is_empty());
        if event_idx {
            assert_eq!(ring.avail_event(), 0);
        }
        let a = ring.chain(&[(DATA, 3, W)]);
        let b = ring.chain(&[(DATA + 0x100, 64, W)]);
        let idle = ring.chain(&[(DATA + 0x200, 64, W)]);
        ring.want_signal();
        ctx(&mem, event_idx, &metrics).fill_input(&ring.vring, &mut input);
        assert!(input.is_empty());
        assert_eq!(ring.used(), vec![(u32::from(a), 3), (u32::from(b), 2)]);
        assert_eq!(ring.bytes(DATA, 3), b"typ");
        assert_eq!(ring.bytes(DATA + 0x100, 2), b"ed");
        assert!(ring.signalled());
        // The third buffer stays posted for later input.
        input.push(b"!");
        ctx(&mem, event_idx, &metrics).fill_input(&ring.vring, &mut input);
        assert_eq!(ring.used(), vec![(u32::from(idle), 1)]);
        assert_eq!(Metrics::get(&metrics.rx_chains), 3);
        assert_eq!(Metrics::get(&metrics.rx_bytes), 6);
    }
}

#[test]
fn malformed_receive_chain_is_returned_and_the_next_one_used() {
    let mem = guest_memory(MEM_SIZE as usize);
    let metrics = Metrics::default();
    let mut ring = Ring::new(&mem, 0, true);
    let bad = ring.chain(&[(DATA, 8, R)]);
    let good = ring.chain(&[(DATA + 0x100, 8, W)]);
    let mut input = input_of(b"ok");
    ctx(&mem, true, &metrics).fill_input(&ring.vring, &mut input);
    assert_eq!(ring.used(), vec![(u32::from(bad), 0), (u32::from(good), 2)]);
    assert_eq!(Metrics::get(&metrics.wrong_direction), 1);
}

#[test]
fn queue_not_ready_takes_nothing() {
    let mem = guest_memory(MEM_SIZE as usize);
    let metrics = Metrics::default();
    let mut ring = Ring::new(&mem, 0, false);
    ring.chain(&[(DATA, 8, W)]);
    ring.vring.set_enabled(false);
    let mut input = input_of(b"x");
    ctx(&mem, false, &metrics).fill_input(&ring.vring, &mut input);
    assert_eq!(input.len(), 1);
    assert!(ring.used().is_empty());
}

#[test]
fn broken_rings_do_not_spin_or_panic() {
    let mem = guest_memory(MEM_SIZE as usize);
    let metrics = Metrics::default();
    // The available rings lie outside guest memory.
    let vring = VringRwLock::new(mem.clone(), 16).unwrap();
    vring.set_queue_size(16);
    vring.set_queue_info(0, 0x4000_0000, 0x2000).unwrap();
    vring.set_queue_event_idx(true);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let mut input = input_of(b"x");
    ctx(&mem, true, &metrics).fill_input(&vring, &mut input);
    ctx(&mem, true, &metrics).drain_output(&vring, &mut Vec::new(), &mut |_| {
        panic!("no output from a broken ring")
    });
    assert!(Metrics::get(&metrics.ring_errors) >= 2);
    assert_eq!(input.len(), 1);
}
