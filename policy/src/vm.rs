//! The per-VM confinement policy, as data: what the launcher (later the supervisor) applies to
//! each process it spawns for a VM.
//!
//! A policy is a JSON document; every field has a default, so `{}` is the full default policy
//! and a file names only what it changes. Each process kind (`core`, `block`, `net`,
//! `console`) has its own section; `identity`, `cgroup` and `selinux` apply to the whole VM.
//!
//! Every mechanism has a [`Level`]: `required` (a launch where it cannot be applied fails, with
//! an error naming it: nothing starts half-confined), `preferred` (applied where the host can,
//! and reported where it cannot) or `off`. [`VmPolicy::parse`] rejects unknown fields,
//! malformed values and contradictions (see [`Error`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::seccomp::{allowed_syscalls, Profile};

/// How firmly a mechanism is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Applied, or the launch fails.
    Required,
    /// Applied where the host supports it; reported where it does not.
    Preferred,
    /// Not applied.
    Off,
}

impl Level {
    pub fn is_on(self) -> bool {
        self != Level::Off
    }
}

/// What a seccomp filter does with a syscall it does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompAction {
    /// Kill the process (SIGSYS).
    Kill,
    /// Let the call through and log it (for developing a policy; never for tenants).
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Seccomp {
    pub level: Level,
    pub action: SeccompAction,
}

impl Default for Seccomp {
    fn default() -> Self {
        Seccomp {
            level: Level::Required,
            action: SeccompAction::Kill,
        }
    }
}

/// A Linux namespace a process can be given a new, empty one of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    User,
    /// With a minimal root (pivot_root) holding only what the process needs.
    Mount,
    Pid,
    Ipc,
    Uts,
    /// Empty: no interface but loopback (the net worker keeps only its TAP descriptor).
    Net,
    Cgroup,
}

impl Namespace {
    pub const ALL: [Namespace; 7] = [
        Namespace::User,
        Namespace::Mount,
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Net,
        Namespace::Cgroup,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Namespaces {
    pub level: Level,
    /// The namespaces the process gets new ones of; each at most once.
    pub kinds: Vec<Namespace>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            level: Level::Required,
            kinds: Namespace::ALL.to_vec(),
        }
    }
}

/// Resource limits (setrlimit), soft and hard alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: open descriptors.
    pub nofile: u64,
    /// RLIMIT_NPROC: processes and threads of the process's uid (the VM's own uid).
    pub nproc: u64,
    /// RLIMIT_MEMLOCK, bytes.
    pub memlock: u64,
    /// RLIMIT_CORE: must be 0 (a core dump would hold guest memory).
    pub core: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: 256,
            nproc: 512,
            memlock: 64 << 10,
            core: 0,
        }
    }
}

/// The policy of one process kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessPolicy {
    pub seccomp: Seccomp,
    pub namespaces: Namespaces,
    /// Landlock filesystem rules: the process reaches its socket and its own resource (an
    /// image and its backing files, read-only), nothing else.
    pub landlock: Level,
    /// Runs as the VM's own uid and gid (see [`Identity`]), with no capabilities.
    pub own_uid: Level,
    /// PR_SET_NO_NEW_PRIVS: required by seccomp and Landlock once capabilities are dropped.
    pub no_new_privs: bool,
    pub rlimits: Rlimits,
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            seccomp: Seccomp::default(),
            namespaces: Namespaces::default(),
            landlock: Level::Required,
            own_uid: Level::Required,
            no_new_privs: true,
            rlimits: Rlimits::default(),
        }
    }
}

impl ProcessPolicy {
    /// The core's default: more descriptors (vCPUs, eventfds for every queue, sockets to every
    /// worker).
    fn core_default() -> Self {
        ProcessPolicy {
            rlimits: Rlimits {
                nofile: 1024,
                ..Rlimits::default()
            },
            ..ProcessPolicy::default()
        }
    }
}

/// Where the VM's uid and gid come from: one per VM from this range (both ends included), like
/// libvirt's dynamic ownership; the launcher chowns the VM's images and sockets to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    pub uid_range: [u32; 2],
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            uid_range: [900_000, 965_535],
        }
    }
}

/// `cpu.max` of the VM's cgroup: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

/// A cgroup v2 group per VM, holding all its processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cgroup {
    /// `preferred` by default: where cgroup2 is not writable (cgroup v1 hosts) it is reported.
    pub level: Level,
    /// `memory.max` in bytes; `None`: guest memory plus [`Cgroup::memory_overhead`].
    pub memory_max: Option<u64>,
    /// What the VM's processes may use beyond guest memory when `memory_max` is not set.
    pub memory_overhead: u64,
    /// `pids.max`: processes and threads of the VM.
    pub pids_max: u64,
    /// `cpu.max`; `None`: no limit.
    pub cpu_max: Option<CpuMax>,
}

impl Default for Cgroup {
    fn default() -> Self {
        Cgroup {
            level: Level::Preferred,
            memory_max: None,
            memory_overhead: 512 << 20,
            pids_max: 512,
            cpu_max: None,
        }
    }
}

/// sVirt: each VM's processes run in an SELinux context with a category pair of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selinux {
    /// `preferred` by default: on a host without SELinux, ward says so in its status.
    pub level: Level,
    /// The domain of the VM's processes (from the module in `policy/selinux/`).
    pub domain: String,
    /// The type of a VM's writable images while it runs (with the VM's categories).
    pub image_type: String,
    /// The type of read-only images and backing files (shared: no categories).
    pub content_type: String,
}

impl Default for Selinux {
    fn default() -> Self {
        Selinux {
            level: Level::Preferred,
            domain: "ward_t".into(),
            image_type: "ward_image_t".into(),
            content_type: "ward_content_t".into(),
        }
    }
}

/// The whole policy of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmPolicy {
    pub core: ProcessPolicy,
    pub block: ProcessPolicy,
    pub net: ProcessPolicy,
    pub console: ProcessPolicy,
    pub identity: Identity,
    pub cgroup: Cgroup,
    pub selinux: Selinux,
}

impl Default for VmPolicy {
    fn default() -> Self {
        VmPolicy {
            core: ProcessPolicy::core_default(),
            block: ProcessPolicy::default(),
            net: ProcessPolicy::default(),
            console: ProcessPolicy::default(),
            identity: Identity::default(),
            cgroup: Cgroup::default(),
            selinux: Selinux::default(),
        }
    }
}

/// A process kind: what a [`ProcessPolicy`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Core,
    Block,
    Net,
    Console,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Core, Kind::Block, Kind::Net, Kind::Console];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Core => "core",
            Kind::Block => "block",
            Kind::Net => "net",
            Kind::Console => "console",
        }
    }

    /// The seccomp filters of the kind's threads, by thread kind.
    pub fn filters(self) -> &'static [(&'static str, Profile)] {
        match self {
            Kind::Core => &[("main", Profile::CoreMain), ("vcpu", Profile::CoreVcpu)],
            Kind::Block => &[
                ("main and request", Profile::Block),
                ("queue", Profile::BlockQueue),
            ],
            Kind::Net => &[
                ("main and request", Profile::Net),
                ("queue", Profile::NetQueue),
            ],
            Kind::Console => &[
                ("main and request", Profile::Console),
                ("queue", Profile::ConsoleQueue),
            ],
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown process kind {s:?} (core, block, net or console)"))
    }
}

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Malformed policy: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("Malformed policy: {0} must be an object, not a list")]
    ListInPlaceOfObject(String),
    #[error("{kind}: namespace {ns:?} is listed twice")]
    DuplicateNamespace { kind: &'static str, ns: Namespace },
    #[error("{kind}: namespaces are {level:?} but none is listed")]
    NoNamespaces { kind: &'static str, level: Level },
    #[error("{kind}: {what} needs no_new_privs (without capabilities the kernel refuses it)")]
    NeedsNoNewPrivs {
        kind: &'static str,
        what: &'static str,
    },
    #[error("{kind}: rlimits.core is {value}; it must be 0 (a core dump would hold guest memory)")]
    CoreDumps { kind: &'static str, value: u64 },
    #[error("{kind}: rlimits.{which} is {value}; ward's processes need at least {least}")]
    RlimitTooLow {
        kind: &'static str,
        which: &'static str,
        value: u64,
        least: u64,
    },
    #[error("identity.uid_range {0:?} must be two uids, the first at least 1000 and not above the second")]
    UidRange([u32; 2]),
    #[error("cgroup.pids_max must be at least 16, not {0}")]
    PidsMax(u64),
    #[error("cgroup.memory_max of {0} bytes is below 64 MiB")]
    MemoryMax(u64),
    #[error("cgroup.cpu_max: period_us must be 1000..=1000000 and quota_us at least 1000 (got {quota_us}/{period_us})")]
    CpuMax { quota_us: u64, period_us: u64 },
    #[error("selinux.{0} {1:?} must be an SELinux type name (letters, digits, '_')")]
    SelinuxType(&'static str, String),
}

impl VmPolicy {
    /// Parses and checks a policy document.
    pub fn parse(json: &str) -> Result<VmPolicy, Error> {
        let doc: serde_json::Value = serde_json::from_str(json)?;
        lists_only_where_lists_go(&doc, "the policy")?;
        let p: VmPolicy = serde_json::from_value(doc)?;
        p.validate()?;
        Ok(p)
    }

    pub fn process(&self, kind: Kind) -> &ProcessPolicy {
        match kind {
            Kind::Core => &self.core,
            Kind::Block => &self.block,
            Kind::Net => &self.net,
            Kind::Console => &self.console,
        }
    }

    /// Rejects contradictions and values no VM could run with.
    pub fn validate(&self) -> Result<(), Error> {
        for kind in Kind::ALL {
            validate_process(kind.name(), self.process(kind))?;
        }
        let [first, last] = self.identity.uid_range;
        if first < 1000 || first > last {
            return Err(Error::UidRange(self.identity.uid_range));
        }
        let c = &self.cgroup;
        if c.pids_max < 16 {
            return Err(Error::PidsMax(c.pids_max));
        }
        if let Some(m) = c.memory_max.filter(|&m| m < 64 << 20) {
            return Err(Error::MemoryMax(m));
        }
        if let Some(cpu) = &c.cpu_max {
            if !(1000..=1_000_000).contains(&cpu.period_us) || cpu.quota_us < 1000 {
                return Err(Error::CpuMax {
                    quota_us: cpu.quota_us,
                    period_us: cpu.period_us,
                });
            }
        }
        let se = &self.selinux;
        for (field, t) in [
            ("domain", &se.domain),
            ("image_type", &se.image_type),
            ("content_type", &se.content_type),
        ] {
            if t.is_empty() || !t.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                return Err(Error::SelinuxType(field, t.clone()));
            }
        }
        Ok(())
    }
}

/// The fields whose values are lists.
const LIST_FIELDS: [&str; 2] = ["kinds", "uid_range"];

/// serde takes a list for a struct (its fields in order, `[]` for all defaults); a policy must
/// spell its sections as objects, so a list anywhere but in [`LIST_FIELDS`] is refused.
fn lists_only_where_lists_go(v: &serde_json::Value, place: &str) -> Result<(), Error> {
    match v {
        serde_json::Value::Array(_) => Err(Error::ListInPlaceOfObject(place.to_owned())),
        serde_json::Value::Object(fields) => {
            for (name, value) in fields {
                if !(LIST_FIELDS.contains(&name.as_str()) && value.is_array()) {
                    lists_only_where_lists_go(value, name)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn validate_process(kind: &'static str, p: &ProcessPolicy) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    for ns in &p.namespaces.kinds {
        if !seen.insert(*ns) {
            return Err(Error::DuplicateNamespace { kind, ns: *ns });
        }
    }
    if p.namespaces.level.is_on() && seen.is_empty() {
        return Err(Error::NoNamespaces {
            kind,
            level: p.namespaces.level,
        });
    }
    if !p.no_new_privs {
        for (what, level) in [("seccomp", p.seccomp.level), ("landlock", p.landlock)] {
            if level.is_on() {
                return Err(Error::NeedsNoNewPrivs { kind, what });
            }
        }
    }
    let r = &p.rlimits;
    if r.core != 0 {
        return Err(Error::CoreDumps {
            kind,
            value: r.core,
        });
    }
    for (which, value, least) in [("nofile", r.nofile, 32), ("nproc", r.nproc, 16)] {
        if value < least {
            return Err(Error::RlimitTooLow {
                kind,
                which,
                value,
                least,
            });
        }
    }
    Ok(())
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Required => "required",
            Level::Preferred => "preferred",
            Level::Off => "off",
        })
    }
}

/// A mechanism of the policy, for [`applied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Seccomp,
    NoNewPrivs,
    Namespaces,
    Landlock,
    OwnUid,
    Rlimits,
    Cgroup,
    Selinux,
}

/// Whether this version of ward applies `m` to processes of `kind` (`None`: the VM-wide parts)
/// when it starts a VM. What it does not apply yet is marked as such wherever a policy is
/// shown, rather than shown as if it were in force.
pub fn applied(kind: Option<Kind>, m: Mechanism) -> bool {
    use Mechanism as M;
    match (kind, m) {
        // seccompiler sets no_new_privs as it installs a filter.
        (Some(_), M::Seccomp | M::NoNewPrivs) => true,
        // Every process enters the rest in `sandbox::enter`.
        (Some(_), M::Namespaces | M::Landlock | M::OwnUid | M::Rlimits) => true,
        // The VM's uid range: the workers take their uid from it; the VM's cgroup (v2, where
        // the host has it); its SELinux labels (where the host has SELinux).
        (None, M::OwnUid | M::Cgroup | M::Selinux) => true,
        _ => false,
    }
}

/// " (not applied by this version)" where `m` is not [`applied`].
pub fn not_applied_note(kind: Option<Kind>, m: Mechanism) -> &'static str {
    if applied(kind, m) {
        ""
    } else {
        " (not applied by this version)"
    }
}

/// The effective policy of one process kind, as `ward policy show` prints it.
pub fn describe(policy: &VmPolicy, kind: Kind) -> String {
    use std::fmt::Write as _;
    let p = policy.process(kind);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{}:", kind.name());
    let action = match p.seccomp.action {
        SeccompAction::Kill => "kill",
        SeccompAction::Log => "log",
    };
    let _ = writeln!(out, "  seccomp: {} (mismatch: {action})", p.seccomp.level);
    for (thread, profile) in kind.filters() {
        let _ = writeln!(
            out,
            "    {thread}: filter {}, {} syscalls allowed",
            profile.name(),
            allowed_syscalls(*profile).len()
        );
    }
    let kinds: Vec<String> = p
        .namespaces
        .kinds
        .iter()
        .map(|n| format!("{n:?}").to_lowercase())
        .collect();
    use Mechanism as M;
    let k = Some(kind);
    let partly = not_applied_note(k, M::Namespaces);
    let _ = writeln!(
        out,
        "  namespaces: {} ({}){partly}",
        p.namespaces.level,
        kinds.join(", "),
    );
    let _ = writeln!(
        out,
        "  landlock: {}{}",
        p.landlock,
        not_applied_note(k, M::Landlock)
    );
    let [first, last] = policy.identity.uid_range;
    let _ = writeln!(
        out,
        "  own uid/gid: {} (from {first}-{last}), no capabilities{}",
        p.own_uid,
        not_applied_note(k, M::OwnUid)
    );
    let _ = writeln!(
        out,
        "  no_new_privs: {}{}",
        p.no_new_privs,
        not_applied_note(k, M::NoNewPrivs)
    );
    let r = &p.rlimits;
    let _ = writeln!(
        out,
        "  rlimits: nofile {}, nproc {}, memlock {}, core {}{}",
        r.nofile,
        r.nproc,
        r.memlock,
        r.core,
        not_applied_note(k, M::Rlimits)
    );
    out
}

#[cfg(test)]
#[path = "vm_tests.rs"]
mod tests;
