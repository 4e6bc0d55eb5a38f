//! The Debian Linux guest on ward: boots to its readiness marker with 1 and 2 vCPUs, writes a
//! pattern to /dev/vda through the block worker, syncs and reboots; the next VM reads it back,
//! and the host finds both patterns in the image. Directly on a host whose KVM can run Linux;
//! inside the nested machine (tests/nested) on the PVM host, where it cannot.

use std::process::Command;
use ward_tests::{bin, host_is_pvm, kvm_available, linux_guest, repo, TempDir};

fn check(out: &str, image: &std::path::Path) {
    for want in [
        "[one] WARD-GUEST READY",
        "[one] NPROC=1",
        "[one] WROTE-A",
        "[one] WARD-GUEST EXIT status=0",
        "LINUX-TEST one ward-exit=0",
        "[two] WARD-GUEST READY",
        "[two] NPROC=2",
        "[two] READ-A=ward-pattern-A",
        "[two] DISCARDED-A",
        "[two] WROTE-B",
        "LINUX-TEST two ward-exit=0",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let img = std::fs::read(image).expect("read image");
    // Pattern A was read back by the second VM, then discarded (DISCARD through the worker).
    assert!(
        img[2048 * 512..2048 * 512 + 65536].iter().all(|&b| b == 0),
        "discard left data"
    );
    assert_eq!(&img[4096 * 512..4096 * 512 + 14], b"ward-pattern-B");
}

#[test]
fn linux_boots_and_writes_its_disk() {
    if !kvm_available("linux_boots_and_writes_its_disk") {
        return;
    }
    let (kernel, initrd) = linux_guest();
    let dir = TempDir::new("linux");
    let image = dir.image("disk.img", 64 << 20);
    let script = repo().join("tests/guest/linux-scenarios.sh");
    let out = if host_is_pvm() {
        eprintln!("host KVM is PVM: running the Linux guest inside the nested machine");
        let o = Command::new("bash")
            .arg(repo().join("tests/nested/run-nested.sh"))
            .args(["--timeout", "900", "--bin"])
            .arg(bin("ward"))
            .arg("--bin")
            .arg(bin("ward-vmm"))
            .arg("--bin")
            .arg(bin("ward-block"))
            .arg("--file")
            .arg(format!("{}:/ward/guest/", kernel.display()))
            .arg("--file")
            .arg(format!("{}:/ward/guest/", initrd.display()))
            .arg("--disk")
            .arg(&image)
            .args(["--env", "GUEST_DIR=/ward/guest", "--env", "DISK=/dev/vda"])
            .args(["--env", "LOGDIR=/tmp", "--script"])
            .arg(&script)
            .output()
            .expect("run the nested machine");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "nested run failed ({}):\n{text}",
            o.status
        );
        text
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
            .env("DISK", &image)
            .env("LOGDIR", &dir.0)
            .env("XDG_RUNTIME_DIR", &dir.0)
            .output()
            .expect("run the scenarios");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    check(&out, &image);
}
