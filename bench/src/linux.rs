//! The Linux guest's boot, ward against QEMU microvm, inside the nested machine (or directly on
//! a host whose KVM can run Linux): VMM start → `WARD-GUEST READY`, and → exit, medians of
//! interleaved runs. The part inside the nested machine is this same binary (`inner-linux`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::measure::{self, median};

/// QEMU's firmware files for microvm, and where they go in the nested machine.
const QEMU_FILES: [(&str, &str); 3] = [
    ("/usr/share/qemu/qboot.rom", "/ward/qemu/bios-microvm.bin"),
    (
        "/usr/share/qemu/linuxboot_dma.bin",
        "/ward/qemu/linuxboot_dma.bin",
    ),
    ("/usr/share/qemu/kvmvapic.bin", "/ward/qemu/kvmvapic.bin"),
];

const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// Paths as seen where the VMs run.
pub struct Inner {
    pub ward_dir: PathBuf,
    pub qemu: PathBuf,
    /// QEMU's firmware directory (`-L`).
    pub qemu_data: Option<PathBuf>,
    pub guest: PathBuf,
    pub disk: PathBuf,
    pub runs: usize,
}

fn ward_cmd(i: &Inner, n: usize) -> Command {
    let mut c = Command::new(i.ward_dir.join("ward"));
    c.args(["run", "--memory", "256M", "--vcpus", "1", "--name"])
        .arg(format!("lbench{n}"))
        .arg("--kernel")
        .arg(i.guest.join("vmlinuz"))
        .arg("--initrd")
        .arg(i.guest.join("initramfs.cpio.gz"))
        .arg("--disk")
        .arg(&i.disk)
        .arg("--cmdline")
        .arg(CMDLINE);
    c
}

fn qemu_cmd(i: &Inner) -> Command {
    let mut c = Command::new(&i.qemu);
    if let Some(d) = &i.qemu_data {
        c.arg("-L").arg(d);
    }
    c.args([
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        "host",
        "-m",
        "256M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-kernel",
    ])
    .arg(i.guest.join("vmlinuz"))
    .arg("-initrd")
    .arg(i.guest.join("initramfs.cpio.gz"))
    .args(["-append", CMDLINE, "-drive"])
    .arg(format!(
        "id=d0,file={},format=raw,if=none",
        i.disk.display()
    ))
    .args(["-device", "virtio-blk-device,drive=d0"]);
    c
}

/// Runs the measurements here and prints one `BENCH-LINUX` line per run.
pub fn inner(i: &Inner) -> anyhow::Result<()> {
    for n in 0..i.runs {
        let order = if n % 2 == 0 {
            ["ward", "qemu"]
        } else {
            ["qemu", "ward"]
        };
        for vmm in order {
            let cmd = if vmm == "ward" {
                ward_cmd(i, n)
            } else {
                qemu_cmd(i)
            };
            let r = measure::run(cmd, Duration::from_secs(120))?;
            let ready = r
                .line_time("WARD-GUEST READY")
                .ok_or_else(|| anyhow::anyhow!("{vmm}: no READY line: {:?}", r.lines))?;
            println!(
                "BENCH-LINUX vmm={vmm} ready_ms={:.1} exit_ms={:.1} peak_mib={:.1}",
                ready.as_secs_f64() * 1e3,
                r.exit.as_secs_f64() * 1e3,
                r.peak_pss_kib as f64 / 1024.0
            );
        }
    }
    Ok(())
}

fn values(out: &str, vmm: &str, key: &str) -> Vec<f64> {
    let tag = format!("vmm={vmm} ");
    let k = format!("{key}=");
    out.lines()
        .filter(|l| l.starts_with("BENCH-LINUX ") && l.contains(&tag))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(&k)))
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// Runs `inner` inside the nested machine and reports medians.
pub fn nested(bin_dir: &Path, runs: usize, tmp: &Path) -> anyhow::Result<String> {
    let (kernel, initrd) = ward_tests::linux_guest();
    let disk = tmp.join("linux-bench.img");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    let qemu = which("qemu-system-x86_64")?;
    let mut c = Command::new("bash");
    c.arg(ward_tests::repo().join("tests/nested/run-nested.sh"))
        .args(["--timeout", "1500", "--mem", "3072"]);
    for b in ["ward", "ward-vmm", "ward-block", "ward-bench"] {
        c.arg("--bin").arg(bin_dir.join(b));
    }
    c.arg("--bin").arg(&qemu);
    for (src, dest) in QEMU_FILES {
        c.arg("--file").arg(format!("{src}:{dest}"));
    }
    c.arg("--file")
        .arg(format!("{}:/ward/guest/", kernel.display()))
        .arg("--file")
        .arg(format!("{}:/ward/guest/", initrd.display()))
        .arg("--disk")
        .arg(&disk)
        .arg("--cmd")
        .arg(format!(
            "ward-bench inner-linux --runs {runs} --ward-dir /ward/bin --qemu /ward/bin/qemu-system-x86_64 \
             --qemu-data /ward/qemu --guest /ward/guest --disk /dev/vda"
        ));
    let out = c.output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!("nested benchmark failed ({}):\n{text}", out.status);
    }
    Ok(report(&text, runs))
}

/// Runs `inner` directly on this host (real KVM) and reports medians.
pub fn direct(bin_dir: &Path, runs: usize, tmp: &Path) -> anyhow::Result<String> {
    let (kernel, _) = ward_tests::linux_guest();
    let disk = tmp.join("linux-bench.img");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["inner-linux", "--runs", &runs.to_string(), "--ward-dir"])
        .arg(bin_dir)
        .arg("--qemu")
        .arg(which("qemu-system-x86_64")?)
        .arg("--guest")
        .arg(kernel.parent().expect("guest dir"))
        .arg("--disk")
        .arg(&disk)
        .env("XDG_RUNTIME_DIR", tmp)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!("Linux benchmark failed:\n{text}");
    }
    Ok(report(&text, runs))
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} not found on PATH"))
}

fn report(out: &str, runs: usize) -> String {
    let mut t = String::from(
        "| Linux guest (Debian 6.1 cloud kernel), 1 vCPU, 256 MiB, one disk | ward (median) | QEMU microvm (median) | ward/QEMU | target |\n|---|---|---|---|---|\n",
    );
    for (what, key, unit) in [
        ("VMM start → WARD-GUEST READY", "ready_ms", "ms"),
        ("VMM start → exit (guest reboot)", "exit_ms", "ms"),
        ("peak memory (PSS, all processes)", "peak_mib", "MiB"),
    ] {
        let w = median(values(out, "ward", key));
        let q = median(values(out, "qemu", key));
        let ratio = w / q;
        let verdict = if ratio <= 1.0 { "met" } else { "missed" };
        t += &format!("| {what} | {w:.1} {unit} | {q:.1} {unit} | {ratio:.2} | {verdict} |\n");
    }
    t += &format!("\n{runs} runs each, interleaved.\n");
    t
}

/// What the Linux network benchmark compares: its two VMMs as `bench/linux-net.sh` names them,
/// how the report's columns call them, and what counts as the target met.
#[derive(Clone, Copy)]
pub struct Pair {
    pub vmms: [&'static str; 2],
    pub columns: [&'static str; 2],
    pub what: &'static str,
    pub target: &'static str,
    pub verdict: fn(f64) -> &'static str,
}

/// ward against QEMU virtio-net vhost=off: ward at least as fast.
pub const VS_QEMU: Pair = Pair {
    vmms: ["ward", "qemu"],
    columns: ["ward", "QEMU vhost=off"],
    what: "ward/QEMU",
    target: "target",
    verdict: |r| if r >= 1.0 { "met" } else { "missed" },
};

/// ward with its full confinement against ward --unconfined: within 5 %.
pub const CONFINEMENT: Pair = Pair {
    vmms: ["ward", "wardu"],
    columns: ["ward confined", "ward --unconfined"],
    what: "confined/unconfined",
    target: "target (within 5 %)",
    verdict: crate::confine::verdict,
};

/// What moves the Linux guest's TCP data (`TOOL` of `bench/linux-net.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    /// Debian's iperf3 at both ends (`bench/iperf3.sh` bundles it with its libraries).
    Iperf3,
    /// busybox nc at both ends (the guest's initramfs has it already).
    Nc,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Iperf3 => "iperf3",
            Tool::Nc => "nc",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Iperf3 => "TCP with iperf3 (one stream)",
            Tool::Nc => "TCP with busybox nc",
        }
    }
}

/// The iperf3 bundle (`bench/iperf3.sh`): built on first use, its directory.
fn iperf3_bundle() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(ward_tests::repo().join("bench/iperf3.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "bench/iperf3.sh failed");
    let dir = String::from_utf8(out.stdout)?;
    Ok(PathBuf::from(dir.trim()))
}

/// TCP throughput of the Linux guest under the two VMMs of `pair` (ward against QEMU
/// virtio-net vhost=off, or ward confined against ward --unconfined), with `tool` at both
/// ends (`bench/linux-net.sh`): inside the nested machine on a PVM host, directly otherwise.
/// `mib` MiB per transfer, each way.
///
/// The nested machine (QEMU's emulation of AMD-V) has been seen to crash (its kernel's GS base
/// corrupted across a world switch): when it does, the runs it completed count and the rest
/// run in a new one, at most three machines in all.
pub fn net(
    bin_dir: &Path,
    runs: usize,
    mib: u64,
    tmp: &Path,
    pair: Pair,
    tool: Tool,
) -> anyhow::Result<String> {
    let mut text = String::new();
    let mut crashed = 0;
    for machine in 1..=3 {
        let done = pair
            .vmms
            .iter()
            .map(|v| completed_runs(&text, v))
            .min()
            .unwrap_or(0);
        if done >= runs {
            break;
        }
        let out = net_once(bin_dir, runs - done, mib, tmp, pair, tool)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        text += &stdout;
        if !out.status.success() {
            crashed += 1;
            eprintln!(
                "warning: the Linux network benchmark's machine {machine} failed ({}) after \
                 {done}+ runs; its last output:\n{}",
                out.status,
                stdout
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    // Everything the script printed, for a run that did not complete (its guest's log tail is
    // in it) and for the profile's raw numbers.
    eprintln!("bench/linux-net.sh printed:\n{text}");
    let mut report = net_report(&text, runs, mib, pair, tool)?;
    if let Some(prof) = crate::netprof::report(&text, mib, pair.vmms, pair.columns) {
        report += "\nWhere the time goes, host → guest (what grew during each transfer):\n\n";
        report += &prof;
    }
    if crashed > 0 {
        report += &format!(
            "The nested machine failed {crashed} time(s) during these runs; the runs it had \
             completed count, the rest ran in a new one.\n"
        );
    }
    Ok(report)
}

/// Runs of `vmm` that `bench/linux-net.sh` completed in `out`.
fn completed_runs(out: &str, vmm: &str) -> usize {
    let tag = format!("NETBENCH vmm={vmm} run=");
    out.lines()
        .filter(|l| l.contains(&tag) && l.contains(" exit=0"))
        .count()
}

/// One machine's worth of [`net`]: `runs` runs of each VMM.
fn net_once(
    bin_dir: &Path,
    runs: usize,
    mib: u64,
    tmp: &Path,
    pair: Pair,
    tool: Tool,
) -> anyhow::Result<std::process::Output> {
    let vmms = pair.vmms.join(" ");
    let bundle = match tool {
        Tool::Iperf3 => Some(iperf3_bundle()?),
        Tool::Nc => None,
    };
    let (kernel, initrd) = ward_tests::linux_guest();
    let script = ward_tests::repo().join("bench/linux-net.sh");
    let qemu = which("qemu-system-x86_64")?;
    let out = if ward_tests::host_is_pvm() {
        let mut c = Command::new("bash");
        c.arg(ward_tests::repo().join("tests/nested/run-nested.sh"))
            .args(["--timeout", "2400", "--mem", "3072"]);
        for b in ["ward", "ward-vmm", "ward-net"] {
            c.arg("--bin").arg(bin_dir.join(b));
        }
        c.arg("--bin").arg(&qemu);
        for (src, dest) in QEMU_FILES {
            c.arg("--file").arg(format!("{src}:{dest}"));
        }
        for f in [&kernel, &initrd] {
            c.arg("--file").arg(format!("{}:/ward/guest/", f.display()));
        }
        if let Some(b) = &bundle {
            c.arg("--file")
                .arg(format!("{}:/opt/iperf3", b.join("opt/iperf3").display()));
            c.arg("--file").arg(format!(
                "{}:/ward/guest/",
                b.join("iperf3.cpio.gz").display()
            ));
            c.arg("--env").arg("IPERF3_CPIO=/ward/guest/iperf3.cpio.gz");
        }
        for e in [
            format!("TOOL={}", tool.name()),
            "GUEST_DIR=/ward/guest".to_string(),
            "SCRATCH=/tmp".to_string(),
            format!("RUNS={runs}"),
            format!("MIB={mib}"),
            format!("VMMS={vmms}"),
            "QEMU=/ward/bin/qemu-system-x86_64".to_string(),
            "QEMU_DATA=/ward/qemu".to_string(),
        ] {
            c.arg("--env").arg(e);
        }
        c.arg("--script").arg(&script);
        c.output()?
    } else {
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("sh");
        if let Some(b) = &bundle {
            c.env("IPERF3_CPIO", b.join("iperf3.cpio.gz"))
                .env("IPERF3", b.join("opt/iperf3/bin/iperf3"))
                .env("IPERF3_ROOT", b);
        }
        c.arg(&script)
            .env("TOOL", tool.name())
            .env("PATH", path)
            .env("GUEST_DIR", kernel.parent().expect("guest dir"))
            .env("SCRATCH", tmp)
            .env("XDG_RUNTIME_DIR", tmp)
            .env("RUNS", runs.to_string())
            .env("MIB", mib.to_string())
            .env("VMMS", &vmms)
            .env("QEMU", &qemu)
            .output()?
    };
    Ok(out)
}

/// MiB/s of every complete transfer of `vmm` in direction `dir`.
fn net_rates(out: &str, vmm: &str, dir: &str) -> Vec<f64> {
    let tag = format!("NETBENCH vmm={vmm} dir={dir} ");
    out.lines()
        .filter_map(|l| l.find(&tag).map(|i| &l[i..]))
        .filter(|l| l.contains(" rc=0"))
        .filter_map(|l| {
            let get = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            let (bytes, secs) = (get("bytes=")?, get("secs=")?);
            (secs > 0.0).then(|| bytes / secs / f64::from(1 << 20))
        })
        .collect()
}

fn net_report(out: &str, runs: usize, mib: u64, pair: Pair, tool: Tool) -> anyhow::Result<String> {
    let [a, b] = pair.columns;
    let mut t = format!(
        "| Linux guest, 1 vCPU, 256 MiB, virtio-net on a TAP, {} | {a}: median (min–max) | {b}: \
         median (min–max) | {} | {} |\n\
         |---|---|---|---|---|\n",
        tool.label(),
        pair.what,
        pair.target
    );
    for (what, dir) in [("guest → host", "g2h"), ("host → guest", "h2g")] {
        let (w, q) = (
            net_rates(out, pair.vmms[0], dir),
            net_rates(out, pair.vmms[1], dir),
        );
        anyhow::ensure!(
            !w.is_empty() && !q.is_empty(),
            "no complete {dir} transfers:\n{out}"
        );
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.1}–{hi:.1}")
        };
        let (mw, mq) = (median(w.clone()), median(q.clone()));
        let ratio = mw / mq;
        t += &format!(
            "| {what}, {mib} MiB | {mw:.1} MiB/s ({}, n={}) | {mq:.1} MiB/s ({}, n={}) | \
             {ratio:.2} | {} |\n",
            range(&w),
            w.len(),
            range(&q),
            q.len(),
            (pair.verdict)(ratio)
        );
    }
    t += &format!("\n{runs} runs each, interleaved.\n");
    Ok(t)
}
