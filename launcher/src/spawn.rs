//! Spawning a ward process: exec of a separate binary, exactly the descriptors it needs at
//! fixed numbers (3, 4, …), an empty environment but for the log filter, and a parent-death
//! signal so that no child outlives the launcher.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg};

use crate::{Error, Result};

/// First descriptor number children receive their descriptors at.
pub const FIRST_FD: RawFd = 3;

pub struct Spawn<'a> {
    pub binary: &'a Path,
    pub args: Vec<String>,
    /// Given to the child as 3, 4, … in this order.
    pub fds: Vec<BorrowedFd<'a>>,
    /// Label for errors.
    pub what: String,
    /// The confinement the process enters first (`--confine JSON`), if any.
    pub confine: Option<String>,
    /// Make the process's next child the first of a new pid namespace (the confinement then
    /// says `fork_into_pid_ns`).
    pub new_pid_ns: bool,
    /// The VM cgroup's `cgroup.procs`, open for writing: the process joins the group before
    /// exec.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// The SELinux context the process is to run in (sVirt), set as the exec context.
    pub exec_context: Option<&'a CStr>,
}

pub fn spawn(s: Spawn<'_>) -> Result<Child> {
    // Copies above any number the child will use, so that placing them at 3, 4, … in the
    // child never overwrites one that is still to be placed. They are close-on-exec in the
    // parent; dup2 in the child clears that flag on the target.
    let high: Vec<OwnedFd> = s
        .fds
        .iter()
        .map(|fd| {
            fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(100))
                // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that we now own.
                .map(|n| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
                .map_err(|e| Error::Spawn(s.what.clone(), e.into()))
        })
        .collect::<Result<_>>()?;
    let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    let parent = std::process::id() as libc::pid_t;
    let new_pid_ns = s.new_pid_ns;
    let cgroup_procs = s.cgroup_procs.map(|f| f.as_raw_fd());
    // Owned: the closure outlives `s`. Made before the fork, like everything it uses.
    let exec_context = s.exec_context.map(CStr::to_owned);
    let mut cmd = Command::new(s.binary);
    cmd.args(&s.args).env_clear().stdin(Stdio::null());
    if let Some(c) = &s.confine {
        cmd.arg("--confine").arg(c);
    }
    // Not RUST_BACKTRACE: printing a backtrace opens the binary, which confined processes may
    // not do, so a panic would show up as SIGSYS instead of an abort.
    if let Some(v) = std::env::var_os(ward_ipc::log::ENV) {
        cmd.env(ward_ipc::log::ENV, v);
    }
    // Debug builds only: the hostile-worker tests' request (see ward_worker::hostile).
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var_os("WARD_HOSTILE_TEST") {
        cmd.env("WARD_HOSTILE_TEST", v);
    }
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid, sigprocmask, setpgid, write, unshare, open, close, dup2) on descriptors
    // that exist and NUL-terminated strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Signals the launcher blocks (it takes them through a signalfd) must not stay
            // blocked in the child, and terminal signals (Ctrl-C) go to the launcher alone,
            // which then ends the VM in order.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = cgroup_procs {
                // "0": the writing process itself moves into the group.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(ctx) = &exec_context {
                // What libselinux's setexeccon does: the context the next exec enters.
                let fd = libc::open(
                    c"/proc/thread-self/attr/exec".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let len = ctx.to_bytes_with_nul().len();
                let written = libc::write(fd, ctx.as_ptr().cast(), len);
                libc::close(fd);
                if written != len as isize {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if new_pid_ns && libc::unshare(libc::CLONE_NEWPID) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, FIRST_FD + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| Error::Spawn(s.what.clone(), e))?;
    drop(high);
    Ok(child)
}
