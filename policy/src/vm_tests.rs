//! The policy parser: defaults, partial documents, and every refusal.

use super::*;

fn refused(json: &str) -> String {
    match VmPolicy::parse(json) {
        Ok(p) => panic!("accepted {json}: {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_empty_document_is_the_full_default_policy() {
    let p = VmPolicy::parse("{}").unwrap();
    assert_eq!(p, VmPolicy::default());
    for kind in Kind::ALL {
        let k = p.process(kind);
        assert_eq!(k.seccomp.level, Level::Required);
        assert_eq!(k.seccomp.action, SeccompAction::Kill);
        assert_eq!(k.namespaces.level, Level::Required);
        assert_eq!(k.namespaces.kinds, Namespace::ALL);
        assert_eq!(k.landlock, Level::Required);
        assert_eq!(k.own_uid, Level::Required);
        assert!(k.no_new_privs);
        assert_eq!(k.rlimits.core, 0);
    }
    assert_eq!(p.core.rlimits.nofile, 1024);
    assert_eq!(p.block.rlimits.nofile, 256);
    assert_eq!(p.cgroup.level, Level::Preferred);
    assert_eq!(p.selinux.level, Level::Preferred);
    // The defaults pass their own checks, and survive a round trip.
    p.validate().unwrap();
    let again = VmPolicy::parse(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(again, p);
}

#[test]
fn a_document_names_only_what_it_changes() {
    let p = VmPolicy::parse(
        r#"{"net": {"landlock": "preferred", "rlimits": {"nofile": 64}},
            "cgroup": {"level": "required", "cpu_max": {"quota_us": 50000, "period_us": 100000}}}"#,
    )
    .unwrap();
    assert_eq!(p.net.landlock, Level::Preferred);
    assert_eq!(p.net.rlimits.nofile, 64);
    // Fields left out keep their defaults, in the same section too.
    assert_eq!(p.net.rlimits.nproc, Rlimits::default().nproc);
    assert_eq!(p.net.seccomp, Seccomp::default());
    assert_eq!(p.block, ProcessPolicy::default());
    assert_eq!(p.cgroup.level, Level::Required);
    assert_eq!(p.cgroup.pids_max, Cgroup::default().pids_max);
    assert_eq!(
        p.cgroup.cpu_max,
        Some(CpuMax {
            quota_us: 50000,
            period_us: 100000
        })
    );
}

#[test]
fn malformed_documents_are_refused_with_the_place_named() {
    for (json, says) in [
        ("", "EOF"),
        ("[]", "the policy must be an object, not a list"),
        ("3", "invalid type"),
        (r#"{"block": []}"#, "block must be an object"),
        (
            r#"{"net": {"rlimits": [256, 512]}}"#,
            "rlimits must be an object",
        ),
        (r#"{"blok": {}}"#, "unknown field `blok`"),
        (
            r#"{"block": {"seccomp": {"level": "maybe"}}}"#,
            "unknown variant `maybe`",
        ),
        (
            r#"{"block": {"namespaces": {"kinds": ["time"]}}}"#,
            "unknown variant `time`",
        ),
        (r#"{"net": {"rlimits": {"nofile": -1}}}"#, "invalid value"),
        (r#"{"identity": {"uid_range": [1000]}}"#, "invalid length"),
        (
            r#"{"cgroup": {"cpu_max": {"quota_us": 1000}}}"#,
            "missing field `period_us`",
        ),
        (
            r#"{"console": {"seccomp": {"action": "trap"}}}"#,
            "unknown variant `trap`",
        ),
    ] {
        let e = refused(json);
        assert!(e.starts_with("Malformed policy"), "{json}: {e}");
        assert!(e.contains(says), "{json}: {e}");
    }
}

#[test]
fn contradictions_and_impossible_values_are_refused() {
    for (json, says) in [
        (
            r#"{"block": {"namespaces": {"kinds": ["user", "net", "user"]}}}"#,
            "block: namespace User is listed twice",
        ),
        (
            r#"{"net": {"namespaces": {"level": "required", "kinds": []}}}"#,
            "net: namespaces are Required but none is listed",
        ),
        (
            r#"{"console": {"no_new_privs": false}}"#,
            "console: seccomp needs no_new_privs",
        ),
        (
            r#"{"core": {"no_new_privs": false, "seccomp": {"level": "off"}}}"#,
            "core: landlock needs no_new_privs",
        ),
        (
            r#"{"core": {"rlimits": {"core": 1048576}}}"#,
            "core: rlimits.core is 1048576; it must be 0",
        ),
        (
            r#"{"block": {"rlimits": {"nofile": 4}}}"#,
            "block: rlimits.nofile is 4",
        ),
        (
            r#"{"block": {"rlimits": {"nproc": 0}}}"#,
            "block: rlimits.nproc is 0",
        ),
        (
            r#"{"identity": {"uid_range": [0, 100]}}"#,
            "uid_range [0, 100]",
        ),
        (
            r#"{"identity": {"uid_range": [5000, 4000]}}"#,
            "uid_range [5000, 4000]",
        ),
        (
            r#"{"cgroup": {"pids_max": 1}}"#,
            "pids_max must be at least 16",
        ),
        (
            r#"{"cgroup": {"memory_max": 4096}}"#,
            "memory_max of 4096 bytes",
        ),
        (
            r#"{"cgroup": {"cpu_max": {"quota_us": 10, "period_us": 100000}}}"#,
            "cpu_max",
        ),
        (
            r#"{"cgroup": {"cpu_max": {"quota_us": 5000, "period_us": 5}}}"#,
            "cpu_max",
        ),
        (r#"{"selinux": {"domain": "ward_t:s0"}}"#, "selinux.domain"),
        (r#"{"selinux": {"domain": ""}}"#, "selinux.domain"),
        (
            r#"{"selinux": {"image_type": "a b"}}"#,
            "selinux.image_type",
        ),
        (
            r#"{"selinux": {"content_type": "x:y"}}"#,
            "selinux.content_type",
        ),
    ] {
        let e = refused(json);
        assert!(e.contains(says), "{json}: {e}");
    }
}

#[test]
fn what_is_off_needs_nothing() {
    // No namespaces at all is weak, but consistent; so is no seccomp without no_new_privs.
    VmPolicy::parse(
        r#"{"block": {"namespaces": {"level": "off", "kinds": []},
                      "seccomp": {"level": "off"}, "landlock": "off", "no_new_privs": false}}"#,
    )
    .unwrap();
}

#[test]
fn show_counts_the_syscalls_of_every_thread_kind() {
    let p = VmPolicy::default();
    let core = describe(&p, Kind::Core);
    for (thread, profile) in [("main", Profile::CoreMain), ("vcpu", Profile::CoreVcpu)] {
        let want = format!(
            "{thread}: filter {}, {} syscalls allowed",
            profile.name(),
            allowed_syscalls(profile).len()
        );
        assert!(core.contains(&want), "{core}");
    }
    let net = describe(&p, Kind::Net);
    assert!(
        net.starts_with("net:\n  seccomp: required (mismatch: kill)\n"),
        "{net}"
    );
    assert!(
        net.contains("namespaces: required (user, mount, pid, ipc, uts, net, cgroup)"),
        "{net}"
    );
    assert!(net.contains("rlimits: nofile 256, nproc 512, memlock 65536, core 0"));
    // What this version does not apply is marked, not shown as in force.
    assert!(applied(Some(Kind::Net), Mechanism::Landlock));
    assert!(!net.contains("not applied by this version"), "{net}");
    assert!(net.contains("    queue: filter net_queue, "), "{net}");
    assert!(!net.contains("landlock: required (not applied"), "{net}");
    assert!(applied(Some(Kind::Core), Mechanism::Landlock));
    assert!(!core.contains("landlock: required (not"), "{core}");
    assert!(applied(Some(Kind::Core), Mechanism::Seccomp));
    assert!(applied(None, Mechanism::Cgroup));
    assert!(applied(None, Mechanism::Selinux));
    assert_eq!("block".parse::<Kind>().unwrap(), Kind::Block);
    assert!("disk".parse::<Kind>().is_err());
}
