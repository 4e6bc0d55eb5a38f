//! Entering a process's confinement from inside it, first thing after exec, while it is
//! still single-threaded and before it reads anything it does not control:
//!
//! 1. rlimits (NOFILE, NPROC, MEMLOCK, CORE=0);
//! 2. its own uid and gid (the VM's), no supplementary groups, which drops every capability;
//!    the parent-death signal, which the kernel clears on a uid change, is set again;
//! 3. new namespaces: a user namespace first (made by that uid: the process holds capabilities
//!    only inside it, over namespaces it owns, never over the host's), then mount, ipc, uts,
//!    net (empty: loopback only), cgroup. The user namespace maps the VM's uid and gid to
//!    themselves and nothing else (`setgroups` denied);
//! 4. in the new mount namespace, a new root: an empty read-only tmpfs (pivot_root), so no
//!    host path exists for the process any more (it works on the descriptors it was given);
//!    then every capability the user namespace gave is dropped (bounding and ambient sets
//!    too);
//! 5. no_new_privs, and a Landlock domain that handles every filesystem and network right
//!    and allows none, scoped (abstract sockets, signals) to itself.
//!
//! Without a user namespace in the policy, the namespaces come first (they need root then)
//! and the uid after them.
//!
//! 6. with a pid namespace: the launcher made the process's next child the first of a new pid
//!    namespace (`unshare(CLONE_NEWPID)` before exec); the process forks, the child goes on as
//!    the worker (or core) as pid 1 of its own namespace, seeing no other process, and the
//!    parent, confined the same way, closes every descriptor, installs the `reaper` filter and
//!    only waits, ending as the child ends.
//!
//! The seccomp filter comes last, from the process's own code (`seccomp::apply_to_*`), once
//! its threads exist. Each step the policy marks `required` that cannot be applied is an error
//! (the process exits; the launcher reports it); a `preferred` step that cannot be applied is
//! reported in [`Report`].

use std::ffi::CStr;
use std::fmt;

use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{chdir, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
use serde::{Deserialize, Serialize};

use crate::seccomp::{Profile, SeccompMode};
use crate::vm::{Level, Namespace, ProcessPolicy};

/// What the launcher hands a process (`--confine JSON`): its kind's policy and the VM's ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    pub policy: ProcessPolicy,
    pub uid: u32,
    pub gid: u32,
    /// The launcher made this process's next child the first process of a new pid namespace
    /// (`unshare(CLONE_NEWPID)` before exec): fork into it (see [`enter`]).
    #[serde(default)]
    pub fork_into_pid_ns: bool,
    /// The process's seccomp mode, for the filter of the parent left behind by that fork.
    #[serde(default)]
    pub seccomp: SeccompMode,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Malformed confinement: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("Cannot set rlimit {0}")]
    Rlimit(&'static str, #[source] nix::Error),
    #[error("Cannot enter new namespaces ({0})")]
    Unshare(String, #[source] nix::Error),
    #[error("Cannot make a new empty root ({0})")]
    Root(&'static str, #[source] nix::Error),
    #[error("Cannot take uid {uid} and gid {gid} ({what})")]
    Identity {
        uid: u32,
        gid: u32,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("The launcher died while this process was being confined")]
    Orphaned,
    #[error("Cannot set the parent-death signal again")]
    DeathSignal(#[source] nix::Error),
    #[error("Landlock is required but {0}")]
    Landlock(String),
    #[error("Cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    #[error("uid {0} would be root: a confined process never runs as root")]
    RootUid(u32),
    #[error("Cannot fork into the new pid namespace")]
    Fork(#[source] nix::Error),
    #[error("Cannot map the uid and gid into the new user namespace ({0})")]
    UserMap(&'static str, #[source] std::io::Error),
    #[error("Cannot drop the capabilities of the user namespace")]
    Capabilities(#[source] caps::errors::CapsError),
}

/// What was applied, and what was not (only where the policy allowed that).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub applied: Vec<String>,
    pub not_applied: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "applied: {}", self.applied.join(", "))?;
        if !self.not_applied.is_empty() {
            write!(f, "; not applied: {}", self.not_applied.join(", "))?;
        }
        Ok(())
    }
}

impl Confinement {
    pub fn parse(json: &str) -> Result<Self, Error> {
        Ok(serde_json::from_str(json)?)
    }

    pub fn to_json(&self) -> String {
        // Plain data: serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The namespaces this process creates itself, with their clone flags (the pid namespace is
/// the launcher's to create, before exec; see [`Confinement::fork_into_pid_ns`]).
const SUPPORTED: [(Namespace, CloneFlags); 6] = [
    (Namespace::User, CloneFlags::CLONE_NEWUSER),
    (Namespace::Mount, CloneFlags::CLONE_NEWNS),
    (Namespace::Ipc, CloneFlags::CLONE_NEWIPC),
    (Namespace::Uts, CloneFlags::CLONE_NEWUTS),
    (Namespace::Net, CloneFlags::CLONE_NEWNET),
    (Namespace::Cgroup, CloneFlags::CLONE_NEWCGROUP),
];

/// Enters `c` (see the module documentation).
pub fn enter(c: &Confinement) -> Result<Report, Error> {
    // The launcher, for the parent-death check after the uid change.
    let parent = nix::unistd::getppid().as_raw();
    let p = &c.policy;
    let mut report = Report::default();
    if c.uid == 0 || c.gid == 0 {
        return Err(Error::RootUid(c.uid.min(c.gid)));
    }

    // 1. rlimits.
    for (name, res, value) in [
        ("NOFILE", Resource::RLIMIT_NOFILE, p.rlimits.nofile),
        ("NPROC", Resource::RLIMIT_NPROC, p.rlimits.nproc),
        ("MEMLOCK", Resource::RLIMIT_MEMLOCK, p.rlimits.memlock),
        ("CORE", Resource::RLIMIT_CORE, p.rlimits.core),
    ] {
        setrlimit(res, value, value).map_err(|e| Error::Rlimit(name, e))?;
    }
    report.applied.push("rlimits".into());

    // 2. and 3.: with a user namespace, the uid first, so that it makes the namespaces.
    let user_ns = p.namespaces.level.is_on() && p.namespaces.kinds.contains(&Namespace::User);
    if user_ns {
        identity(c, parent, &mut report)?;
    }
    if p.namespaces.level.is_on() {
        namespaces(c, &mut report)?;
    }
    if !user_ns {
        identity(c, parent, &mut report)?;
    }

    // 5. no_new_privs and Landlock.
    if p.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(Error::NoNewPrivs)?;
        report.applied.push("no_new_privs".into());
    }
    if p.landlock.is_on() {
        match landlock_nothing() {
            Ok(RulesetStatus::FullyEnforced) => report.applied.push("landlock".into()),
            Ok(RulesetStatus::PartiallyEnforced) => report
                .applied
                .push("landlock (partially: an older kernel ABI)".into()),
            Ok(RulesetStatus::NotEnforced) if p.landlock == Level::Required => {
                return Err(Error::Landlock("the kernel does not enforce it".into()));
            }
            Ok(RulesetStatus::NotEnforced) => report
                .not_applied
                .push("landlock: not supported by this kernel".into()),
            Err(e) if p.landlock == Level::Required => return Err(Error::Landlock(e)),
            Err(e) => report.not_applied.push(format!("landlock: {e}")),
        }
    }

    // 6. pid namespace: the fork's child is the namespace's first process and goes on as the
    // worker (or core); the parent, confined like it, waits and ends as the child ends.
    if c.fork_into_pid_ns {
        // SAFETY: the process is single-threaded here (enter's precondition: it runs first
        // thing in main), so the child may run any code after fork.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // Dies with the parent, which dies with the launcher.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(Error::DeathSignal)?;
                report.applied.push("pid namespace".into());
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => reap(child, c.seccomp),
            Err(e) if p.namespaces.level == Level::Required => return Err(Error::Fork(e)),
            Err(e) => report.not_applied.push(format!("pid namespace: {e}")),
        }
    }
    Ok(report)
}

/// Steps 3 and 4: the namespaces the policy lists (but the pid namespace, entered by forking),
/// the new root, and, in a user namespace, no capabilities left in it.
fn namespaces(c: &Confinement, report: &mut Report) -> Result<(), Error> {
    let p = &c.policy;
    let mut flags = CloneFlags::empty();
    let mut names = Vec::new();
    for ns in &p.namespaces.kinds {
        match SUPPORTED.iter().find(|(n, _)| n == ns) {
            Some((_, f)) => {
                flags |= *f;
                names.push(format!("{ns:?}").to_lowercase());
            }
            // Entered at the end, by forking (when the launcher prepared it).
            None if *ns == Namespace::Pid && c.fork_into_pid_ns => {}
            None => report
                .not_applied
                .push(format!("{} namespace", format!("{ns:?}").to_lowercase())),
        }
    }
    let user = flags.contains(CloneFlags::CLONE_NEWUSER);
    // The ids to map, read while they still mean something (in a new user namespace without
    // a map they read as the overflow id).
    let ids = (nix::unistd::geteuid(), nix::unistd::getegid());
    let entered = unshare(flags)
        .map_err(|e| Error::Unshare(names.join(", "), e))
        .and_then(|()| if user { map_ids(ids) } else { Ok(()) })
        .and_then(|()| {
            if flags.contains(CloneFlags::CLONE_NEWNS) {
                empty_root()?;
                names.push("empty root".into());
            }
            Ok(())
        })
        .and_then(|()| if user { drop_capabilities() } else { Ok(()) });
    match entered {
        Ok(()) => report
            .applied
            .push(format!("namespaces ({})", names.join(", "))),
        Err(e) if p.namespaces.level == Level::Required => return Err(e),
        Err(e) => report.not_applied.push(format!("namespaces: {e}")),
    }
    Ok(())
}

/// In a new user namespace: the process's uid and gid map to themselves, the only ids that
/// exist in it (an unprivileged process may map just its own), and `setgroups` is denied.
/// /proc/self is writable by the process only while it is dumpable, which the uid change made
/// it not: dumpable just for the writes.
fn map_ids((uid, gid): (Uid, Gid)) -> Result<(), Error> {
    let dumpable = |on| {
        nix::sys::prctl::set_dumpable(on)
            .map_err(|e| Error::UserMap("PR_SET_DUMPABLE", std::io::Error::from(e)))
    };
    dumpable(true)?;
    let written = [
        ("setgroups", "deny".to_string()),
        ("uid_map", format!("{uid} {uid} 1")),
        ("gid_map", format!("{gid} {gid} 1")),
    ]
    .into_iter()
    .try_for_each(|(file, line)| {
        std::fs::write(format!("/proc/self/{file}"), line).map_err(|e| Error::UserMap(file, e))
    });
    let undone = dumpable(false);
    written.and(undone)
}

/// Every capability the new user namespace gave the process (it needed them to make its
/// root), from every set: it keeps none, inside the namespace or out.
fn drop_capabilities() -> Result<(), Error> {
    use caps::CapSet;
    for set in [
        CapSet::Bounding,
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(Error::Capabilities)?;
    }
    Ok(())
}

/// Step 2: the VM's uid and gid, no supplementary groups, no capabilities; the parent-death
/// signal again.
fn identity(c: &Confinement, parent: i32, report: &mut Report) -> Result<(), Error> {
    let p = &c.policy;
    if !p.own_uid.is_on() {
        return Ok(());
    }
    let id_err = |what, source| Error::Identity {
        uid: c.uid,
        gid: c.gid,
        what,
        source,
    };
    let step = setgroups(&[])
        .map_err(|e| id_err("setgroups", e))
        .and_then(|()| {
            let g = Gid::from_raw(c.gid);
            setresgid(g, g, g).map_err(|e| id_err("setresgid", e))
        })
        .and_then(|()| {
            let u = Uid::from_raw(c.uid);
            setresuid(u, u, u).map_err(|e| id_err("setresuid", e))
        });
    match step {
        Ok(()) => {
            death_signal(parent)?;
            report
                .applied
                .push(format!("uid {} gid {}, no capabilities", c.uid, c.gid));
        }
        Err(e) if p.own_uid == Level::Required => return Err(e),
        Err(e) => report.not_applied.push(format!("own uid: {e}")),
    }
    Ok(())
}

/// The parent left outside the pid namespace: closes every descriptor it inherited (they are
/// the child's), installs the `reaper` filter, waits for the child and ends the same way: its
/// exit code, or its fatal signal raised again. Never returns.
fn reap(child: nix::unistd::Pid, mode: SeccompMode) -> ! {
    use nix::sys::wait::{waitpid, WaitStatus};
    // SAFETY: close_range on descriptors 3 and up; nothing in this process uses them any more
    // (it only waits from here on).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if crate::seccomp::apply_to_thread(Profile::Reaper, mode).is_err() {
        // Without its filter it must not go on: the child dies with it (parent-death signal).
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(1) };
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                // SAFETY: _exit ends the process at once.
                unsafe { libc::_exit(code) }
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                // SAFETY: the default action for the child's fatal signal, then the signal
                // raised on this process; _exit if it did not end it.
                unsafe {
                    libc::signal(sig as libc::c_int, libc::SIG_DFL);
                    libc::kill(libc::getpid(), sig as libc::c_int);
                    libc::_exit(128 + sig as libc::c_int)
                }
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            // SAFETY: _exit ends the process at once.
            Err(_) => unsafe { libc::_exit(1) },
        }
    }
}

/// Directories one of which the new root's tmpfs is mounted on (in the process's own mount
/// namespace only; the host's stays as it is).
const ROOT_MOUNT_POINTS: [&str; 3] = ["/tmp", "/mnt", "/run"];

/// In the new mount namespace: nothing propagates back to the host, and the root becomes an
/// empty read-only tmpfs; the old root is detached.
fn empty_root() -> Result<(), Error> {
    let none: Option<&CStr> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| Error::Root("make the mounts private", e))?;
    let at = ROOT_MOUNT_POINTS
        .into_iter()
        .find(|d| std::path::Path::new(d).is_dir())
        .ok_or(Error::Root(
            "find a directory to mount it on",
            nix::Error::ENOENT,
        ))?;
    mount(
        Some(c"tmpfs"),
        at,
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(c"size=4k,mode=0555"),
    )
    .map_err(|e| Error::Root("mount a tmpfs", e))?;
    // pivot_root(".", ".") stacks the old root on the tmpfs, and detaching "." removes it from
    // this namespace.
    chdir(at).map_err(|e| Error::Root("chdir", e))?;
    pivot_root(".", ".").map_err(|e| Error::Root("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Error::Root("detach the old root", e))?;
    chdir("/").map_err(|e| Error::Root("chdir", e))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| Error::Root("make the root read-only", e))
}

/// PR_SET_PDEATHSIG again (a uid change clears it), and the launcher still there.
fn death_signal(parent: i32) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(Error::DeathSignal)?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(Error::Orphaned);
    }
    Ok(())
}

/// A Landlock domain that handles every right the crate knows and grants none: no path can be
/// opened, no TCP port bound or connected, no abstract socket outside the domain reached, no
/// process outside it signalled. Best effort on older kernels (the status says how much).
fn landlock_nothing() -> Result<RulesetStatus, String> {
    let abi = ABI::V6;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    Ok(status.ruleset)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::Command;

    use super::*;
    use crate::vm::VmPolicy;

    /// Child half of `entering_confines_the_process`: runs only when re-executed by it.
    #[test]
    fn sandbox_child() {
        let Ok(json) = std::env::var("WARD_SANDBOX_TEST") else {
            return;
        };
        let c = Confinement::parse(&json).unwrap();
        // The test runs on a thread of its own, and a multi-threaded process cannot make a
        // user namespace: a forked child (single-threaded) enters the confinement.
        // SAFETY: the child only runs this test's code, printing and exiting; the harness's
        // other thread is idle, waiting for this one.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert!(
                    matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                    "{st:?}"
                );
                return;
            }
            nix::unistd::ForkResult::Child => {}
        }
        let report = match enter(&c) {
            Ok(r) => r,
            Err(e) => {
                println!("ENTER FAILED {e:?}");
                std::process::exit(1);
            }
        };
        println!("REPORT {report}");
        println!("UID {} {}", Uid::current(), Gid::current());
        let root: Vec<_> = std::fs::read_dir("/").map_or(Vec::new(), |d| d.flatten().collect());
        println!("ROOT {}", root.len());
        println!("PASSWD {}", std::fs::read("/etc/passwd").is_ok());
        println!("WRITE {}", std::fs::write("/x", b"x").is_ok());
        let mut ifaces = BTreeSet::new();
        // SAFETY: if_nameindex returns NULL or an array ended by an entry with index 0, whose
        // names are NUL-terminated strings; it is read up to that entry and freed once.
        unsafe {
            let list = libc::if_nameindex();
            let mut i = 0;
            while !list.is_null() && (*list.add(i)).if_index != 0 {
                ifaces.insert(
                    CStr::from_ptr((*list.add(i)).if_name)
                        .to_string_lossy()
                        .into_owned(),
                );
                i += 1;
            }
            if !list.is_null() {
                libc::if_freenameindex(list);
            }
        }
        println!("IFACES {ifaces:?}");
        // The capability sets this process holds (in its user namespace).
        let caps: Vec<usize> = [
            caps::CapSet::Effective,
            caps::CapSet::Permitted,
            caps::CapSet::Bounding,
            caps::CapSet::Ambient,
        ]
        .into_iter()
        .map(|set| caps::read(None, set).map_or(usize::MAX, |c| c.len()))
        .collect();
        println!(
            "CAPS {}",
            caps.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "SETUID0 {}",
            setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok()
        );
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        std::process::exit(0);
    }

    /// Root only: enters the default worker confinement in a child process and looks at it from
    /// inside.
    #[test]
    fn entering_confines_the_process() {
        if !Uid::effective().is_root() {
            eprintln!("\n*** SKIPPED entering_confines_the_process: needs root ***\n");
            return;
        }
        let c = Confinement {
            policy: VmPolicy::default().block,
            uid: 912_345,
            gid: 912_345,
            fork_into_pid_ns: false,
            seccomp: SeccompMode::Enforce,
        };
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sandbox::tests::sandbox_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WARD_SANDBOX_TEST", c.to_json())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "UID 912345 912345",
            "ROOT 0",
            "PASSWD false",
            "WRITE false",
            "IFACES {\"lo\"}",
            "SETUID0 false",
            "namespaces (user, mount, ipc, uts, net, cgroup, empty root)",
            "no_new_privs",
            "landlock",
            "not applied: pid namespace",
            "CAPS 0 0 0 0",
        ] {
            assert!(text.contains(want), "{want:?} in:\n{text}");
        }
    }

    #[test]
    fn root_ids_are_refused() {
        let c = Confinement {
            policy: VmPolicy::default().net,
            uid: 0,
            gid: 5,
            fork_into_pid_ns: false,
            seccomp: SeccompMode::Enforce,
        };
        assert!(matches!(enter(&c), Err(Error::RootUid(0))));
    }
}
