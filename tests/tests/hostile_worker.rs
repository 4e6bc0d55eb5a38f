//! A worker taken over by its guest, played by the worker itself (`ward_worker::hostile`, debug
//! builds only): right after its seccomp filter is installed it tries one way out, and the test
//! asserts from outside what stopped it.
//!
//! - Under the full default policy every attempt dies on the seccomp filter (SIGSYS), and ward
//!   names the worker.
//! - With seccomp off (`--seccomp off`) the rest of the confinement still denies every one:
//!   no host path exists (empty root), no capability (mount, rlimits), another uid (signals,
//!   ptrace), Landlock and an empty net namespace (TCP).
//! - Another VM, running meanwhile, is untouched.
//! - A queue thread, under its own filter on top of the process's, cannot start a thread,
//!   which the worker's main thread can.
//! - The control: an unconfined worker without its filter opens the other VM's image.

use std::time::Duration;

use ward_tests::{finish, kvm_available, TempDir, WardRun};

/// What became of one attempt, from ward's exit and messages.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    KilledBySeccomp,
    Denied(String),
    Succeeded,
    Other(String),
}

fn attempt(
    dir: &TempDir,
    name: &str,
    spec: &str,
    seccomp: &'static str,
    extra: &[&str],
) -> Outcome {
    let disk = dir.image(&format!("{name}.img"), 1 << 20);
    let mut run = WardRun::probe(dir, name, "blk-info:0");
    run.seccomp = seccomp;
    run.extra = extra.iter().map(|s| s.to_string()).collect();
    run.disks.push(disk.display().to_string());
    let mut c = run.command();
    c.env("WARD_HOSTILE_TEST", spec);
    let child = c.spawn().expect("spawn ward");
    let f = finish(child, run.console_log(), Duration::from_secs(60));
    let said = f.stderr;
    if said.contains("worker for disk vda died (killed by SIGSYS)") {
        Outcome::KilledBySeccomp
    } else if let Some(l) = said.lines().find(|l| l.contains("hostile test:")) {
        if l.contains("SUCCEEDED") {
            Outcome::Succeeded
        } else {
            assert!(
                said.contains("worker for disk vda died (exit status 98)"),
                "{said}"
            );
            Outcome::Denied(l.split("denied").nth(1).unwrap_or("").trim().to_string())
        }
    } else {
        Outcome::Other(said)
    }
}

#[test]
fn every_way_out_is_closed() {
    if !kvm_available("every_way_out_is_closed") {
        return;
    }
    let dir = TempDir::new("hostile");
    let other_image = dir.image("other-vm.img", 1 << 20);

    // Another VM runs meanwhile; its core is a target.
    let mut bystander = WardRun::probe(&dir, "bystander", "cons-echo:0:1");
    bystander.cmdline += " probe.timeout_ms=300000";
    bystander.virtio_console = true;
    let mut by = bystander.spawn();
    bystander.wait_serial(
        Some(&mut by),
        "PROBE cons-echo:0:1 waiting",
        Duration::from_secs(30),
    );
    let by_core = ward_tests::workers_named(by.id(), "ward-vmm")[0];
    let by_console = ward_tests::workers_named(by.id(), "ward-console")[0];

    let attempts = [
        "execve".to_string(),
        "open:/etc/passwd".to_string(),
        format!("open:{}", other_image.display()),
        "inet".to_string(),
        format!("kill:{by_core}"),
        format!("kill:{by_console}"),
        format!("ptrace:{by_core}"),
        "mount".to_string(),
        "rlimit".to_string(),
        "cgroup".to_string(),
    ];
    for (i, a) in attempts.iter().enumerate() {
        let spec = format!("block:{a}");
        // Under the full policy: the filter kills the attempt.
        let full = attempt(&dir, &format!("h{i}"), &spec, "enforce", &[]);
        assert_eq!(full, Outcome::KilledBySeccomp, "{a} under the full policy");
        // Without the filter, the rest of the confinement denies it.
        let rest = attempt(&dir, &format!("h{i}-noseccomp"), &spec, "off", &[]);
        let Outcome::Denied(errno) = &rest else {
            panic!("{a} without seccomp: {rest:?}");
        };
        let expected: &[&str] = match a.split(':').next().unwrap() {
            // No host path exists in the worker's root.
            "execve" | "open" | "cgroup" => &["ENOENT"],
            // Landlock (TCP connect) or the empty net namespace.
            "inet" => &["EACCES", "ENETUNREACH"],
            // Another pid namespace (the target does not exist there), another uid, no
            // capability, Landlock's signal scope.
            "kill" | "ptrace" => &["ESRCH", "EPERM"],
            "mount" | "rlimit" => &["EPERM"],
            _ => unreachable!(),
        };
        assert!(
            expected.iter().any(|e| errno.contains(e)),
            "{a} without seccomp was denied with {errno}, expected one of {expected:?}"
        );
    }

    // Per-thread filters: the worker's main thread may start a thread (vhost-user-backend
    // does, once the frontend connects); a queue thread, under its own filter too, may not.
    let main = attempt(&dir, "t-main", "block:thread", "enforce", &[]);
    assert_eq!(main, Outcome::Succeeded, "a thread from the main thread");
    let queue = attempt(&dir, "t-queue", "block:queue:thread", "enforce", &[]);
    assert_eq!(
        queue,
        Outcome::KilledBySeccomp,
        "a thread from a queue thread"
    );

    // The control: with nothing but an unfiltered, unconfined worker, the same attempt works.
    let open = format!("block:open:{}", other_image.display());
    let bare = attempt(&dir, "bare", &open, "off", &["--unconfined"]);
    assert_eq!(bare, Outcome::Succeeded);

    // The bystander saw none of it.
    assert!(matches!(by.try_wait(), Ok(None)), "the other VM ended");
    assert!(ward_tests::alive(by_core) && ward_tests::alive(by_console));
    // SAFETY: kill with a valid signal on our own child's pid.
    unsafe { libc::kill(by.id() as i32, libc::SIGTERM) };
    let f = finish(by, bystander.console_log(), Duration::from_secs(30));
    assert!(!f.timed_out);
}
