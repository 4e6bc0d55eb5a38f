//! Probe guest benchmarks: ward against QEMU microvm, on raw and qcow2 images, interleaved run
//! by run.
//!
//! Each round boots the probe without scenarios (start-up and exit times) and then runs every
//! [`Workload`] once on each of ward raw, ward qcow2, QEMU raw and QEMU qcow2, the four in an
//! order that rotates from round to round, so drift on a noisy machine hits them alike.
//!
//! Images: the workloads read and overwrite a fully allocated 256 MiB image (every byte
//! written with non-zero data; the qcow2 one converted from the raw one by `ward-img`, so
//! every cluster is allocated); only [`Workload::RandWriteNew`] writes to a newly created
//! image (a sparse raw file, or `ward-img create -f qcow2` with 64 KiB clusters), made afresh
//! before each run, so there every write that lands in a new cluster allocates it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::measure::{self, median, Run};

/// Size of the benchmark images.
const DISK_SIZE: u64 = 256 << 20;
/// Size of every burst request.
const REQ_SIZE: u64 = 4096;

#[derive(Clone)]
pub struct Setup {
    pub bin_dir: PathBuf,
    pub probe: PathBuf,
    /// Holds the images and ward's runtime directory.
    pub dir: PathBuf,
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

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// One burst of 4 KiB requests with the queue kept full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    SeqRead,
    SeqWrite,
    RandRead,
    /// Random writes over the fully allocated image: overwrites.
    RandWrite,
    /// Random writes on a newly created image: allocating.
    RandWriteNew,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::SeqRead,
        Workload::SeqWrite,
        Workload::RandRead,
        Workload::RandWrite,
        Workload::RandWriteNew,
    ];

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&w| w == self).expect("listed")
    }

    /// The probe's scenario (see guest/probe/README.md, `blk-burst`).
    pub fn scenario(self, burst: u64) -> String {
        let (op, order) = match self {
            Workload::SeqRead => ("read", "seq"),
            Workload::SeqWrite => ("write", "seq"),
            Workload::RandRead => ("read", "rand"),
            Workload::RandWrite | Workload::RandWriteNew => ("write", "rand"),
        };
        format!("blk-burst:0:{burst}:{REQ_SIZE}:{op}:{order}")
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::SeqRead => "4 KiB sequential reads",
            Workload::SeqWrite => "4 KiB sequential writes",
            Workload::RandRead => "4 KiB random reads",
            Workload::RandWrite => "4 KiB random writes, allocated image",
            Workload::RandWriteNew => "4 KiB random writes, new image (allocating)",
        }
    }
}

/// One VMM serving one image format.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub vmm: Vmm,
    pub format: Format,
    /// ward only: run the workers and the core under the default confinement policy (else
    /// `--unconfined`: seccomp filters only).
    pub confined: bool,
}

/// The four configurations, in the order of the first round.
pub const CONFIGS: [Config; 4] = [
    Config {
        vmm: Vmm::Ward,
        format: Format::Raw,
        confined: true,
    },
    Config {
        vmm: Vmm::Ward,
        format: Format::Qcow2,
        confined: true,
    },
    Config {
        vmm: Vmm::Qemu,
        format: Format::Qcow2,
        confined: true,
    },
    Config {
        vmm: Vmm::Qemu,
        format: Format::Raw,
        confined: true,
    },
];

/// QEMU's side of the probe benchmarks, up to `-kernel` (the probe's path comes next): microvm
/// with the probe's memory and one vCPU, serial on stdout, no ACPI.
pub const QEMU_MICROVM: &[&str] = &[
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
    // QEMU 7.2 makes virtio-mmio devices legacy (v1) unless told otherwise; with acpi=off it
    // lists them on the command line, as ward does.
    "-global",
    "virtio-mmio.force-legacy=false",
    "-kernel",
];

fn command(s: &Setup, c: Config, image: &Path, scenarios: &str, n: usize) -> Command {
    let cmdline = format!("console=ttyS0 probe.run={scenarios}");
    let format = c.format.name();
    match c.vmm {
        Vmm::Ward => {
            let mut cmd = Command::new(s.bin_dir.join("ward"));
            cmd.args(["run", "--memory", "128M", "--vcpus", "1", "--name"])
                .arg(format!("bench{n}"))
                .arg("--kernel")
                .arg(&s.probe)
                .arg("--cmdline")
                .arg(&cmdline)
                .arg("--disk")
                .arg(format!("{},format={format}", image.display()))
                .env("XDG_RUNTIME_DIR", &s.dir);
            if !c.confined {
                cmd.arg("--unconfined");
            }
            cmd
        }
        Vmm::Qemu => {
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args(QEMU_MICROVM)
                .arg(&s.probe)
                .arg("-append")
                .arg(&cmdline)
                .arg("-drive")
                .arg(format!(
                    "id=d0,file={},format={format},if=none",
                    image.display()
                ))
                .args(["-device", "virtio-blk-device,drive=d0"]);
            cmd
        }
    }
}

/// The samples of one configuration.
#[derive(Default)]
pub struct Samples {
    pub ready_ms: Vec<f64>,
    pub exit_ms: Vec<f64>,
    /// Requests per second, by [`Workload::index`].
    pub rps: [Vec<f64>; 5],
    /// Peak PSS of every burst run.
    pub peak_mib: Vec<f64>,
}

pub struct Results {
    /// By position in [`CONFIGS`].
    pub by_config: [Samples; 4],
}

impl Results {
    fn get(&self, vmm: Vmm, format: Format) -> &Samples {
        let i = CONFIGS
            .iter()
            .position(|c| c.vmm == vmm && c.format == format)
            .expect("listed");
        &self.by_config[i]
    }
}

pub fn one(s: &Setup, c: Config, image: &Path, scenarios: &str, n: usize) -> anyhow::Result<Run> {
    let r = measure::run(command(s, c, image, scenarios, n), Duration::from_secs(300))?;
    if !r.success || r.line("PROBE DONE").is_none() {
        anyhow::bail!(
            "{} {} run failed: {:?}",
            c.vmm.name(),
            c.format.name(),
            r.lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>()
        );
    }
    Ok(r)
}

pub fn rate(s: &Setup, r: &Run, prefix: &str) -> anyhow::Result<f64> {
    let line = r.line(prefix).unwrap_or_default();
    anyhow::ensure!(
        line.contains(" OK ") && r.value(prefix, "errors") == Some(0),
        "burst failed: {line:?}"
    );
    let cycles = r
        .value(prefix, "cycles")
        .ok_or_else(|| anyhow::anyhow!("no cycles in {line:?}"))?;
    Ok(s.burst as f64 / (cycles as f64 / (s.tsc_khz as f64 * 1000.0)))
}

/// The benchmark's images.
pub struct Images {
    dir: PathBuf,
    ward_img: PathBuf,
    /// Fully allocated, by format.
    raw: PathBuf,
    qcow2: PathBuf,
}

impl Images {
    pub fn make(s: &Setup) -> anyhow::Result<Self> {
        let ward_img = s.bin_dir.join("ward-img");
        let raw = s.dir.join("bench-disk.img");
        fill(&raw, DISK_SIZE)?;
        let qcow2 = s.dir.join("bench-disk.qcow2");
        let out = Command::new(&ward_img)
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2)
            .output()?;
        anyhow::ensure!(out.status.success(), "ward-img convert failed: {out:?}");
        // Every cluster allocated: at least the data on the host.
        let len = std::fs::metadata(&qcow2)?.len();
        anyhow::ensure!(len >= DISK_SIZE, "qcow2 image not fully allocated ({len})");
        Ok(Self {
            dir: s.dir.clone(),
            ward_img,
            raw,
            qcow2,
        })
    }

    pub fn allocated(&self, f: Format) -> PathBuf {
        match f {
            Format::Raw => self.raw.clone(),
            Format::Qcow2 => self.qcow2.clone(),
        }
    }

    /// A newly created image, as a user makes one: a sparse raw file, or `ward-img create`.
    pub fn new_image(&self, f: Format) -> anyhow::Result<PathBuf> {
        let p = self.dir.join(format!("bench-new.{}", f.name()));
        let _ = std::fs::remove_file(&p);
        match f {
            Format::Raw => File::create(&p)?.set_len(DISK_SIZE)?,
            Format::Qcow2 => {
                let out = Command::new(&self.ward_img)
                    .args(["create", "-f", "qcow2"])
                    .arg(&p)
                    .arg(DISK_SIZE.to_string())
                    .output()?;
                anyhow::ensure!(out.status.success(), "ward-img create failed: {out:?}");
            }
        }
        Ok(p)
    }
}

/// Writes `size` bytes of non-zero pseudo-random data to `path` (no holes, no zero blocks, so
/// a conversion allocates every cluster).
fn fill(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = File::create(path)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut off = 0;
    while off < size {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&(x | 1).to_le_bytes()[..chunk.len()]);
        }
        let n = (size - off).min(buf.len() as u64) as usize;
        f.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    f.sync_all()?;
    Ok(())
}

pub fn run(s: &Setup) -> anyhow::Result<Results> {
    let images = Images::make(s)?;
    let mut out = Results {
        by_config: Default::default(),
    };
    let mut n = 0;
    for i in 0..s.runs {
        // Start-up and exit, without scenarios, on the raw image (the format does not enter
        // into it); ward and QEMU alternate going first.
        let boots = measure::alternating(i, CONFIGS[0], CONFIGS[3]);
        for c in boots {
            n += 1;
            let boot = one(s, c, &images.raw, "", n)?;
            let ready = boot
                .line_time("PROBE READY")
                .ok_or_else(|| anyhow::anyhow!("no READY"))?;
            let res = &mut out.by_config[CONFIGS.iter().position(|&x| x == c).expect("listed")];
            res.ready_ms.push(ready.as_secs_f64() * 1e3);
            res.exit_ms.push(boot.exit.as_secs_f64() * 1e3);
        }
        // Every workload on all four configurations, in an order that rotates by round.
        for w in Workload::ALL {
            let scen = w.scenario(s.burst);
            for k in 0..CONFIGS.len() {
                let ci = (k + i) % CONFIGS.len();
                let c = CONFIGS[ci];
                let image = if w == Workload::RandWriteNew {
                    images.new_image(c.format)?
                } else {
                    images.allocated(c.format)
                };
                n += 1;
                let r = one(s, c, &image, &scen, n)?;
                let res = &mut out.by_config[ci];
                res.rps[w.index()].push(rate(s, &r, "PROBE blk-burst")?);
                res.peak_mib.push(r.peak_pss_kib as f64 / 1024.0);
            }
        }
        eprintln!("probe round {}/{} done", i + 1, s.runs);
    }
    Ok(out)
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

pub fn cell(v: &[f64], unit: &str) -> String {
    format!("{:.1} {unit} ({})", median(v.to_vec()), range(v))
}

/// "met" when `ratio` is at least `min` (or, for lower-is-better, at most `min`).
fn verdict(ratio: f64, min: f64, better_low: bool) -> &'static str {
    if (better_low && ratio <= min) || (!better_low && ratio >= min) {
        "met"
    } else {
        "missed"
    }
}

pub fn footer(s: &Setup) -> String {
    format!(
        "\n{} runs each, interleaved; {} requests of {} KiB per burst over a {} MiB disk; TSC {} \
         kHz.\n",
        s.runs,
        s.burst,
        REQ_SIZE / 1024,
        DISK_SIZE >> 20,
        s.tsc_khz
    )
}

/// ward against QEMU on the raw image (the targets of issue 2: start-up ≤ QEMU's, block rates
/// ≥ QEMU's, less memory).
pub fn report_raw(s: &Setup, r: &Results) -> String {
    let (w, q) = (r.get(Vmm::Ward, Format::Raw), r.get(Vmm::Qemu, Format::Raw));
    let row = |what: &str, unit: &str, a: &[f64], b: &[f64], better_low: bool| {
        let ratio = median(a.to_vec()) / median(b.to_vec());
        format!(
            "| {what} | {} | {} | {ratio:.2} | {} |\n",
            cell(a, unit),
            cell(b, unit),
            verdict(ratio, 1.0, better_low)
        )
    };
    let mut t = String::from(
        "| probe guest, 1 vCPU, 128 MiB, one raw disk | ward: median (min–max) | QEMU: median \
         (min–max) | ward/QEMU | target |\n|---|---|---|---|---|\n",
    );
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
    for wl in Workload::ALL {
        let i = wl.index();
        t += &row(
            &format!("{}, queue kept full", wl.label()),
            "req/s",
            &w.rps[i],
            &q.rps[i],
            false,
        );
    }
    t += &row(
        "peak host memory (PSS, all processes)",
        "MiB",
        &w.peak_mib,
        &q.peak_mib,
        true,
    );
    t + &footer(s)
}

/// qcow2 against raw in ward, and ward's qcow2 against QEMU's (the targets of issue 3: ward's
/// qcow2 within 10 % of ward's raw, and at least as fast as QEMU's qcow2).
pub fn report_qcow2(s: &Setup, r: &Results) -> String {
    let wr = r.get(Vmm::Ward, Format::Raw);
    let wq = r.get(Vmm::Ward, Format::Qcow2);
    let qq = r.get(Vmm::Qemu, Format::Qcow2);
    let qr = r.get(Vmm::Qemu, Format::Raw);
    let mut t = String::from(
        "| probe guest, 1 vCPU, 128 MiB, queue kept full | ward raw: median (min–max) | ward \
         qcow2: median (min–max) | QEMU qcow2: median (min–max) | ward qcow2 / ward raw | \
         target ≥ 0.90 | ward qcow2 / QEMU qcow2 | target ≥ 1.00 | (QEMU qcow2 / QEMU raw) \
         |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for wl in Workload::ALL {
        let i = wl.index();
        let m = |x: &Samples| median(x.rps[i].clone());
        let (own, vs_qemu) = (m(wq) / m(wr), m(wq) / m(qq));
        t += &format!(
            "| {} | {} | {} | {} | {own:.2} | {} | {vs_qemu:.2} | {} | ({:.2}) |\n",
            wl.label(),
            cell(&wr.rps[i], "req/s"),
            cell(&wq.rps[i], "req/s"),
            cell(&qq.rps[i], "req/s"),
            verdict(own, 0.90, false),
            verdict(vs_qemu, 1.0, false),
            m(qq) / m(qr),
        );
    }
    let m = |x: &Samples| median(x.peak_mib.clone());
    t += &format!(
        "| peak host memory (PSS, all processes) | {} | {} | {} | {:.2} | – | {:.2} | – | ({:.2}) \
         |\n",
        cell(&wr.peak_mib, "MiB"),
        cell(&wq.peak_mib, "MiB"),
        cell(&qq.peak_mib, "MiB"),
        m(wq) / m(wr),
        m(wq) / m(qq),
        m(qq) / m(qr),
    );
    t + &footer(s)
}
