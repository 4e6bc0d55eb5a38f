//! Launcher ↔ core messages.

use serde::{Deserialize, Serialize};

use crate::FdIndex;

/// How strictly a process enforces its seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// A forbidden syscall kills the process.
    #[default]
    Enforce,
    /// Forbidden syscalls are allowed but logged by the kernel (audit).
    Log,
    /// No filter (debugging only).
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            other => Err(format!(
                "unknown seccomp mode {other:?} (expected enforce, log or off)"
            )),
        }
    }
}

impl std::fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// Everything the core needs to build and run one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreConfig {
    /// The VM's name, for logs.
    pub name: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Kernel image (bzImage or ELF with a PVH note), opened by the launcher.
    pub kernel: FdIndex,
    pub initrd: Option<FdIndex>,
    /// Kernel command line as the user gave it; the core appends its device list.
    pub cmdline: String,
    /// Where the serial port's output goes.
    pub serial_out: FdIndex,
    /// Where the serial port's input comes from, if anywhere.
    pub serial_in: Option<FdIndex>,
    pub devices: Vec<DeviceConfig>,
    pub seccomp: SeccompMode,
}

/// One virtio device served by a worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Short name used in logs and errors ("vda").
    pub name: String,
    pub kind: DeviceKind,
    /// Connected vhost-user socket to the worker.
    pub socket: FdIndex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Block,
    /// virtio-console, one port (the guest's hvc0).
    Console,
    /// virtio-net over a TAP device.
    Net,
}

impl DeviceKind {
    /// The virtio device ID.
    pub fn virtio_id(self) -> u32 {
        match self {
            DeviceKind::Block => 2,
            DeviceKind::Console => 3,
            DeviceKind::Net => 1,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LauncherToCore {
    Start(Box<CoreConfig>),
    /// Stop the VM now (the user asked, or a worker died).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoreToLauncher {
    /// The VM is built and its vCPUs run.
    Started,
    /// The VM has ended; the core exits after sending this.
    Exited(ExitReason),
}

/// Why a VM ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExitReason {
    /// The guest reset or rebooted the machine (i8042 reset, triple fault).
    GuestReset,
    /// The guest powered the machine off.
    GuestShutdown,
    /// The launcher asked the core to stop.
    Stopped,
    /// The vhost-user connection to a device's worker broke.
    WorkerLost { device: String, detail: String },
    /// Something went wrong in the core.
    Error(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => f.write_str("guest reset"),
            ExitReason::GuestShutdown => f.write_str("guest shut down"),
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::WorkerLost { device, detail } => {
                write!(f, "worker for device {device} went away: {detail}")
            }
            ExitReason::Error(e) => write!(f, "core error: {e}"),
        }
    }
}

/// Exit codes of `ward-vmm`, so a launcher can tell outcomes apart without the channel.
pub mod exit_code {
    pub const GUEST_RESET: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const GUEST_SHUTDOWN: i32 = 3;
    pub const STOPPED: i32 = 4;
    pub const WORKER_LOST: i32 = 5;
    /// The confinement the launcher asked for could not be entered.
    pub const CONFINE: i32 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_roundtrips_as_json() {
        let cfg = CoreConfig {
            name: "vm0".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: FdIndex(0),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            serial_out: FdIndex(1),
            serial_in: None,
            devices: vec![DeviceConfig {
                name: "vda".into(),
                kind: DeviceKind::Block,
                socket: FdIndex(2),
            }],
            seccomp: SeccompMode::Enforce,
        };
        let s = serde_json::to_string(&LauncherToCore::Start(Box::new(cfg.clone()))).unwrap();
        match serde_json::from_str::<LauncherToCore>(&s).unwrap() {
            LauncherToCore::Start(c) => assert_eq!(*c, cfg),
            other => panic!("wrong message {other:?}"),
        }
        assert!("bogus".parse::<SeccompMode>().is_err());
        assert_eq!("log".parse::<SeccompMode>().unwrap(), SeccompMode::Log);
    }
}
