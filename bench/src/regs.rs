//! What the two register accesses of every virtio-mmio interrupt cost the guest (a read of
//! InterruptStatus, a write of InterruptACK), ward against QEMU: the probe's `mmio-isr`
//! scenario on a live virtio-blk device, TSC cycles per access, interleaved runs.
//!
//! ward maps the registers read-only and takes InterruptACK on an ioeventfd
//! (`vmm/src/virtio/regpage.rs`); QEMU exits to user space for both.

use crate::measure::{self, median};
use crate::probe::{self, Config, Format, Setup, Vmm, CONFIGS};

/// Accesses of each kind per run.
const N: u64 = 20_000;

fn config(vmm: Vmm) -> Config {
    *CONFIGS
        .iter()
        .find(|c| c.vmm == vmm && c.format == Format::Raw)
        .expect("listed")
}

/// Cycles per read and per write, `runs` runs of each VMM.
pub fn run(s: &Setup) -> anyhow::Result<[(Vec<f64>, Vec<f64>); 2]> {
    let image = s.dir.join("regs-disk.img");
    std::fs::File::create(&image)?.set_len(1 << 20)?;
    // blk-info brings the device up first: InterruptStatus then says "used buffer".
    let scen = format!("blk-info:0,mmio-isr:0:{N}");
    let prefix = format!("PROBE mmio-isr:0:{N} OK");
    let mut out: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for i in 0..s.runs {
        let order = measure::alternating(i, Vmm::Ward, Vmm::Qemu);
        for vmm in order {
            let r = probe::one(s, config(vmm), &image, &scen, 1000 + i)?;
            let get = |k: &str| {
                r.value(&prefix, k)
                    .ok_or_else(|| anyhow::anyhow!("no {k} in {:?}", r.line(&prefix)))
            };
            let slot = &mut out[usize::from(vmm == Vmm::Qemu)];
            slot.0.push(get("read_cycles")? as f64);
            slot.1.push(get("ack_cycles")? as f64);
        }
    }
    Ok(out)
}

pub fn report(s: &Setup, r: &[(Vec<f64>, Vec<f64>); 2]) -> String {
    let mut t = String::from(
        "| probe guest, one virtio-blk device, TSC cycles per access | ward: median (min–max) | \
         QEMU: median (min–max) | ward/QEMU |\n|---|---|---|---|\n",
    );
    for (what, w, q) in [
        ("read of InterruptStatus", &r[0].0, &r[1].0),
        ("write of InterruptACK", &r[0].1, &r[1].1),
    ] {
        t += &format!(
            "| {what} | {} | {} | {:.2} |\n",
            probe::cell(w, "cycles"),
            probe::cell(q, "cycles"),
            median(w.clone()) / median(q.clone())
        );
    }
    t + &format!(
        "\n{} runs each, interleaved; {N} accesses of each kind per run; TSC {} kHz.\n",
        s.runs, s.tsc_khz
    )
}
