//! Every process `ward run` starts for a VM (the core and each worker) is confined by the
//! default policy, checked from outside while the VM runs: the VM's own uid and gid (not root, no capabilities), no_new_privs, seccomp on
//! every thread, new user (mapping the VM's uid and gid only, no capabilities in it), mount,
//! net, ipc, uts, cgroup and pid namespaces (pid 1 of its own, with a waiting parent
//! outside), an empty root, the policy's rlimits; and two VMs at once get different uids. (What a confined worker that tries to break
//! out meets is tests/tests/hostile_worker.rs's business.)

use std::process::Child;
use std::time::Duration;

use ward_tests::{children_named, finish, kvm_available, seccomp_modes, NetNs, TempDir, WardRun};

/// The default policy's uid range.
const UIDS: std::ops::RangeInclusive<u32> = 900_000..=965_535;

fn status_field(pid: u32, key: &str) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    st.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status:\n{st}"))
}

/// The limit line of /proc/<pid>/limits that starts with `what`, as (soft, hard).
fn limit(pid: u32, what: &str) -> (String, String) {
    let l = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = l
        .lines()
        .find(|x| x.starts_with(what))
        .unwrap_or_else(|| panic!("no {what} in:\n{l}"));
    let mut v = line[what.len()..].split_whitespace();
    (v.next().unwrap().into(), v.next().unwrap().into())
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Checks one process of a VM (`nofile`: its policy's descriptor limit); returns its uid.
fn confined(pid: u32, what: &str, nofile: &str) -> u32 {
    let uids: Vec<u32> = status_field(pid, "Uid:")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids.len(), 4, "{what}");
    assert!(uids.iter().all(|u| *u == uids[0]), "{what}: uids {uids:?}");
    let uid = uids[0];
    assert!(UIDS.contains(&uid), "{what} runs as uid {uid}");
    let gids: Vec<u32> = status_field(pid, "Gid:")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(gids.iter().all(|g| *g == uid), "{what}: gids {gids:?}");
    assert_eq!(status_field(pid, "Groups:"), "", "{what}");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{what} {cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1", "{what}");
    let modes = seccomp_modes(pid);
    assert!(
        !modes.is_empty() && modes.iter().all(|(_, m)| m == "2"),
        "{what}: {modes:?}"
    );
    // Capabilities held in its user namespace would show here too: the bounding set is empty.
    assert_eq!(status_field(pid, "CapBnd:"), "0000000000000000", "{what}");
    for kind in ["user", "mnt", "net", "ipc", "uts", "cgroup"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "{what} shares the {kind} namespace"
        );
    }
    // Its user namespace holds its own uid and gid and nothing else, and no supplementary
    // groups can be set in it.
    let map = |f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(map("uid_map"), format!("{uid} {uid} 1"), "{what}");
    assert_eq!(map("gid_map"), format!("{uid} {uid} 1"), "{what}");
    assert_eq!(map("setgroups"), "deny", "{what}");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("the worker's root")
        .collect();
    assert!(root.is_empty(), "{what} sees files in its root: {root:?}");
    assert_eq!(
        limit(pid, "Max open files"),
        (nofile.into(), nofile.into()),
        "{what}"
    );
    assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
    assert_eq!(limit(pid, "Max processes"), ("512".into(), "512".into()));
    uid
}

fn stop(child: Child, run: &WardRun) -> String {
    // SAFETY: kill with a valid signal on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let f = finish(child, run.console_log(), Duration::from_secs(30));
    f.stderr
}

#[test]
fn every_process_of_a_vm_runs_confined() {
    if !kvm_available("every_process_of_a_vm_runs_confined") {
        return;
    }
    let Some(netns) = NetNs::create("every_process_of_a_vm_runs_confined") else {
        return;
    };
    let dir = TempDir::new("confine");
    let disk = dir.image("d.img", 1 << 20);
    // Devices in order: the disk (0), the console (1), the network (2).
    let mut run = WardRun::probe(&dir, "conf-a", "cons-echo:1:1");
    // The guest waits for console input (that never comes) while the test looks around.
    run.cmdline += " probe.timeout_ms=120000";
    run.virtio_console = true;
    run.disks.push(disk.display().to_string());
    run.extra = vec!["--net".into(), "tap=wcf0".into()];
    let mut a = run.spawn_in(&netns);
    run.wait_serial(
        Some(&mut a),
        "PROBE cons-echo:1:1 waiting",
        Duration::from_secs(30),
    );

    let mut uid = None;
    for (comm, nofile) in [
        ("ward-block", "256"),
        ("ward-console", "256"),
        ("ward-net", "256"),
        ("ward-vmm", "1024"),
    ] {
        // ward's child is the parent left outside the process's pid namespace; its one child,
        // of the same name, is the process at work, pid 1 of that namespace.
        let outer = children_named(a.id(), comm);
        assert_eq!(outer.len(), 1, "{comm}: {outer:?}");
        let inner = children_named(outer[0], comm);
        assert_eq!(inner.len(), 1, "{comm} has no child in its pid namespace");
        for (pid, what) in [(outer[0], "outside"), (inner[0], "inside")] {
            let u = confined(pid, &format!("{comm} ({what})"), nofile);
            // One uid for the whole VM.
            assert_eq!(*uid.get_or_insert(u), u, "{comm}");
        }
        // The parent only waits: one thread, under its own small filter.
        assert_eq!(seccomp_modes(outer[0]).len(), 1, "{comm}");
        assert!(seccomp_modes(inner[0]).len() >= 2, "{comm}");
        assert_ne!(
            ns(&inner[0].to_string(), "pid"),
            ns("self", "pid"),
            "{comm} shares the pid namespace"
        );
        let nspid = status_field(inner[0], "NSpid:");
        assert!(
            nspid.split_whitespace().last() == Some("1"),
            "{comm} is not pid 1 of its namespace: {nspid}"
        );
    }

    // `ward status` shows the VM's processes as they work, and says plainly what this host
    // does not give (here: SELinux, where the host has it off).
    let status = std::process::Command::new(ward_tests::bin("ward"))
        .args(["status", "conf-a"])
        .env("XDG_RUNTIME_DIR", &dir.0)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{said}");
    assert!(
        said.contains(&format!("vm conf-a (launcher pid {}):", a.id())),
        "{said}"
    );
    let selinux_on = std::path::Path::new("/sys/fs/selinux/enforce").exists();
    for comm in ["ward-block", "ward-console", "ward-net", "ward-vmm"] {
        let l = said
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{comm} pid ")))
            .unwrap_or_else(|| panic!("no {comm} in:\n{said}"));
        assert!(l.contains("(pid 1 in its namespace)"), "{l}");
        assert!(l.contains(&format!("uid {}", uid.unwrap())), "{l}");
        let (on, all) = l
            .split("seccomp on ")
            .nth(1)
            .and_then(|r| r.split(" threads").next())
            .and_then(|r| r.split_once(" of "))
            .unwrap_or_else(|| panic!("{l}"));
        assert!(on == all && on != "0", "{l}");
        if selinux_on {
            assert!(l.contains("SELinux system_u:system_r:ward_t:"), "{l}");
        } else {
            assert!(
                l.contains("SELinux none (SELinux is off on this host)"),
                "{l}"
            );
        }
    }
    if !selinux_on {
        assert!(said.contains("this host: SELinux is off"), "{said}");
    }

    // A second VM at the same time gets a uid of its own.
    let mut run_b = WardRun::probe(&dir, "conf-b", "cons-echo:0:1");
    run_b.cmdline += " probe.timeout_ms=120000";
    run_b.virtio_console = true;
    let mut b = run_b.spawn();
    run_b.wait_serial(
        Some(&mut b),
        "PROBE cons-echo:0:1 waiting",
        Duration::from_secs(30),
    );
    let console_b = ward_tests::workers_named(b.id(), "ward-console");
    assert_eq!(console_b.len(), 1);
    let uid_b = confined(console_b[0], "b's ward-console", "256");
    assert_ne!(Some(uid_b), uid, "two VMs share a uid");

    let log_b = stop(b, &run_b);
    let log_a = stop(a, &run);
    // Each process said what it entered, and nothing the policy asks for was left out.
    for log in [&log_a, &log_b] {
        assert!(log.contains("confined"), "{log}");
        assert!(
            log.contains("namespaces (user, mount, ipc, uts, net, cgroup, empty root)"),
            "{log}"
        );
        assert!(log.contains("landlock, pid namespace"), "{log}");
        assert!(!log.contains("not applied"), "{log}");
    }
}

#[test]
fn unconfined_runs_keep_seccomp_only() {
    if !kvm_available("unconfined_runs_keep_seccomp_only") {
        return;
    }
    let dir = TempDir::new("unconfined");
    let mut run = WardRun::probe(&dir, "unconf", "cons-echo:0:1");
    run.cmdline += " probe.timeout_ms=120000";
    run.virtio_console = true;
    run.extra = vec!["--unconfined".into()];
    let mut c = run.spawn();
    run.wait_serial(
        Some(&mut c),
        "PROBE cons-echo:0:1 waiting",
        Duration::from_secs(30),
    );
    let pid = children_named(c.id(), "ward-console")[0];
    assert!(seccomp_modes(pid).iter().all(|(_, m)| m == "2"));
    assert_eq!(
        ns(&pid.to_string(), "mnt"),
        ns("self", "mnt"),
        "an unconfined worker has its own mount namespace"
    );
    let log = stop(c, &run);
    assert!(!log.contains("confined:"), "{log}");
}

#[test]
fn a_launcher_that_is_not_root_is_told_what_the_policy_needs() {
    if !kvm_available("a_launcher_that_is_not_root_is_told_what_the_policy_needs") {
        return;
    }
    // As nobody (setpriv from util-linux), with the default policy.
    let dir = TempDir::new("notroot");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let run = WardRun::probe(&dir, "notroot", "");
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ward_tests::bin("ward"));
    let cmd = run.command();
    // The same arguments and environment as `ward run`, through setpriv.
    c.args(cmd.get_args()).envs(
        cmd.get_envs()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
    );
    let out = c
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the confinement policy requires a uid of the VM's own, which only root"),
        "{err}"
    );
    assert!(err.contains("--unconfined"), "{err}");
}
