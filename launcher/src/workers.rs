//! Starting one worker per device: each gets a listening vhost-user socket in the runtime
//! directory plus the one resource it serves, as inherited descriptors, and the launcher keeps
//! a connection to the socket for the core.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;

use tracing::info;
use ward_ipc::core::DeviceKind;
use ward_policy::sandbox::Confinement;

use crate::selinux::{self, Relabelled, VmSelinux};
use crate::spawn::{spawn, Spawn, FIRST_FD};
use crate::watch::{backing_chain, open_disk};
use crate::{Disk, Error, Net, Result, RuntimeDir, VirtioConsole};

/// What every worker of a VM is started with besides its device: the seccomp mode, and the
/// confinement it enters (its kind's policy and the VM's uid), if any.
pub(crate) struct WorkerOpts<'a> {
    pub seccomp: String,
    pub confinement: Option<Confinement>,
    /// The VM cgroup's `cgroup.procs`, if the VM has a cgroup.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// The VM's SELinux labels, where it has them.
    pub selinux: Option<&'a VmSelinux>,
}

impl<'a> WorkerOpts<'a> {
    fn confine(&self) -> Option<String> {
        self.confinement.as_ref().map(Confinement::to_json)
    }

    fn new_pid_ns(&self) -> bool {
        self.confinement
            .as_ref()
            .is_some_and(|c| c.fork_into_pid_ns)
    }

    fn exec_context(&self) -> Option<&'a std::ffi::CStr> {
        self.selinux.map(VmSelinux::exec_context)
    }
}

/// A running worker.
pub(crate) struct Worker {
    /// The device's name, as the core knows it ("vda", "hvc0").
    pub device: String,
    /// How errors name it ("disk vda", "console").
    pub label: String,
    pub child: Child,
    /// Images relabelled for the VM (SELinux): their labels come back when the worker is
    /// dropped, after the VM.
    pub _relabelled: Vec<Relabelled>,
}

/// A started worker and the launcher's connection to its vhost-user socket, for the core.
pub(crate) struct Started {
    pub worker: Worker,
    pub kind: DeviceKind,
    pub stream: UnixStream,
}

/// Binds `<rundir>/<name>.sock`; the worker accepts on its copy.
fn listen(rundir: &RuntimeDir, name: &str) -> Result<(PathBuf, UnixListener)> {
    let path = rundir.path().join(format!("{name}.sock"));
    let listener = UnixListener::bind(&path).map_err(|e| Error::Socket(path.clone(), e))?;
    Ok((path, listener))
}

/// The connection the core will use; it waits in the worker's backlog until accepted.
fn connect(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(|e| Error::Socket(path.to_path_buf(), e))
}

pub(crate) fn start_block(
    bin: &Path,
    rundir: &RuntimeDir,
    name: &str,
    disk: &Disk,
    opts: &WorkerOpts<'_>,
) -> Result<Started> {
    let image = open_disk(&disk.path, disk.readonly)?;
    let (format, backing) = backing_chain(&disk.path, &image, disk.format)?;
    // sVirt: the image is the VM's (its categories) unless read-only; backing files are
    // shared content. Labelled through the descriptors the worker gets.
    let mut relabelled = Vec::new();
    if let Some(se) = opts.selinux {
        let (label, restore) = if disk.readonly {
            (&se.labels.shared, false)
        } else {
            (&se.labels.image, true)
        };
        relabelled.extend(selinux::relabel(se, &image, &disk.path, label, restore)?);
        for (backing_name, f) in &backing {
            let p = Path::new(backing_name);
            selinux::relabel(se, f, p, &se.labels.shared, false)?;
        }
    }
    let (path, listener) = listen(rundir, name)?;
    let mut args = vec![
        "--socket-fd".to_string(),
        FIRST_FD.to_string(),
        "--image-fd".to_string(),
        (FIRST_FD + 1).to_string(),
        "--name".to_string(),
        name.to_string(),
        "--seccomp".to_string(),
        opts.seccomp.clone(),
        "--format".to_string(),
        format.name().to_string(),
    ];
    if disk.readonly {
        args.push("--readonly".to_string());
    }
    let mut fds = vec![listener.as_fd(), image.as_fd()];
    for (i, (backing_name, f)) in backing.iter().enumerate() {
        args.push("--backing".to_string());
        args.push(format!("{backing_name}={}", FIRST_FD + 2 + i as i32));
        fds.push(f.as_fd());
    }
    let child = spawn(Spawn {
        binary: bin,
        args,
        fds,
        what: format!("block worker for {name}"),
        confine: opts.confine(),
        new_pid_ns: opts.new_pid_ns(),
        cgroup_procs: opts.cgroup_procs,
        exec_context: opts.exec_context(),
    })?;
    info!(device = %name, pid = child.id(), image = %disk.path.display(), "block worker started");
    let worker = Worker {
        device: name.to_string(),
        label: format!("disk {name}"),
        child,
        _relabelled: relabelled,
    };
    Ok(Started {
        worker,
        kind: DeviceKind::Block,
        stream: connect(&path)?,
    })
}

/// Opens a console log for the worker: created 0600 if missing; the current one appended to
/// (and readable: rotation copies it into the old one), the old one read-write.
fn open_log(path: &Path, append: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.create(true)
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC);
    if append {
        o.append(true);
    } else {
        o.write(true);
    }
    o.open(path).map_err(|source| Error::Open {
        what: "console log",
        path: path.to_path_buf(),
        source,
    })
}

/// The previous console log beside `log`: `console.log` → `console.log.1`.
pub fn old_log_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// The attach socket of a VM's console in its runtime directory.
pub const ATTACH_SOCKET: &str = "console.sock";

pub(crate) fn start_console(
    bin: &Path,
    rundir: &RuntimeDir,
    console: &VirtioConsole,
    opts: &WorkerOpts<'_>,
) -> Result<Started> {
    // The guest's name for it; its vhost-user socket is hvc0.sock beside console.sock.
    let name = "hvc0";
    let log = open_log(&console.log, true)?;
    let old = open_log(&old_log_path(&console.log), false)?;
    let (path, listener) = listen(rundir, name)?;
    let attach_path = rundir.path().join(ATTACH_SOCKET);
    let attach =
        UnixListener::bind(&attach_path).map_err(|e| Error::Socket(attach_path.clone(), e))?;
    let args = vec![
        "--socket-fd".to_string(),
        FIRST_FD.to_string(),
        "--attach-fd".to_string(),
        (FIRST_FD + 1).to_string(),
        "--log-fd".to_string(),
        (FIRST_FD + 2).to_string(),
        "--log-old-fd".to_string(),
        (FIRST_FD + 3).to_string(),
        "--log-max".to_string(),
        console.log_max.to_string(),
        "--name".to_string(),
        name.to_string(),
        "--seccomp".to_string(),
        opts.seccomp.clone(),
    ];
    let child = spawn(Spawn {
        binary: bin,
        args,
        fds: vec![listener.as_fd(), attach.as_fd(), log.as_fd(), old.as_fd()],
        what: "console worker".into(),
        confine: opts.confine(),
        new_pid_ns: opts.new_pid_ns(),
        cgroup_procs: opts.cgroup_procs,
        exec_context: opts.exec_context(),
    })?;
    info!(pid = child.id(), log = %console.log.display(), "console worker started");
    let worker = Worker {
        device: name.to_string(),
        label: "console".to_string(),
        child,
        _relabelled: Vec::new(),
    };
    Ok(Started {
        worker,
        kind: DeviceKind::Console,
        stream: connect(&path)?,
    })
}

/// The `index`th network interface: its TAP opened (created if missing) here, the worker given
/// only that descriptor and its socket.
pub(crate) fn start_net(
    bin: &Path,
    rundir: &RuntimeDir,
    index: usize,
    net: &Net,
    mac: ward_net::Mac,
    opts: &WorkerOpts<'_>,
) -> Result<Started> {
    let name = format!("net{index}");
    let tap = ward_net::tap::open_tap(&net.tap).map_err(|e| Error::Tap(net.tap.clone(), e))?;
    let (path, listener) = listen(rundir, &name)?;
    let args = vec![
        "--socket-fd".to_string(),
        FIRST_FD.to_string(),
        "--tap-fd".to_string(),
        (FIRST_FD + 1).to_string(),
        "--name".to_string(),
        name.clone(),
        "--mac".to_string(),
        mac.to_string(),
        "--seccomp".to_string(),
        opts.seccomp.clone(),
    ];
    let child = spawn(Spawn {
        binary: bin,
        args,
        fds: vec![listener.as_fd(), tap.as_fd()],
        what: format!("network worker for {name}"),
        confine: opts.confine(),
        new_pid_ns: opts.new_pid_ns(),
        cgroup_procs: opts.cgroup_procs,
        exec_context: opts.exec_context(),
    })?;
    info!(device = %name, pid = child.id(), tap = %net.tap, %mac, "network worker started");
    let worker = Worker {
        device: name.clone(),
        label: format!("network {name} (tap {})", net.tap),
        child,
        _relabelled: Vec::new(),
    };
    Ok(Started {
        worker,
        kind: DeviceKind::Net,
        stream: connect(&path)?,
    })
}
