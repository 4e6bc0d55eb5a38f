//! A deadline on every exchange with a worker. The vhost crate's frontend waits for a reply
//! as long as it takes (and retries timeouts), so a worker that stops answering, or answers
//! half a message, would hang the thread that asked — a vCPU thread, when the guest starts a
//! device. The watchdog shuts such a socket down when its deadline passes: the blocked receive
//! then fails, the request errors out, and the event loop sees the connection gone.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one vhost-user exchange (a handshake, starting or stopping a device) may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);

struct Entry {
    sock: UnixStream,
    deadline: Option<Instant>,
}

#[derive(Default)]
pub struct Watchdog {
    entries: Mutex<Vec<Entry>>,
}

/// Clears its deadline when the exchange is over.
pub struct Armed<'a> {
    wd: &'a Watchdog,
    id: usize,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.wd.set(self.id, None);
    }
}

impl Watchdog {
    /// Watches a second handle on a worker's socket; returns its id.
    pub fn register(&self, sock: UnixStream) -> usize {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.push(Entry {
            sock,
            deadline: None,
        });
        e.len() - 1
    }

    fn set(&self, id: usize, deadline: Option<Instant>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = e.get_mut(id) {
            entry.deadline = deadline;
        }
    }

    /// Starts the clock for one exchange on socket `id`.
    pub fn arm(&self, id: usize, timeout: Duration) -> Armed<'_> {
        self.set(id, Some(Instant::now() + timeout));
        Armed { wd: self, id }
    }

    /// Shuts down every socket whose deadline has passed; returns how many.
    pub fn check(&self, now: Instant) -> usize {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut fired = 0;
        for entry in e.iter_mut() {
            if entry.deadline.is_some_and(|d| d <= now) {
                tracing::error!("a worker did not answer within {EXCHANGE_TIMEOUT:?}");
                let _ = entry.sock.shutdown(Shutdown::Both);
                entry.deadline = None;
                fired += 1;
            }
        }
        fired
    }

    /// Runs the watchdog on its own thread for the life of the process. `confine` runs first
    /// on that thread (it installs the thread's seccomp filter).
    pub fn spawn(
        self: &Arc<Self>,
        confine: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let wd = self.clone();
        std::thread::Builder::new()
            .name("vhost-watchdog".into())
            .spawn(move || {
                confine();
                loop {
                    std::thread::sleep(TICK);
                    wd.check(Instant::now());
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_passed_deadline_unblocks_the_reader() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let wd = Watchdog::default();
        let id = wd.register(b.try_clone().unwrap());
        {
            let _armed = wd.arm(id, Duration::ZERO);
            assert_eq!(wd.check(Instant::now()), 1);
        }
        // Shut down: a read that would have blocked forever returns at once.
        let mut buf = [0u8; 1];
        assert_eq!(b.read(&mut buf).unwrap(), 0);
        drop(a);
    }

    #[test]
    fn a_finished_exchange_disarms() {
        let (_a, b) = UnixStream::pair().unwrap();
        let wd = Watchdog::default();
        let id = wd.register(b);
        drop(wd.arm(id, Duration::ZERO));
        assert_eq!(wd.check(Instant::now() + Duration::from_secs(60)), 0);
    }
}
