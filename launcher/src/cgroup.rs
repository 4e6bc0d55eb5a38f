//! The VM's cgroup (v2): `/sys/fs/cgroup/ward/<vm>`, holding every process of the VM, with the
//! policy's `memory.max`, `pids.max` and `cpu.max`. Each process joins it between fork and exec
//! (it writes `0` to the group's `cgroup.procs`, whose descriptor the launcher opened), so none
//! runs a single instruction of its own outside it; its cgroup namespace then makes the group
//! its root. The group is removed when the VM's processes are gone.
//!
//! Where the host has no writable cgroup v2 hierarchy (a v1-only host like the one CI runs on),
//! a `preferred` cgroup is reported and skipped; a `required` one fails the launch.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use ward_policy::vm::{Cgroup, Level};

use crate::{Error, Result};

/// Where cgroup v2 is expected.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The group that holds one group per VM (it holds no process itself, as cgroup v2 requires
/// of a group that hands controllers down).
pub const PARENT: &str = "ward";

/// One VM's group, removed when dropped.
pub struct VmCgroup {
    dir: PathBuf,
    /// `cgroup.procs` of the group, open for writing: each process writes its own pid (`0`).
    procs: File,
}

impl VmCgroup {
    pub fn procs(&self) -> &File {
        &self.procs
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        // The processes were reaped; the kernel may take a moment to empty the group.
        let start = Instant::now();
        while std::fs::remove_dir(&self.dir).is_err() && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Makes the VM's group as `policy` asks, for a guest of `memory_mib` MiB. `Ok(None)`: off,
/// or unavailable here and only preferred (a warning says why).
pub fn create(vm: &str, policy: &Cgroup, memory_mib: u64) -> Result<Option<VmCgroup>> {
    if policy.level == Level::Off {
        return Ok(None);
    }
    match make(Path::new(ROOT), vm, policy, memory_mib) {
        Ok(g) => {
            info!(cgroup = %g.dir.display(), "VM cgroup made");
            Ok(Some(g))
        }
        Err(why) if policy.level == Level::Required => Err(Error::Cgroup(why)),
        Err(why) => {
            warn!("no cgroup for this VM (the policy prefers one): {why}");
            Ok(None)
        }
    }
}

fn write(path: &Path, value: &str) -> std::result::Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// Enables the controllers down to `ward/`, makes `ward/<vm>` and writes its limits.
fn prepare(
    root: &Path,
    vm: &str,
    policy: &Cgroup,
    memory_mib: u64,
) -> std::result::Result<PathBuf, String> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|_| format!("no cgroup v2 hierarchy at {}", root.display()))?;
    let mut wanted = vec!["memory", "pids"];
    if policy.cpu_max.is_some() {
        wanted.push("cpu");
    }
    for c in &wanted {
        if !available.split_whitespace().any(|a| a == *c) {
            return Err(format!(
                "the {c} controller is not available in {}",
                root.display()
            ));
        }
    }
    let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
    write(&root.join("cgroup.subtree_control"), enable.trim_end())?;
    let parent = root.join(PARENT);
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", parent.display())),
    }
    write(&parent.join("cgroup.subtree_control"), enable.trim_end())?;
    let dir = parent.join(vm);
    if dir.exists() {
        // Left by a VM of this name that ended without removing it (a killed launcher): empty,
        // since its processes died with the launcher.
        std::fs::remove_dir(&dir)
            .map_err(|e| format!("{} exists and cannot be removed: {e}", dir.display()))?;
    }
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let memory = policy
        .memory_max
        .unwrap_or((memory_mib << 20).saturating_add(policy.memory_overhead));
    let settings = [
        ("memory.max", memory.to_string()),
        ("pids.max", policy.pids_max.to_string()),
    ];
    for (file, value) in settings {
        if let Err(e) = write(&dir.join(file), &value) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
    }
    if let Some(cpu) = &policy.cpu_max {
        if let Err(e) = write(
            &dir.join("cpu.max"),
            &format!("{} {}", cpu.quota_us, cpu.period_us),
        ) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
    }
    Ok(dir)
}

/// [`prepare`], then the group's `cgroup.procs` opened for the processes to join it.
fn make(
    root: &Path,
    vm: &str,
    policy: &Cgroup,
    memory_mib: u64,
) -> std::result::Result<VmCgroup, String> {
    let dir = prepare(root, vm, policy, memory_mib)?;
    let procs_path = dir.join("cgroup.procs");
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&procs_path)
    {
        Ok(procs) => Ok(VmCgroup { dir, procs }),
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            Err(format!("cannot open {}: {e}", procs_path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_policy::vm::CpuMax;

    /// A directory standing in for /sys/fs/cgroup (plain files: what ward writes is checked).
    fn fake_root(controllers: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ward-cg-{}-{}",
            std::process::id(),
            controllers.len()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.controllers"), controllers).unwrap();
        d
    }

    #[test]
    fn the_group_gets_the_policy_limits() {
        let root = fake_root("cpuset cpu io memory pids");
        let p = Cgroup {
            cpu_max: Some(CpuMax {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            ..Cgroup::default()
        };
        let dir = prepare(&root, "vm1", &p, 256).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(
            read("memory.max"),
            ((256u64 << 20) + (512 << 20)).to_string()
        );
        assert_eq!(read("pids.max"), "512");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(
            std::fs::read_to_string(root.join("ward/cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        assert_eq!(dir, root.join("ward/vm1"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_host_without_cgroup_v2_or_a_controller_is_named() {
        let missing = std::env::temp_dir().join("ward-cg-none-here");
        let e = make(&missing, "vm", &Cgroup::default(), 128).err().unwrap();
        assert!(e.contains("no cgroup v2 hierarchy"), "{e}");
        let root = fake_root("cpu io");
        let e = make(&root, "vm", &Cgroup::default(), 128).err().unwrap();
        assert!(e.contains("the memory controller is not available"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
        // Preferred: a warning and no group; required: the launch fails.
        let mut p = Cgroup::default();
        if !Path::new(ROOT).join("cgroup.controllers").exists() {
            assert!(create("vm", &p, 128).unwrap().is_none());
            p.level = Level::Required;
            let e = create("vm", &p, 128).err().unwrap().to_string();
            assert!(e.contains("requires a cgroup"), "{e}");
        }
    }
}
