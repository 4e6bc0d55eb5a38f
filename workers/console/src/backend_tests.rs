//! Unit tests of the device as a whole: hand-laid queues behind real `VringRwLock`s, memfd
//! logs, a real attach socket, and a plain epoll instance standing in for the vring thread's.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::timerfd::TimerFd;

use super::*;
use crate::attach::Limits;
use crate::clients::set_nonblocking;
use crate::log::MIN_MAX;
use crate::testutil::{contents, guest_memory, memfd, Ring, R, W};

const MEM_SIZE: usize = 0x10_0000;
const TX_BASE: u64 = 0x4000;
const RX_DATA: u64 = 0x1_0000;
const TX_DATA: u64 = 0x2_0000;
const OUTSIDE: u64 = 0x20_0000;

/// The test's epoll, shared between the backend and the test that waits on it.
struct Shared(Arc<Epoll>);

impl Registry for Shared {
    fn add(&self, fd: RawFd, events: EventSet, token: u16) -> io::Result<()> {
        self.0.add(fd, events, token)
    }

    fn remove(&self, fd: RawFd, token: u16) -> io::Result<()> {
        self.0.remove(fd, token)
    }
}

struct Fx {
    backend: ConsoleBackend,
    epoll: Arc<Epoll>,
    rx: Ring,
    tx: Ring,
    vrings: Vec<VringRwLock>,
    cur: File,
    old: File,
    metrics: Arc<Metrics>,
    dir: PathBuf,
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fx {
    fn new(event_idx: bool, log_max: u64, output_max: usize) -> Fx {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ward-console-backend-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mem = guest_memory(MEM_SIZE);
        let (cur, old) = (memfd(c"log"), memfd(c"log.1"));
        let appending = cur.try_clone().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&appending);
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND),
        )
        .unwrap();
        let log = Log::new(appending, old.try_clone().unwrap(), log_max, 0);
        let listener = UnixListener::bind(dir.join("attach.sock")).unwrap();
        set_nonblocking(&listener).unwrap();
        let timer = TimerFd::new().unwrap();
        set_nonblocking(&timer).unwrap();
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            handshake_timeout: Duration::from_secs(5),
            output_max,
        };
        let clients = Clients::new(listener, timer, limits, metrics.clone());
        let backend = ConsoleBackend::new(
            log,
            clients,
            mem.clone(),
            metrics.clone(),
            tracing::Span::none(),
        );
        backend.set_event_idx(event_idx);
        let epoll = Arc::new(Epoll::new().unwrap());
        backend.set_registry(Box::new(Shared(epoll.clone())));
        backend.start_clients().unwrap();
        let rx = Ring::new(&mem, 0, event_idx);
        let tx = Ring::new(&mem, TX_BASE, event_idx);
        let vrings = vec![rx.vring.clone(), tx.vring.clone()];
        Fx {
            backend,
            epoll,
            rx,
            tx,
            vrings,
            cur,
            old,
            metrics,
            dir,
        }
    }

    /// Handles the events that come within `ms` milliseconds; returns how many there were.
    fn round(&mut self, ms: i32) -> usize {
        let mut events = vec![EpollEvent::default(); 32];
        let n = self.epoll.wait(ms, &mut events).unwrap();
        for e in &events[..n] {
            let token = u16::try_from(e.data()).unwrap();
            self.backend.dispatch(token, e.event_set(), &self.vrings);
        }
        n
    }

    fn settle(&mut self) {
        while self.round(50) > 0 {}
    }

    /// The guest kicks `queue`.
    fn kick(&self, queue: u16) {
        self.backend.dispatch(queue, EventSet::IN, &self.vrings);
    }

    /// The guest prints `data` in one chain.
    fn print(&mut self, data: &[u8]) {
        self.tx.fill(TX_DATA, data);
        self.tx
            .chain(&[(TX_DATA, u32::try_from(data.len()).unwrap(), R)]);
        self.tx.want_signal();
        self.kick(TX_QUEUE);
    }

    fn attach(&mut self, first: &[u8]) -> UnixStream {
        let s = UnixStream::connect(self.dir.join("attach.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&s).write_all(first).unwrap();
        self.settle();
        let mut ok = [0u8; 3];
        (&s).read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok\n");
        s
    }

    fn count(&self, c: &AtomicU64) -> u64 {
        Metrics::get(c)
    }
}

/// What can be read now, without waiting.
fn read_now(s: &UnixStream) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut v = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = (&*s).read(&mut buf) {
        if n == 0 {
            break;
        }
        v.extend_from_slice(&buf[..n]);
    }
    s.set_nonblocking(false).unwrap();
    v
}

#[test]
fn features_and_configuration_space() {
    let fx = Fx::new(false, MIN_MAX, 4096);
    let b = &fx.backend;
    assert_eq!(b.features(), (1 << 32) | (1 << 29) | (1 << 30));
    assert_eq!(b.num_queues(), 2);
    let proto = b.protocol_features();
    assert!(proto.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
    let c = b.get_config(0, CONFIG_SIZE as u32);
    // cols 0, rows 0, max_nr_ports 1, emerg_wr 0.
    assert_eq!(c, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(b.get_config(4, 4), 1u32.to_le_bytes());
    assert_eq!(b.get_config(8, 8), [0; 4]);
    assert!(b.get_config(12, 4).is_empty());
    assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
    assert!(b.set_config(8, &[1, 0, 0, 0]).is_err());
}

#[test]
fn guest_output_reaches_the_log_and_a_client() {
    for event_idx in [false, true] {
        let mut fx = Fx::new(event_idx, 1 << 20, 4096);
        let client = fx.attach(b"attach\n");
        fx.print(b"Linux version 6.1\r\n");
        fx.print(b"login: ");
        assert_eq!(fx.tx.used().len(), 2);
        assert!(fx.tx.signalled(), "event_idx={event_idx}");
        assert_eq!(contents(&fx.cur), b"Linux version 6.1\r\nlogin: ");
        assert_eq!(read_now(&client), b"Linux version 6.1\r\nlogin: ");
        assert_eq!(fx.count(&fx.metrics.log_bytes), 26);
    }
}

#[test]
fn input_reaches_receive_buffers_with_its_length() {
    for event_idx in [false, true] {
        let mut fx = Fx::new(event_idx, MIN_MAX, 4096);
        let client = fx.attach(b"attach\n");
        // No buffers posted: the input waits in the worker.
        (&client).write_all(b"uname -a\n").unwrap();
        fx.settle();
        assert_eq!(fx.count(&fx.metrics.input_bytes), 9);
        assert!(fx.rx.used().is_empty());
        // The guest posts two buffers and kicks: the input lands, split over them.
        let a = fx.rx.chain(&[(RX_DATA, 4, W)]);
        let b = fx.rx.chain(&[(RX_DATA + 0x100, 64, W)]);
        fx.rx.want_signal();
        fx.kick(RX_QUEUE);
        assert_eq!(fx.rx.used(), vec![(u32::from(a), 4), (u32::from(b), 5)]);
        assert_eq!(fx.rx.bytes(RX_DATA, 4), b"unam");
        assert_eq!(fx.rx.bytes(RX_DATA + 0x100, 5), b"e -a\n");
        assert!(fx.rx.signalled());
        // With a buffer already posted, typing goes straight through.
        let c = fx.rx.chain(&[(RX_DATA + 0x200, 64, W)]);
        fx.rx.want_signal();
        (&client).write_all(b"q").unwrap();
        fx.settle();
        assert_eq!(fx.rx.used(), vec![(u32::from(c), 1)]);
        assert_eq!(fx.rx.bytes(RX_DATA + 0x200, 1), b"q");
        assert!(fx.rx.signalled());
    }
}

#[test]
fn malformed_output_chains_are_dropped_counted_and_the_next_one_works() {
    let mut fx = Fx::new(true, MIN_MAX, 4096);
    let client = fx.attach(b"watch\n");
    fx.tx.fill(TX_DATA, b"hidden");
    let heads = [
        fx.tx.chain(&[(TX_DATA, 6, W)]),
        fx.tx.chain(&[(TX_DATA, 3, R), (TX_DATA + 3, 3, W)]),
        fx.tx.chain(&[(OUTSIDE, 6, R)]),
        fx.tx.chain(&[(TX_DATA, 0, R)]),
        fx.tx.chain(&[(TX_DATA, 0xffff_0000, R)]),
    ];
    fx.tx.want_signal();
    fx.kick(TX_QUEUE);
    let used: Vec<_> = heads.iter().map(|&h| (u32::from(h), 0)).collect();
    assert_eq!(fx.tx.used(), used);
    assert!(contents(&fx.cur).is_empty());
    assert!(read_now(&client).is_empty());
    assert_eq!(fx.count(&fx.metrics.wrong_direction), 2);
    assert_eq!(fx.count(&fx.metrics.out_of_memory), 1);
    assert_eq!(fx.count(&fx.metrics.empty_chain), 1);
    assert_eq!(fx.count(&fx.metrics.too_long), 1);
    fx.print(b"still here\n");
    assert_eq!(contents(&fx.cur), b"still here\n");
    assert_eq!(read_now(&client), b"still here\n");
}

#[test]
fn the_log_rotates_within_its_bound() {
    let mut fx = Fx::new(true, MIN_MAX, 4096);
    let mut all = Vec::new();
    for i in 0..40u32 {
        let line = format!("line {i:04} {}\n", "x".repeat(300)).into_bytes();
        fx.print(&line);
        all.extend_from_slice(&line);
        let (cur, old) = (contents(&fx.cur), contents(&fx.old));
        assert!(cur.len() as u64 <= MIN_MAX && old.len() as u64 <= MIN_MAX);
        assert!(all.ends_with(&[old, cur].concat()));
    }
    assert!(fx.count(&fx.metrics.log_rotations) >= 2);
    assert_eq!(fx.count(&fx.metrics.log_errors), 0);
}

#[test]
fn a_slow_client_stalls_neither_the_log_nor_the_other_clients() {
    let output_max = 64 * 1024;
    let mut fx = Fx::new(true, 64 << 20, output_max);
    let slow = fx.attach(b"watch\n");
    let fast = fx.attach(b"attach\n");
    let chunk: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
    let rounds = 64;
    let (mut sent, mut received) = (0, Vec::new());
    for _ in 0..rounds {
        fx.print(&chunk);
        sent += chunk.len();
        assert_eq!(fx.tx.used().len(), 1, "the guest's chain came back at once");
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.len() < sent {
            assert!(
                Instant::now() < deadline,
                "fast client got {} of {sent}",
                received.len()
            );
            fx.round(10);
            received.extend(read_now(&fast));
        }
    }
    assert_eq!(received, chunk.repeat(rounds));
    assert_eq!(contents(&fx.cur), chunk.repeat(rounds));
    assert!(fx.count(&fx.metrics.client_dropped_bytes) > 0);
    let got = read_now(&slow).len();
    assert!(got > 0 && got < sent, "{got}");
}
