//! sVirt, in the nested machine (its Debian kernel has SELinux built in; this host's has it
//! off, and a host's own policy is not a test's to replace): the machine boots with SELinux
//! among its LSMs, loads ward's minimal MCS policy (policy/selinux/minimal), enforcing, and
//! runs probe-guest VMs (tests/guest/linux-selinux.sh):
//! - every process of a VM runs as ward_t with the VM's own category pair, distinct between
//!   two VMs running at once; the launcher stays unconfined; each VM reads its own disk;
//! - a worker confined by SELinux alone (no seccomp, no namespaces, running as root) cannot
//!   open another running VM's image nor kill its core (EACCES, logged as AVC denials), while
//!   it opens shared content, and with SELinux off in its policy opens that image;
//! - once a VM has ended its image has its old label back.

use std::collections::BTreeSet;
use std::process::Command;

use ward_tests::{kvm_available, probe_elf, repo};

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"))
}

#[test]
fn each_vm_runs_in_its_own_selinux_categories() {
    if !kvm_available("each_vm_runs_in_its_own_selinux_categories") {
        return;
    }
    let built = Command::new("bash")
        .arg(repo().join("policy/selinux/build.sh"))
        .output()
        .expect("run policy/selinux/build.sh");
    assert!(
        built.status.success(),
        "building the SELinux policies failed (scripts/setup-host.sh installs checkpolicy, m4, gawk): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let dir = String::from_utf8_lossy(&built.stdout).trim().to_string();
    // The module for hosts with a reference policy built against Debian's refpolicy headers.
    assert!(
        std::path::Path::new(&dir).join("ward.pp").is_file(),
        "no ward.pp in {dir}"
    );
    let out = ward_tests::run_nested_script(
        "tests/guest/linux-selinux.sh",
        &[
            format!("{dir}/ward-minimal.33:/ward/selinux/"),
            format!("{}:/ward/guest/", probe_elf().display()),
        ],
        &[
            "POLICY=/ward/selinux/ward-minimal.33".into(),
            "PROBE=/ward/guest/probe.elf".into(),
        ],
        // SELinux in place of Debian's default AppArmor; Landlock stays.
        "lsm=landlock,lockdown,yama,selinux,bpf",
    );
    assert_eq!(
        line(&out, "LINUX-SELINUX enforce="),
        "LINUX-SELINUX enforce=1"
    );
    assert!(
        line(&out, "LINUX-SELINUX launcher-context=").contains(":unconfined_t:"),
        "{out}"
    );
    assert!(
        line(&out, "LINUX-SELINUX show:").contains("SELinux is enabled and enforcing"),
        "{out}"
    );
    // Both VMs read their disks under the enforcing policy.
    for vm in ["a", "b"] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("{vm}.log:PROBE blk-info:0 OK"))),
            "VM {vm} could not read its disk:\n{out}"
        );
    }

    // Every process of each VM: ward_t, the VM's one category pair.
    let mut pairs = Vec::new();
    for vm in ["a", "b"] {
        let procs: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(&format!("LINUX-SELINUX proc vm={vm} ")))
            .collect();
        let comms: BTreeSet<&str> = procs
            .iter()
            .filter_map(|l| l.split(" comm=").nth(1)?.split(' ').next())
            .collect();
        assert_eq!(
            comms,
            BTreeSet::from(["ward-block", "ward-vmm"]),
            "VM {vm}:\n{out}"
        );
        let ctxs: BTreeSet<&str> = procs
            .iter()
            .filter_map(|l| l.split(" ctx=").nth(1))
            .collect();
        assert_eq!(
            ctxs.len(),
            1,
            "VM {vm} has processes in several contexts: {ctxs:?}"
        );
        let ctx = *ctxs.iter().next().unwrap();
        let level = ctx
            .strip_prefix("system_u:system_r:ward_t:s0:c")
            .unwrap_or_else(|| panic!("VM {vm} runs as {ctx}"));
        let (a, b) = level.split_once(",c").expect("a category pair");
        let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(a < b && b < 1024, "{ctx}");
        pairs.push((a, b));
        // Its image was labelled with the same pair while it ran.
        assert!(
            out.contains(&format!(
                "/sel/{vm}.img label=system_u:object_r:ward_image_t:s0:c{a},c{b}"
            )),
            "VM {vm}'s image label:\n{out}"
        );
    }
    assert_ne!(pairs[0], pairs[1], "two VMs share a category pair");
    // `ward status` says so too.
    let (a, b) = pairs[0];
    for comm in ["ward-vmm", "ward-block"] {
        assert!(
            out.lines().any(|l| l.starts_with("LINUX-SELINUX status: ")
                && l.contains(&format!("{comm} pid "))
                && l.ends_with(&format!("SELinux system_u:system_r:ward_t:s0:c{a},c{b}"))),
            "ward status on {comm}:\n{out}"
        );
    }
    assert!(
        out.contains("LINUX-SELINUX status:   this host: SELinux is enabled and enforcing"),
        "{out}"
    );

    // SELinux alone stops a worker reaching VM b; shared content stays readable; without
    // SELinux the same worker gets through.
    let hostile = |name: &str| line(&out, &format!("LINUX-SELINUX hostile {name} "));
    for (name, want) in [
        ("c1", "open denied (EACCES"),
        ("c2", "kill denied (EACCES"),
        ("c3", "open SUCCEEDED"),
        ("c4", "open SUCCEEDED"),
        ("c5", "open SUCCEEDED"),
    ] {
        assert!(hostile(name).contains(want), "{name}: {}", hostile(name));
    }
    let avc: u32 = line(&out, "LINUX-SELINUX avc ")
        .trim_start_matches("LINUX-SELINUX avc ")
        .parse()
        .unwrap();
    assert!(avc >= 2, "AVC denials for ward_t: {avc}\n{out}");
    // b outlived the attempt on its core.
    assert_eq!(
        line(&out, "LINUX-SELINUX b-exit="),
        "LINUX-SELINUX b-exit=130"
    );
    assert!(out.contains("LINUX-SELINUX done"), "{out}");
}
