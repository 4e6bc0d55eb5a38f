//! The Debian Linux guest on ward: boots to its readiness marker with 1 and 2 vCPUs, writes a
//! pattern to /dev/vda through the block worker, syncs and reboots; the next VM reads it back,
//! and the host finds both patterns in the image. A third VM's login shell is on hvc0 (the
//! virtio console): two `ward console` sessions run commands in it and detach, a second client
//! is refused while one is attached, and the console log holds everything. Directly on a host whose KVM can run Linux;
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
        // hvc0 sessions through ward console, and the log of all of it.
        "[three] WARD-GUEST shell on hvc0",
        "LINUX-TEST hvc-one console-exit=0 saw=1",
        "LINUX-TEST busy console-exit=1 console busy",
        "LINUX-TEST hvc-two console-exit=0 saw=1",
        "LINUX-TEST three ward-exit=0",
        "[three-hvc] hvc-42",
        "[three-hvc] again-56",
        "[three-hvc] /dev/hvc0",
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
