//! Smoke test under the real filter: the `ward-console` binary, its seccomp filter in enforce
//! mode (kill on violation), driven through a whole vhost-user session by a real
//! `vhost::vhost_user::Frontend` and a hand-written split-queue driver over shared memfd memory
//! (negotiation, configuration space, memory table, both queues, output, input, hostile chains,
//! log rotation, stopping the queues, disconnecting), while console clients attach, watch, take
//! over and time out on the attach socket. The worker must exit 0 and never die by SIGSYS, and
//! every thread of it must run under exactly one filter. The same session with `--seccomp off`
//! is the sandbox-off twin: if only the enforce run fails, the policy lacks a syscall.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Worker;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use ward_worker::dev::{self, SplitRing};

const QSIZE: u16 = 64;
const MEM_SIZE: usize = 2 << 20;
const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x4000;
const RX_DATA: u64 = 0x1_0000;
const TX_DATA: u64 = 0x2_0000;
const OUTSIDE: u64 = 0x4000_0000;
const LOG_MAX: usize = 4096;

const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;

/// The driver half of one split virtqueue: descriptors at `base`, available ring at
/// `base + 0x1000`, used ring at `base + 0x2000`.
struct Queue {
    mem: GuestMemoryMmap<()>,
    ring: SplitRing,
}

impl Queue {
    /// Places a chain of (addr, len, flags) parts, linked in order, and publishes it.
    fn chain(&mut self, parts: &[(u64, u32, u16)]) -> u16 {
        self.ring.chain(&self.mem, parts)
    }

    /// Asks for a signal at the next completion (EVENT_IDX) and kicks.
    fn kick(&self) {
        self.ring.kick(&self.mem);
    }

    /// Waits until `n` more chains were used and the device signalled; returns them as
    /// (head, used length).
    fn wait_used(&mut self, n: u16) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut signalled = false;
        loop {
            let used = self.ring.used_idx(&self.mem);
            if used.wrapping_sub(self.ring.used_seen) >= n && signalled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "device used {} of {n} chains (signalled: {signalled})",
                used.wrapping_sub(self.ring.used_seen)
            );
            match self.ring.call.read() {
                Ok(_) => signalled = true,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        (0..n).map(|_| self.ring.next_used(&self.mem)).collect()
    }

    fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

/// Negotiates and checks what the device offers, shares memory and starts both queues.
fn connect(w: &Worker) -> (Frontend, Queue, Queue) {
    let stream = UnixStream::connect(&w.socket).expect("connect");
    let mut fe = Frontend::from_stream(stream, 2);
    let features = dev::negotiate(&mut fe);
    for bit in [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    let (_, cfg) = fe
        .get_config(0, 12, VhostUserConfigFlags::WRITABLE, &[0; 12])
        .unwrap();
    assert_eq!(cfg.len(), 12);
    assert_eq!(
        u32::from_le_bytes(cfg[4..8].try_into().unwrap()),
        1,
        "max_nr_ports"
    );
    assert_eq!(&cfg[0..4], &[0; 4], "no size");
    fe.set_features(features).unwrap();

    let (mem, host) = dev::share_memory(&mut fe, MEM_SIZE);
    let [rx, tx] = [(0usize, RX_BASE), (1, TX_BASE)].map(|(index, base)| {
        let ring = SplitRing::new(base, QSIZE);
        ring.start(&mut fe, index, host);
        Queue {
            mem: mem.clone(),
            ring,
        }
    });
    (fe, rx, tx)
}

/// Connects a console client, sends `first`, and returns it with the worker's answer line.
fn client(w: &Worker, first: &[u8]) -> (UnixStream, String) {
    let s = UnixStream::connect(&w.attach).expect("connect to the attach socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&s).write_all(first).unwrap();
    let answer = read_line(&s);
    (s, answer)
}

fn read_line(s: &UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while (&*s).read(&mut b).unwrap_or(0) == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn read_exactly(s: &UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    (&*s)
        .read_exact(&mut v)
        .expect("read from the client socket");
    v
}

/// The guest prints `data` in one chain; waits until the device returned it.
fn print(tx: &mut Queue, data: &[u8]) {
    tx.mem.write_slice(data, GuestAddress(TX_DATA)).unwrap();
    let head = tx.chain(&[(TX_DATA, u32::try_from(data.len()).unwrap(), R)]);
    tx.kick();
    assert_eq!(tx.wait_used(1), vec![(u32::from(head), 0)]);
}

fn session(seccomp: &str) {
    let log_max = LOG_MAX.to_string();
    let mut w = Worker::start(&["--seccomp", seccomp, "--log-max", &log_max]);
    // A client that never finishes its handshake, and one that attaches before the VM runs.
    let idle = UnixStream::connect(&w.attach).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (first, answer) = client(&w, b"attach\n");
    assert_eq!(answer, "ok\n");

    let (mut fe, mut rx, mut tx) = connect(&w);
    dev::assert_confined(w.pid(), seccomp == "enforce");
    let mut printed = Vec::new();

    // Guest output reaches the client and the log.
    print(&mut tx, b"Welcome to the guest\r\n");
    printed.extend_from_slice(b"Welcome to the guest\r\n");
    assert_eq!(read_exactly(&first, 22), b"Welcome to the guest\r\n");
    assert_eq!(common::contents(&w.log), printed);

    // Input reaches the receive buffers, with its length.
    for i in 0..4 {
        rx.chain(&[(RX_DATA + 0x100 * i, 64, W)]);
    }
    rx.kick();
    (&first).write_all(b"uname -a\n").unwrap();
    let used = rx.wait_used(1);
    assert_eq!(used, vec![(0, 9)]);
    assert_eq!(rx.bytes(RX_DATA, 9), b"uname -a\n");

    // A second interactive client is refused; a watcher gets output; force takes over.
    let (busy, answer) = client(&w, b"attach\n");
    assert_eq!(answer, "busy\n");
    drop(busy);
    let (watcher, answer) = client(&w, b"watch\n");
    assert_eq!(answer, "ok\n");
    let (garbage, answer) = client(&w, b"let me in\n");
    assert_eq!(answer, "error\n");
    drop(garbage);
    let (second, answer) = client(&w, b"attach force\n");
    assert_eq!(answer, "ok\n");
    let mut rest = Vec::new();
    (&first).read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest,
        b"\r\n[ward: console taken over by another client]\r\n"
    );
    print(&mut tx, b"$ ");
    printed.extend_from_slice(b"$ ");
    assert_eq!(read_exactly(&second, 2), b"$ ");
    assert_eq!(read_exactly(&watcher, 2), b"$ ");

    // Hostile chains are returned unused; the device carries on.
    tx.mem
        .write_slice(b"hidden", GuestAddress(TX_DATA))
        .unwrap();
    let bad = [
        tx.chain(&[(TX_DATA, 6, W)]),
        tx.chain(&[(OUTSIDE, 6, R)]),
        tx.chain(&[(TX_DATA, 0, R)]),
        tx.chain(&[(TX_DATA, 0xffff_0000, R)]),
        tx.chain(&[(u64::MAX - 2, 6, R)]),
    ];
    tx.kick();
    let used = tx.wait_used(bad.len() as u16);
    assert_eq!(
        used,
        bad.iter().map(|&h| (u32::from(h), 0)).collect::<Vec<_>>()
    );

    // Enough output to rotate the log a few times: both files stay within the bound and
    // hold the newest output.
    for i in 0..40 {
        let line = format!("line {i:02} {}\r\n", "=".repeat(400)).into_bytes();
        print(&mut tx, &line);
        printed.extend_from_slice(&line);
        assert_eq!(read_exactly(&second, line.len()), line);
    }
    let (cur, old) = (common::contents(&w.log), common::contents(&w.old));
    assert!(
        cur.len() <= LOG_MAX && old.len() <= LOG_MAX,
        "{} {}",
        cur.len(),
        old.len()
    );
    assert!(old.len() + cur.len() >= LOG_MAX);
    assert!(printed.ends_with(&[old, cur].concat()));

    // The silent client was told off.
    assert_eq!(read_line(&idle), "error\n");

    // Stop the queues as a driver reset does: the device reports where it stopped.
    fe.set_vring_enable(1, false).unwrap();
    assert_eq!(fe.get_vring_base(1).unwrap(), u32::from(tx.ring.avail_idx));
    fe.set_vring_enable(0, false).unwrap();
    // Of the four receive buffers, one was used; the rest stay the driver's.
    assert_eq!(fe.get_vring_base(0).unwrap(), u32::from(rx.ring.used_seen));
    assert_eq!(rx.ring.used_seen, 1);
    dev::assert_confined(w.pid(), seccomp == "enforce");

    // Disconnect: the worker exits, and the clients see the end of the stream.
    drop(fe);
    let log = w.finish_clean();
    let mut end = Vec::new();
    (&second).read_to_end(&mut end).unwrap();
    assert!(end.is_empty());
    let line = dev::assert_counters(
        &log,
        &[
            "\"tx_chains\":47",
            "\"rx_chains\":1",
            "\"rx_bytes\":9",
            "\"wrong_direction\":1",
            "\"out_of_memory\":2",
            "\"empty_chain\":1",
            "\"too_long\":1",
            "\"takeovers\":1",
            "\"busy\":1",
            "\"handshake_errors\":1",
            "\"handshake_timeouts\":1",
            "\"log_errors\":0",
        ],
    );
    assert!(!line.contains("\"log_rotations\":0"), "{line}");
}

#[test]
fn full_session_under_enforced_filter() {
    session("enforce");
}

#[test]
fn full_session_without_filter() {
    session("off");
}
