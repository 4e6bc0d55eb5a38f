//! What `ward status` shows of the VMs running on this host: each VM's launcher (found through
//! its runtime directory) and the processes it started, as /proc shows them. (The supervisor,
//! once it exists, will know its VMs itself; this reads what any launcher leaves visible.)

use std::path::{Path, PathBuf};

/// The file in a VM's runtime directory that holds its launcher's pid.
pub const PID_FILE: &str = "launcher.pid";

/// A VM whose launcher is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVm {
    pub name: String,
    pub launcher: u32,
}

/// One process of a VM, at work (inside its pid namespace, when it has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmProcess {
    pub comm: String,
    pub pid: u32,
    /// Its pid inside its own pid namespace, when that differs.
    pub ns_pid: Option<u32>,
    pub uid: Option<u32>,
    /// Threads in seccomp filter mode, of all its threads.
    pub filtered_threads: (usize, usize),
    /// Its SELinux context, where the host has SELinux.
    pub selinux: Option<String>,
}

/// The VMs with a runtime directory under `root` whose launcher still runs.
pub fn running(root: &Path) -> Vec<RunningVm> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut vms: Vec<RunningVm> = rd
        .flatten()
        .filter_map(|e| {
            let pid: u32 = std::fs::read_to_string(e.path().join(PID_FILE))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Path::new(&format!("/proc/{pid}"))
                .exists()
                .then(|| RunningVm {
                    name: e.file_name().to_string_lossy().into_owned(),
                    launcher: pid,
                })
        })
        .collect();
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    vms
}

fn proc_path(pid: u32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

/// The children of `pid` (every thread's).
fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(proc_path(pid, "task")) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = rd
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    out.sort_unstable();
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(proc_path(pid, "comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The processes `launcher` started, each as it works: a child that waits outside its pid
/// namespace is shown by its one child of the same name, the process at work.
pub fn processes(launcher: u32, selinux: bool) -> Vec<VmProcess> {
    children(launcher)
        .into_iter()
        .map(|c| {
            let name = comm(c);
            children(c)
                .into_iter()
                .find(|g| comm(*g) == name)
                .unwrap_or(c)
        })
        .map(|pid| describe(pid, selinux))
        .collect()
}

fn describe(pid: u32, selinux: bool) -> VmProcess {
    let status = std::fs::read_to_string(proc_path(pid, "status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let ns_pid = field("NSpid:")
        .split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != pid);
    let uid = field("Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok());
    let mut threads = (0, 0);
    if let Ok(rd) = std::fs::read_dir(proc_path(pid, "task")) {
        for t in rd.flatten() {
            threads.1 += 1;
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if st
                .lines()
                .any(|l| l.strip_prefix("Seccomp:").map(str::trim) == Some("2"))
            {
                threads.0 += 1;
            }
        }
    }
    let selinux = selinux
        .then(|| std::fs::read(proc_path(pid, "attr/current")).ok())
        .flatten()
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches(['\0', '\n'])
                .to_string()
        });
    VmProcess {
        comm: comm(pid),
        pid,
        ns_pid,
        uid,
        filtered_threads: threads,
        selinux,
    }
}
