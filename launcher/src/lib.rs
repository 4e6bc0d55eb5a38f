//! The launcher: everything that happens to start one VM and see it end.
//!
//! 1. Make the VM's private runtime directory (mode 0700).
//! 2. Open each disk image (the only process that opens paths), bind a listening vhost-user
//!    socket for it, and spawn one `ward-block` per disk with exactly those two descriptors;
//!    likewise one `ward-console` with its socket, an attach socket and its two log files.
//! 3. Spawn `ward-vmm` with one end of a control channel and an open `/dev/kvm`, each process
//!    with `--confine` (its kind's policy and the VM's uid), and send the core the configuration plus
//!    the kernel, initrd, serial descriptors and a connected socket to each worker.
//! 4. Watch: the core's report, children exiting, and SIGINT/SIGTERM/SIGHUP. When the core ends,
//!    end the workers; when a worker dies first, tell the core to stop and name the worker.
//!    Children carry `PR_SET_PDEATHSIG`, so even a killed launcher leaves no orphans.
//!
//! See `docs/sandboxing.md` for the spawn steps and their order.

mod cgroup;
mod identity;
mod runtime;
mod selinux;
mod spawn;
pub mod status;
mod watch;
mod workers;

use std::path::PathBuf;

pub use runtime::{default_root, RuntimeDir};
use ward_ipc::core::SeccompMode;
pub use ward_policy::vm::VmPolicy;
pub use watch::Outcome;
pub use workers::{old_log_path, ATTACH_SOCKET};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid VM specification: {0}")]
    Spec(String),
    #[error("Cannot create the runtime directory {0}")]
    RuntimeDir(PathBuf, #[source] std::io::Error),
    #[error("Cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Disk image {0} looks like qcow2 with backing file {1:?}; a header ward only guessed \
         is not trusted with backing files: say format=qcow2 if this image is meant to be one"
    )]
    ProbedBacking(PathBuf, String),
    #[error("Disk image {0} cannot be used")]
    Image(PathBuf, #[source] ward_image::Error),
    #[error("Disk image {0} is in use by another VM")]
    Locked(PathBuf),
    #[error("Cannot open the TAP device {0}")]
    Tap(String, #[source] ward_net::tap::Error),
    #[error("Cannot create the vhost-user socket {0}")]
    Socket(PathBuf, #[source] std::io::Error),
    #[error("Cannot find the {0} binary (looked in {1})")]
    Binary(&'static str, PathBuf),
    #[error("Cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("Control channel to the core")]
    Channel(#[from] ward_ipc::channel::Error),
    #[error("Cannot set up signal handling")]
    Signals(#[source] nix::Error),
    #[error("Waiting for the VM failed")]
    Wait(#[source] std::io::Error),
    #[error("The policy requires a cgroup for the VM, but {0}")]
    Cgroup(String),
    #[error("The policy requires SELinux labels for the VM, but {0}")]
    Selinux(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// The launcher's own stdout (and stdin as input).
    Terminal,
    /// A log file (appended); no input.
    File(PathBuf),
}

/// A virtio console (the guest's hvc0) served by its own worker, `ward-console`: its output
/// is logged (bounded, rotated into `<log>.1`) and clients attach through `console.sock` in the
/// runtime directory (`ward console`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioConsole {
    pub log: PathBuf,
    /// Bytes the log may reach before it is rotated.
    pub log_max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub readonly: bool,
    /// `None`: what the image's header says (qcow2 magic, else raw).
    pub format: Option<ImageFormat>,
}

pub use ward_image::Format as ImageFormat;
pub use ward_net::Mac;

/// A network interface for the guest: a TAP device (opened, or created if missing, by the
/// launcher; the worker only gets its descriptor) served by its own `ward-net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// The TAP interface's name on the host.
    pub tap: String,
    /// The guest's MAC address; by default one derived from the VM's name and the interface's
    /// index, in the locally administered 52:54:00 range, so it stays the same across boots.
    pub mac: Option<Mac>,
}

/// The MAC a VM's `index`th interface gets when none is given: 52:54:00 and three bytes of an
/// FNV-1a hash of the VM name and the index.
pub fn generated_mac(vm: &str, index: usize) -> Mac {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vm.bytes().chain([0]).chain((index as u32).to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    Mac([0x52, 0x54, 0x00, b[0], b[1], b[2]])
}

/// One VM, as `ward run` describes it.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub disks: Vec<Disk>,
    /// Where the serial port (ttyS0) goes.
    pub console: Console,
    /// A virtio console for the guest, if any.
    pub virtio_console: Option<VirtioConsole>,
    /// Network interfaces (eth0, eth1, … in the guest).
    pub nets: Vec<Net>,
    pub seccomp: SeccompMode,
    /// The confinement policy the workers enter (the core: seccomp only, for now); `None`:
    /// none but seccomp (to measure what confinement costs; never for tenants).
    pub policy: Option<VmPolicy>,
    /// Directory holding `ward-vmm` and the workers; defaults to the running binary's.
    pub bin_dir: Option<PathBuf>,
    /// Parent of the runtime directories; defaults to `$XDG_RUNTIME_DIR/ward` or `/run/ward`.
    pub run_root: Option<PathBuf>,
}

/// Most virtio devices one VM may have: one virtio-mmio slot each (IRQs 5..23).
pub const MAX_DEVICES: usize = 19;

impl VmSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Spec(m));
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            || self.name.starts_with('.')
        {
            return bad(format!(
                "VM name {:?} must be 1-64 characters of letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        if self.vcpus == 0 {
            return bad("at least one vCPU is needed".into());
        }
        let devices =
            self.disks.len() + usize::from(self.virtio_console.is_some()) + self.nets.len();
        if devices > MAX_DEVICES {
            return bad(format!(
                "at most {MAX_DEVICES} virtio devices (disks, console, network) are supported"
            ));
        }
        for (i, n) in self.nets.iter().enumerate() {
            if let Err(e) = ward_net::tap::check_name(&n.tap) {
                return bad(e.to_string());
            }
            if self.nets[..i].iter().any(|o| o.tap == n.tap) {
                return bad(format!("tap {:?} is given twice", n.tap));
            }
            if let Some(m) = n.mac {
                if m.0[0] & 1 != 0 || m.0 == [0; 6] {
                    return bad(format!("MAC {m} is not a unicast address"));
                }
            }
        }
        if let Some(c) = &self.virtio_console {
            if c.log_max < 4096 {
                return bad("the console log limit must be at least 4 KiB".into());
            }
        }
        Ok(())
    }
}

/// Starts the VM and waits for it to end.
pub fn run(spec: &VmSpec) -> Result<Outcome> {
    spec.validate()?;
    if let Some(what) = needs_root(spec) {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Spec(format!(
                "the confinement policy requires {what}, which only root can give the VM's \
                 processes: run ward as root, or pass a policy (--policy) that does not \
                 require it, or --unconfined"
            )));
        }
    }
    watch::run(spec)
}

/// What the VM's policy requires that only a root launcher can apply (a uid of the VM's own,
/// new namespaces), if anything.
fn needs_root(spec: &VmSpec) -> Option<&'static str> {
    use ward_policy::vm::{Kind, Level};
    let policy = spec.policy.as_ref()?;
    Kind::ALL.iter().find_map(|k| {
        let p = policy.process(*k);
        if p.own_uid == Level::Required {
            Some("a uid of the VM's own")
        } else if p.namespaces.level == Level::Required && !p.namespaces.kinds.is_empty() {
            Some("new namespaces")
        } else {
            None
        }
    })
}

/// The name of the `i`th disk in the guest: vda, vdb, … (as Linux names virtio disks).
pub fn disk_name(i: usize) -> String {
    let mut n = i;
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    s.reverse();
    format!("vd{}", String::from_utf8_lossy(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "vm0".into(),
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec![],
            console: Console::Terminal,
            virtio_console: None,
            nets: vec![],
            seccomp: SeccompMode::Enforce,
            policy: Some(VmPolicy::default()),
            bin_dir: None,
            run_root: None,
        }
    }

    #[test]
    fn names() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        let mut s = spec();
        assert!(s.validate().is_ok());
        s.name = "../etc".into();
        assert!(s.validate().is_err());
        s.name = "ok".into();
        s.vcpus = 0;
        assert!(s.validate().is_err());
        s.vcpus = 1;
        s.nets = vec![Net {
            tap: "tap0".into(),
            mac: None,
        }];
        assert!(s.validate().is_ok());
        s.nets.push(s.nets[0].clone());
        assert!(s.validate().is_err(), "one tap twice");
        s.nets = vec![Net {
            tap: "bad/name".into(),
            mac: None,
        }];
        assert!(s.validate().is_err());
        s.nets = vec![Net {
            tap: "tap0".into(),
            mac: Some(Mac([0x01, 0, 0, 0, 0, 1])),
        }];
        assert!(s.validate().is_err(), "multicast MAC");
    }

    #[test]
    fn generated_macs_are_local_stable_and_distinct() {
        let a = generated_mac("vm0", 0);
        assert_eq!(a, generated_mac("vm0", 0));
        assert_eq!(&a.0[..3], &[0x52, 0x54, 0x00]);
        assert_ne!(a, generated_mac("vm0", 1));
        assert_ne!(a, generated_mac("vm1", 0));
    }

    #[test]
    fn the_weaker_of_flag_and_policy_sets_the_seccomp_mode() {
        use ward_policy::vm::{Kind, Level, SeccompAction};
        let mut s = spec();
        assert_eq!(watch::seccomp_mode(&s, Kind::Net), SeccompMode::Enforce);
        let mut p = VmPolicy::default();
        p.net.seccomp.action = SeccompAction::Log;
        p.block.seccomp.level = Level::Off;
        s.policy = Some(p);
        assert_eq!(watch::seccomp_mode(&s, Kind::Net), SeccompMode::Log);
        assert_eq!(watch::seccomp_mode(&s, Kind::Block), SeccompMode::Off);
        assert_eq!(watch::seccomp_mode(&s, Kind::Core), SeccompMode::Enforce);
        s.seccomp = SeccompMode::Off;
        assert_eq!(watch::seccomp_mode(&s, Kind::Net), SeccompMode::Off);
        s.seccomp = SeccompMode::Log;
        s.policy = None;
        assert_eq!(watch::seccomp_mode(&s, Kind::Console), SeccompMode::Log);
    }

    #[test]
    fn what_only_root_can_apply_is_named() {
        let mut s = spec();
        assert_eq!(needs_root(&s), Some("a uid of the VM's own"));
        let mut p = VmPolicy::default();
        for k in ward_policy::vm::Kind::ALL {
            let pp = match k {
                ward_policy::vm::Kind::Core => &mut p.core,
                ward_policy::vm::Kind::Block => &mut p.block,
                ward_policy::vm::Kind::Net => &mut p.net,
                ward_policy::vm::Kind::Console => &mut p.console,
            };
            pp.own_uid = ward_policy::vm::Level::Preferred;
        }
        s.policy = Some(p.clone());
        assert_eq!(needs_root(&s), Some("new namespaces"));
        p.core.namespaces.level = ward_policy::vm::Level::Preferred;
        p.block.namespaces.level = ward_policy::vm::Level::Preferred;
        p.net.namespaces.level = ward_policy::vm::Level::Preferred;
        p.console.namespaces.level = ward_policy::vm::Level::Off;
        s.policy = Some(p);
        assert_eq!(needs_root(&s), None);
        s.policy = None;
        assert_eq!(needs_root(&s), None);
    }
}
