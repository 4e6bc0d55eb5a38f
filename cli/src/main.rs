//! `ward`: the command line. `run` starts one VM in the foreground through the launcher and
//! exits when the VM ends; `console` attaches a terminal to a running VM's virtio console;
//! `policy show` prints confinement policies.

mod attach;
mod policy;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ward_ipc::core::SeccompMode;
use ward_launcher::{Console, Disk, Net, Outcome, VirtioConsole, VmSpec};

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
    Run(Box<RunArgs>),
    /// Attach the terminal to a running VM's virtio console (`ward run --console virtio`).
    ///
    /// `^]` detaches and leaves the VM running. Exit status: 0 when detached or the console
    /// closed, 1 when the console cannot be reached or is busy.
    Console(ConsoleArgs),
    /// Confinement policies: `ward policy show [--file F] [KIND...]` prints the effective
    /// policy of each process kind, with the syscalls each thread kind may make.
    Policy(policy::PolicyArgs),
    /// What confinement this host can give (SELinux, cgroup v2) and the VMs running here: each
    /// process's uid, seccomp and SELinux context.
    Status(status::StatusArgs),
}

#[derive(clap::Args)]
struct ConsoleArgs {
    /// The VM's name.
    name: String,
    /// Take the console over from the client attached now.
    #[arg(long, conflicts_with = "watch")]
    force: bool,
    /// Only show the console's output (any number of watchers may attach).
    #[arg(long)]
    watch: bool,
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
    /// The guest's console: `serial` (ttyS0 on the terminal) or `virtio` (hvc0, served by its
    /// own worker process and logged; on a terminal, `ward run` attaches to it, `^]` detaches
    /// and the VM keeps running; `ward console NAME` attaches again). Give the guest
    /// `console=hvc0` to use it.
    #[arg(long, default_value = "serial", value_parser = ["serial", "virtio"])]
    console: String,
    /// With `--console serial`: write the serial port to this file instead of the terminal.
    /// With `--console virtio`: log hvc0 here (default `<runtime root>/<name>.console.log`;
    /// rotated into `<file>.1` at `--console-log-max`).
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Size at which the virtio console's log is rotated: bytes, or with K/M/G.
    #[arg(long, default_value = "1M", value_parser = parse_bytes)]
    console_log_max: u64,
    /// With `--console virtio`: where the serial port (early boot messages) goes (default
    /// `<runtime root>/<name>.serial.log`).
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// A network interface: tap=NAME[,mac=52:54:00:xx:xx:xx]. The TAP device is opened, or
    /// created if missing, by ward (which needs CAP_NET_ADMIN for that) and served by its own
    /// `ward-net`; the MAC defaults to one derived from the VM's name. Repeat for more (eth0,
    /// eth1, … in the guest).
    #[arg(long = "net", value_parser = parse_net)]
    nets: Vec<Net>,
    /// VM name (for logs and the runtime directory).
    #[arg(long, default_value = "ward")]
    name: String,
    /// Seccomp enforcement for the core and the workers.
    #[arg(long, default_value = "enforce")]
    seccomp: SeccompMode,
    /// Confinement policy (JSON, see `ward policy show`); fields it leaves out keep their
    /// defaults. Without it, the default policy.
    #[arg(long, value_name = "FILE", conflicts_with = "unconfined")]
    policy: Option<PathBuf>,
    /// Start the workers with their seccomp filters only: no namespaces, own uid, Landlock or
    /// rlimits. For measuring what confinement costs; never for tenants' guests.
    #[arg(long)]
    unconfined: bool,
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

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 4096, 64K, 1M)"))
}

fn parse_net(s: &str) -> Result<Net, String> {
    let mut tap = None;
    let mut mac = None;
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
            Some(("mac", m)) => mac = Some(m.parse::<ward_launcher::Mac>()?),
            _ => {
                return Err(format!(
                    "unknown network option {opt:?} (expected tap=NAME[,mac=52:54:00:12:34:56])"
                ))
            }
        }
    }
    let tap = tap.ok_or("a network interface needs tap=NAME")?;
    Ok(Net { tap, mac })
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
        Cmd::Run(args) => match run(*args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ward: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Console(args) => match console(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ward: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Status(args) => match status::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ward: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Policy(args) => match policy::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ward: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn console_socket(name: &str) -> PathBuf {
    ward_launcher::default_root()
        .join(name)
        .join(ward_launcher::ATTACH_SOCKET)
}

fn console(a: &ConsoleArgs) -> anyhow::Result<()> {
    let path = console_socket(&a.name);
    if !path.exists() {
        bail!(
            "no virtio console for a VM named {:?} (no {})",
            a.name,
            path.display()
        );
    }
    let mode = match (a.force, a.watch) {
        (true, _) => attach::Mode::Force,
        (_, true) => attach::Mode::Watch,
        _ => attach::Mode::Attach,
    };
    let sock = attach::connect(&path, mode)?;
    attach::pump(
        sock,
        mode,
        &format!("Connected to the console of {}", a.name),
    )?;
    Ok(())
}

/// In `ward run --console virtio` on a terminal: attaches as soon as the console worker's
/// socket appears, until the user detaches or the VM ends (`stop` set by the caller).
fn attach_when_ready(
    path: PathBuf,
    name: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        // Signals are the launcher's to take (it stops the VM in order); none may end the
        // process through this thread.
        let mut mask = nix::sys::signal::SigSet::empty();
        for s in [
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGHUP,
            nix::sys::signal::Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        let _ = mask.thread_block();
        while !path.exists() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        match attach::connect(&path, attach::Mode::Attach) {
            Ok(sock) => {
                let banner = format!("Connected to the console of {name}");
                if let Ok(attach::End::Detached) = attach::pump(sock, attach::Mode::Attach, &banner)
                {
                    eprintln!("ward: `ward console {name}` attaches again");
                }
            }
            Err(e) => eprintln!("ward: {e:#}"),
        }
    })
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    if !a.kernel.is_file() {
        bail!("kernel {} is not a file", a.kernel.display());
    }
    let virtio = a.console == "virtio";
    let root = ward_launcher::default_root();
    let (console, virtio_console) = if virtio {
        let serial = a
            .serial_log
            .unwrap_or_else(|| root.join(format!("{}.serial.log", a.name)));
        let log = a
            .console_log
            .unwrap_or_else(|| root.join(format!("{}.console.log", a.name)));
        (
            Console::File(serial),
            Some(VirtioConsole {
                log,
                log_max: a.console_log_max,
            }),
        )
    } else {
        if a.serial_log.is_some() {
            bail!(
                "--serial-log goes with --console virtio (use --console-log for the serial port)"
            );
        }
        let serial = match a.console_log {
            Some(p) => Console::File(p),
            None => Console::Terminal,
        };
        (serial, None)
    };
    if virtio {
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacher = (virtio && tty)
        .then(|| attach_when_ready(console_socket(&a.name), a.name.clone(), stop.clone()));
    let vm_policy = if a.unconfined {
        None
    } else {
        Some(policy::load(a.policy.as_ref())?)
    };
    let spec = VmSpec {
        name: a.name,
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        vcpus: a.vcpus,
        memory_mib: a.memory,
        disks: a.disks,
        console,
        virtio_console,
        nets: a.nets,
        seccomp: a.seccomp,
        policy: vm_policy,
        bin_dir: std::env::var_os("WARD_BIN_DIR").map(PathBuf::from),
        run_root: None,
    };
    let outcome = ward_launcher::run(&spec);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = attacher {
        // The console's socket closed with its worker: the attachment has ended too.
        let _ = t.join();
    }
    let outcome = outcome.context("cannot run the VM")?;
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
        assert_eq!(parse_bytes("64K").unwrap(), 65536);
        let n = parse_net("tap=tap0,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.unwrap().0, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert!(parse_net("mac=52:54:00:12:34:56").is_err());
        assert!(parse_net("tap=t,mac=zz").is_err());
        assert!(parse_net("tap=t,speed=10").is_err());
        assert_eq!(parse_bytes("1M").unwrap(), 1 << 20);
        assert!(parse_bytes("x").is_err());
    }
}
