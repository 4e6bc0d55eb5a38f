//! The Debian Linux guest on ward: boots to its readiness marker with 1 and 2 vCPUs, writes a
//! pattern to /dev/vda through the block worker, syncs and reboots; the next VM reads it back,
//! and the host finds both patterns in the image. Directly on a host whose KVM can run Linux;
//! inside the nested machine (tests/nested) on the PVM host, where it cannot.

use ward_tests::{kvm_available, TempDir};

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
    let dir = TempDir::new("linux");
    let image = dir.image("disk.img", 64 << 20);
    let out =
        ward_tests::run_linux_script("tests/guest/linux-scenarios.sh", &dir, &[("DISK", &image)]);
    check(&out, &image);
}
