//! `ward status`: what confinement this host can give (SELinux, cgroup v2), and the VMs
//! running here with each process's uid, seccomp and SELinux context.

use ward_launcher::status::{processes, running};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Only this VM.
    name: Option<String>,
}

pub fn run(a: &StatusArgs) -> anyhow::Result<()> {
    let host = ward_policy::host::support();
    println!("host:");
    println!("  {}", host.selinux_line());
    println!("  {}", host.cgroup_line());
    let root = ward_launcher::default_root();
    let vms: Vec<_> = running(&root)
        .into_iter()
        .filter(|v| a.name.as_ref().is_none_or(|n| *n == v.name))
        .collect();
    if let Some(n) = &a.name {
        anyhow::ensure!(
            !vms.is_empty(),
            "no VM named {n} runs here ({})",
            root.display()
        );
    }
    if vms.is_empty() {
        println!("no VM runs here ({})", root.display());
    }
    for vm in vms {
        println!("vm {} (launcher pid {}):", vm.name, vm.launcher);
        for p in processes(vm.launcher, host.selinux.is_some()) {
            let ns = p
                .ns_pid
                .map_or(String::new(), |n| format!(" (pid {n} in its namespace)"));
            let uid = p.uid.map_or("?".to_string(), |u| u.to_string());
            let (filtered, all) = p.filtered_threads;
            let selinux = p
                .selinux
                .unwrap_or_else(|| "none (SELinux is off on this host)".into());
            println!(
                "  {} pid {}{ns}: uid {uid}, seccomp on {filtered} of {all} threads, SELinux {selinux}",
                p.comm, p.pid
            );
        }
    }
    Ok(())
}
