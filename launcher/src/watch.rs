//! Starting the processes of one VM and watching them until the VM ends.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{info, warn};
use ward_ipc::channel::Channel;
use ward_ipc::core::{
    CoreConfig, CoreToLauncher, DeviceConfig, ExitReason, LauncherToCore, SeccompMode,
};
use ward_ipc::FdIndex;
use ward_policy::sandbox::Confinement;
use ward_policy::vm::Kind;

use crate::runtime::{default_root, RuntimeDir};
use crate::spawn::{spawn, Spawn, FIRST_FD};
use crate::workers::{start_block, start_console, start_net, Worker, WorkerOpts};
use crate::{cgroup, identity};
use crate::{disk_name, Console, Error, Result, VmSpec};

/// How a VM ended, as the launcher saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The guest reset or rebooted.
    GuestReset,
    /// The guest powered off.
    GuestShutdown,
    /// The user stopped it (SIGINT, SIGTERM, SIGHUP).
    Stopped(String),
    /// A worker died; the VM was stopped. `device` says which ("disk vda", "console").
    WorkerLost { device: String, detail: String },
    /// The core failed (or died).
    Failed(String),
}

impl Outcome {
    /// True when the guest ended the VM itself.
    pub fn is_guest_exit(&self) -> bool {
        matches!(self, Outcome::GuestReset | Outcome::GuestShutdown)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::GuestReset => f.write_str("guest reset"),
            Outcome::GuestShutdown => f.write_str("guest powered off"),
            Outcome::Stopped(why) => write!(f, "stopped by {why}"),
            Outcome::WorkerLost { device, detail } => {
                write!(f, "worker for {device} died ({detail}); VM stopped")
            }
            Outcome::Failed(e) => write!(f, "VM failed: {e}"),
        }
    }
}

fn find_binary(spec: &VmSpec, name: &'static str) -> Result<PathBuf> {
    let dir = match &spec.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default(),
    };
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Binary(name, dir))
    }
}

fn open(path: &Path, what: &'static str, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| Error::Open {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// Opens a disk image and locks it: exclusively when writable, shared when read-only, so two
/// VMs never write one image.
pub(crate) fn open_disk(path: &Path, readonly: bool) -> Result<File> {
    let f = open(path, "disk image", !readonly)?;
    let op = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(Error::Locked(path.to_path_buf()));
    }
    Ok(f)
}

/// The image's format and, for qcow2, its backing chain opened read-only: the worker gets
/// these descriptors by name, since it may not open paths itself. Opening the chain here also
/// validates every image in it before any process starts. Relative backing names are taken
/// relative to the disk's directory.
///
/// A format read from the image's own header is not trusted with backing files: a guest can
/// write a qcow2 header naming any host file onto a raw disk, and a later boot would hand that
/// file to the worker. Backing files are followed only when the user said `format=qcow2`.
pub(crate) fn backing_chain(
    path: &Path,
    image: &File,
    format: Option<ward_image::Format>,
) -> Result<(ward_image::Format, Vec<(String, File)>)> {
    let bad = |e| Error::Image(path.to_path_buf(), e);
    let probed = format.is_none();
    let format = match format {
        Some(f) => f,
        None => ward_image::detect_format(image).map_err(bad)?,
    };
    let mut chain = Vec::new();
    let mut refused = None;
    let mut locked = None;
    if format == ward_image::Format::Qcow2 {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let copy = image.try_clone().map_err(Error::Wait)?;
        let opened = ward_image::open(copy, Some(format), true, &mut |name: &str| {
            if probed {
                refused = Some(name.to_string());
                return Err(std::io::ErrorKind::PermissionDenied.into());
            }
            let p = Path::new(name);
            let full = if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            };
            let f = open(&full, "backing file", false).map_err(std::io::Error::other)?;
            // Shared, like the read-only disks: nobody may write a backing file in use.
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
                locked = Some(full);
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            chain.push((name.to_string(), f.try_clone()?));
            Ok(f)
        });
        if let Some(backing) = refused {
            return Err(Error::ProbedBacking(path.to_path_buf(), backing));
        }
        if let Some(backing) = locked {
            return Err(Error::Locked(backing));
        }
        opened.map_err(bad)?;
    }
    Ok((format, chain))
}

pub fn run(spec: &VmSpec) -> Result<Outcome> {
    let vmm_bin = find_binary(spec, "ward-vmm")?;
    let block_bin = if spec.disks.is_empty() {
        None
    } else {
        Some(find_binary(spec, "ward-block")?)
    };
    let console_bin = spec
        .virtio_console
        .as_ref()
        .map(|_| find_binary(spec, "ward-console"))
        .transpose()?;
    let net_bin = if spec.nets.is_empty() {
        None
    } else {
        Some(find_binary(spec, "ward-net")?)
    };
    let kernel = open(&spec.kernel, "kernel", false)?;
    let initrd = spec
        .initrd
        .as_deref()
        .map(|p| open(p, "initrd", false))
        .transpose()?;
    let (serial_out, serial_in): (File, Option<File>) = match &spec.console {
        Console::Terminal => (
            File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(Error::Wait)?,
            ),
            Some(File::from(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(Error::Wait)?,
            )),
        ),
        Console::File(p) => (
            OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
                .map_err(|source| Error::Open {
                    what: "console log",
                    path: p.clone(),
                    source,
                })?,
            None,
        ),
    };

    // Signals are taken through a signalfd from here on, so that a Ctrl-C between two spawns
    // still ends everything started so far.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block().map_err(Error::Signals)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(Error::Signals)?;

    let root = spec.run_root.clone().unwrap_or_else(default_root);
    let rundir = RuntimeDir::create(&root, &spec.name)?;
    // The VM's cgroup and its own uid, held until the VM's processes are gone.
    let group = match &spec.policy {
        Some(p) => cgroup::create(&spec.name, &p.cgroup, spec.memory_mib)?,
        None => None,
    };
    let lease = match &spec.policy {
        Some(p) => Some(identity::allocate(
            Path::new(identity::LOCK_DIR),
            p.identity.uid_range,
            &spec.name,
        )?),
        None => None,
    };
    // sVirt labels, derived from that uid: processes and images.
    let selinux = match (&spec.policy, &lease) {
        (Some(p), Some(l)) => crate::selinux::prepare(&p.selinux, p.identity.uid_range, l.uid)?,
        _ => None,
    };
    let mut workers: Vec<Worker> = Vec::new();
    let result = start_and_watch(StartArgs {
        spec,
        vmm_bin: &vmm_bin,
        block_bin: block_bin.as_deref(),
        console_bin: console_bin.as_deref(),
        net_bin: net_bin.as_deref(),
        rundir: &rundir,
        kernel,
        initrd,
        serial_out,
        serial_in,
        sigfd: &sigfd,
        workers: &mut workers,
        uid: lease.as_ref().map(|l| l.uid),
        cgroup_procs: group.as_ref().map(|g| g.procs().as_fd()),
        selinux: selinux.as_ref(),
    });
    // Workers end by themselves when the core (their frontend) has gone, logging their
    // counters on the way out: a moment for that, then SIGTERM for any still running.
    let t = Instant::now();
    while t.elapsed() < WORKER_EXIT_GRACE
        && workers
            .iter_mut()
            .any(|w| matches!(w.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    for w in &mut workers {
        end_child(&mut w.child, Duration::from_secs(2));
    }
    let _ = mask.thread_unblock();
    result
}

/// The seccomp mode of `kind`'s processes: the weaker of `--seccomp` and the policy's (a
/// policy may turn a filter to logging or off for developing it; the flag can only weaken it
/// further).
pub(crate) fn seccomp_mode(spec: &VmSpec, kind: Kind) -> SeccompMode {
    use ward_policy::vm::{Level, SeccompAction};
    let from_policy = match spec.policy.as_ref().map(|p| &p.process(kind).seccomp) {
        Some(s) if s.level == Level::Off => SeccompMode::Off,
        Some(s) if s.action == SeccompAction::Log => SeccompMode::Log,
        _ => SeccompMode::Enforce,
    };
    let rank = |m: SeccompMode| match m {
        SeccompMode::Off => 0,
        SeccompMode::Log => 1,
        SeccompMode::Enforce => 2,
    };
    if rank(from_policy) < rank(spec.seccomp) {
        from_policy
    } else {
        spec.seccomp
    }
}

/// What a process of `kind` enters first: its part of the VM's policy, the VM's uid, and a
/// pid namespace of its own when the policy lists one (the launcher prepares it, the process
/// forks into it); `None` when the VM runs unconfined.
fn confinement(spec: &VmSpec, kind: Kind, uid: Option<u32>) -> Option<Confinement> {
    let (policy, uid) = spec.policy.as_ref().zip(uid)?;
    let p = policy.process(kind);
    Some(Confinement {
        // Only root can make the namespace (a non-root launcher gets here only with
        // namespaces merely preferred; the process reports it as not applied).
        fork_into_pid_ns: p.namespaces.level.is_on()
            && p.namespaces
                .kinds
                .contains(&ward_policy::vm::Namespace::Pid)
            && nix::unistd::geteuid().is_root(),
        seccomp: seccomp_mode(spec, kind),
        policy: p.clone(),
        uid,
        gid: uid,
    })
}

/// The KVM device the launcher opens for the core.
const KVM_PATH: &str = "/dev/kvm";

struct StartArgs<'a> {
    spec: &'a VmSpec,
    vmm_bin: &'a Path,
    block_bin: Option<&'a Path>,
    console_bin: Option<&'a Path>,
    net_bin: Option<&'a Path>,
    rundir: &'a RuntimeDir,
    kernel: File,
    initrd: Option<File>,
    serial_out: File,
    serial_in: Option<File>,
    sigfd: &'a SignalFd,
    workers: &'a mut Vec<Worker>,
    /// The VM's own uid (and gid), when it is confined.
    uid: Option<u32>,
    /// The VM cgroup's `cgroup.procs`, when the VM has a cgroup.
    cgroup_procs: Option<BorrowedFd<'a>>,
    /// The VM's SELinux labels, where it has them.
    selinux: Option<&'a crate::selinux::VmSelinux>,
}

fn start_and_watch(a: StartArgs<'_>) -> Result<Outcome> {
    let spec = a.spec;
    let opts = |kind: Kind| WorkerOpts {
        seccomp: seccomp_mode(spec, kind).to_string(),
        confinement: confinement(spec, kind, a.uid),
        cgroup_procs: a.cgroup_procs,
        selinux: a.selinux,
    };
    let mut sockets = Vec::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let bin = a
            .block_bin
            .ok_or(Error::Binary("ward-block", PathBuf::new()))?;
        let started = start_block(bin, a.rundir, &disk_name(i), disk, &opts(Kind::Block))?;
        a.workers.push(started.worker);
        sockets.push((disk_name(i), started.kind, started.stream));
    }
    if let Some(console) = &spec.virtio_console {
        let bin = a
            .console_bin
            .ok_or(Error::Binary("ward-console", PathBuf::new()))?;
        let started = start_console(bin, a.rundir, console, &opts(Kind::Console))?;
        let name = started.worker.device.clone();
        a.workers.push(started.worker);
        sockets.push((name, started.kind, started.stream));
    }
    for (i, net) in spec.nets.iter().enumerate() {
        let bin = a.net_bin.ok_or(Error::Binary("ward-net", PathBuf::new()))?;
        let mac = net
            .mac
            .unwrap_or_else(|| crate::generated_mac(&spec.name, i));
        let started = start_net(bin, a.rundir, i, net, mac, &opts(Kind::Net))?;
        let name = started.worker.device.clone();
        a.workers.push(started.worker);
        sockets.push((name, started.kind, started.stream));
    }

    let (ours, theirs) = Channel::pair()?;
    // The core opens no path either: /dev/kvm is handed over like everything else.
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(KVM_PATH)
        .map_err(|e| Error::Open {
            what: "KVM device",
            path: KVM_PATH.into(),
            source: e,
        })?;
    let core_confinement = confinement(spec, Kind::Core, a.uid);
    let mut core = spawn(Spawn {
        binary: a.vmm_bin,
        args: vec![
            "--control-fd".into(),
            FIRST_FD.to_string(),
            "--kvm-fd".into(),
            (FIRST_FD + 1).to_string(),
        ],
        fds: vec![theirs.as_fd(), kvm.as_fd()],
        what: "the core (ward-vmm)".into(),
        confine: core_confinement.as_ref().map(Confinement::to_json),
        new_pid_ns: core_confinement
            .as_ref()
            .is_some_and(|c| c.fork_into_pid_ns),
        cgroup_procs: a.cgroup_procs,
        exec_context: a.selinux.map(crate::selinux::VmSelinux::exec_context),
    })?;
    drop(kvm);
    drop(theirs);
    info!(pid = core.id(), "core started");

    let mut fds: Vec<BorrowedFd<'_>> = vec![a.kernel.as_fd(), a.serial_out.as_fd()];
    let initrd_idx = a.initrd.as_ref().map(|f| {
        fds.push(f.as_fd());
        FdIndex(fds.len() - 1)
    });
    let serial_in_idx = a.serial_in.as_ref().map(|f| {
        fds.push(f.as_fd());
        FdIndex(fds.len() - 1)
    });
    let devices = sockets
        .iter()
        .map(|(name, kind, s)| {
            fds.push(s.as_fd());
            DeviceConfig {
                name: name.clone(),
                kind: *kind,
                socket: FdIndex(fds.len() - 1),
            }
        })
        .collect();
    let cfg = CoreConfig {
        name: spec.name.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        kernel: FdIndex(0),
        initrd: initrd_idx,
        cmdline: spec.cmdline.clone(),
        serial_out: FdIndex(1),
        serial_in: serial_in_idx,
        devices,
        seccomp: seccomp_mode(spec, Kind::Core),
    };
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    if let Err(e) = ours.send(&LauncherToCore::Start(Box::new(cfg)), &raw) {
        end_child(&mut core, Duration::from_secs(1));
        return Err(e.into());
    }
    drop(sockets);

    let outcome = watch(&ours, &mut core, a.workers, a.sigfd);
    end_child(&mut core, Duration::from_secs(2));
    Ok(outcome)
}

/// Waits until the core is gone, and says why the VM ended.
fn watch(ch: &Channel, core: &mut Child, workers: &mut [Worker], sigfd: &SignalFd) -> Outcome {
    let mut reported: Option<ExitReason> = None;
    let mut verdict: Option<Outcome> = None;
    let mut channel_open = true;
    let mut stop_sent: Option<Instant> = None;
    loop {
        // Workers first: a killed worker is reapable before the core notices it is gone, so its
        // own exit status gets to name the cause.
        // A worker that exits cleanly does so because its frontend (the core) went away: the
        // core's report says why. A worker that fails or is killed is news, unless the VM has
        // already ended.
        for w in workers.iter_mut() {
            let vm_over = matches!(
                reported,
                Some(ExitReason::GuestReset | ExitReason::GuestShutdown | ExitReason::Stopped)
            );
            if verdict.is_none() && !vm_over {
                if let Ok(Some(st)) = w.child.try_wait() {
                    if !st.success() {
                        let detail = describe(st);
                        warn!(device = %w.device, %detail, "worker exited");
                        verdict = Some(Outcome::WorkerLost {
                            device: w.label.clone(),
                            detail,
                        });
                    }
                }
            }
        }
        // Reap whatever has exited.
        if let Ok(Some(st)) = core.try_wait() {
            // The core's last words may still sit in the channel: read them first.
            while channel_open {
                let mut pfd = [PollFd::new(ch.as_fd(), PollFlags::POLLIN)];
                let ready = poll(&mut pfd, PollTimeout::ZERO).unwrap_or(0) > 0;
                if !ready {
                    break;
                }
                match ch.recv::<CoreToLauncher>() {
                    Ok(r) => {
                        if let CoreToLauncher::Exited(reason) = r.msg {
                            reported = Some(reason);
                        }
                    }
                    Err(_) => channel_open = false,
                }
            }
            if verdict.is_none() {
                if let Some(ExitReason::WorkerLost { device, .. }) = &reported {
                    verdict = lost_worker_status(workers, device);
                }
            }
            let from_core = reported.map(|r| match r {
                ExitReason::GuestReset => Outcome::GuestReset,
                ExitReason::GuestShutdown => Outcome::GuestShutdown,
                ExitReason::Stopped => Outcome::Stopped("request".into()),
                ExitReason::WorkerLost { device, detail } => Outcome::WorkerLost {
                    device: workers
                        .iter()
                        .find(|w| w.device == device)
                        .map_or(device, |w| w.label.clone()),
                    detail,
                },
                ExitReason::Error(e) => Outcome::Failed(e),
            });
            // What the launcher saw itself (a dead worker, a signal) explains more than the
            // core's view of the same event.
            return match (verdict, from_core) {
                (Some(v), _) => v,
                (None, Some(o)) => o,
                (None, None) => Outcome::Failed(format!("the core exited without a report ({st})")),
            };
        }
        if verdict.is_some() && stop_sent.is_none() {
            let _ = ch.send(&LauncherToCore::Stop, &[]);
            stop_sent = Some(Instant::now());
        }
        if let Some(t) = stop_sent {
            if t.elapsed() > Duration::from_secs(3) {
                let _ = core.kill();
            }
        }

        let mut pfds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if channel_open {
            pfds.push(PollFd::new(ch.as_fd(), PollFlags::POLLIN));
        }
        // SIGCHLD wakes us for exits; the timeout only bounds the wait after a stop request.
        let _ = poll(&mut pfds, PollTimeout::from(500u16));
        let ch_ready = pfds
            .get(1)
            .and_then(|p| p.revents())
            .is_some_and(|r| !r.is_empty());
        drop(pfds);
        while let Ok(Some(info)) = sigfd.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            if let Some(s @ (Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP)) = sig {
                if verdict.is_none() {
                    verdict = Some(Outcome::Stopped(s.as_str().to_string()));
                }
            }
        }
        if ch_ready {
            match ch.recv::<CoreToLauncher>() {
                Ok(r) => match r.msg {
                    CoreToLauncher::Started => info!("VM started"),
                    CoreToLauncher::Exited(reason) => reported = Some(reason),
                },
                Err(_) => channel_open = false,
            }
        }
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("killed by {}", sig.as_str()),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => st.to_string(),
    }
}

/// How long workers get to exit by themselves once the VM has ended.
const WORKER_EXIT_GRACE: Duration = Duration::from_millis(500);

/// How long a worker the core reported lost may take to become reapable.
const LOST_WORKER_GRACE: Duration = Duration::from_secs(2);

/// The exit status of the worker the core reported lost, if it failed. A dead worker's socket
/// closes while the process is still exiting (its descriptors close in order, and a TAP
/// device closing last is removed from the system before the process can be reaped), so the
/// core can report the loss first: wait a moment, so the worker's own status (a signal, an
/// exit code) names the cause rather than the core's view of it.
fn lost_worker_status(workers: &mut [Worker], device: &str) -> Option<Outcome> {
    let w = workers.iter_mut().find(|w| w.device == device)?;
    let t = Instant::now();
    while t.elapsed() < LOST_WORKER_GRACE {
        match w.child.try_wait() {
            Ok(Some(st)) if st.success() => return None,
            Ok(Some(st)) => {
                let detail = describe(st);
                warn!(device = %w.device, %detail, "worker exited");
                return Some(Outcome::WorkerLost {
                    device: w.label.clone(),
                    detail,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
    None
}

/// Asks a child to stop (SIGTERM), then kills it after `grace`, and reaps it.
fn end_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let t = Instant::now();
    while t.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
