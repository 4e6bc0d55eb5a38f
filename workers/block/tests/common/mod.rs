//! Spawning the real `ward-block` binary the way the launcher does: its listening socket and
//! its image as inherited descriptors 3 and 4, nothing else but stdio.

#![allow(dead_code)]

use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

pub use ward_worker::dev::{memfd, Process, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_ward-block");

/// A fresh directory for one test's socket, removed when dropped.
pub fn temp_dir(tag: &str) -> TempDir {
    TempDir::new("ward-block", tag)
}

/// Starts `ward-block` with `fds` at 3, 4, … and `args`.
pub fn spawn(args: &[&str], fds: &[BorrowedFd<'_>], env: &[(&str, &str)]) -> Process {
    Process::spawn(BIN, args, fds, env)
}

/// A worker serving an image on a fresh listening socket; killed when dropped if it is still
/// running.
pub struct Worker {
    process: Process,
    pub socket: PathBuf,
    _dir: TempDir,
}

impl Worker {
    /// A worker serving `image` on a fresh listening socket.
    pub fn start(image: &File, extra: &[&str]) -> Worker {
        let dir = temp_dir("session");
        let socket = dir.join("vda.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let mut args = vec!["--socket-fd", "3", "--image-fd", "4", "--name", "vda"];
        args.extend_from_slice(extra);
        let fds = [listener.as_fd(), image.as_fd()];
        let process = spawn(&args, &fds, &[("WARD_LOG", "debug")]);
        Worker {
            process,
            socket,
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
