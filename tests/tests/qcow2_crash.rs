//! Crash consistency of qcow2 disks: the block worker is killed (SIGKILL) at random points while
//! the guest writes and flushes, many times over. Each time the image must open, `qemu-img
//! check` must find no corruption (leaked clusters are allowed), and every write the guest saw
//! flushed must be in the image.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ward_tests::{
    bin, children_named, finish, kvm_available, pattern_byte, wait_for, TempDir, WardRun,
};

const ROUNDS: u64 = 12;
/// Writes per run: each to its own 64 KiB cluster, half of them partial (allocation + COW).
const WRITES: u64 = 24;

fn sector_of(i: u64) -> u64 {
    i * 128 + (i % 2) * 5
}

#[test]
fn killing_the_worker_mid_write_never_corrupts_the_image() {
    if !kvm_available("killing_the_worker_mid_write_never_corrupts_the_image") {
        return;
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("\n*** SKIPPED killing_the_worker_mid_write_never_corrupts_the_image: no qemu-img ***\n");
        return;
    }
    let dir = TempDir::new("qcow2-crash");
    // Scenario: write i, flush, write i+1, flush, ... The seed is the write's index + 1.
    let scen: Vec<String> = (0..WRITES)
        .flat_map(|i| {
            [
                format!("blk-write:0:{}:8:{}", sector_of(i), i + 1),
                "blk-flush:0".into(),
            ]
        })
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..ROUNDS {
        let img = dir.path(&format!("r{round}.qcow2"));
        let st = Command::new(bin("ward-img"))
            .args(["create", "-f", "qcow2"])
            .arg(&img)
            .arg("4M")
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let mut run = WardRun::probe(&dir, &format!("crash{round}"), &scen.join(","));
        run.disks = vec![format!("{},format=qcow2", img.display())];
        let child = run.spawn();
        let pid = child.id();
        let worker = wait_for(Duration::from_secs(20), || {
            children_named(pid, "ward-block").first().copied()
        })
        .expect("worker started");
        // Wait until the guest has done a random number of flushes, then kill mid-stream.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target = 1 + seed % (WRITES - 2);
        let log = run.console_log();
        let reached = wait_for(Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.matches("blk-flush:0 OK status=OK").count() as u64 >= target).then_some(())
        });
        // A little more time, so the kill lands inside a later write as often as not.
        std::thread::sleep(Duration::from_millis(seed % 40));
        let _ = kill(Pid::from_raw(worker as i32), Signal::SIGKILL);
        let fin = finish(child, log, Duration::from_secs(30));
        assert!(
            reached.is_some(),
            "round {round}: the guest never got going: {fin}"
        );

        let check = Command::new("qemu-img")
            .arg("check")
            .arg(&img)
            .output()
            .unwrap();
        let code = check.status.code();
        assert!(
            code == Some(0) || code == Some(3),
            "round {round}: qemu-img check found corruption ({code:?}):\n{}",
            String::from_utf8_lossy(&check.stdout)
        );
        // Writes are flushed in order: write i was flushed when the (i+1)th flush was OK.
        let flushed = fin.console.matches("blk-flush:0 OK status=OK").count() as u64;
        let raw = dir.path("check.raw");
        let conv = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&img)
            .arg(&raw)
            .output()
            .unwrap();
        assert!(conv.status.success(), "{conv:?}");
        let data = std::fs::read(&raw).unwrap();
        for i in 0..flushed {
            let start = sector_of(i) * 512;
            for off in start..start + 8 * 512 {
                assert_eq!(
                    data[off as usize],
                    pattern_byte(i + 1, off),
                    "round {round}: flushed write {i} lost at byte {off} ({flushed} flushes seen)"
                );
            }
        }
    }
}
