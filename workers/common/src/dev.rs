//! Helpers of the workers' integration tests (feature `test-support`): spawning a worker binary
//! the way the launcher does (its descriptors at 3, 4, …, nothing else but stdio, an empty
//! environment), reading its threads' seccomp state, and the frontend's half of a vhost-user
//! session: negotiation, guest memory in a shared memfd, and split virtqueues driven by hand.
//!
//! Test code: it panics on every failure.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMem;

/// VHOST_USER_F_PROTOCOL_FEATURES, which every worker offers.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;

/// A fresh directory `<prefix>-<tag>-<pid>-<n>` in the temporary directory, removed when
/// dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str, tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
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

/// An anonymous file of `len` bytes.
pub fn memfd(name: &std::ffi::CStr, len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::empty())
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("set_len");
    f
}

/// Starts `bin` with `fds` at 3, 4, …, `args` and only the variables `env`. Returns the child
/// and a thread that collects its stderr.
pub fn spawn(
    bin: &str,
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
    let mut cmd = Command::new(bin);
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
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    drop(high);
    let mut err = child.stderr.take().expect("stderr pipe");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (child, reader)
}

/// A running (or finished) worker, its stderr collected in the background; killed when
/// dropped if it is still running (a failing test must not leave it waiting in accept).
pub struct Process {
    pub child: Child,
    stderr: Option<JoinHandle<String>>,
    /// The command line, for messages.
    what: String,
}

impl Process {
    /// [`spawn`]s `bin`.
    pub fn spawn(
        bin: &str,
        args: &[&str],
        fds: &[BorrowedFd<'_>],
        env: &[(&str, &str)],
    ) -> Process {
        let (child, stderr) = spawn(bin, args, fds, env);
        Process {
            child,
            stderr: Some(stderr),
            what: format!("{bin} {args:?}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the worker to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the worker to exit (killing it if it does not); returns how
    /// it exited (`None`: it had to be killed) and everything it wrote to stderr.
    pub fn finish(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let st = self.wait_exit(timeout);
        if st.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (st, log)
    }

    /// For a worker that cannot start: waits up to 10 s for it to exit (it must), and returns
    /// its exit code (`None`: killed by a signal) and everything it wrote to stderr.
    pub fn exit_code(&mut self) -> (Option<i32>, String) {
        let (st, log) = self.finish(Duration::from_secs(10));
        let st = st.unwrap_or_else(|| panic!("{} did not exit; log:\n{log}", self.what));
        (st.code(), log)
    }

    /// The end of a session, once the frontend disconnected: waits up to 10 s for the worker,
    /// which must exit with status 0, and in particular not die by SIGSYS (its policy lacks a
    /// syscall). Returns everything it wrote to stderr.
    pub fn finish_clean(&mut self) -> String {
        let (st, log) = self.finish(Duration::from_secs(10));
        let st = st.unwrap_or_else(|| panic!("worker did not exit; log:\n{log}"));
        assert_ne!(
            st.signal(),
            Some(libc::SIGSYS),
            "killed by seccomp: the policy lacks a syscall; log:\n{log}"
        );
        assert_eq!(st.code(), Some(0), "{st}; log:\n{log}");
        log
    }
}

/// Asserts that the counters the worker logged when its device stopped (the `device stopped`
/// line of `log`) include every one of `counters`, written `"name":value`. Returns that line.
pub fn assert_counters<'a>(log: &'a str, counters: &[&str]) -> &'a str {
    let line = log
        .lines()
        .find(|l| l.contains("device stopped"))
        .unwrap_or_else(|| panic!("no metrics line; log:\n{log}"));
    for counter in counters {
        assert!(line.contains(counter), "{counter} in {line}");
    }
    line
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

/// Asserts that every thread of `pid` (the main thread, the vring thread and the frontend's
/// request thread at least) runs under the process's seccomp filter, and the vring (queue)
/// thread, which has handled an event by now, under its own too; under none when the filter
/// is off (the sandbox-off twin).
pub fn assert_confined(pid: u32, enforced: bool) {
    let threads = thread_seccomp(pid);
    assert!(threads.len() >= 3, "{threads:?}");
    assert!(
        threads.iter().any(|(name, _, _)| name == "vring_worker"),
        "{threads:?}"
    );
    for (name, mode, filters) in &threads {
        if enforced {
            let want = if name == "vring_worker" { "2" } else { "1" };
            assert_eq!(mode, "2", "thread {name}: {threads:?}");
            assert_eq!(filters, want, "thread {name}: {threads:?}");
        } else {
            assert_eq!(mode, "0", "thread {name}: {threads:?}");
        }
    }
}

/// The start of every session: SET_OWNER, GET_FEATURES (which must offer
/// VHOST_USER_F_PROTOCOL_FEATURES), and the protocol features CONFIG and MQ, which every worker
/// offers, taken with REPLY_ACK. Returns the device's features; the caller checks them, asks
/// for the queue count and sets the features.
pub fn negotiate(fe: &mut Frontend) -> u64 {
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    assert_ne!(features & PROTOCOL_FEATURES, 0);
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
    fe.set_protocol_features(
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK,
    )
    .unwrap();
    features
}

/// Guest memory: `size` bytes at guest address 0 in a memfd, shared with the worker by
/// SET_MEM_TABLE. Returns the memory and its address in this process (where the vring
/// addresses point).
pub fn share_memory(fe: &mut Frontend, size: usize) -> (GuestMem, u64) {
    let memfd = memfd(c"guest-ram", size as u64);
    let fd = memfd.as_raw_fd();
    let mem = GuestMem::from_ranges_with_files(&[(
        GuestAddress(0),
        size,
        Some(FileOffset::new(memfd, 0)),
    )])
    .unwrap();
    let region = mem.find_region(GuestAddress(0)).unwrap();
    let host = region.as_ptr() as u64;
    let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
    assert_eq!(info.mmap_handle, fd);
    fe.set_mem_table(&[info]).unwrap();
    (mem, host)
}

/// The driver half of one split virtqueue of `size` entries in guest memory: descriptors at
/// `base`, the available ring at `base + 0x1000`, the used ring at `base + 0x2000`. It writes
/// chains in order from descriptor 0 (wrapping round when a chain no longer fits).
pub struct SplitRing {
    pub base: u64,
    pub size: u16,
    pub kick: EventFd,
    pub call: EventFd,
    pub next_desc: u16,
    /// The available index published last.
    pub avail_idx: u16,
    /// The used index seen last.
    pub used_seen: u16,
}

/// `VRING_DESC_F_NEXT`.
const NEXT: u16 = 1;

impl SplitRing {
    pub fn new(base: u64, size: u16) -> SplitRing {
        SplitRing {
            base,
            size,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn avail(&self) -> u64 {
        self.base + 0x1000
    }

    pub fn used(&self) -> u64 {
        self.base + 0x2000
    }

    /// SET_VRING_NUM, _ADDR, _BASE, _CALL, _KICK and _ENABLE for queue `index`; `host` is the
    /// address of guest memory in this process.
    pub fn start(&self, fe: &mut Frontend, index: usize, host: u64) {
        fe.set_vring_num(index, self.size).unwrap();
        fe.set_vring_addr(
            index,
            &VringConfigData {
                queue_max_size: self.size,
                queue_size: self.size,
                flags: 0,
                desc_table_addr: host + self.base,
                used_ring_addr: host + self.used(),
                avail_ring_addr: host + self.avail(),
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(index, 0).unwrap();
        fe.set_vring_call(index, &self.call).unwrap();
        fe.set_vring_kick(index, &self.kick).unwrap();
        fe.set_vring_enable(index, true).unwrap();
    }

    /// Writes descriptor `index`.
    pub fn desc(&self, mem: &GuestMem, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.base + 16 * u64::from(index));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Places a chain of (addr, len, flags) parts, linked in order, and publishes it; returns
    /// its head.
    pub fn chain(&mut self, mem: &GuestMem, parts: &[(u64, u32, u16)]) -> u16 {
        let n = u16::try_from(parts.len()).unwrap();
        if self.next_desc + n > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in parts.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == parts.len();
            let flags = if last { flags } else { flags | NEXT };
            self.desc(mem, idx, addr, len, flags, if last { 0 } else { idx + 1 });
        }
        self.next_desc += n;
        self.publish(mem, head);
        head
    }

    /// Makes the chain at `head` available.
    pub fn publish(&mut self, mem: &GuestMem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail() + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx,
            GuestAddress(self.avail() + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Asks for a signal at the next completion (EVENT_IDX `used_event`) and kicks.
    pub fn kick(&self, mem: &GuestMem) {
        mem.store(
            self.used_seen,
            GuestAddress(self.avail() + 4 + 2 * u64::from(self.size)),
            Ordering::Release,
        )
        .unwrap();
        self.kick.write(1).unwrap();
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMem) -> u16 {
        mem.load(GuestAddress(self.used() + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Reads the next used element, (id, length), and moves past it.
    pub fn next_used(&mut self, mem: &GuestMem) -> (u32, u32) {
        let elem = self.used() + 4 + 8 * u64::from(self.used_seen % self.size);
        self.used_seen = self.used_seen.wrapping_add(1);
        (
            mem.read_obj(GuestAddress(elem)).unwrap(),
            mem.read_obj(GuestAddress(elem + 4)).unwrap(),
        )
    }
}
