//! Unit tests of the attach protocol: real sockets and a real epoll instance, driven by hand
//! the way the vring thread drives them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::epoll::{Epoll, EpollEvent};

use super::*;
use crate::attach::OUTPUT_MAX;
use crate::queue::INPUT_MAX;

/// Handshake timeout of the tests: long enough for `settle` never to reach it by accident.
const TIMEOUT: Duration = Duration::from_millis(1000);

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ward-console-clients-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Fx {
    epoll: Epoll,
    clients: Clients,
    input: Input,
    metrics: Arc<Metrics>,
    dir: PathBuf,
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fx {
    fn new() -> Fx {
        Self::with_output_max(OUTPUT_MAX)
    }

    fn with_output_max(output_max: usize) -> Fx {
        let dir = temp_dir();
        let listener = UnixListener::bind(dir.join("attach.sock")).unwrap();
        set_nonblocking(&listener).unwrap();
        let timer = TimerFd::new().unwrap();
        set_nonblocking(&timer).unwrap();
        let metrics = Arc::new(Metrics::default());
        let limits = Limits {
            handshake_timeout: TIMEOUT,
            output_max,
        };
        let clients = Clients::new(listener, timer, limits, metrics.clone());
        let epoll = Epoll::new().unwrap();
        clients.register(&epoll).unwrap();
        Fx {
            epoll,
            clients,
            input: Input::new(INPUT_MAX),
            metrics,
            dir,
        }
    }

    /// Handles the events that come within `ms` milliseconds (one round), as the backend does;
    /// returns how many there were.
    fn round(&mut self, ms: i32) -> usize {
        let mut events = vec![EpollEvent::default(); 32];
        let n = self.epoll.wait(ms, &mut events).unwrap();
        for e in &events[..n] {
            let token = u16::try_from(e.data()).unwrap();
            match token {
                ATTACH => self.clients.accept(&self.epoll),
                TIMER => self.clients.tick(&self.epoll),
                t => self
                    .clients
                    .on_event(&self.epoll, t, e.event_set(), &mut self.input),
            }
            let room = self.input.room() > 0;
            self.clients.set_reading(&self.epoll, room);
        }
        n
    }

    /// Handles events until none comes for a while.
    fn settle(&mut self) {
        while self.round(50) > 0 {}
    }

    fn connect(&mut self, first: &[u8]) -> UnixStream {
        let s = UnixStream::connect(self.dir.join("attach.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&s).write_all(first).unwrap();
        self.settle();
        s
    }

    /// Connects, sends `first`, and returns the stream and the answer line.
    fn attach(&mut self, first: &[u8]) -> (UnixStream, String) {
        let s = self.connect(first);
        let answer = read_line(&s);
        (s, answer)
    }

    fn count(&self, c: &std::sync::atomic::AtomicU64) -> u64 {
        Metrics::get(c)
    }
}

fn read_line(s: &UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while (&*s).read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Everything up to end of stream.
fn read_to_end(s: &UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = (&*s).read_to_end(&mut v);
    v
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
fn second_attach_is_busy_until_the_first_leaves() {
    let mut fx = Fx::new();
    let (a, answer) = fx.attach(b"attach\n");
    assert_eq!(answer, "ok\n");
    let (b, answer) = fx.attach(b"attach\n");
    assert_eq!(answer, "busy\n");
    assert!(read_to_end(&b).is_empty(), "closed after busy");
    assert_eq!(fx.count(&fx.metrics.busy), 1);
    // The first one leaves: its place is free.
    drop(a);
    fx.settle();
    let (_c, answer) = fx.attach(b"attach\n");
    assert_eq!(answer, "ok\n");
    assert_eq!(fx.count(&fx.metrics.attached), 2);
}

#[test]
fn force_takes_over_and_the_old_client_is_told() {
    let mut fx = Fx::new();
    let (old, answer) = fx.attach(b"attach\n");
    assert_eq!(answer, "ok\n");
    let (new, answer) = fx.attach(b"attach force\n");
    assert_eq!(answer, "ok\n");
    assert_eq!(read_to_end(&old), TAKEN_OVER);
    assert_eq!(fx.count(&fx.metrics.takeovers), 1);
    // The new client is the interactive one: its input is taken, output reaches it.
    (&new).write_all(b"ls\n").unwrap();
    fx.settle();
    assert_eq!(fx.input.len(), 3);
    fx.clients.broadcast(&fx.epoll, b"out");
    assert_eq!(read_now(&new), b"out");
}

#[test]
fn watchers_get_output_and_their_input_is_discarded() {
    let mut fx = Fx::new();
    let (i, _) = fx.attach(b"attach\n");
    let (w, answer) = fx.attach(b"watch\nignored");
    assert_eq!(answer, "ok\n");
    (&w).write_all(b"rm -rf /\n").unwrap();
    (&i).write_all(b"date\n").unwrap();
    fx.settle();
    assert_eq!(fx.input.len(), 5, "only the interactive client's input");
    assert_eq!(fx.count(&fx.metrics.discarded_input_bytes), 7 + 9);
    fx.clients.broadcast(&fx.epoll, b"guest output");
    assert_eq!(read_now(&w), b"guest output");
    assert_eq!(read_now(&i), b"guest output");
}

#[test]
fn too_many_watchers_are_busy() {
    let mut fx = Fx::new();
    let watchers: Vec<_> = (0..MAX_WATCHERS).map(|_| fx.attach(b"watch\n")).collect();
    assert!(watchers.iter().all(|(_, a)| a == "ok\n"));
    let (_, answer) = fx.attach(b"watch\n");
    assert_eq!(answer, "busy\n");
    // An interactive client still gets in.
    let (_, answer) = fx.attach(b"attach\n");
    assert_eq!(answer, "ok\n");
}

#[test]
fn bad_first_lines_get_error() {
    let mut fx = Fx::new();
    let long = [b'a'; MAX_LINE + 1];
    let cases: [&[u8]; 5] = [
        b"hello\n",
        b"attach please\n",
        &long,
        &[&long[..], b"\n"].concat(),
        b"\n",
    ];
    for first in cases {
        let (s, answer) = fx.attach(first);
        assert_eq!(answer, "error\n", "{first:?}");
        assert!(read_to_end(&s).is_empty());
    }
    assert_eq!(fx.count(&fx.metrics.handshake_errors), 5);
    assert_eq!(fx.clients.count(), 0);
    // A line of exactly the longest length is read as a line (and refused as unknown).
    let mut exact = vec![b'a'; MAX_LINE];
    exact.push(b'\n');
    assert_eq!(fx.attach(&exact).1, "error\n");
}

#[test]
fn a_line_may_come_in_pieces_and_carry_input() {
    let mut fx = Fx::new();
    let s = fx.connect(b"att");
    (&s).write_all(b"ach\necho hi\n").unwrap();
    fx.settle();
    assert_eq!(read_line(&s), "ok\n");
    assert_eq!(fx.input.len(), 8, "bytes after the line are input");
}

#[test]
fn silent_clients_time_out_with_error() {
    let mut fx = Fx::new();
    let silent = fx.connect(b"");
    let started = Instant::now();
    // The timer fires until the handshake is over.
    while started.elapsed() < TIMEOUT * 3 && fx.clients.count() > 0 {
        fx.round(20);
    }
    assert_eq!(read_line(&silent), "error\n");
    assert_eq!(fx.count(&fx.metrics.handshake_timeouts), 1);
    // With no handshake left the timer is disarmed: nothing happens any more.
    fx.settle();
    assert_eq!(fx.round(600), 0);
}

#[test]
fn input_stops_being_read_while_the_guest_has_no_buffers() {
    let mut fx = Fx::new();
    let (c, _) = fx.attach(b"attach\n");
    let typed: Vec<u8> = (0..3 * INPUT_MAX).map(|i| (i % 251) as u8).collect();
    (&c).write_all(&typed).unwrap();
    fx.settle();
    assert_eq!(fx.input.len(), INPUT_MAX, "read up to the limit only");
    // Nothing is reported for the client while its input cannot be read.
    assert_eq!(fx.round(100), 0);
    // The guest takes the input: reading resumes where it stopped.
    let mut got = Vec::new();
    while got.len() < typed.len() {
        got.extend(fx.input.take());
        fx.clients.set_reading(&fx.epoll, true);
        fx.settle();
    }
    assert_eq!(got, typed);
}

#[test]
fn hang_up_while_paused_keeps_the_input_and_does_not_spin() {
    let mut fx = Fx::new();
    let (c, _) = fx.attach(b"attach\n");
    let typed = vec![b'x'; INPUT_MAX + 100];
    (&c).write_all(&typed).unwrap();
    drop(c);
    fx.settle();
    assert_eq!(fx.input.len(), INPUT_MAX);
    assert_eq!(
        fx.round(100),
        0,
        "a hung-up client is not watched while paused"
    );
    assert_eq!(fx.clients.count(), 1);
    fx.input.take();
    fx.clients.set_reading(&fx.epoll, true);
    fx.settle();
    assert_eq!(fx.input.len(), 100, "the rest was read");
    assert_eq!(fx.clients.count(), 0, "then the client was closed");
    // Its place is free.
    assert_eq!(fx.attach(b"attach\n").1, "ok\n");
}

#[test]
fn a_client_that_never_reads_loses_output_not_the_others() {
    let mut fx = Fx::with_output_max(64 * 1024);
    let (slow, _) = fx.attach(b"watch\n");
    let (fast, _) = fx.attach(b"attach\n");
    let chunk = vec![b'o'; 16 * 1024];
    let (mut sent, mut received) = (0, 0);
    for _ in 0..64 {
        fx.clients.broadcast(&fx.epoll, &chunk);
        sent += chunk.len();
        // The fast client reads everything as it comes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while received < sent {
            assert!(
                Instant::now() < deadline,
                "fast client got {received} of {sent}"
            );
            fx.round(10);
            received += read_now(&fast).len();
        }
    }
    assert_eq!(received, 64 * chunk.len());
    assert!(fx.count(&fx.metrics.client_dropped_bytes) > 0);
    // The slow one got the start of it, at most its socket buffer and its output limit.
    let got = read_now(&slow).len();
    assert!(got > 0 && got < 64 * chunk.len(), "{got}");
}

#[test]
fn a_client_that_only_stops_sending_still_gets_output() {
    let mut fx = Fx::new();
    let (i, _) = fx.attach(b"attach\n");
    let (w, _) = fx.attach(b"watch\n");
    (&i).write_all(b"echo piped\n").unwrap();
    i.shutdown(std::net::Shutdown::Write).unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    fx.settle();
    assert_eq!(fx.input.take(), b"echo piped\n");
    assert_eq!(fx.round(100), 0, "ended input is not watched");
    fx.clients.broadcast(&fx.epoll, b"piped\n");
    assert_eq!(read_now(&i), b"piped\n");
    assert_eq!(read_now(&w), b"piped\n");
    // Still the interactive client; gone once it closes.
    assert_eq!(fx.attach(b"attach\n").1, "busy\n");
    drop(i);
    drop(w);
    fx.settle();
    assert_eq!(fx.clients.count(), 0);
}

#[test]
fn too_many_unfinished_handshakes_are_busy() {
    let mut fx = Fx::new();
    // All at once: settling after each would take long enough for the first to time out.
    let silent: Vec<_> = (0..MAX_HANDSHAKES)
        .map(|_| UnixStream::connect(fx.dir.join("attach.sock")).unwrap())
        .collect();
    fx.settle();
    assert_eq!(fx.clients.count(), MAX_HANDSHAKES);
    let (_, answer) = fx.attach(b"attach\n");
    assert_eq!(answer, "busy\n");
    assert_eq!(fx.clients.count(), MAX_HANDSHAKES);
    drop(silent);
    fx.settle();
    assert_eq!(fx.attach(b"attach\n").1, "ok\n");
}
