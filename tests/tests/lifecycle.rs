//! The processes of a VM: each confined by seccomp on every thread, each ended with the VM, and
//! a dead worker or a stop request ending the VM with a clear reason — no hang, no orphans.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ward_tests::{
    alive, finish, kvm_available, seccomp_modes, wait_for, workers_named, TempDir, WardRun,
};

/// Starts a probe guest that idles forever with one disk, and waits until it runs.
fn start_idle(dir: &TempDir, name: &str) -> (WardRun, std::process::Child, u32, u32) {
    let mut run = WardRun::probe(dir, name, "blk-info:0,idle:0");
    run.disks = vec![dir.image("disk.img", 4 << 20).display().to_string()];
    let child = run.spawn();
    let pid = child.id();
    let log = run.console_log();
    let started = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("PROBE idle:0 started"))
    });
    assert!(started.is_some(), "probe did not start idling");
    let core = workers_named(pid, "ward-vmm");
    let worker = workers_named(pid, "ward-block");
    assert_eq!(
        (core.len(), worker.len()),
        (1, 1),
        "core {core:?}, workers {worker:?}"
    );
    (run, child, core[0], worker[0])
}

fn assert_gone(pids: &[u32]) {
    for &p in pids {
        let gone = wait_for(Duration::from_secs(10), || (!alive(p)).then_some(()));
        assert!(gone.is_some(), "process {p} outlived the VM");
    }
}

#[test]
fn every_thread_of_core_and_worker_is_confined() {
    if !kvm_available("every_thread_of_core_and_worker_is_confined") {
        return;
    }
    let dir = TempDir::new("seccomp-threads");
    let (run, child, core, worker) = start_idle(&dir, "confined");
    let core_threads = seccomp_modes(core);
    let worker_threads = seccomp_modes(worker);
    let worker_filters = ward_tests::thread_filters(worker);
    let core_filters = ward_tests::thread_filters(core);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let fin = finish(child, run.console_log(), Duration::from_secs(20));
    // Main thread and one vCPU thread at least; the worker has its vhost-user threads.
    assert!(core_threads.len() >= 2, "{core_threads:?}");
    assert!(worker_threads.len() >= 2, "{worker_threads:?}");
    // Per-thread filters: the worker's queue thread (which served the probe's blk-info
    // request) added its own on top of the process's; every vCPU thread runs under the vCPU
    // filter alone (its own, installed before the main thread's).
    let queue: Vec<_> = worker_filters
        .iter()
        .filter(|(c, _)| c == "vring_worker")
        .collect();
    assert!(!queue.is_empty(), "{worker_filters:?}");
    for (name, n) in &worker_filters {
        let want = if name == "vring_worker" { 2 } else { 1 };
        assert_eq!(*n, want, "worker thread {name}: {worker_filters:?}");
    }
    assert!(
        core_filters.iter().any(|(c, n)| c == "vcpu0" && *n == 1),
        "{core_filters:?}"
    );
    for (what, threads) in [("core", &core_threads), ("worker", &worker_threads)] {
        for (tid, mode) in threads.iter() {
            assert_eq!(
                mode, "2",
                "{what} thread {tid} is not in seccomp filter mode: {fin}"
            );
        }
    }
}

#[test]
fn sigterm_stops_the_vm_and_leaves_nothing_behind() {
    if !kvm_available("sigterm_stops_the_vm_and_leaves_nothing_behind") {
        return;
    }
    let dir = TempDir::new("sigterm");
    let (run, child, core, worker) = start_idle(&dir, "stopme");
    assert!(
        dir.path("ward/stopme").is_dir(),
        "runtime directory missing"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let fin = finish(child, run.console_log(), Duration::from_secs(20));
    assert!(!fin.timed_out, "{fin}");
    assert_eq!(fin.status.code(), Some(130), "{fin}");
    assert!(fin.stderr.contains("stopped by SIGTERM"), "{fin}");
    assert_gone(&[core, worker]);
    assert!(
        !dir.path("ward/stopme").exists(),
        "runtime directory left behind"
    );
}

#[test]
fn ctrl_c_stops_the_vm_and_leaves_nothing_behind() {
    if !kvm_available("ctrl_c_stops_the_vm_and_leaves_nothing_behind") {
        return;
    }
    let dir = TempDir::new("sigint");
    let (run, child, core, worker) = start_idle(&dir, "ctrlc");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let fin = finish(child, run.console_log(), Duration::from_secs(20));
    assert_eq!(fin.status.code(), Some(130), "{fin}");
    assert!(fin.stderr.contains("stopped by SIGINT"), "{fin}");
    assert_gone(&[core, worker]);
}

#[test]
fn a_killed_block_worker_ends_the_vm_with_its_name() {
    if !kvm_available("a_killed_block_worker_ends_the_vm_with_its_name") {
        return;
    }
    let dir = TempDir::new("killworker");
    let (run, child, core, worker) = start_idle(&dir, "killworker");
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    let fin = finish(child, run.console_log(), Duration::from_secs(20));
    assert!(!fin.timed_out, "ward hung after its worker died: {fin}");
    assert_eq!(fin.status.code(), Some(1), "{fin}");
    assert!(
        fin.stderr
            .contains("worker for disk vda died (killed by SIGKILL)"),
        "error should name the worker and how it died: {fin}"
    );
    assert_gone(&[core, worker]);
}

#[test]
fn a_disk_in_use_by_a_running_vm_is_refused() {
    if !kvm_available("a_disk_in_use_by_a_running_vm_is_refused") {
        return;
    }
    let dir = TempDir::new("diskinuse");
    let (run, child, _core, _worker) = start_idle(&dir, "first");
    let mut second = WardRun::probe(&dir, "second", "");
    second.disks = run.disks.clone();
    let fin2 = second.run(Duration::from_secs(30));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let fin1 = finish(child, run.console_log(), Duration::from_secs(20));
    assert_eq!(fin2.status.code(), Some(1), "{fin2}");
    assert!(fin2.stderr.contains("is in use by another VM"), "{fin2}");
    assert!(!fin2.console.contains("PROBE READY"), "{fin2}");
    assert_eq!(
        fin1.status.code(),
        Some(130),
        "the first VM was disturbed: {fin1}"
    );
}

#[test]
fn a_killed_launcher_leaves_no_orphans() {
    if !kvm_available("a_killed_launcher_leaves_no_orphans") {
        return;
    }
    let dir = TempDir::new("killlauncher");
    let (run, mut child, core, worker) = start_idle(&dir, "killlauncher");
    child.kill().unwrap();
    let _ = child.wait();
    assert_gone(&[core, worker]);
    drop(run);
}
