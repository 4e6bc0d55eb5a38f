//! Unit tests of request parsing and execution: chains placed by a mock driver
//! (`virtio_queue::mock`) in plain guest memory, served against a memfd image.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

const QUEUE_SIZE: u16 = 16;
const MEM_SIZE: u64 = 0x10_0000;
const HDR: u64 = 0x1000;
const STATUS: u64 = 0x1100;
const DATA: u64 = 0x2000;
const INDIRECT: u64 = 0x8000;
/// Address past the end of guest memory.
const OUTSIDE: u64 = 0x20_0000;
/// Sectors of the test image.
const SECTORS: u64 = 16;
/// Byte the tests fill buffers with, to see whether the device wrote them.
const SENTINEL: u8 = 0xa5;

const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(
        c"ward-block-test",
        nix::sys::memfd::MemFdCreateFlag::empty(),
    )
    .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("set_len");
    f
}

fn image_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

struct Fx {
    mem: GuestMem,
    image: File,
    disk: Disk,
    metrics: Metrics,
}

impl Fx {
    fn new(readonly: bool) -> Fx {
        Self::with_memory(readonly, &[(GuestAddress(0), MEM_SIZE as usize)])
    }

    fn with_memory(readonly: bool, ranges: &[(GuestAddress, usize)]) -> Fx {
        let mem = GuestMemoryMmap::<()>::from_ranges(ranges).unwrap();
        let image = memfd(SECTORS * 512);
        let pattern: Vec<u8> = (0..SECTORS * 512).map(image_byte).collect();
        image.write_all_at(&pattern, 0).unwrap();
        let disk = Disk::new(image.try_clone().unwrap(), readonly, "vda").unwrap();
        let fx = Fx {
            mem,
            image,
            disk,
            metrics: Metrics::default(),
        };
        fx.fill(DATA, 0x4000, SENTINEL);
        fx.fill(STATUS, 1, SENTINEL);
        fx
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .unwrap();
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Serves descriptors stored as given (flags and next as written), head at index 0.
    fn run_raw(&self, descs: &[RawDescriptor]) -> Completion {
        let vq = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
        let chain = vq.build_multiple_desc_chains(descs).unwrap();
        process(&self.mem, chain, &self.disk, &self.metrics)
    }

    /// Serves a chain of (addr, len, flags) parts linked in order.
    fn run(&self, parts: &[(u64, u32, u16)]) -> Completion {
        let vq = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
        let descs: Vec<RawDescriptor> = parts.iter().map(|&(a, l, f)| raw(a, l, f, 0)).collect();
        let chain = vq.build_desc_chain(&descs).unwrap();
        process(&self.mem, chain, &self.disk, &self.metrics)
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn image(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.image.read_exact_at(&mut v, offset).unwrap();
        v
    }

    fn count(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Asserts a chain was answered with `status` and length 1, and left the data alone.
    fn assert_rejected(&self, c: Completion, status: u8) {
        assert_eq!(c.used_len, 1, "{c:?}");
        assert_eq!(self.status(), status);
        assert!(self.guest(DATA, 0x4000).iter().all(|&b| b == SENTINEL));
    }

    /// Asserts a chain was completed without a status byte.
    fn assert_no_status(&self, c: Completion) {
        assert_eq!(
            c,
            Completion {
                head: 0,
                used_len: 0
            }
        );
        assert_eq!(self.status(), SENTINEL);
        assert!(self.guest(DATA, 0x4000).iter().all(|&b| b == SENTINEL));
    }
}

fn expected(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64).map(image_byte).collect()
}

// ---- valid requests ----

#[test]
fn read_fills_data_and_reports_its_length() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 2);
    let c = fx.run(&[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)]);
    assert_eq!(
        c,
        Completion {
            head: 0,
            used_len: 1025
        }
    );
    assert_eq!(fx.status(), S_OK);
    assert_eq!(fx.guest(DATA, 1024), expected(1024, 1024));
    assert_eq!(fx.count(&fx.metrics.reads), 1);
    assert_eq!(fx.count(&fx.metrics.read_bytes), 1024);
}

#[test]
fn read_scatters_over_several_buffers() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run(&[
        (HDR, 16, R),
        (DATA + 0x1000, 512, W),
        (DATA, 1024, W),
        (STATUS, 1, W),
    ]);
    assert_eq!(c.used_len, 1537);
    assert_eq!(fx.status(), S_OK);
    assert_eq!(fx.guest(DATA + 0x1000, 512), expected(0, 512));
    assert_eq!(fx.guest(DATA, 1024), expected(512, 1024));
}

#[test]
fn last_whole_sector_is_readable() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, SECTORS - 1);
    let c = fx.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    assert_eq!(c.used_len, 513);
    assert_eq!(fx.status(), S_OK);
    assert_eq!(fx.guest(DATA, 512), expected((SECTORS - 1) * 512, 512));
}

#[test]
fn write_lands_in_the_image() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_OUT, 3);
    fx.fill(DATA, 512, 0x11);
    fx.fill(DATA + 512, 512, 0x22);
    let c = fx.run(&[(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)]);
    assert_eq!(
        c,
        Completion {
            head: 0,
            used_len: 1
        }
    );
    assert_eq!(fx.status(), S_OK);
    assert_eq!(fx.image(3 * 512, 512), vec![0x11; 512]);
    assert_eq!(fx.image(4 * 512, 512), vec![0x22; 512]);
    assert_eq!(fx.image(5 * 512, 512), expected(5 * 512, 512));
    assert_eq!(fx.count(&fx.metrics.write_bytes), 1024);
}

#[test]
fn flush_succeeds_also_on_a_readonly_disk() {
    for ro in [false, true] {
        let fx = Fx::new(ro);
        fx.header(VIRTIO_BLK_T_FLUSH, 0);
        let c = fx.run(&[(HDR, 16, R), (STATUS, 1, W)]);
        assert_eq!(c.used_len, 1);
        assert_eq!(fx.status(), S_OK);
        assert_eq!(fx.count(&fx.metrics.flushes), 1);
    }
}

#[test]
fn get_id_answers_the_name_zero_padded() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_GET_ID, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]);
    assert_eq!(c.used_len, 21);
    assert_eq!(fx.status(), S_OK);
    let mut want = b"vda".to_vec();
    want.resize(20, 0);
    assert_eq!(fx.guest(DATA, 20), want);
    assert_eq!(fx.guest(DATA + 20, 1), vec![SENTINEL]);
}

#[test]
fn get_id_is_cut_to_a_short_buffer() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_GET_ID, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 2, W), (STATUS, 1, W)]);
    assert_eq!(c.used_len, 3);
    assert_eq!(fx.guest(DATA, 3), vec![b'v', b'd', SENTINEL]);
}

#[test]
fn header_split_over_two_descriptors_is_served() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 1);
    let c = fx.run(&[
        (HDR, 5, R),
        (HDR + 5, 11, R),
        (DATA, 512, W),
        (STATUS, 1, W),
    ]);
    assert_eq!(c.used_len, 513);
    assert_eq!(fx.status(), S_OK);
    assert_eq!(fx.guest(DATA, 512), expected(512, 512));
}

#[test]
fn data_and_status_in_one_descriptor_are_served() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 1);
    // 512 bytes of data followed by the status byte, all in one buffer.
    let c = fx.run(&[(HDR, 16, R), (DATA, 513, W)]);
    assert_eq!(c.used_len, 513);
    assert_eq!(fx.guest(DATA, 512), expected(512, 512));
    assert_eq!(fx.guest(DATA + 512, 1), vec![S_OK]);
}

#[test]
fn indirect_chain_is_served() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 4);
    let table = [
        raw(HDR, 16, R | NEXT, 1),
        raw(DATA, 512, W | NEXT, 2),
        raw(STATUS, 1, W, 0),
    ];
    for (i, d) in table.iter().enumerate() {
        fx.mem
            .write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let c = fx.run_raw(&[raw(INDIRECT, 48, VRING_DESC_F_INDIRECT as u16, 0)]);
    assert_eq!(c.used_len, 513);
    assert_eq!(fx.status(), S_OK);
    assert_eq!(fx.guest(DATA, 512), expected(4 * 512, 512));
}

#[test]
fn data_may_span_two_adjacent_memory_regions() {
    let fx = Fx::with_memory(
        false,
        &[
            (GuestAddress(0), MEM_SIZE as usize),
            (GuestAddress(MEM_SIZE), MEM_SIZE as usize),
        ],
    );
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run(&[(HDR, 16, R), (MEM_SIZE - 512, 1024, W), (STATUS, 1, W)]);
    assert_eq!(c.used_len, 1025);
    assert_eq!(fx.status(), S_OK);
    assert_eq!(fx.guest(MEM_SIZE - 512, 1024), expected(0, 1024));
}

// ---- requests the disk refuses ----

#[test]
fn reads_past_the_end_fail() {
    for (sector, len) in [
        (SECTORS, 512),
        (SECTORS - 1, 1024),
        (u64::MAX / 512, 1024),
        (u64::MAX, 512),
    ] {
        let fx = Fx::new(false);
        fx.header(VIRTIO_BLK_T_IN, sector);
        let c = fx.run(&[(HDR, 16, R), (DATA, len, W), (STATUS, 1, W)]);
        fx.assert_rejected(c, S_IOERR);
        assert_eq!(fx.count(&fx.metrics.out_of_range), 1);
    }
}

#[test]
fn writes_past_the_end_fail_and_leave_the_image_alone() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_OUT, SECTORS - 1);
    let c = fx.run(&[(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
    assert_eq!(
        fx.image(0, (SECTORS * 512) as usize),
        expected(0, (SECTORS * 512) as usize)
    );
}

#[test]
fn readonly_disk_refuses_writes() {
    let fx = Fx::new(true);
    fx.header(VIRTIO_BLK_T_OUT, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
    assert_eq!(fx.image(0, 512), expected(0, 512));
    assert_eq!(fx.count(&fx.metrics.readonly), 1);
    // Reads still work.
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    assert_eq!(c.used_len, 513);
    assert_eq!(fx.status(), S_OK);
}

#[test]
fn unknown_types_are_unsupported() {
    for kind in [2, 14, 42, u32::MAX] {
        let fx = Fx::new(false);
        fx.header(kind, 0);
        let c = fx.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        fx.assert_rejected(c, S_UNSUPP);
        assert_eq!(fx.count(&fx.metrics.unsupported), 1);
    }
}

// ---- malformed chains that still have a status byte ----

#[test]
fn short_header_is_an_error() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run(&[(HDR, 15, R), (DATA, 512, W), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
    assert_eq!(fx.count(&fx.metrics.bad_header), 1);
    // No readable descriptor at all.
    let c = fx.run(&[(DATA, 512, W), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
}

#[test]
fn data_must_be_whole_sectors() {
    for len in [1, 100, 511, 513] {
        let fx = Fx::new(false);
        fx.header(VIRTIO_BLK_T_IN, 0);
        let c = fx.run(&[(HDR, 16, R), (DATA, len, W), (STATUS, 1, W)]);
        fx.assert_rejected(c, S_IOERR);
        fx.header(VIRTIO_BLK_T_OUT, 0);
        let c = fx.run(&[(HDR, 16, R), (DATA, len, R), (STATUS, 1, W)]);
        fx.assert_rejected(c, S_IOERR);
        assert_eq!(fx.count(&fx.metrics.bad_data), 2);
    }
}

#[test]
fn zero_length_data_is_an_error() {
    let fx = Fx::new(false);
    for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_GET_ID] {
        fx.header(kind, 0);
        let c = fx.run(&[(HDR, 16, R), (STATUS, 1, W)]);
        fx.assert_rejected(c, S_IOERR);
        let flag = if kind == VIRTIO_BLK_T_OUT { R } else { W };
        let c = fx.run(&[(HDR, 16, R), (DATA, 0, flag), (STATUS, 1, W)]);
        fx.assert_rejected(c, S_IOERR);
    }
    assert_eq!(fx.count(&fx.metrics.bad_data), 6);
}

#[test]
fn data_in_the_wrong_direction_is_an_error() {
    let fx = Fx::new(false);
    // A read whose data buffer is device-readable.
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
    // A write whose data buffer is device-writable.
    fx.header(VIRTIO_BLK_T_OUT, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
    // Flush and GET_ID with data to write.
    fx.header(VIRTIO_BLK_T_FLUSH, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
    fx.header(VIRTIO_BLK_T_GET_ID, 0);
    let c = fx.run(&[
        (HDR, 16, R),
        (DATA, 512, R),
        (DATA + 0x1000, 20, W),
        (STATUS, 1, W),
    ]);
    fx.assert_rejected(c, S_IOERR);
    assert_eq!(fx.count(&fx.metrics.bad_data), 4);
    assert_eq!(fx.image(0, 512), expected(0, 512));
}

#[test]
fn readable_after_writable_is_an_error() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run(&[
        (HDR, 16, R),
        (DATA, 512, W),
        (DATA + 0x1000, 16, R),
        (STATUS, 1, W),
    ]);
    fx.assert_rejected(c, S_IOERR);
    assert_eq!(fx.count(&fx.metrics.bad_order), 1);
}

#[test]
fn buffers_outside_guest_memory_are_an_error() {
    let cases: &[&[(u64, u32, u16)]] = &[
        // Data starts inside memory and runs off its end.
        &[(HDR, 16, R), (MEM_SIZE - 512, 1024, W), (STATUS, 1, W)],
        // Data entirely outside.
        &[(HDR, 16, R), (OUTSIDE, 512, W), (STATUS, 1, W)],
        // Data whose end wraps the address space.
        &[(HDR, 16, R), (u64::MAX - 255, 512, W), (STATUS, 1, W)],
        // A huge length.
        &[(HDR, 16, R), (DATA, 0xffff_fe00, W), (STATUS, 1, W)],
        // Header outside.
        &[(OUTSIDE, 16, R), (DATA, 512, W), (STATUS, 1, W)],
    ];
    for parts in cases {
        let fx = Fx::new(false);
        fx.header(VIRTIO_BLK_T_IN, 0);
        let c = fx.run(parts);
        fx.assert_rejected(c, S_IOERR);
        assert_eq!(fx.count(&fx.metrics.out_of_memory), 1, "{parts:?}");
    }
}

#[test]
fn data_crossing_into_a_hole_between_regions_is_an_error() {
    let fx = Fx::with_memory(
        false,
        &[
            (GuestAddress(0), MEM_SIZE as usize),
            (GuestAddress(3 * MEM_SIZE), MEM_SIZE as usize),
        ],
    );
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run(&[(HDR, 16, R), (MEM_SIZE - 512, 1024, W), (STATUS, 1, W)]);
    fx.assert_rejected(c, S_IOERR);
}

#[test]
fn too_many_descriptors_is_an_error() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    let n = MAX_DESCRIPTORS + 2;
    // An indirect table: header, n - 2 tiny data buffers, status.
    let mut table = vec![raw(HDR, 16, R | NEXT, 1)];
    for i in 1..n - 1 {
        table.push(raw(DATA, 512, W | NEXT, (i + 1) as u16));
    }
    table.push(raw(STATUS, 1, W, 0));
    for (i, d) in table.iter().enumerate() {
        fx.mem
            .write_obj(*d, GuestAddress(0x1_0000 + 16 * i as u64))
            .unwrap();
    }
    let c = fx.run_raw(&[raw(
        0x1_0000,
        (16 * n) as u32,
        VRING_DESC_F_INDIRECT as u16,
        0,
    )]);
    fx.assert_rejected(c, S_IOERR);
    assert_eq!(fx.count(&fx.metrics.too_many_descriptors), 1);
}

// ---- chains without a status byte ----

#[test]
fn chain_ending_in_a_readable_descriptor_gets_no_status() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_FLUSH, 0);
    fx.assert_no_status(fx.run(&[(HDR, 16, R)]));
    fx.header(VIRTIO_BLK_T_IN, 0);
    fx.assert_no_status(fx.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)]));
    assert_eq!(fx.count(&fx.metrics.no_status), 2);
}

#[test]
fn empty_or_unmapped_status_descriptor_gets_no_status() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    fx.assert_no_status(fx.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)]));
    fx.assert_no_status(fx.run(&[(HDR, 16, R), (DATA, 512, W), (OUTSIDE, 1, W)]));
    fx.assert_no_status(fx.run(&[(HDR, 16, R), (DATA, 512, W), (u64::MAX, 2, W)]));
}

#[test]
fn chain_loop_gets_no_status() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run_raw(&[
        raw(HDR, 16, R | NEXT, 1),
        raw(DATA, 512, W | NEXT, 2),
        raw(STATUS, 1, W | NEXT, 1),
    ]);
    fx.assert_no_status(c);
    assert_eq!(fx.count(&fx.metrics.bad_chain), 1);
}

#[test]
fn next_index_out_of_range_gets_no_status() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    let c = fx.run_raw(&[
        raw(HDR, 16, R | NEXT, 1),
        raw(DATA, 512, W | NEXT, 2),
        raw(STATUS, 1, W | NEXT, QUEUE_SIZE + 100),
    ]);
    fx.assert_no_status(c);
    assert_eq!(fx.count(&fx.metrics.bad_chain), 1);
}

#[test]
fn broken_indirect_tables_get_no_status() {
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_IN, 0);
    let ind = VRING_DESC_F_INDIRECT as u16;
    // Table outside guest memory.
    fx.assert_no_status(fx.run_raw(&[raw(OUTSIDE, 48, ind, 0)]));
    // Table length not a whole number of descriptors.
    fx.assert_no_status(fx.run_raw(&[raw(INDIRECT, 40, ind, 0)]));
    // Empty table.
    fx.assert_no_status(fx.run_raw(&[raw(INDIRECT, 0, ind, 0)]));
    // A table that points to another table.
    let table = [raw(HDR, 16, R | NEXT, 1), raw(INDIRECT + 0x100, 32, ind, 0)];
    for (i, d) in table.iter().enumerate() {
        fx.mem
            .write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    fx.mem
        .write_obj(raw(STATUS, 1, W, 0), GuestAddress(INDIRECT + 0x100))
        .unwrap();
    fx.assert_no_status(fx.run_raw(&[raw(INDIRECT, 32, ind, 0)]));
    // A table whose last entry points past its end.
    fx.mem
        .write_obj(raw(STATUS, 1, W | NEXT, 7), GuestAddress(INDIRECT + 16))
        .unwrap();
    fx.assert_no_status(fx.run_raw(&[raw(INDIRECT, 32, ind, 0)]));
    assert_eq!(fx.count(&fx.metrics.bad_chain), 5);
}

#[test]
fn head_index_out_of_range_is_completed_without_status() {
    let fx = Fx::new(false);
    let vq = MockSplitQueue::new(&fx.mem, QUEUE_SIZE);
    // The driver publishes head 200 in a queue of 16.
    fx.mem
        .write_obj(200u16, vq.avail_addr().unchecked_add(4))
        .unwrap();
    fx.mem
        .write_obj(1u16, vq.avail_addr().unchecked_add(2))
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let chain = q.iter(&fx.mem).unwrap().next().unwrap();
    let c = process(&fx.mem, chain, &fx.disk, &fx.metrics);
    assert_eq!(
        c,
        Completion {
            head: 200,
            used_len: 0
        }
    );
    // The caller cannot complete it either; the queue says so rather than panicking.
    assert!(q.add_used(&fx.mem, c.head, c.used_len).is_err());
}

// ---- DISCARD and WRITE_ZEROES ----

fn range_segment(fx: &Fx, sector: u64, sectors: u32, flags: u32) {
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&sector.to_le_bytes());
    seg[8..12].copy_from_slice(&sectors.to_le_bytes());
    seg[12..16].copy_from_slice(&flags.to_le_bytes());
    fx.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
}

#[test]
fn write_zeroes_and_discard_zero_their_range_only() {
    for (kind, flags) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, 0),
        (VIRTIO_BLK_T_WRITE_ZEROES, 1),
        (VIRTIO_BLK_T_DISCARD, 0),
    ] {
        let fx = Fx::new(false);
        fx.header(kind, 0);
        range_segment(&fx, 2, 3, flags);
        let c = fx.run(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]);
        assert_eq!(c.used_len, 1, "{kind} {flags}");
        assert_eq!(fx.status(), S_OK, "{kind} {flags}");
        assert_eq!(fx.image(0, 1024), expected(0, 1024), "before the range");
        assert!(
            fx.image(1024, 1536).iter().all(|&b| b == 0),
            "{kind} {flags}"
        );
        assert_eq!(fx.image(2560, 512), expected(2560, 512), "after the range");
    }
}

#[test]
fn bad_ranges_are_refused_and_touch_nothing() {
    let cases: [(u32, u64, u32, u32, u8); 6] = [
        (VIRTIO_BLK_T_WRITE_ZEROES, SECTORS - 1, 2, 0, S_IOERR), // past the end
        (VIRTIO_BLK_T_WRITE_ZEROES, u64::MAX / 2, 1, 0, S_IOERR), // offset overflow
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 0, 0, S_IOERR),           // empty
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 0x4, S_UNSUPP),        // reserved flag
        (VIRTIO_BLK_T_DISCARD, 0, 1, 1, S_UNSUPP),               // UNMAP on a discard
        (VIRTIO_BLK_T_DISCARD, 0, MAX_RANGE_SECTORS + 1, 0, S_IOERR),
    ];
    for (kind, sector, sectors, flags, status) in cases {
        let fx = Fx::new(false);
        fx.header(kind, 0);
        range_segment(&fx, sector, sectors, flags);
        let c = fx.run(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]);
        assert_eq!(c.used_len, 1);
        assert_eq!(fx.status(), status, "{kind} {sector} {sectors} {flags:#x}");
        assert_eq!(
            fx.image(0, (SECTORS * 512) as usize),
            expected(0, (SECTORS * 512) as usize)
        );
    }
    // Two segments (we offer one per request), a writable segment, and a read-only disk.
    let fx = Fx::new(false);
    fx.header(VIRTIO_BLK_T_DISCARD, 0);
    range_segment(&fx, 0, 1, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 32, R), (STATUS, 1, W)]);
    assert_eq!((c.used_len, fx.status()), (1, S_IOERR));
    fx.fill(STATUS, 1, SENTINEL);
    let c = fx.run(&[(HDR, 16, R), (DATA, 16, W), (STATUS, 1, W)]);
    assert_eq!((c.used_len, fx.status()), (1, S_IOERR));
    assert_eq!(fx.image(0, 512), expected(0, 512));
    let fx = Fx::new(true);
    fx.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    range_segment(&fx, 0, 1, 0);
    let c = fx.run(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]);
    assert_eq!(c.used_len, 1);
    assert_eq!(fx.status(), S_IOERR);
    assert_eq!(fx.image(0, 512), expected(0, 512));
}
