//! Spawning the real `ward-console` binary the way the launcher does: its vhost-user socket,
//! its attach socket and its two logs as inherited descriptors 3 to 6, nothing else but stdio.

#![allow(dead_code)]

use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

pub use ward_worker::dev::{Process, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_ward-console");

/// A fresh directory for one test's sockets, removed when dropped.
pub fn temp_dir(tag: &str) -> TempDir {
    TempDir::new("ward-console", tag)
}

/// An empty anonymous file.
pub fn memfd(name: &std::ffi::CStr) -> File {
    ward_worker::dev::memfd(name, 0)
}

/// A whole file's contents.
pub fn contents(f: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().expect("metadata").len();
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, 0).expect("read");
    v
}

/// Starts `ward-console` with `fds` at 3, 4, …, `args` and `WARD_LOG=debug`.
pub fn spawn(args: &[&str], fds: &[BorrowedFd<'_>]) -> Process {
    Process::spawn(BIN, args, fds, &[("WARD_LOG", "debug")])
}

/// A running (or finished) worker; killed when dropped if it is still running.
pub struct Worker {
    process: Process,
    pub socket: PathBuf,
    pub attach: PathBuf,
    pub log: File,
    pub old: File,
    _dir: TempDir,
}

impl Worker {
    /// A worker on fresh sockets and memfd logs, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Worker {
        let dir = temp_dir("session");
        let socket = dir.join("console.vhost.sock");
        let attach = dir.join("console.sock");
        let vhost = UnixListener::bind(&socket).expect("bind");
        let clients = UnixListener::bind(&attach).expect("bind");
        let (log, old) = (memfd(c"console.log"), memfd(c"console.log.1"));
        let mut args = vec![
            "--socket-fd",
            "3",
            "--attach-fd",
            "4",
            "--log-fd",
            "5",
            "--log-old-fd",
            "6",
            "--name",
            "console",
        ];
        args.extend_from_slice(extra);
        let fds = [vhost.as_fd(), clients.as_fd(), log.as_fd(), old.as_fd()];
        let process = spawn(&args, &fds);
        Worker {
            process,
            socket,
            attach,
            log,
            old,
            _dir: dir,
        }
    }
}

impl Deref for Worker {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}
