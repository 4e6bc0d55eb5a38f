//! Probe guest benchmarks: ward against QEMU microvm on the same image, interleaved run by run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::measure::{self, median, Run};

#[derive(Clone)]
pub struct Setup {
    /// `raw` or `qcow2`.
    pub image_format: &'static str,
    pub bin_dir: PathBuf,
    pub probe: PathBuf,
    pub image: PathBuf,
    pub rundir: PathBuf,
    pub runs: usize,
    pub burst: u64,
    pub tsc_khz: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Ward,
    Qemu,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Ward => "ward",
            Vmm::Qemu => "QEMU",
        }
    }
}

fn command(s: &Setup, vmm: Vmm, scenarios: &str, n: usize) -> Command {
    let cmdline = format!("console=ttyS0 probe.run={scenarios}");
    match vmm {
        Vmm::Ward => {
            let mut c = Command::new(s.bin_dir.join("ward"));
            c.args(["run", "--memory", "128M", "--vcpus", "1", "--name"])
                .arg(format!("bench{n}"))
                .arg("--kernel")
                .arg(&s.probe)
                .arg("--cmdline")
                .arg(&cmdline)
                .arg("--disk")
                .arg(format!("{},format={}", s.image.display(), s.image_format))
                .env("XDG_RUNTIME_DIR", &s.rundir);
            c
        }
        Vmm::Qemu => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-M",
                "microvm,acpi=off",
                "-enable-kvm",
                "-cpu",
                "host,-arch-capabilities",
                "-m",
                "128M",
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
                // QEMU 7.2 makes virtio-mmio devices legacy (v1) unless told otherwise; with
                // acpi=off it lists them on the command line, as ward does.
                "-global",
                "virtio-mmio.force-legacy=false",
                "-kernel",
            ])
            .arg(&s.probe)
            .arg("-append")
            .arg(&cmdline)
            .arg("-drive")
            .arg(format!(
                "id=d0,file={},format={},if=none",
                s.image.display(),
                s.image_format
            ))
            .args(["-device", "virtio-blk-device,drive=d0"]);
            c
        }
    }
}

pub struct Results {
    pub ready_ms: Vec<f64>,
    pub exit_ms: Vec<f64>,
    pub read_rps: Vec<f64>,
    pub write_rps: Vec<f64>,
    pub peak_mib: Vec<f64>,
}

fn one(s: &Setup, vmm: Vmm, scenarios: &str, n: usize) -> anyhow::Result<Run> {
    let r = measure::run(command(s, vmm, scenarios, n), Duration::from_secs(120))?;
    if !r.success || r.line("PROBE DONE").is_none() {
        anyhow::bail!(
            "{} run failed: {:?}",
            vmm.name(),
            r.lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>()
        );
    }
    Ok(r)
}

fn rate(s: &Setup, r: &Run, prefix: &str) -> anyhow::Result<f64> {
    let cycles = r
        .value(prefix, "cycles")
        .ok_or_else(|| anyhow::anyhow!("no cycles in {prefix}"))?;
    if r.value(prefix, "errors") != Some(0) {
        anyhow::bail!("errors in {:?}", r.line(prefix));
    }
    Ok(s.burst as f64 / (cycles as f64 / (s.tsc_khz as f64 * 1000.0)))
}

pub fn run(s: &Setup) -> anyhow::Result<[Results; 2]> {
    let mut out = [Vmm::Ward, Vmm::Qemu].map(|_| Results {
        ready_ms: vec![],
        exit_ms: vec![],
        read_rps: vec![],
        write_rps: vec![],
        peak_mib: vec![],
    });
    let read = format!("blk-burst:0:{}:4096:read", s.burst);
    let write = format!("blk-burst:0:{}:4096:write", s.burst);
    let mut n = 0;
    for i in 0..s.runs {
        // Alternate which VMM goes first, so drift on a noisy machine hits both alike.
        let order = if i % 2 == 0 {
            [Vmm::Ward, Vmm::Qemu]
        } else {
            [Vmm::Qemu, Vmm::Ward]
        };
        for vmm in order {
            let res = &mut out[(vmm == Vmm::Qemu) as usize];
            n += 1;
            let boot = one(s, vmm, "", n)?;
            let ready = boot
                .line_time("PROBE READY")
                .ok_or_else(|| anyhow::anyhow!("no READY"))?;
            res.ready_ms.push(ready.as_secs_f64() * 1e3);
            res.exit_ms.push(boot.exit.as_secs_f64() * 1e3);
            n += 1;
            let r = one(s, vmm, &read, n)?;
            res.read_rps.push(rate(s, &r, "PROBE blk-burst")?);
            res.peak_mib.push(r.peak_pss_kib as f64 / 1024.0);
            n += 1;
            let w = one(s, vmm, &write, n)?;
            res.write_rps.push(rate(s, &w, "PROBE blk-burst")?);
            res.peak_mib.push(w.peak_pss_kib as f64 / 1024.0);
        }
        eprintln!("probe round {}/{} done", i + 1, s.runs);
    }
    Ok(out)
}

pub fn report(s: &Setup, r: &[Results; 2]) -> String {
    let [w, q] = r;
    let row = |what: &str, unit: &str, a: &[f64], b: &[f64], better_low: bool| {
        let (ma, mb) = (median(a.to_vec()), median(b.to_vec()));
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.0}–{hi:.0}")
        };
        let ratio = ma / mb;
        let verdict = if (better_low && ratio <= 1.0) || (!better_low && ratio >= 1.0) {
            "met"
        } else {
            "missed"
        };
        format!(
            "| {what} | {ma:.1} {unit} ({}) | {mb:.1} {unit} ({}) | {ratio:.2} | {verdict} |\n",
            range(a),
            range(b)
        )
    };
    let mut t = format!("| probe guest, 1 vCPU, 128 MiB, one {} disk | ward: median (min–max) | QEMU: median (min–max) | ward/QEMU | target |\n|---|---|---|---|---|\n", s.image_format);
    t += &row(
        "process start → PROBE READY",
        "ms",
        &w.ready_ms,
        &q.ready_ms,
        true,
    );
    t += &row(
        "process start → exit (guest reset)",
        "ms",
        &w.exit_ms,
        &q.exit_ms,
        true,
    );
    t += &row(
        "4 KiB reads, queue kept full",
        "req/s",
        &w.read_rps,
        &q.read_rps,
        false,
    );
    t += &row(
        "4 KiB writes, queue kept full",
        "req/s",
        &w.write_rps,
        &q.write_rps,
        false,
    );
    t += &row(
        "peak host memory (PSS, all processes)",
        "MiB",
        &w.peak_mib,
        &q.peak_mib,
        true,
    );
    t += &format!(
        "\n{} runs each, interleaved; {} requests per burst; TSC {} kHz.\n",
        s.runs, s.burst, s.tsc_khz
    );
    t
}

pub fn image(dir: &Path) -> anyhow::Result<PathBuf> {
    let p = dir.join("bench-disk.img");
    let f = std::fs::File::create(&p)?;
    f.set_len(256 << 20)?;
    Ok(p)
}
