//! Where the time goes in the Linux guest's host → guest transfers: `bench/linux-net.sh`
//! prints, for each transfer, what grew between a snapshot before and one after it
//! (`NETPROF vmm=… dir=h2g key=delta …`): KVM's counters (exits, interrupts injected, MMIO
//! exits, halts), the work items the kernel ran by function, the machine's busy and guest CPU
//! time, and each thread's CPU time by name.
//! This turns them into a table of medians per MiB, one column per VMM.

use crate::measure::median;

/// The deltas of every profiled transfer of `vmm`, each a list of (key, value).
fn samples(out: &str, vmm: &str) -> Vec<Vec<(String, f64)>> {
    let tag = format!("NETPROF vmm={vmm} dir=h2g");
    out.lines()
        .filter_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
        .map(|rest| {
            let mut kv: Vec<(String, f64)> = Vec::new();
            for w in rest.split_whitespace() {
                let Some((k, v)) = w.split_once('=') else {
                    continue;
                };
                let Ok(v) = v.parse::<f64>() else { continue };
                let k = group(k);
                match kv.iter_mut().find(|(have, _)| *have == k) {
                    Some((_, sum)) => *sum += v,
                    None => kv.push((k, v)),
                }
            }
            kv
        })
        .collect()
}

/// Kernel threads whose names carry a CPU number count as one row; kworkers one per workqueue
/// (the name's suffix after `-`, that of the work item the kworker ran last).
fn group(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("thr_kworker") {
        return match rest.split_once('-') {
            Some((_, wq)) => format!("thr_kworker*-{wq}"),
            None => "thr_kworker*".to_string(),
        };
    }
    for prefix in ["thr_ksoftirqd", "thr_migration", "thr_rcu"] {
        if key.starts_with(prefix) {
            return format!("{prefix}*");
        }
    }
    key.to_string()
}

/// What a key measures, and the factor from its delta to the unit shown (per MiB).
fn describe(key: &str) -> (String, f64) {
    // /proc ticks are USER_HZ, 100 per second: 10 ms of CPU each.
    const MS_PER_TICK: f64 = 10.0;
    if let Some(k) = key.strip_prefix("kvm_") {
        return (format!("KVM `{k}` per MiB"), 1.0);
    }
    if let Some(f) = key.strip_prefix("wq_") {
        return (format!("work items `{f}` per MiB"), 1.0);
    }
    match key {
        "tap_tx_packets" => ("frames the tap sent to the guest, per MiB".into(), 1.0),
        "tap_rx_packets" => (
            "frames the tap got from the guest (its ACKs), per MiB".into(),
            1.0,
        ),
        "cpu_busy" => ("machine CPU busy, ms per MiB".into(), MS_PER_TICK),
        "cpu_guest" => (
            "machine CPU running the guest, ms per MiB".into(),
            MS_PER_TICK,
        ),
        _ => match key.strip_prefix("thr_") {
            Some(t) => (format!("thread `{t}`, CPU ms per MiB"), MS_PER_TICK),
            None => (key.to_string(), 1.0),
        },
    }
}

fn order(key: &str) -> u8 {
    if key.starts_with("kvm_") {
        0
    } else if key.starts_with("wq_") {
        1
    } else if key.starts_with("cpu_") {
        2
    } else {
        3
    }
}

/// The table, or `None` when no transfer was profiled. Rows for threads that used less than
/// 0.5 ms of CPU per MiB under both VMMs, and work items that ran less than 0.5 times per MiB,
/// are left out.
pub fn report(out: &str, mib: u64, vmms: [&str; 2], columns: [&str; 2]) -> Option<String> {
    let runs = [samples(out, vmms[0]), samples(out, vmms[1])];
    if runs.iter().any(Vec::is_empty) {
        return None;
    }
    let mut keys: Vec<String> = runs
        .iter()
        .flatten()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort_by(|a, b| order(a).cmp(&order(b)).then(a.cmp(b)));
    keys.dedup();
    let mib = mib.max(1) as f64;
    let med = |r: &[Vec<(String, f64)>], key: &str, factor: f64| {
        median(
            r.iter()
                .map(|kv| {
                    kv.iter()
                        .find(|(k, _)| k == key)
                        .map_or(0.0, |(_, v)| *v * factor / mib)
                })
                .collect(),
        )
    };
    let mut t = format!(
        "| host → guest, per MiB (medians) | {} | {} | {}/{} |\n|---|---|---|---|\n",
        columns[0], columns[1], columns[0], columns[1]
    );
    for key in keys {
        // Bytes per MiB would say nothing new: the average frame (below) says more.
        if key.starts_with("tap_") && key.ends_with("_bytes") {
            continue;
        }
        let (what, factor) = describe(&key);
        let (a, b) = (med(&runs[0], &key, factor), med(&runs[1], &key, factor));
        if (key.starts_with("thr_") || key.starts_with("wq_")) && a < 0.5 && b < 0.5 {
            continue;
        }
        let ratio = if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        };
        t += &format!("| {what} | {a:.1} | {b:.1} | {ratio} |\n");
    }
    for (dir, what) in [("tx", "to the guest"), ("rx", "from the guest")] {
        let avg = |r: &[Vec<(String, f64)>]| {
            let get = |kv: &[(String, f64)], k: &str| {
                kv.iter().find(|(have, _)| have == k).map(|(_, v)| *v)
            };
            median(
                r.iter()
                    .filter_map(|kv| {
                        let bytes = get(kv, &format!("tap_{dir}_bytes"))?;
                        let frames = get(kv, &format!("tap_{dir}_packets"))?;
                        (frames > 0.0).then(|| bytes / frames)
                    })
                    .collect(),
            )
        };
        let (a, b) = (avg(&runs[0]), avg(&runs[1]));
        if a > 0.0 && b > 0.0 {
            t += &format!(
                "| average frame {what}, bytes | {a:.0} | {b:.0} | {:.2} |\n",
                a / b
            );
        }
    }
    t += &format!(
        "\nProfiled transfers: {} and {}.\n",
        runs[0].len(),
        runs[1].len()
    );
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_mib_grouping_kworkers_and_skipping_idle_threads() {
        let out = "\
NETPROF vmm=ward dir=h2g kvm_exits=6400 cpu_busy=300 thr_vcpu0=100 thr_kworker/0_1-events=10 thr_kworker/1_0-events=6 thr_idle=1 wq_irqfd_inject=640
NETPROF vmm=qemu dir=h2g kvm_exits=12800 cpu_busy=320 thr_CPU_0/KVM=150 thr_kworker/0_1-events=4 thr_kworker/u4_0=70
noise NETPROF vmm=ward dir=h2g kvm_exits=9600 cpu_busy=280 thr_vcpu0=120 wq_irqfd_inject=1280
NETPROF vmm=qemu dir=h2g kvm_exits=12800 cpu_busy=300 thr_CPU_0/KVM=170
";
        let t = report(out, 64, ["ward", "qemu"], ["ward", "QEMU"]).expect("profiled");
        // ward's exits: 100 and 150 per MiB, median 125; QEMU's 200.
        assert!(
            t.contains("| KVM `exits` per MiB | 125.0 | 200.0 | 0.62 |"),
            "{t}"
        );
        // Both kworker entries of the first run add up: 16 ticks, then 0: median 80 ms / 64.
        assert!(
            t.contains("thread `kworker*-events`, CPU ms per MiB | 1.2 | 0.3 |"),
            "{t}"
        );
        // A kworker without a workqueue in its name: 70 ticks, then 0.
        assert!(
            t.contains("thread `kworker*`, CPU ms per MiB | 0.0 | 5.5 |"),
            "{t}"
        );
        // Work items are counts: 10 and 20 per MiB.
        assert!(
            t.contains("| work items `irqfd_inject` per MiB | 15.0 | 0.0 | – |"),
            "{t}"
        );
        // A thread under 0.5 ms per MiB under both is left out.
        assert!(!t.contains("idle"), "{t}");
        assert!(t.contains("| thread `CPU_0/KVM`, CPU ms per MiB | 0.0 | 25.0 | 0.00 |"));
        assert!(t.find("KVM `exits`") < t.find("work items"), "{t}");
        assert!(t.find("work items") < t.find("machine CPU busy"), "{t}");
        assert!(t.contains("Profiled transfers: 2 and 2."));
    }

    #[test]
    fn tap_frames_per_mib_and_their_average_size() {
        let out = "\
NETPROF vmm=ward dir=h2g tap_tx_packets=6400 tap_tx_bytes=64000000 tap_rx_packets=3200 tap_rx_bytes=211200
NETPROF vmm=ward dir=h2g tap_tx_packets=3200 tap_tx_bytes=64000000 tap_rx_packets=1600 tap_rx_bytes=105600
NETPROF vmm=qemu dir=h2g tap_tx_packets=1600 tap_tx_bytes=64000000 tap_rx_packets=800 tap_rx_bytes=52800
";
        let t = report(out, 64, ["ward", "qemu"], ["ward", "QEMU"]).expect("profiled");
        // 100 and 50 frames per MiB: median 75; QEMU 25.
        assert!(
            t.contains("| frames the tap sent to the guest, per MiB | 75.0 | 25.0 | 3.00 |"),
            "{t}"
        );
        // 10000 and 20000 bytes a frame: median 15000; QEMU 40000.
        assert!(
            t.contains("| average frame to the guest, bytes | 15000 | 40000 | 0.38 |"),
            "{t}"
        );
        assert!(
            t.contains("| average frame from the guest, bytes | 66 | 66 | 1.00 |"),
            "{t}"
        );
        assert!(!t.contains("tap_tx_bytes"), "{t}");
    }

    #[test]
    fn nothing_profiled_is_no_table() {
        assert!(report(
            "NETBENCH vmm=ward dir=h2g",
            64,
            ["ward", "qemu"],
            ["a", "b"]
        )
        .is_none());
    }
}
