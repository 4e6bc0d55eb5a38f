//! Spawning the real `ward-console` binary the way the launcher does: its vhost-user socket,
//! its attach socket and its two logs as inherited descriptors 3 to 6, nothing else but stdio.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg};

pub const BIN: &str = env!("CARGO_BIN_EXE_ward-console");

/// A fresh directory for one test's sockets.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ward-console-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn memfd(name: &std::ffi::CStr) -> File {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::empty())
        .expect("memfd_create");
    File::from(fd)
}

/// A whole file's contents.
pub fn contents(f: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().expect("metadata").len();
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, 0).expect("read");
    v
}

/// Starts `ward-console` with `fds` at 3, 4, … and `args`. Returns once it is running.
pub fn spawn(args: &[&str], fds: &[BorrowedFd<'_>]) -> (Child, JoinHandle<String>) {
    // Copies above any number the child will use, so placing them at 3, 4, … never overwrites
    // one still to be placed. dup2 in the child clears close-on-exec on the target.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            let n = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(100)).expect("dup");
            // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that we now own.
            unsafe { OwnedFd::from_raw_fd(n) }
        })
        .collect();
    let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("WARD_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: runs between fork and exec and only calls dup2, which is async-signal-safe, on
    // descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn ward-console");
    drop(high);
    let mut err = child.stderr.take().expect("stderr pipe");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (child, reader)
}

/// A running (or finished) worker, its stderr collected in the background.
pub struct Worker {
    pub child: Child,
    stderr: Option<JoinHandle<String>>,
    dir: PathBuf,
    pub socket: PathBuf,
    pub attach: PathBuf,
    pub log: File,
    pub old: File,
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
        let (child, reader) = spawn(&args, &fds);
        Worker {
            child,
            stderr: Some(reader),
            dir,
            socket,
            attach,
            log,
            old,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the worker to exit (killing it if it does not), and returns
    /// how it exited (`None`: it had to be killed) and everything it wrote to stderr.
    pub fn finish(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let end = Instant::now() + timeout;
        let st = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (st, log)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `Name:`, `Seccomp:` and `Seccomp_filters:` of every thread of `pid`.
pub fn thread_seccomp(pid: u32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read task dir");
    for t in tasks {
        let path = t.expect("task entry").path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:"), field("Seccomp_filters:")));
    }
    out
}
