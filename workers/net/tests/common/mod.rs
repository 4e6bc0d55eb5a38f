//! Helpers of the integration tests: a network namespace the test creates, owns and deletes
//! (even when the test fails), work done inside it by a thread that `setns`-ed into it, and
//! spawning the real `ward-net` binary the way the launcher does (its socket and tap as
//! descriptors 3 and 4). No test sends a frame outside a namespace it created.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg};
use nix::sched::CloneFlags;

pub const BIN: &str = env!("CARGO_BIN_EXE_ward-net");

/// A network namespace made for one test; deleted when dropped (also while a failing test
/// unwinds).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `ward-nettest-<pid>-<n>`, or says loudly why the test is skipped (not root, no
    /// `ip`, no /dev/net/tun, namespaces unavailable) and returns `None`.
    pub fn create(test: &str) -> Option<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        let skip = |why: &str| {
            eprintln!("SKIPPED {test}: {why}");
            None
        };
        if !nix::unistd::geteuid().is_root() {
            return skip("needs root (network namespaces, TUNSETIFF)");
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return skip("no /dev/net/tun");
        }
        let name = format!(
            "ward-nettest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Err(e) => skip(&format!("cannot run `ip`: {e}")),
            Ok(o) if !o.status.success() => skip(&format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Ok(_) => Some(Netns { name }),
        }
    }

    /// Runs `f` on a thread that joined this namespace (sockets and taps it creates live
    /// there), and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open the namespace");
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// `ip -n NAME args…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let o = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            o.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

/// A fresh directory for one test's socket, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ward-net-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn memfd(name: &std::ffi::CStr, len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::empty())
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("set_len");
    f
}

/// A running (or finished) worker, its stderr collected in the background; killed when
/// dropped if it is still running (a failing test must not leave it waiting in accept).
pub struct Worker {
    pub child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl Worker {
    /// Starts `ward-net` with `fds` at 3, 4, … and `args`.
    pub fn spawn(args: &[&str], fds: &[BorrowedFd<'_>], env: &[(&str, &str)]) -> Worker {
        let (child, stderr) = spawn(args, fds, env);
        Worker {
            child,
            stderr: Some(stderr),
        }
    }

    /// Waits up to `timeout` for the worker to exit (killing it if it does not); returns how
    /// it exited (`None`: it had to be killed) and its stderr.
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
    }
}

fn spawn(
    args: &[&str],
    fds: &[BorrowedFd<'_>],
    env: &[(&str, &str)],
) -> (Child, JoinHandle<String>) {
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
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
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
    let mut child = cmd.spawn().expect("spawn ward-net");
    drop(high);
    let mut err = child.stderr.take().expect("stderr pipe");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (child, reader)
}

/// `Seccomp:` and `Seccomp_filters:` of every thread of `pid`, with the thread's name.
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
