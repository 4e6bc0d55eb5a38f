//! Helpers of the integration tests: a network namespace the test creates, owns and deletes
//! (even when the test fails), work done inside it by a thread that `setns`-ed into it, and
//! spawning the real `ward-net` binary the way the launcher does (its socket and tap as
//! descriptors 3 and 4). No test sends a frame outside a namespace it created.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

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

pub use ward_worker::dev::{Process, TempDir};

/// A fresh directory for one test's socket, removed when dropped.
pub fn temp_dir(tag: &str) -> TempDir {
    TempDir::new("ward-net", tag)
}

/// Starts `ward-net` with `fds` at 3, 4, … and `args`; killed when dropped if it is still
/// running (a failing test must not leave it waiting in accept).
pub fn spawn(args: &[&str], fds: &[BorrowedFd<'_>], env: &[(&str, &str)]) -> Process {
    Process::spawn(BIN, args, fds, env)
}
