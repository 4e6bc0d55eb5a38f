//! `ward-img convert` against `qemu-img convert`, qcow2→raw and raw→qcow2, on one image with
//! data, explicit zeros and holes, interleaved runs, medians.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::measure::{self, median};

/// Builds the source: `size` bytes, in 4 MiB stripes of data, written zeros, and holes.
pub fn make_source(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    const STRIPE: u64 = 4 << 20;
    let mut data = vec![0u8; STRIPE as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let zeros = vec![0u8; STRIPE as usize];
    let mut off = 0;
    let mut i = 0u64;
    while off < size {
        match i % 3 {
            0 => {
                for chunk in data.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                }
                f.write_all_at(&data, off)?;
            }
            1 => f.write_all_at(&zeros, off)?,
            _ => {} // a hole
        }
        off += STRIPE;
        i += 1;
    }
    f.sync_all()?;
    Ok(())
}

fn time(mut cmd: Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = cmd.status()?;
    if !st.success() {
        anyhow::bail!("{cmd:?} failed: {st}");
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(ward_img: &Path, dir: &Path, size: u64, runs: usize) -> anyhow::Result<String> {
    let src = dir.join("conv-src.raw");
    make_source(&src, size)?;
    let qsrc = dir.join("conv-src.qcow2");
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-O", "qcow2"]).arg(&src).arg(&qsrc);
    time(c)?;
    let out = dir.join("conv-out");
    let mut rows = Vec::new();
    // Both tools' defaults first (neither syncs: qemu-img's convert defaults to cache=unsafe,
    // and so does ward-img's), then both asked to sync the result (`-t writeback`).
    for (what, input, fmt, cache) in [
        ("qcow2 → raw", &qsrc, "raw", None),
        ("raw → qcow2", &src, "qcow2", None),
        ("qcow2 → raw, -t writeback", &qsrc, "raw", Some("writeback")),
        (
            "raw → qcow2, -t writeback",
            &src,
            "qcow2",
            Some("writeback"),
        ),
    ] {
        let (mut w, mut q) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let order = measure::alternating(i, true, false);
            for ward in order {
                let _ = std::fs::remove_file(&out);
                // Start each run with no dirty pages from the last one being written back.
                Command::new("sync").status()?;
                let mut c = if ward {
                    Command::new(ward_img)
                } else {
                    Command::new("qemu-img")
                };
                c.args(["convert", "-O", fmt]);
                if let Some(t) = cache {
                    c.args(["-t", t]);
                }
                c.arg(input).arg(&out);
                let secs = time(c)?;
                if ward {
                    w.push(secs)
                } else {
                    q.push(secs)
                }
            }
        }
        let (mw, mq) = (median(w), median(q));
        let verdict = if mw <= mq { "met" } else { "missed" };
        rows.push(format!(
            "| {what} | {mw:.2} s | {mq:.2} s | {:.2} | {verdict} |",
            mw / mq
        ));
    }
    let _ = std::fs::remove_file(&out);
    Ok(format!(
        "| convert, {} MiB image (⅓ data, ⅓ zeros, ⅓ holes) | ward-img (median) | qemu-img (median) | ward/qemu | target |\n|---|---|---|---|---|\n{}\n\n{runs} runs each, interleaved, `sync` before each; page cache warm (the source was just written).\n",
        size >> 20,
        rows.join("\n")
    ))
}
