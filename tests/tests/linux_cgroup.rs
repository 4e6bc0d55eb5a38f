//! The VM's cgroup v2, where the kernel has one to give (inside the nested machine on this PVM
//! host, whose own cgroups are v1 only; directly on a host with cgroup2): while a Linux guest
//! runs, its core and its block worker (each inside and outside its pid namespace, and KVM's
//! worker threads for the VM) are the group's processes, with the default policy's memory.max (guest memory + 512 MiB) and
//! pids.max; the launcher stays outside; the group is gone after the VM.

use ward_tests::{kvm_available, TempDir};

#[test]
fn the_vm_runs_in_its_own_cgroup() {
    if !kvm_available("the_vm_runs_in_its_own_cgroup") {
        return;
    }
    let dir = TempDir::new("linux-cgroup");
    let out = ward_tests::run_linux_script("tests/guest/linux-cgroup.sh", &dir, &[]);
    if let Some(l) = out.lines().find(|l| l.starts_with("LINUX-CGROUP SKIP")) {
        eprintln!("\n*** SKIPPED the_vm_runs_in_its_own_cgroup: {l} ***\n");
        return;
    }
    for want in [
        "LINUX-CGROUP memory.max=805306368 pids.max=512",
        "LINUX-CGROUP ward-exit=0",
        "LINUX-CGROUP removed",
        "[cg] CG-GUEST-DONE",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let comms = out
        .lines()
        .find_map(|l| l.strip_prefix("LINUX-CGROUP procs="))
        .and_then(|l| l.split_once(" comms="))
        .map(|(_, c)| c)
        .expect("comms");
    // KVM's own worker threads for the VM (kvm-nx-lpage-recovery-*) join the cgroup of the
    // process that made the VM: the core's. Everything else is ward's.
    let mut names: Vec<&str> = comms
        .split(',')
        .filter(|s| !s.is_empty() && !s.starts_with("kvm-"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["ward-block", "ward-block", "ward-vmm", "ward-vmm"],
        "{out}"
    );
    let launcher = out
        .lines()
        .find_map(|l| l.strip_prefix("LINUX-CGROUP launcher-cgroup="))
        .expect("launcher's cgroup");
    assert!(
        !launcher.contains("/ward/"),
        "the launcher joined the VM's group: {out}"
    );
}
