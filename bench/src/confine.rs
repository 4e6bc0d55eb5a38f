//! What confinement costs: ward under its default policy (every process in its own
//! namespaces, empty root, the VM's uid, Landlock, rlimits, seccomp) against ward with
//! `--unconfined` (seccomp filters only), interleaved, on the probe guest: start-up and exit,
//! and the block bursts on the raw image. Target: under 5 % difference.

use crate::measure::{self, median};
use crate::probe::{cell, footer, one, rate, Config, Format, Images, Setup, Vmm, Workload};

const CONFINED: Config = Config {
    vmm: Vmm::Ward,
    format: Format::Raw,
    confined: true,
};
const UNCONFINED: Config = Config {
    vmm: Vmm::Ward,
    format: Format::Raw,
    confined: false,
};

#[derive(Default)]
struct Samples {
    ready_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    rps: [Vec<f64>; 5],
}

pub fn run(s: &Setup) -> anyhow::Result<String> {
    let images = Images::make(s)?;
    let mut on = Samples::default();
    let mut off = Samples::default();
    let mut n = 10_000;
    for i in 0..s.runs {
        // Alternate which goes first.
        let order = measure::alternating(i, (CONFINED, true), (UNCONFINED, false));
        for (c, confined) in order {
            let out = if confined { &mut on } else { &mut off };
            n += 1;
            let boot = one(s, c, &images.allocated(Format::Raw), "", n)?;
            let ready = boot
                .line_time("PROBE READY")
                .ok_or_else(|| anyhow::anyhow!("no READY"))?;
            out.ready_ms.push(ready.as_secs_f64() * 1e3);
            out.exit_ms.push(boot.exit.as_secs_f64() * 1e3);
            for w in Workload::ALL {
                let image = if w == Workload::RandWriteNew {
                    images.new_image(Format::Raw)?
                } else {
                    images.allocated(Format::Raw)
                };
                n += 1;
                let r = one(s, c, &image, &w.scenario(s.burst), n)?;
                out.rps[w.index()].push(rate(s, &r, "PROBE blk-burst")?);
            }
        }
        eprintln!("confinement round {}/{} done", i + 1, s.runs);
    }
    Ok(report(s, &on, &off))
}

/// The target of the cost-of-confinement rows: confined within 5 % of unconfined, either way.
pub fn verdict(ratio: f64) -> &'static str {
    if (ratio - 1.0).abs() <= 0.05 {
        "met"
    } else {
        "missed"
    }
}

fn report(s: &Setup, on: &Samples, off: &Samples) -> String {
    let mut t = String::from(
        "| probe guest, raw disk | ward confined: median (min–max) | ward --unconfined: median \
         (min–max) | confined/unconfined | target (within 5 %) |\n|---|---|---|---|---|\n",
    );
    let mut row = |what: &str, unit: &str, a: &[f64], b: &[f64]| {
        let ratio = median(a.to_vec()) / median(b.to_vec());
        let verdict = verdict(ratio);
        t += &format!(
            "| {what} | {} | {} | {ratio:.3} | {verdict} |\n",
            cell(a, unit),
            cell(b, unit)
        );
    };
    row("start-up to PROBE READY", "ms", &on.ready_ms, &off.ready_ms);
    row("start-up to exit", "ms", &on.exit_ms, &off.exit_ms);
    for w in Workload::ALL {
        row(w.label(), "req/s", &on.rps[w.index()], &off.rps[w.index()]);
    }
    t += &footer(s);
    t
}
