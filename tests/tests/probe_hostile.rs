//! The probe guest as a hostile guest: malformed descriptor chains get their error status (or,
//! where the chain has no usable status byte, none), and the worker serves the next valid
//! request every time.

use std::time::Duration;

use ward_tests::{kvm_available, TempDir, WardRun};

/// (case, expected status) — NONE: no status byte could be written.
const CASES: &[(&str, &str)] = &[
    ("oob-sector", "IOERR"),
    ("oob-span", "IOERR"),
    ("desc-oob", "IOERR"),
    ("hdr-short", "IOERR"),
    ("no-status", "NONE"),
    ("status-ro", "NONE"),
    ("len-unaligned", "IOERR"),
    ("data-dir", "IOERR"),
    ("bad-type", "UNSUPP"),
    ("indirect", "OK"),
    ("indirect-oob", "NONE"),
    ("indirect-nested", "NONE"),
    ("loop", "NONE"),
    ("huge-len", "IOERR"),
    ("zero-len", "IOERR"),
    ("bad-index", "NONE"),
];

#[test]
fn malformed_chains_get_errors_and_the_worker_lives_on() {
    if !kvm_available("malformed_chains_get_errors_and_the_worker_lives_on") {
        return;
    }
    let dir = TempDir::new("hostile");
    let img = dir.image("disk.img", 1 << 20);
    let scenarios: Vec<String> = CASES
        .iter()
        .map(|(c, _)| format!("blk-bad:0:{c}"))
        .collect();
    let mut run = WardRun::probe(&dir, "hostile", &scenarios.join(","));
    run.disks = vec![img.display().to_string()];
    let fin = run.run(Duration::from_secs(300));
    fin.assert_clean_probe_exit();
    let mut wrong = Vec::new();
    for (case, want) in CASES {
        let prefix = format!("blk-bad:0:{case} status=");
        let lines: Vec<&str> = fin
            .probe_lines()
            .into_iter()
            .filter(|l| l.starts_with(&format!("PROBE {prefix}")))
            .collect();
        if lines.is_empty() {
            wrong.push(format!("{case}: no status line"));
        }
        for l in &lines {
            if !l.contains(&format!("status={want} ")) {
                wrong.push(format!("{case}: want {want}, got {l:?}"));
            }
        }
        let after = fin.probe_line(&format!("blk-bad:0:{case} after="));
        if !after.is_some_and(|l| l.contains("after=OK")) {
            wrong.push(format!("{case}: the next valid request failed: {after:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}\n{fin}", wrong.join("\n"));
    // The worker's guest memory accesses stayed inside guest memory and the image: it is still
    // the same process and the image is untouched by reads.
    assert!(
        !fin.stderr.contains("SIGSYS") && !fin.stderr.contains("died"),
        "{fin}"
    );
    assert!(
        std::fs::read(&img).unwrap().iter().all(|&b| b == 0),
        "image changed"
    );
}
