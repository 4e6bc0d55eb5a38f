//! Test-only (debug builds; absent from release builds): a worker that, once confined, tries
//! to break out, for tests/tests/hostile_worker.rs to watch from outside.
//!
//! `WARD_HOSTILE_TEST=KIND:ACTION[:ARG]` in the launcher's environment (debug builds forward it
//! to the workers) makes the worker of kind `KIND` (`block`, `console`, `net`), right after its
//! seccomp filter is installed, attempt `ACTION`:
//!
//! | action | attempt |
//! |---|---|
//! | `execve` | `execve("/bin/true")` |
//! | `open:PATH` | `open(PATH, O_RDONLY)` (a host file, another VM's image) |
//! | `inet` | an IPv4 TCP socket, then a connection to 127.0.0.1:22 |
//! | `kill:PID` | `kill(PID, SIGKILL)` (another VM's core or worker) |
//! | `ptrace:PID` | `ptrace(PTRACE_ATTACH, PID)` |
//! | `mount` | `mount("tmpfs", "/", "tmpfs")` |
//! | `rlimit` | raising its RLIMIT_NOFILE above its hard limit |
//! | `cgroup` | `open("/sys/fs/cgroup/cgroup.procs", O_WRONLY)` and writing its pid |
//! | `thread` | starting a thread (what a worker's main thread may do, its queue threads not) |
//!
//! `KIND:queue:ACTION[:ARG]` makes the attempt on a queue thread instead, right after that
//! thread added its own filter (`queue_thread::enter`, on its first event).
//!
//! A filter that forbids the syscall kills the worker (SIGSYS). Otherwise the worker logs
//! `hostile test: ACTION denied (ERRNO)` and exits with [`DENIED`], or logs
//! `hostile test: ACTION SUCCEEDED` and exits with [`SUCCEEDED`]: either way the launcher
//! reports the worker's exit, and the test reads which.

use std::ffi::CString;
use std::os::fd::AsRawFd;

use tracing::error;

/// The environment variable that names the attempt.
pub const ENV: &str = "WARD_HOSTILE_TEST";
/// Exit code after a denied attempt.
pub const DENIED: i32 = 98;
/// Exit code after an attempt that got through.
pub const SUCCEEDED: i32 = 99;

/// Makes the attempt `WARD_HOSTILE_TEST` names for `kind`, if any; does not return then.
pub fn attempt(kind: &str) {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    if parts.next() != Some(kind) {
        return;
    }
    let action = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    if action == "queue" {
        return;
    }
    conclude(action, run(action, arg));
}

/// [`attempt`] for `KIND:queue:ACTION[:ARG]`, on the queue thread that calls it.
pub fn attempt_on_queue_thread(kind: &str) {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let mut parts = spec.splitn(4, ':');
    if parts.next() != Some(kind) || parts.next() != Some("queue") {
        return;
    }
    let action = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    conclude(action, run(action, arg));
}

fn conclude(action: &str, result: Result<(), nix::Error>) {
    match result {
        Ok(()) => {
            error!("hostile test: {action} SUCCEEDED");
            std::process::exit(SUCCEEDED);
        }
        Err(e) => {
            error!("hostile test: {action} denied ({e})");
            std::process::exit(DENIED);
        }
    }
}

fn run(action: &str, arg: &str) -> Result<(), nix::Error> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use nix::sys::stat::Mode;
    use nix::unistd::{execve, write, Pid};

    let pid = || {
        arg.parse::<i32>()
            .map(Pid::from_raw)
            .map_err(|_| nix::Error::EINVAL)
    };
    match action {
        "execve" => {
            let p = CString::new("/bin/true").map_err(|_| nix::Error::EINVAL)?;
            execve::<CString, CString>(&p, &[], &[]).map(|_| ())
        }
        "open" => open(arg, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map(|_| ()),
        "inet" => {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 22))
        }
        "kill" => nix::sys::signal::kill(pid()?, nix::sys::signal::Signal::SIGKILL),
        "ptrace" => nix::sys::ptrace::attach(pid()?),
        "mount" => nix::mount::mount(
            Some("tmpfs"),
            "/",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ),
        "rlimit" => {
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            setrlimit(Resource::RLIMIT_NOFILE, hard + 1, hard + 1)
        }
        "cgroup" => {
            let fd = open(
                "/sys/fs/cgroup/cgroup.procs",
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            // SAFETY: `open` returned a fresh descriptor that nothing else owns.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            write(&fd, std::process::id().to_string().as_bytes()).map(|_| ())
        }
        "thread" => std::thread::Builder::new()
            .spawn(|| ())
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?
            .join()
            .map_err(|_| nix::Error::EINVAL),
        _ => Err(nix::Error::EINVAL),
    }
}
