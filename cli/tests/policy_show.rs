//! `ward policy show`, run as the binary: the default policy, a policy file, and refusals.

use std::process::Command;

fn ward(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .expect("run ward");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number in "<thread>: filter <name>, N syscalls allowed".
fn count(out: &str, thread: &str) -> usize {
    let l = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{thread}: filter")))
        .unwrap_or_else(|| panic!("no {thread} filter in:\n{out}"));
    l.split(", ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {l:?}"))
}

#[test]
fn the_default_policy_of_every_kind_with_its_syscall_counts() {
    let (ok, out, err) = ward(&["policy", "show"]);
    assert!(ok, "{err}");
    for kind in ["core:", "block:", "net:", "console:"] {
        assert!(out.lines().any(|l| l == kind), "{kind} in:\n{out}");
    }
    let (main, vcpu) = (count(&out, "main"), count(&out, "vcpu"));
    // vCPU threads need less than the event loop.
    assert!(vcpu < main && vcpu > 10, "{out}");
    assert!(out.contains("cgroup v2: preferred"), "{out}");
    assert!(out.contains("selinux: preferred"), "{out}");
    // What this host offers, said plainly (this one has no SELinux and cgroup v1 only; the
    // nested machine's kernel differs, so only the form is checked).
    assert!(out.contains("this host: SELinux is"), "{out}");
    assert!(
        out.contains("this host: ") && out.contains("cgroup"),
        "{out}"
    );

    let (ok, net, _) = ward(&["policy", "show", "net"]);
    assert!(ok);
    assert!(net.starts_with("net:\n"), "{net}");
    assert!(
        !net.contains("core:") && !net.contains("cgroup v2"),
        "{net}"
    );
}

#[test]
fn a_policy_file_changes_what_it_names() {
    let dir = std::env::temp_dir().join(format!("ward-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.json");
    std::fs::write(
        &f,
        r#"{"block": {"landlock": "preferred", "rlimits": {"nofile": 64}}}"#,
    )
    .unwrap();
    let (ok, out, err) = ward(&["policy", "show", "--file", f.to_str().unwrap(), "block"]);
    assert!(ok, "{err}");
    assert!(out.contains("landlock: preferred"), "{out}");
    assert!(out.contains("nofile 64,"), "{out}");
    let (ok, json, _) = ward(&["policy", "show", "--file", f.to_str().unwrap(), "--json"]);
    assert!(ok);
    assert!(json.contains("\"nofile\": 64"), "{json}");

    std::fs::write(&f, r#"{"block": {"rlimits": {"core": 4096}}}"#).unwrap();
    let (ok, out, err) = ward(&["policy", "show", "--file", f.to_str().unwrap()]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("block: rlimits.core is 4096; it must be 0"),
        "{err}"
    );
    assert!(err.contains("p.json"), "the file is named: {err}");

    std::fs::write(&f, "{\"block\": ").unwrap();
    let (ok, _, err) = ward(&["policy", "show", "--file", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("Malformed policy"), "{err}");
    let (ok, _, err) = ward(&["policy", "show", "disk"]);
    assert!(!ok);
    assert!(err.contains("unknown process kind \"disk\""), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
