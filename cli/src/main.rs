//! `ward`: the command line. Today it has `run`, which starts one VM in the foreground through
//! the launcher and exits when the VM ends.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ward_ipc::core::SeccompMode;
use ward_launcher::{Console, Disk, Outcome, VmSpec};

#[derive(Parser)]
#[command(
    name = "ward",
    version,
    about = "A VMM whose every virtio device runs in its own confined process"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a VM in the foreground; exits when the guest resets or powers off.
    ///
    /// Exit status: 0 when the guest rebooted or powered off, 1 when the VM failed (a worker
    /// died, the core failed), 2 for bad arguments, 130 when stopped by a signal.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel image: bzImage, or ELF (PVH entry used when the image has one).
    #[arg(long, short = 'k')]
    kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, short = 'i')]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(
        long,
        short = 'c',
        default_value = "console=ttyS0 reboot=k panic=-1 pci=off"
    )]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    vcpus: u8,
    /// Guest memory: MiB, or with a suffix (512M, 2G).
    #[arg(long, short = 'm', default_value = "256M", value_parser = parse_mib)]
    memory: u64,
    /// A disk image: PATH[,readonly][,format=raw|qcow2]. Repeat for more disks (vda, vdb, ...).
    /// The format defaults to what the image's header says; a qcow2 image's backing files are
    /// opened (read-only) by ward and handed to the disk's worker.
    #[arg(long = "disk", short = 'd', value_parser = parse_disk)]
    disks: Vec<Disk>,
    /// Write the serial console to this file instead of the terminal.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// VM name (for logs and the runtime directory).
    #[arg(long, default_value = "ward")]
    name: String,
    /// Seccomp enforcement for the core and the workers.
    #[arg(long, default_value = "enforce")]
    seccomp: SeccompMode,
}

fn parse_mib(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'M' | 'm')) => (&s[..i], 1),
        Some((i, 'G' | 'g')) => (&s[..i], 1024),
        Some((i, 'T' | 't')) => (&s[..i], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a memory size (e.g. 512, 512M, 2G)"))
}

fn parse_disk(s: &str) -> Result<Disk, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty disk path")?;
    let mut readonly = false;
    let mut format = None;
    for opt in parts {
        match opt {
            "readonly" | "ro" | "readonly=on" => readonly = true,
            "rw" | "readonly=off" => readonly = false,
            f if f.starts_with("format=") => {
                let name = &f["format=".len()..];
                format = Some(
                    ward_launcher::ImageFormat::from_name(name)
                        .ok_or_else(|| format!("unknown disk format {name:?} (raw or qcow2)"))?,
                );
            }
            other => {
                return Err(format!(
                    "unknown disk option {other:?} (known: readonly, format=raw|qcow2)"
                ))
            }
        }
    }
    Ok(Disk {
        path: PathBuf::from(path),
        readonly,
        format,
    })
}

fn main() -> ExitCode {
    ward_ipc::log::init("warn");
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => match run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ward: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    if !a.kernel.is_file() {
        bail!("kernel {} is not a file", a.kernel.display());
    }
    let spec = VmSpec {
        name: a.name,
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        vcpus: a.vcpus,
        memory_mib: a.memory,
        disks: a.disks,
        console: match a.console_log {
            Some(p) => Console::File(p),
            None => Console::Terminal,
        },
        seccomp: a.seccomp,
        bin_dir: std::env::var_os("WARD_BIN_DIR").map(PathBuf::from),
        run_root: None,
    };
    let outcome = ward_launcher::run(&spec).context("cannot run the VM")?;
    eprintln!("ward: {outcome}");
    Ok(match outcome {
        o if o.is_guest_exit() => ExitCode::SUCCESS,
        Outcome::Stopped(_) => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_disks() {
        assert_eq!(parse_mib("512").unwrap(), 512);
        assert_eq!(parse_mib("2G").unwrap(), 2048);
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("0").is_err());
        let d = parse_disk("/x.img,readonly").unwrap();
        assert!(d.readonly);
        assert!(parse_disk("/x.img,bogus").is_err());
        assert!(parse_disk("").is_err());
    }
}
