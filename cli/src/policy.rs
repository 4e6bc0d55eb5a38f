//! `ward policy show`: the effective confinement policy of each process kind, from the default
//! policy or a policy file, with the number of syscalls each thread kind's filter allows.

use std::path::PathBuf;

use anyhow::Context;
use ward_policy::vm::{describe, not_applied_note, Kind, Mechanism, VmPolicy};

#[derive(clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(clap::Subcommand)]
enum PolicyCmd {
    /// Print the effective policy: of the given process kinds (core, block, net, console), or
    /// of all of them and the VM-wide parts.
    Show(ShowArgs),
}

#[derive(clap::Args)]
struct ShowArgs {
    /// A policy file (JSON); fields it leaves out keep their defaults. Without it: the default.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print the whole effective policy as JSON instead.
    #[arg(long)]
    json: bool,
    /// Process kinds to show.
    #[arg(value_name = "KIND")]
    kinds: Vec<Kind>,
}

/// Reads and checks the policy file, or the default policy.
pub fn load(file: Option<&PathBuf>) -> anyhow::Result<VmPolicy> {
    let Some(path) = file else {
        return Ok(VmPolicy::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    VmPolicy::parse(&text).with_context(|| format!("policy {}", path.display()))
}

pub fn run(a: &PolicyArgs) -> anyhow::Result<()> {
    let PolicyCmd::Show(s) = &a.cmd;
    let policy = load(s.file.as_ref())?;
    if s.json {
        println!("{}", serde_json::to_string_pretty(&policy)?);
        return Ok(());
    }
    let kinds = if s.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        s.kinds.clone()
    };
    for kind in &kinds {
        print!("{}", describe(&policy, *kind));
    }
    if s.kinds.is_empty() {
        let [first, last] = policy.identity.uid_range;
        println!(
            "identity: a uid and gid of its own per VM, from {first}-{last}{}",
            not_applied_note(None, Mechanism::OwnUid)
        );
        let c = &policy.cgroup;
        let memory = c.memory_max.map_or_else(
            || format!("guest memory + {} MiB", c.memory_overhead >> 20),
            |m| format!("{m} bytes"),
        );
        let cpu = c.cpu_max.as_ref().map_or_else(
            || "no limit".to_owned(),
            |c| format!("{}/{} µs", c.quota_us, c.period_us),
        );
        let host = ward_policy::host::support();
        println!(
            "cgroup v2: {} (memory.max {memory}, pids.max {}, cpu.max {cpu}){}",
            c.level,
            c.pids_max,
            not_applied_note(None, Mechanism::Cgroup)
        );
        println!("  {}", host.cgroup_line());
        let se = &policy.selinux;
        println!(
            "selinux: {} (processes {}, images {}, shared images {}; a category pair per VM){}",
            se.level,
            se.domain,
            se.image_type,
            se.content_type,
            not_applied_note(None, Mechanism::Selinux)
        );
        println!("  {}", host.selinux_line());
    }
    Ok(())
}
