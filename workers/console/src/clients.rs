//! Console clients: the attach listener, the handshake ([`crate::attach`]), and the sockets
//! of attached clients.
//!
//! # Never blocking on a client
//!
//! Every client socket is non-blocking and watched by the vring thread's epoll loop. Output is
//! written straight away as far as the socket takes it; the rest waits in a per-client buffer
//! of at most [`OUTPUT_MAX`](crate::attach::OUTPUT_MAX) bytes, flushed when the socket becomes writable. Output that does
//! not fit is dropped for that client and counted (`client_dropped_bytes`): a slow or vanished
//! reader never holds up the guest, the log or the other clients. Input is read only while the
//! pending input buffer ([`crate::queue::Input`]) has room; when the guest has no receive
//! buffers posted, the interactive client's socket stops being watched for input until it does.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tracing::{debug, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::attach::{
    parse_request, Limits, Request, BUSY, ERROR, MAX_HANDSHAKES, MAX_LINE, MAX_WATCHERS, OK,
    TAKEN_OVER,
};
use crate::metrics::{should_log, Metrics};
use crate::queue::Input;
use crate::registry::{self, Registry, ATTACH, FIRST_CLIENT, TIMER};

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 4096;
/// Reads of a watcher's discarded input per event, so one cannot keep the thread busy.
const WATCHER_READS: usize = 16;

#[derive(Debug)]
enum Role {
    Handshake { line: Vec<u8>, since: Instant },
    Interactive,
    Watcher,
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    role: Role,
    /// Output not yet taken by the socket.
    out: VecDeque<u8>,
    /// The peer has gone (EPOLLHUP): no more output; input is read to its end.
    hup: bool,
    /// The peer's input ended (it shut its socket for writing): no more reading.
    eof: bool,
    /// What the descriptor is registered for, if it is.
    registered: Option<EventSet>,
}

impl Client {
    /// Writes what the socket takes now; an error means the client is gone.
    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = write_some(&self.stream, self.out.as_slices().0)?;
            if n == 0 {
                break;
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    /// Sends `data` after what is buffered; returns how many bytes did not fit.
    fn send(&mut self, data: &[u8], max: usize) -> io::Result<usize> {
        self.flush()?;
        let mut rest = data;
        if self.out.is_empty() {
            rest = &data[write_some(&self.stream, data)?..];
        }
        let take = max.saturating_sub(self.out.len()).min(rest.len());
        self.out.extend(&rest[..take]);
        Ok(rest.len() - take)
    }

    /// What the descriptor should be watched for; `None`: not at all.
    fn wanted(&self, reading: bool) -> Option<EventSet> {
        let out = if !self.out.is_empty() && !self.hup {
            EventSet::OUT
        } else {
            EventSet::empty()
        };
        let read = match self.role {
            Role::Handshake { .. } => return Some(EventSet::IN),
            Role::Watcher => !self.eof,
            Role::Interactive => reading && !self.eof,
        };
        match read {
            // A hung-up peer is reported level-triggered whatever we ask for: while its input
            // cannot be read, it must not be watched at all, or the loop would spin.
            false if self.hup => None,
            false => Some(out),
            true => Some(EventSet::IN | out),
        }
    }
}

/// Writes as much of `buf` as the socket takes now (0 when it takes nothing).
fn write_some(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::write(stream.as_fd(), buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads what is there; `Ok(None)`: nothing now.
fn read_some(stream: &UnixStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match nix::unistd::read(stream.as_raw_fd(), buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes a descriptor non-blocking with `fcntl` (std would use an ioctl the filter denies).
pub fn set_nonblocking(fd: &impl AsRawFd) -> nix::Result<()> {
    let raw = fd.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// The attach listener, the handshake timer, and every connected client.
pub struct Clients {
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,
    clients: BTreeMap<u16, Client>,
    interactive: Option<u16>,
    next_token: u16,
    /// Whether the interactive client's input may be read (the pending input has room).
    reading: bool,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Clients {
    /// `listener` and `timer` must be non-blocking.
    pub fn new(
        listener: UnixListener,
        timer: TimerFd,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Clients {
        Clients {
            listener,
            timer,
            timer_armed: false,
            clients: BTreeMap::new(),
            interactive: None,
            next_token: FIRST_CLIENT,
            reading: true,
            limits,
            metrics,
        }
    }

    /// Starts watching the listener and the timer.
    pub fn register(&self, reg: &dyn Registry) -> io::Result<()> {
        registry::add(reg, &self.listener, EventSet::IN, ATTACH)?;
        registry::add(reg, &self.timer, EventSet::IN, TIMER)
    }

    /// Clients connected now, in any state.
    pub fn count(&self) -> usize {
        self.clients.len()
    }

    fn handshakes(&self) -> usize {
        self.clients
            .values()
            .filter(|c| matches!(c.role, Role::Handshake { .. }))
            .count()
    }

    fn watchers(&self) -> usize {
        self.clients
            .values()
            .filter(|c| matches!(c.role, Role::Watcher))
            .count()
    }

    /// Accepts every pending connection.
    pub fn accept(&mut self, reg: &dyn Registry) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(reg, stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.client_error("cannot accept a client", &e);
                    break;
                }
            }
        }
    }

    fn admit(&mut self, reg: &dyn Registry, stream: UnixStream) {
        if let Err(e) = set_nonblocking(&stream) {
            self.client_error("cannot make a client's socket non-blocking", &e);
            return;
        }
        let token = self.free_token();
        let (Some(token), true) = (token, self.handshakes() < MAX_HANDSHAKES) else {
            Metrics::bump(&self.metrics.busy);
            let _ = write_some(&stream, BUSY);
            return;
        };
        let line = Vec::with_capacity(MAX_LINE + 1);
        let since = Instant::now();
        let client = Client {
            stream,
            role: Role::Handshake { line, since },
            out: VecDeque::new(),
            hup: false,
            eof: false,
            registered: None,
        };
        self.clients.insert(token, client);
        self.sync(reg, token);
        self.arm_timer();
    }

    fn free_token(&mut self) -> Option<u16> {
        for _ in FIRST_CLIENT..=u16::MAX {
            let t = self.next_token;
            self.next_token = t.checked_add(1).unwrap_or(FIRST_CLIENT);
            if !self.clients.contains_key(&t) {
                return Some(t);
            }
        }
        None
    }

    /// Ends the handshakes that took too long.
    pub fn tick(&mut self, reg: &dyn Registry) {
        // Only to clear the timer's readiness; how often it fired does not matter.
        let _ = self.timer.wait();
        let now = Instant::now();
        let timeout = self.limits.handshake_timeout;
        let expired: Vec<u16> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                matches!(c.role, Role::Handshake { since, .. } if now.duration_since(since) >= timeout)
            })
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            let n = Metrics::bump(&self.metrics.handshake_timeouts);
            if should_log(n) {
                debug!(count = n, "client sent no first line in time");
            }
            self.refuse(reg, token, ERROR);
        }
        self.disarm_timer_if_idle();
    }

    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        let tick = (self.limits.handshake_timeout / 4).max(Duration::from_millis(10));
        match self.timer.reset(tick, Some(tick)) {
            Ok(()) => self.timer_armed = true,
            Err(e) => self.client_error("cannot arm the handshake timer", &e),
        }
    }

    fn disarm_timer_if_idle(&mut self) {
        if self.timer_armed && self.handshakes() == 0 {
            match self.timer.clear() {
                Ok(()) => self.timer_armed = false,
                Err(e) => self.client_error("cannot disarm the handshake timer", &e),
            }
        }
    }

    /// Handles readiness of client `token`; input from the interactive client goes to `input`.
    pub fn on_event(
        &mut self,
        reg: &dyn Registry,
        token: u16,
        events: EventSet,
        input: &mut Input,
    ) {
        self.reading = input.room() > 0;
        let Some(client) = self.clients.get_mut(&token) else {
            // Closed earlier in the same round of events.
            return;
        };
        let watcher = matches!(client.role, Role::Watcher);
        if let Role::Handshake { .. } = client.role {
            return self.read_handshake(reg, token, input);
        }
        if events.contains(EventSet::HANG_UP) {
            // The peer is gone: nothing it sends is wanted from a watcher, and nothing is left
            // to read from a client whose input already ended.
            if watcher || client.eof {
                return self.close(reg, token);
            }
            client.hup = true;
            client.out.clear();
        }
        if events.contains(EventSet::OUT) {
            if let Err(e) = client.flush() {
                self.client_error("cannot write to a client", &e);
                return self.close(reg, token);
            }
        }
        let readable = events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR);
        if readable && !self.read_attached(reg, token, input) {
            return;
        }
        if events.contains(EventSet::ERROR) {
            // Reported until the socket is closed; what could be read was read.
            self.client_error("client socket error", &"EPOLLERR");
            return self.close(reg, token);
        }
        self.sync(reg, token);
    }

    /// Reads an attached client's input; returns false if it was closed.
    fn read_attached(&mut self, reg: &dyn Registry, token: u16, input: &mut Input) -> bool {
        let Some(client) = self.clients.get_mut(&token) else {
            return false;
        };
        let interactive = matches!(client.role, Role::Interactive);
        let mut buf = [0u8; READ_CHUNK];
        for _ in 0..WATCHER_READS {
            if client.eof {
                break;
            }
            let want = if interactive {
                input.room().min(READ_CHUNK)
            } else {
                READ_CHUNK
            };
            if want == 0 {
                break;
            }
            match read_some(&client.stream, &mut buf[..want]) {
                Ok(None) => break,
                Ok(Some(0)) if client.hup => {
                    debug!(token, "client disconnected");
                    self.close(reg, token);
                    return false;
                }
                Ok(Some(0)) => {
                    // Shut for writing only: it may still want the output.
                    debug!(token, "client input ended");
                    client.eof = true;
                    break;
                }
                Ok(Some(n)) if interactive => {
                    input.push(&buf[..n]);
                    Metrics::add(&self.metrics.input_bytes, n as u64);
                }
                Ok(Some(n)) => Metrics::add(&self.metrics.discarded_input_bytes, n as u64),
                Err(e) => {
                    self.client_error("cannot read from a client", &e);
                    self.close(reg, token);
                    return false;
                }
            }
        }
        self.reading = input.room() > 0;
        true
    }

    fn read_handshake(&mut self, reg: &dyn Registry, token: u16, input: &mut Input) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let Role::Handshake { line, .. } = &mut client.role else {
            return;
        };
        let mut buf = [0u8; MAX_LINE + 1];
        let want = MAX_LINE + 1 - line.len();
        match read_some(&client.stream, &mut buf[..want]) {
            Ok(None) => return,
            Ok(Some(0)) => return self.close(reg, token),
            Ok(Some(n)) => line.extend_from_slice(&buf[..n]),
            Err(e) => {
                self.client_error("cannot read from a client", &e);
                return self.close(reg, token);
            }
        }
        let Some(end) = line.iter().position(|&b| b == b'\n') else {
            if line.len() > MAX_LINE {
                self.malformed(reg, token);
            }
            return;
        };
        let rest = line[end + 1..].to_vec();
        match parse_request(&line[..end]) {
            Some(request) => self.answer(reg, token, request, &rest, input),
            None => self.malformed(reg, token),
        }
        self.disarm_timer_if_idle();
    }

    fn malformed(&mut self, reg: &dyn Registry, token: u16) {
        let n = Metrics::bump(&self.metrics.handshake_errors);
        if should_log(n) {
            warn!(count = n, "client sent a malformed first line");
        }
        self.refuse(reg, token, ERROR);
        self.disarm_timer_if_idle();
    }

    /// Answers a well-formed request: attaches the client, or refuses it.
    fn answer(
        &mut self,
        reg: &dyn Registry,
        token: u16,
        request: Request,
        rest: &[u8],
        input: &mut Input,
    ) {
        let current = self
            .interactive
            .filter(|t| self.clients.get(t).is_some_and(|c| !c.hup));
        let role = match request {
            Request::Attach if current.is_some() => None,
            Request::Attach | Request::Force => Some(Role::Interactive),
            Request::Watch if self.watchers() >= MAX_WATCHERS => None,
            Request::Watch => Some(Role::Watcher),
        };
        let Some(role) = role else {
            Metrics::bump(&self.metrics.busy);
            return self.refuse(reg, token, BUSY);
        };
        if let Role::Interactive = role {
            if let Some(old) = self.interactive.take() {
                self.take_over_from(reg, old);
            }
            self.interactive = Some(token);
            Metrics::bump(&self.metrics.attached);
            input.push(rest);
            Metrics::add(&self.metrics.input_bytes, rest.len() as u64);
            debug!(token, force = request == Request::Force, "client attached");
        } else {
            Metrics::bump(&self.metrics.watchers);
            Metrics::add(&self.metrics.discarded_input_bytes, rest.len() as u64);
            debug!(token, "client watching");
        }
        self.reading = input.room() > 0;
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        client.role = role;
        client.out.extend(OK);
        if let Err(e) = client.flush() {
            self.client_error("cannot write to a client", &e);
            return self.close(reg, token);
        }
        self.sync(reg, token);
    }

    /// Tells the interactive client it was replaced, and closes it.
    fn take_over_from(&mut self, reg: &dyn Registry, token: u16) {
        Metrics::bump(&self.metrics.takeovers);
        debug!(token, "client taken over");
        if let Some(client) = self.clients.get_mut(&token) {
            if client.flush().is_ok() && !client.hup {
                let _ = write_some(&client.stream, TAKEN_OVER);
            }
        }
        self.close(reg, token);
    }

    /// Sends `reply` (as far as the socket takes it) and closes the client.
    fn refuse(&mut self, reg: &dyn Registry, token: u16, reply: &[u8]) {
        if let Some(client) = self.clients.get(&token) {
            let _ = write_some(&client.stream, reply);
        }
        self.close(reg, token);
    }

    fn close(&mut self, reg: &dyn Registry, token: u16) {
        let Some(client) = self.clients.remove(&token) else {
            return;
        };
        if client.registered.is_some() {
            let _ = reg.remove(client.stream.as_raw_fd(), token);
        }
        if self.interactive == Some(token) {
            self.interactive = None;
        }
    }

    /// Sends guest output to every attached client.
    pub fn broadcast(&mut self, reg: &dyn Registry, data: &[u8]) {
        let max = self.limits.output_max;
        let mut gone = Vec::new();
        let mut dropped = 0;
        for (&token, client) in self.clients.iter_mut() {
            if matches!(client.role, Role::Handshake { .. }) || client.hup {
                continue;
            }
            match client.send(data, max) {
                Ok(n) => dropped += n,
                Err(_) => gone.push(token),
            }
        }
        Metrics::add(&self.metrics.client_dropped_bytes, dropped as u64);
        for token in gone {
            debug!(token, "client gone while writing");
            self.close(reg, token);
        }
        let tokens: Vec<u16> = self.clients.keys().copied().collect();
        for token in tokens {
            self.sync(reg, token);
        }
    }

    /// Lets the interactive client's input be read again, or stops reading it.
    pub fn set_reading(&mut self, reg: &dyn Registry, reading: bool) {
        self.reading = reading;
        if let Some(token) = self.interactive {
            self.sync(reg, token);
        }
    }

    /// Brings the registration of `token` in line with what it should be watched for.
    fn sync(&mut self, reg: &dyn Registry, token: u16) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let reading = self.reading || !matches!(client.role, Role::Interactive);
        let wanted = client.wanted(reading);
        if wanted == client.registered {
            return;
        }
        let fd = client.stream.as_raw_fd();
        if client.registered.take().is_some() {
            let _ = reg.remove(fd, token);
        }
        let Some(events) = wanted else {
            return;
        };
        match reg.add(fd, events, token) {
            Ok(()) => client.registered = Some(events),
            Err(e) => {
                // Unwatched, it could never be served or closed: let it go.
                self.client_error("cannot watch a client", &e);
                self.close(reg, token);
            }
        }
    }

    fn client_error(&self, what: &str, e: &dyn std::fmt::Display) {
        let n = Metrics::bump(&self.metrics.client_errors);
        if should_log(n) {
            warn!(error = %e, count = n, "{what}");
        }
    }
}

#[cfg(test)]
#[path = "clients_tests.rs"]
mod tests;
