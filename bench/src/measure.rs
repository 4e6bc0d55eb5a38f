//! Measuring a VMM run from the outside: when each serial line arrives, when the process tree
//! exits, and the peak memory of the whole process tree (sum of PSS, so guest memory shared
//! between the core and a worker counts once).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Run {
    /// Each serial line with the time it arrived, since spawn.
    pub lines: Vec<(Duration, String)>,
    /// Spawn to exit of the top process.
    pub exit: Duration,
    pub success: bool,
    /// Peak of the summed PSS of the process and its descendants, in KiB.
    pub peak_pss_kib: u64,
}

impl Run {
    pub fn line_time(&self, prefix: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }

    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(_, l)| l.as_str())
    }

    pub fn value(&self, prefix: &str, key: &str) -> Option<u64> {
        let k = format!("{key}=");
        self.line(prefix)?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&k))
            .and_then(|v| v.parse().ok())
    }
}

fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some(i) = stat.rfind(')') {
                if let Some(pp) = stat[i + 1..].split_whitespace().nth(1) {
                    if let Ok(pp) = pp.parse::<u32>() {
                        parent_of.push((pid, pp));
                    }
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Runs `cmd` (its stdout is the guest's serial console) to the end, within `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> anyhow::Result<Run> {
    run_notify(cmd, timeout, None)
}

/// [`run`], also sending every serial line to `notify` as it arrives.
pub fn run_notify(
    mut cmd: Command,
    timeout: Duration,
    notify: Option<std::sync::mpsc::Sender<String>>,
) -> anyhow::Result<Run> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let start = Instant::now();
    let mut child: Child = cmd.spawn()?;
    let pid = child.id();
    let out = child.stdout.take().expect("piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches('\r').to_string();
            if let Some(n) = &notify {
                let _ = n.send(line.clone());
            }
            l2.lock().expect("lines lock").push((start.elapsed(), line));
        }
    });
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !d2.load(Ordering::Relaxed) {
            let sum: u64 = descendants(pid).into_iter().map(pss_kib).sum();
            peak = peak.max(sum);
            std::thread::sleep(Duration::from_millis(2));
        }
        peak
    });
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let exit = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak_pss_kib = sampler.join().unwrap_or(0);
    let _ = reader.join();
    let lines = std::mem::take(&mut *lines.lock().expect("lines lock"));
    Ok(Run {
        lines,
        exit,
        success: status.success(),
        peak_pss_kib,
    })
}

/// `first` then `second` in even runs, the other way round in odd ones: which goes first
/// alternates, so drift on a noisy machine hits both alike.
pub fn alternating<T>(run: usize, first: T, second: T) -> [T; 2] {
    if run.is_multiple_of(2) {
        [first, second]
    } else {
        [second, first]
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The host's TSC frequency as KVM reports it for a new vCPU (guests see the same TSC rate).
pub fn tsc_khz() -> anyhow::Result<u64> {
    let kvm = kvm_ioctls::Kvm::new()?;
    let vm = kvm.create_vm()?;
    let vcpu = vm.create_vcpu(0)?;
    Ok(u64::from(vcpu.get_tsc_khz()?))
}
