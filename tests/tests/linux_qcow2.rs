//! Once, the Linux guest on a qcow2 overlay over a raw base: it reads the base through the
//! overlay and writes to it; the base stays unchanged, `qemu-img check` finds the overlay clean
//! and holds the guest's data. Directly where the host's KVM runs Linux, else in the nested
//! machine (which copies the overlay out to a second disk for the host to inspect).

use std::process::Command;

use ward_tests::{kvm_available, TempDir};

#[test]
fn linux_writes_a_qcow2_overlay() {
    if !kvm_available("linux_writes_a_qcow2_overlay") {
        return;
    }
    let dir = TempDir::new("linux-qcow2");
    let base_path = dir.image("base.raw", 16 << 20);
    let mut base = std::fs::read(&base_path).unwrap();
    base[100 * 512..100 * 512 + 11].copy_from_slice(b"ward-base-A");
    std::fs::write(&base_path, &base).unwrap();
    let export = dir.image("export.img", 16 << 20);
    let out = ward_tests::run_linux_script(
        "tests/guest/linux-qcow2.sh",
        &dir,
        &[("BASE", &base_path), ("EXPORT", &export)],
    );
    for want in [
        "LINUX-QCOW2 ward-exit=0",
        "[q] BASE=ward-base-A",
        "[q] WROTE-Q",
        "LINUX-QCOW2 check=0",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(std::fs::read(&base_path).unwrap(), base, "the base changed");

    // The overlay, as the guest left it, judged by qemu-img.
    let size: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("LINUX-QCOW2 exported size="))
        .and_then(|v| v.trim().parse().ok())
        .expect("exported size");
    let over = dir.path("over.qcow2");
    std::fs::write(&over, &std::fs::read(&export).unwrap()[..size]).unwrap();
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("\n*** qemu-img missing: overlay not checked by it ***\n");
        return;
    }
    let qi = |args: &[&str]| {
        let o = Command::new("qemu-img")
            .args(args)
            .current_dir(&dir.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "qemu-img {args:?}: {o:?}");
    };
    // Point it at the host's copy of the base first: it names /dev/vda of the nested machine.
    qi(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "over.qcow2",
    ]);
    qi(&["check", "over.qcow2"]);
    qi(&["convert", "-O", "raw", "over.qcow2", "view.raw"]);
    let view = std::fs::read(dir.path("view.raw")).unwrap();
    assert_eq!(&view[100 * 512..100 * 512 + 11], b"ward-base-A");
    assert_eq!(&view[3000 * 512..3000 * 512 + 12], b"ward-qcow2-X");
}
