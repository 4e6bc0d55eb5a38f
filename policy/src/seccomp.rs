//! Seccomp profiles, embedded as BPF, and installing them.

use seccompiler::BpfProgram;
pub use ward_ipc::core::SeccompMode;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/filters.rs"));
}

/// Every process or thread kind that runs under its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The block worker process: every thread, and all the main and vhost-user request
    /// threads get.
    Block,
    /// A queue thread of the block worker, on top of [`Profile::Block`].
    BlockQueue,
    /// The console worker process (see [`Profile::Block`]).
    Console,
    /// A queue thread of the console worker, on top of [`Profile::Console`].
    ConsoleQueue,
    /// The core's main thread: event loop, control channel, devices that live in the core.
    CoreMain,
    /// A vCPU thread of the core.
    CoreVcpu,
    /// The net worker process (see [`Profile::Block`]).
    Net,
    /// A queue thread of the net worker, on top of [`Profile::Net`].
    NetQueue,
    /// The parent a process leaves behind when it forks into its own pid namespace.
    Reaper,
}

impl Profile {
    pub const ALL: &'static [Profile] = &[
        Profile::Block,
        Profile::BlockQueue,
        Profile::Console,
        Profile::ConsoleQueue,
        Profile::CoreMain,
        Profile::CoreVcpu,
        Profile::Net,
        Profile::NetQueue,
        Profile::Reaper,
    ];

    /// The filter's name in `seccomp/filters.json`.
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Block => "block",
            Profile::BlockQueue => "block_queue",
            Profile::Console => "console",
            Profile::ConsoleQueue => "console_queue",
            Profile::CoreMain => "core_main",
            Profile::CoreVcpu => "core_vcpu",
            Profile::Net => "net",
            Profile::NetQueue => "net_queue",
            Profile::Reaper => "reaper",
        }
    }

    /// The filter a worker's queue threads add to the process's, for a worker's profile.
    pub const fn queue(self) -> Option<Profile> {
        match self {
            Profile::Block => Some(Profile::BlockQueue),
            Profile::Console => Some(Profile::ConsoleQueue),
            Profile::Net => Some(Profile::NetQueue),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("No seccomp filter named {0} for this architecture")]
    Missing(&'static str),
    #[error("Cannot install seccomp filter {0}")]
    Apply(&'static str, #[source] seccompiler::Error),
}

#[cfg(target_arch = "x86_64")]
fn table() -> &'static [(&'static str, Insns, Insns)] {
    generated::X86_64_FILTERS
}

#[cfg(target_arch = "x86_64")]
fn syscall_table() -> &'static [(&'static str, &'static [&'static str])] {
    generated::X86_64_SYSCALLS
}

type Insns = &'static [generated::Insn];

/// The syscalls `profile`'s filter allows (some only with the arguments its rules name),
/// sorted.
pub fn allowed_syscalls(profile: Profile) -> &'static [&'static str] {
    syscall_table()
        .iter()
        .find(|(n, _)| *n == profile.name())
        .map_or(&[], |(_, s)| s)
}

/// The compiled program for `profile`, or `None` when `mode` is [`SeccompMode::Off`].
pub fn program(profile: Profile, mode: SeccompMode) -> Result<Option<BpfProgram>, Error> {
    let (_, kill, log) = table()
        .iter()
        .find(|(n, _, _)| *n == profile.name())
        .ok_or(Error::Missing(profile.name()))?;
    let insns = match mode {
        SeccompMode::Enforce => kill,
        SeccompMode::Log => log,
        SeccompMode::Off => return Ok(None),
    };
    Ok(Some(
        insns
            .iter()
            .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
            .collect(),
    ))
}

/// Installs `profile` on the calling thread only (per-thread filters in the core).
pub fn apply_to_thread(profile: Profile, mode: SeccompMode) -> Result<(), Error> {
    if let Some(prog) = program(profile, mode)? {
        seccompiler::apply_filter(&prog).map_err(|e| Error::Apply(profile.name(), e))?;
    }
    Ok(())
}

/// Installs `profile` on every thread of the process (TSYNC), for single-role workers whose
/// libraries start threads of their own before guest data arrives.
pub fn apply_to_process(profile: Profile, mode: SeccompMode) -> Result<(), Error> {
    if let Some(prog) = program(profile, mode)? {
        seccompiler::apply_filter_all_threads(&prog)
            .map_err(|e| Error::Apply(profile.name(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn every_profile_lists_its_syscalls() {
        for p in Profile::ALL {
            let s = allowed_syscalls(*p);
            let least = if *p == Profile::Reaper { 5 } else { 19 };
            assert!(s.len() > least, "{}: {s:?}", p.name());
            assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
            assert!(!s.contains(&"execve") && !s.contains(&"socket"), "{s:?}");
        }
        assert!(allowed_syscalls(Profile::CoreVcpu).contains(&"ioctl"));
        assert!(!allowed_syscalls(Profile::Block).contains(&"ioctl"));
        // Queue threads start no threads and take no messages from the frontend; the vCPU
        // threads wait on nothing but KVM_RUN.
        for p in [
            Profile::BlockQueue,
            Profile::NetQueue,
            Profile::ConsoleQueue,
        ] {
            let s = allowed_syscalls(p);
            for no in [
                "clone", "clone3", "recvmsg", "sendmsg", "seccomp", "ioctl", "prctl",
            ] {
                assert!(!s.contains(&no), "{} allows {no}", p.name());
            }
        }
        let vcpu = allowed_syscalls(Profile::CoreVcpu);
        for no in ["epoll_wait", "read", "poll", "clone3", "accept4"] {
            assert!(!vcpu.contains(&no), "the vCPU filter allows {no}");
        }
    }

    #[test]
    fn every_profile_has_a_filter_in_both_modes() {
        for p in Profile::ALL {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let prog = program(*p, mode).unwrap().unwrap();
                assert!(prog.len() > 10, "{} is suspiciously short", p.name());
            }
            assert!(program(*p, SeccompMode::Off).unwrap().is_none());
        }
    }

    /// Child half of `forbidden_syscall_kills`: runs only when re-executed by it.
    #[test]
    fn teeth_child() {
        let Ok(name) = std::env::var("WARD_TEETH_PROFILE") else {
            return;
        };
        let profile = *Profile::ALL.iter().find(|p| p.name() == name).unwrap();
        let syscall = std::env::var("WARD_TEETH_SYSCALL").unwrap_or_default();
        apply_to_thread(profile, SeccompMode::Enforce).unwrap();
        let ret = match syscall.as_str() {
            // SAFETY: plain syscalls with constant, valid arguments (a NUL-terminated path, a
            // NULL argv and envp); each is expected to kill us.
            "openat" => unsafe { libc::openat(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0) },
            // SAFETY: as above.
            "execve" => unsafe {
                libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null())
            },
            // SAFETY: as above.
            _ => unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) },
        };
        // Only reached if the filter let the call through.
        println!("{syscall} returned {ret}");
        std::process::exit(0);
    }

    /// Teeth: under every profile, syscalls none of them allows (an IPv4 socket; opening a
    /// path; exec) kill with SIGSYS, while the same child without the filter exits normally.
    #[test]
    fn forbidden_syscall_kills() {
        let me = std::env::current_exe().unwrap();
        for p in Profile::ALL {
            for syscall in ["socket", "openat", "execve"] {
                let st = Command::new(&me)
                    .args([
                        "--exact",
                        "seccomp::tests::teeth_child",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("WARD_TEETH_PROFILE", p.name())
                    .env("WARD_TEETH_SYSCALL", syscall)
                    .output()
                    .unwrap();
                assert_eq!(
                    st.status.signal(),
                    Some(libc::SIGSYS),
                    "{} {syscall}: {:?}",
                    p.name(),
                    st
                );
            }
        }
        let st = Command::new(&me)
            .args(["--exact", "seccomp::tests::teeth_child", "--nocapture"])
            .output()
            .unwrap();
        assert!(st.status.success());
    }
}
