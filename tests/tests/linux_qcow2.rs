//! Once, the Linux guest on a qcow2 overlay over a raw base: it reads the base through the
//! overlay and writes to it; the base stays unchanged, `qemu-img check` finds the overlay clean
//! and holds the guest's data. Directly where the host's KVM runs Linux, else in the nested
//! machine (which copies the overlay out to a second disk for the host to inspect).

use std::process::Command;

use ward_tests::{bin, host_is_pvm, kvm_available, linux_guest, repo, TempDir};

#[test]
fn linux_writes_a_qcow2_overlay() {
    if !kvm_available("linux_writes_a_qcow2_overlay") {
        return;
    }
    let (kernel, initrd) = linux_guest();
    let dir = TempDir::new("linux-qcow2");
    let base_path = dir.image("base.raw", 16 << 20);
    let mut base = std::fs::read(&base_path).unwrap();
    base[100 * 512..100 * 512 + 11].copy_from_slice(b"ward-base-A");
    std::fs::write(&base_path, &base).unwrap();
    let export = dir.image("export.img", 16 << 20);
    let script = repo().join("tests/guest/linux-qcow2.sh");
    let out = if host_is_pvm() {
        let o = Command::new("bash")
            .arg(repo().join("tests/nested/run-nested.sh"))
            .args(["--timeout", "900"])
            .args(["--bin"])
            .arg(bin("ward"))
            .args(["--bin"])
            .arg(bin("ward-vmm"))
            .args(["--bin"])
            .arg(bin("ward-block"))
            .args(["--bin"])
            .arg(bin("ward-img"))
            .arg("--file")
            .arg(format!("{}:/ward/guest/", kernel.display()))
            .arg("--file")
            .arg(format!("{}:/ward/guest/", initrd.display()))
            .arg("--disk")
            .arg(&base_path)
            .arg("--disk")
            .arg(&export)
            .args(["--env", "GUEST_DIR=/ward/guest", "--env", "BASE=/dev/vda"])
            .args([
                "--env",
                "SCRATCH=/tmp",
                "--env",
                "EXPORT=/dev/vdb",
                "--script",
            ])
            .arg(&script)
            .output()
            .expect("run the nested machine");
        String::from_utf8_lossy(&o.stdout).into_owned()
    } else {
        let path = format!(
            "{}:{}",
            ward_tests::bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let o = Command::new("sh")
            .arg(&script)
            .env("PATH", path)
            .env("GUEST_DIR", kernel.parent().expect("guest dir"))
            .env("BASE", &base_path)
            .env("SCRATCH", &dir.0)
            .env("EXPORT", &export)
            .env("XDG_RUNTIME_DIR", &dir.0)
            .output()
            .expect("run the scenario");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
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
