//! qcow2 disks through the block worker: the probe guest writes to a qcow2 overlay on a raw
//! base, reads the base through it, and afterwards `qemu-img check` is clean, the base is
//! unchanged and the guest's data is in the overlay. A corrupt image is refused up front.

use std::process::Command;
use std::time::Duration;

use ward_tests::{bin, kvm_available, pattern_byte, TempDir, WardRun};

fn qemu_img(args: &[&str], dir: &std::path::Path) -> Option<std::process::Output> {
    match Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(o) => Some(o),
        Err(_) => {
            eprintln!("\n*** qemu-img missing: skipping its checks ***\n");
            None
        }
    }
}

#[test]
fn guest_writes_a_qcow2_overlay_on_a_raw_base() {
    if !kvm_available("guest_writes_a_qcow2_overlay_on_a_raw_base") {
        return;
    }
    let dir = TempDir::new("qcow2");
    let base: Vec<u8> = (0..(8u64 << 20))
        .map(|o| if o < 64 * 512 { pattern_byte(3, o) } else { 0 })
        .collect();
    std::fs::write(dir.path("base.raw"), &base).unwrap();
    let st = Command::new(bin("ward-img"))
        .args([
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "over.qcow2",
        ])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");

    let mut run = WardRun::probe(
        &dir,
        "qcow2",
        "blk-info:0,blk-read:0:0:64:3,blk-write:0:2048:64:7,blk-write:0:40:8:9,blk-flush:0,\
         blk-read:0:2048:64:7,blk-read:0:40:8:9,blk-read:0:0:40:3",
    );
    // Without format=qcow2, a guessed header is not trusted with a backing file.
    run.disks = vec![dir.path("over.qcow2").display().to_string()];
    let refused = run.run(Duration::from_secs(30));
    assert_eq!(refused.status.code(), Some(1), "{refused}");
    assert!(refused.stderr.contains("say format=qcow2"), "{refused}");
    run.disks = vec![format!("{},format=qcow2", dir.path("over.qcow2").display())];
    let fin = run.run(Duration::from_secs(120));
    fin.assert_clean_probe_exit();
    for want in [
        "blk-info:0 OK capacity=16384",
        "blk-read:0:0:64:3 OK mismatches=0",
        "blk-write:0:2048:64:7 OK status=OK",
        "blk-write:0:40:8:9 OK status=OK",
        "blk-flush:0 OK status=OK",
        "blk-read:0:2048:64:7 OK mismatches=0",
        "blk-read:0:40:8:9 OK mismatches=0",
        "blk-read:0:0:40:3 OK mismatches=0",
    ] {
        assert!(fin.probe_line(want).is_some(), "missing {want}: {fin}");
    }
    assert_eq!(
        std::fs::read(dir.path("base.raw")).unwrap(),
        base,
        "the base changed"
    );

    let Some(check) = qemu_img(&["check", "over.qcow2"], &dir.0) else {
        return;
    };
    assert!(check.status.success(), "qemu-img check: {check:?}");
    let conv = qemu_img(&["convert", "-O", "raw", "over.qcow2", "out.raw"], &dir.0).unwrap();
    assert!(conv.status.success(), "{conv:?}");
    let out = std::fs::read(dir.path("out.raw")).unwrap();
    for off in 0..8u64 << 20 {
        let want = if (2048 * 512..2112 * 512).contains(&off) {
            pattern_byte(7, off)
        } else if (40 * 512..48 * 512).contains(&off) {
            // A partial-cluster write over backing data: the rest of the cluster kept the base.
            pattern_byte(9, off)
        } else {
            base[off as usize]
        };
        assert_eq!(out[off as usize], want, "byte {off} of the guest's view");
    }
}

#[test]
fn a_corrupt_image_is_refused_naming_it() {
    let dir = TempDir::new("qcow2-bad");
    let mut bad = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bad.resize(4096, 0xff);
    std::fs::write(dir.path("bad.qcow2"), &bad).unwrap();
    let mut run = WardRun::probe(&dir, "badimg", "");
    run.disks = vec![dir.path("bad.qcow2").display().to_string()];
    let fin = run.run(Duration::from_secs(30));
    assert_eq!(fin.status.code(), Some(1), "{fin}");
    assert!(fin.stderr.contains("bad.qcow2 cannot be used"), "{fin}");
    assert!(!fin.console.contains("PROBE READY"), "{fin}");
    assert_eq!(
        std::fs::read(dir.path("bad.qcow2")).unwrap(),
        bad,
        "written through"
    );
}
