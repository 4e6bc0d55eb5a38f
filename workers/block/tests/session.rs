//! Smoke test under the real filter: the `ward-block` binary, its seccomp filter in enforce mode
//! (kill on violation), driven through a whole vhost-user session by a real
//! `vhost::vhost_user::Frontend` and a hand-written split-queue driver over shared memfd memory:
//! negotiation, configuration space, memory table, one queue, valid and malformed requests,
//! stopping the queue, disconnecting. The worker must exit 0 and never die by SIGSYS, and every
//! thread of it must run under exactly one filter. The same session with `--seccomp off` is
//! the sandbox-off twin: if only the enforce run fails, the policy lacks a syscall.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Worker;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use ward_worker::dev::{self, SplitRing};

const QSIZE: u16 = 256;
const MEM_SIZE: usize = 2 << 20;
/// Queue layout in guest-physical memory: descriptors at 0, then the available ring at
/// 0x1000 and the used ring at 0x2000.
const DESC: u64 = 0;
/// Request buffers.
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_1000;
const DATA: u64 = 0x2_0000;
const INDIRECT: u64 = 0x8_0000;
/// Image: 1 MiB and a partial sector, which the disk leaves out.
const IMAGE_LEN: u64 = (1 << 20) + 100;
const SECTORS: u64 = 2048;

const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// The driver half of the queue, in memory shared with the worker.
struct Driver {
    mem: GuestMemoryMmap<()>,
    ring: SplitRing,
}

/// One completed chain: its head and used length, and the status byte at `STATUS + head`.
#[derive(Debug, PartialEq, Eq)]
struct Done {
    head: u16,
    len: u32,
}

impl Driver {
    /// Places a chain of (addr, len, flags) parts, linked in order; returns its head.
    fn chain(&mut self, parts: &[(u64, u32, u16)]) -> u16 {
        self.ring.chain(&self.mem, parts)
    }

    /// Places descriptors exactly as given (index, addr, len, flags, next), publishes `head`.
    fn raw(&mut self, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        for &(i, addr, len, flags, next) in descs {
            self.ring.desc(&self.mem, i, addr, len, flags, next);
        }
        self.ring.publish(&self.mem, head);
    }

    /// Asks for a signal at the next completion (EVENT_IDX), kicks, and waits until the device
    /// has used everything published.
    fn kick_and_wait(&mut self) -> Vec<Done> {
        self.ring.kick(&self.mem);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut signalled = false;
        loop {
            let used = self.ring.used_idx(&self.mem);
            if used == self.ring.avail_idx && signalled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "device used {used} of {} chains (signalled: {signalled})",
                self.ring.avail_idx
            );
            match self.ring.call.read() {
                Ok(_) => signalled = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("reading the call eventfd: {e}"),
            }
        }
        let mut done = Vec::new();
        while self.ring.used_seen != self.ring.avail_idx {
            let (id, len) = self.ring.next_used(&self.mem);
            done.push(Done {
                head: u16::try_from(id).unwrap(),
                len,
            });
        }
        done
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn byte(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

/// Connects, negotiates, shares memory and starts queue 0. Returns the frontend, the driver,
/// the features the device offered, and a second handle on the socket.
fn connect(w: &Worker) -> (Frontend, Driver, u64, UnixStream) {
    let stream = UnixStream::connect(&w.socket).expect("connect");
    let raw = stream.try_clone().unwrap();
    let mut fe = Frontend::from_stream(stream, 1);
    let features = dev::negotiate(&mut fe);
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    fe.set_features(features).unwrap();

    let (mem, host) = dev::share_memory(&mut fe, MEM_SIZE);
    let ring = SplitRing::new(DESC, QSIZE);
    ring.start(&mut fe, 0, host);
    (fe, Driver { mem, ring }, features, raw)
}

fn image() -> File {
    let f = common::memfd(c"disk", IMAGE_LEN);
    let pattern: Vec<u8> = (0..IMAGE_LEN).map(|i| (i % 253) as u8).collect();
    f.write_all_at(&pattern, 0).unwrap();
    f
}

fn check_config(fe: &mut Frontend) {
    let size = std::mem::size_of::<virtio_bindings::virtio_blk::virtio_blk_config>() as u32;
    let (_, cfg) = fe
        .get_config(
            0,
            size,
            VhostUserConfigFlags::WRITABLE,
            &vec![0; size as usize],
        )
        .unwrap();
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), SECTORS);
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(cfg[34..36].try_into().unwrap()), 1);
    let (_, blk) = fe
        .get_config(20, 4, VhostUserConfigFlags::WRITABLE, &[0; 4])
        .unwrap();
    assert_eq!(blk, 512u32.to_le_bytes());
}

/// VHOST_USER_GET_CONFIG sent by hand on `sock` (a second handle on the frontend's stream, used
/// while the frontend is idle): `vhost::Frontend` waits forever for the payload of the
/// zero-length error reply a backend gives to a window past the end of the configuration
/// space, so that case cannot be driven through it. Returns the reply's size field and payload.
fn raw_get_config(sock: &mut UnixStream, offset: u32, size: u32) -> (u32, Vec<u8>) {
    const GET_CONFIG: u32 = 24;
    const VERSION_1: u32 = 0x1;
    const REPLY: u32 = 0x4;
    let mut msg = Vec::new();
    for v in [GET_CONFIG, VERSION_1, 12 + size, offset, size, 0] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.resize(msg.len() + size as usize, 0);
    sock.write_all(&msg).unwrap();
    let mut hdr = [0u8; 24];
    sock.read_exact(&mut hdr).unwrap();
    let word = |i: usize| u32::from_le_bytes(hdr[4 * i..4 * i + 4].try_into().unwrap());
    assert_eq!(word(0), GET_CONFIG);
    assert_eq!(word(1), VERSION_1 | REPLY);
    assert_eq!(word(3), offset);
    let mut payload = vec![0u8; word(2) as usize - 12];
    sock.read_exact(&mut payload).unwrap();
    assert_eq!(word(4) as usize, payload.len());
    (word(4), payload)
}

/// Valid I/O: GET_ID, write, read back, flush, an indirect chain; several chains per kick.
fn valid_requests(d: &mut Driver, image: &File) {
    let st = |h: u16| STATUS + u64::from(h);

    d.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
    let h = d.chain(&[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]);
    d.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(d.kick_and_wait(), vec![Done { head: h, len: 21 }]);
    assert_eq!(d.byte(STATUS), VIRTIO_BLK_S_OK as u8);
    let mut id = b"ward-test-serial".to_vec();
    id.resize(20, 0);
    assert_eq!(d.bytes(DATA, 20), id);

    // Write 8 sectors at sector 10, then read them back into another buffer.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    d.header(HDR, VIRTIO_BLK_T_OUT, 10);
    let hw = d.chain(&[(HDR, 16, R), (DATA, 4096, R), (st(0x10), 1, W)]);
    assert_eq!(d.kick_and_wait(), vec![Done { head: hw, len: 1 }]);
    assert_eq!(d.byte(st(0x10)), VIRTIO_BLK_S_OK as u8);
    let mut on_disk = vec![0u8; 4096];
    image.read_exact_at(&mut on_disk, 10 * 512).unwrap();
    assert_eq!(on_disk, pattern);

    d.header(HDR + 0x100, VIRTIO_BLK_T_IN, 10);
    d.header(HDR + 0x200, VIRTIO_BLK_T_FLUSH, 0);
    let hr = d.chain(&[
        (HDR + 0x100, 16, R),
        (DATA + 0x4000, 1024, W),
        (DATA + 0x8000, 3072, W),
        (st(0x20), 1, W),
    ]);
    let hf = d.chain(&[(HDR + 0x200, 16, R), (st(0x21), 1, W)]);
    assert_eq!(
        d.kick_and_wait(),
        vec![
            Done {
                head: hr,
                len: 4097
            },
            Done { head: hf, len: 1 }
        ]
    );
    assert_eq!(d.byte(st(0x20)), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.byte(st(0x21)), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.bytes(DATA + 0x4000, 1024), pattern[..1024]);
    assert_eq!(d.bytes(DATA + 0x8000, 3072), pattern[1024..]);

    // An indirect chain reading the last whole sector.
    d.header(HDR + 0x300, VIRTIO_BLK_T_IN, SECTORS - 1);
    let table = [
        (HDR + 0x300, 16u32, R | NEXT, 1u16),
        (DATA + 0xc000, 512, W | NEXT, 2),
        (st(0x30), 1, W, 0),
    ];
    for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
        let at = INDIRECT + 16 * i as u64;
        d.mem.write_obj(addr, GuestAddress(at)).unwrap();
        d.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        d.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        d.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    let hi = d.chain(&[(INDIRECT, 48, VRING_DESC_F_INDIRECT as u16)]);
    assert_eq!(d.kick_and_wait(), vec![Done { head: hi, len: 513 }]);
    assert_eq!(d.byte(st(0x30)), VIRTIO_BLK_S_OK as u8);
    let mut last = vec![0u8; 512];
    image.read_exact_at(&mut last, (SECTORS - 1) * 512).unwrap();
    assert_eq!(d.bytes(DATA + 0xc000, 512), last);
}

/// Hostile chains: each is answered (or completed without status) and the worker lives on.
fn malformed_requests(d: &mut Driver) {
    let st = |n: u64| STATUS + 0x100 + n;
    for n in 0..16 {
        d.mem.write_obj(0xeeu8, GuestAddress(st(n))).unwrap();
    }
    d.header(HDR + 0x400, VIRTIO_BLK_T_IN, SECTORS); // past the end
    d.header(HDR + 0x500, 0x4242, 0); // unknown type
    d.header(HDR + 0x600, VIRTIO_BLK_T_OUT, 0); // write, data not whole sectors
    d.header(HDR + 0x700, VIRTIO_BLK_T_IN, u64::MAX); // sector * 512 overflows
    let heads = [
        d.chain(&[(HDR + 0x400, 16, R), (DATA, 512, W), (st(0), 1, W)]),
        d.chain(&[(HDR + 0x500, 16, R), (DATA, 512, W), (st(1), 1, W)]),
        d.chain(&[(HDR + 0x600, 16, R), (DATA, 100, R), (st(2), 1, W)]),
        d.chain(&[(HDR + 0x700, 16, R), (DATA, 512, W), (st(3), 1, W)]),
        // Short header.
        d.chain(&[(HDR, 8, R), (DATA, 512, W), (st(4), 1, W)]),
        // Data buffer outside guest memory, and one wrapping the address space.
        d.chain(&[(HDR + 0x100, 16, R), (0x4000_0000, 512, W), (st(5), 1, W)]),
        d.chain(&[
            (HDR + 0x100, 16, R),
            (u64::MAX - 100, 512, W),
            (st(6), 1, W),
        ]),
        // No status byte: ends with a readable descriptor.
        d.chain(&[(HDR + 0x200, 16, R)]),
        // Status descriptor outside guest memory.
        d.chain(&[(HDR + 0x200, 16, R), (0x4000_0000, 1, W)]),
        // Indirect table outside guest memory.
        d.chain(&[(0x4000_0000, 48, VRING_DESC_F_INDIRECT as u16)]),
    ];
    let done = d.kick_and_wait();
    let expect = [
        (1, VIRTIO_BLK_S_IOERR),
        (1, VIRTIO_BLK_S_UNSUPP),
        (1, VIRTIO_BLK_S_IOERR),
        (1, VIRTIO_BLK_S_IOERR),
        (1, VIRTIO_BLK_S_IOERR),
        (1, VIRTIO_BLK_S_IOERR),
        (1, VIRTIO_BLK_S_IOERR),
        (0, 0xee),
        (0, 0xee),
        (0, 0xee),
    ];
    assert_eq!(done.len(), heads.len());
    for (i, ((d_, &h), &(len, status))) in done.iter().zip(&heads).zip(&expect).enumerate() {
        assert_eq!(*d_, Done { head: h, len }, "chain {i}");
        if len > 0 {
            assert_eq!(d.byte(st(i as u64)), status as u8, "chain {i}");
        }
    }

    // A loop, and a next index past the queue: no end, so no status, but completed.
    let base = 200;
    d.raw(
        &[
            (base, HDR + 0x100, 16, R | NEXT, base + 1),
            (base + 1, DATA, 512, W | NEXT, base + 2),
            (base + 2, st(10), 1, W | NEXT, base),
        ],
        base,
    );
    d.raw(
        &[
            (base + 3, HDR + 0x100, 16, R | NEXT, base + 4),
            (base + 4, st(11), 1, W | NEXT, 999),
        ],
        base + 3,
    );
    assert_eq!(
        d.kick_and_wait(),
        vec![
            Done { head: base, len: 0 },
            Done {
                head: base + 3,
                len: 0
            }
        ]
    );
    assert_eq!(d.byte(st(10)), 0xee);
    assert_eq!(d.byte(st(11)), 0xee);
}

/// The whole session; returns the worker's stderr after it exited.
fn session(seccomp: &str) {
    let img = image();
    let mut w = Worker::start(
        &img,
        &["--seccomp", seccomp, "--serial", "ward-test-serial"],
    );
    let (mut fe, mut d, features, mut raw) = connect(&w);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    check_config(&mut fe);
    // Windows past the end of the configuration space get the zero-length error reply.
    let size = std::mem::size_of::<virtio_bindings::virtio_blk::virtio_blk_config>() as u32;
    assert_eq!(raw_get_config(&mut raw, size - 4, 8), (0, vec![]));
    assert_eq!(raw_get_config(&mut raw, 0xff0, 8), (0, vec![]));
    let (n, all) = raw_get_config(&mut raw, 0, size);
    assert_eq!((n, all.len()), (size, size as usize));

    valid_requests(&mut d, &img);
    dev::assert_confined(w.pid(), seccomp == "enforce");
    malformed_requests(&mut d);
    // Still alive and still serving.
    valid_requests(&mut d, &img);

    // Stop the queue as a driver reset does: the device reports where it stopped.
    fe.set_vring_enable(0, false).unwrap();
    assert_eq!(fe.get_vring_base(0).unwrap(), u32::from(d.ring.avail_idx));
    dev::assert_confined(w.pid(), seccomp == "enforce");

    // Disconnect: the worker's session ends and it exits.
    drop(fe);
    drop(raw);
    let log = w.finish_clean();
    // The metrics dump counts what happened.
    dev::assert_counters(
        &log,
        &[
            "\"writes\":2",
            "\"flushes\":2",
            "\"unsupported\":1",
            "\"bad_chain\":3",
        ],
    );
}

#[test]
fn full_session_under_enforced_filter() {
    session("enforce");
}

#[test]
fn full_session_without_filter() {
    session("off");
}

#[test]
fn readonly_disk_refuses_writes_over_vhost_user() {
    let img = image();
    let mut w = Worker::start(&img, &["--readonly"]);
    let (fe, mut d, features, _) = connect(&w);
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    d.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    d.header(HDR, VIRTIO_BLK_T_OUT, 0);
    d.header(HDR + 0x100, VIRTIO_BLK_T_FLUSH, 0);
    d.header(HDR + 0x200, VIRTIO_BLK_T_IN, 0);
    let hw = d.chain(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    let hf = d.chain(&[(HDR + 0x100, 16, R), (STATUS + 1, 1, W)]);
    let hr = d.chain(&[
        (HDR + 0x200, 16, R),
        (DATA + 0x1000, 512, W),
        (STATUS + 2, 1, W),
    ]);
    assert_eq!(
        d.kick_and_wait(),
        vec![
            Done { head: hw, len: 1 },
            Done { head: hf, len: 1 },
            Done { head: hr, len: 513 }
        ]
    );
    assert_eq!(d.byte(STATUS), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.byte(STATUS + 1), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.byte(STATUS + 2), VIRTIO_BLK_S_OK as u8);
    let mut first = vec![0u8; 512];
    img.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(
        first,
        (0..512u64).map(|i| (i % 253) as u8).collect::<Vec<_>>()
    );
    assert_eq!(d.bytes(DATA + 0x1000, 512), first);
    drop(fe);
    let (st, log) = w.finish(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "log:\n{log}");
}
