//! The probe guest boots on ward through PVH, finds its CPUs in ward's ACPI tables, and ends the
//! VM with a reset, which `ward run` reports as success.

use std::time::Duration;

use ward_tests::{kvm_available, TempDir, WardRun};

fn boot(vcpus: u8) {
    let dir = TempDir::new("probe-boot");
    let mut run = WardRun::probe(&dir, &format!("boot{vcpus}"), "");
    run.cmdline = "console=ttyS0".into();
    run.vcpus = vcpus;
    let fin = run.run(Duration::from_secs(60));
    fin.assert_clean_probe_exit();
    assert_eq!(
        fin.probe_value("READY", "cpus").as_deref(),
        Some(vcpus.to_string().as_str()),
        "{fin}"
    );
    assert_eq!(
        fin.probe_value("READY", "mem").as_deref(),
        Some("133823488"),
        "{fin}"
    );
    assert!(fin.stderr.contains("guest reset"), "{fin}");
}

#[test]
fn boots_with_one_vcpu() {
    if kvm_available("boots_with_one_vcpu") {
        boot(1);
    }
}

#[test]
fn boots_with_two_vcpus() {
    if kvm_available("boots_with_two_vcpus") {
        boot(2);
    }
}

#[test]
fn the_second_vcpu_starts_through_init_sipi() {
    if !kvm_available("the_second_vcpu_starts_through_init_sipi") {
        return;
    }
    let dir = TempDir::new("probe-smp");
    let mut run = WardRun::probe(&dir, "smp", "smp");
    run.vcpus = 2;
    let fin = run.run(Duration::from_secs(60));
    fin.assert_clean_probe_exit();
    assert!(fin.probe_line("smp cpus=2 apic_ids=0,1").is_some(), "{fin}");
    assert!(fin.probe_line("smp ap=1 up").is_some(), "{fin}");
    assert!(fin.probe_line("smp OK up=1 expected=1").is_some(), "{fin}");
}

#[test]
fn memory_above_the_32_bit_hole() {
    if !kvm_available("memory_above_the_32_bit_hole") {
        return;
    }
    let dir = TempDir::new("probe-bigmem");
    let img = dir.image("disk.img", 1 << 20);
    let mut run = WardRun::probe(&dir, "bigmem", "blk-write:0:0:8:5,blk-read:0:0:8:5");
    run.memory = "4G".into();
    run.disks = vec![img.display().to_string()];
    let fin = run.run(Duration::from_secs(60));
    fin.assert_clean_probe_exit();
    // Usable RAM: below the EBDA, 1 MiB..3 GiB, and the last GiB moved above 4 GiB.
    let usable = 0x9_fc00u64 + (3u64 << 30) - (1 << 20) + (1 << 30);
    assert_eq!(
        fin.probe_value("READY", "mem"),
        Some(usable.to_string()),
        "{fin}"
    );
    // The worker got both RAM regions in its memory table and still serves I/O.
    assert!(
        fin.probe_line("blk-read:0:0:8:5 OK mismatches=0").is_some(),
        "{fin}"
    );
}

#[test]
fn a_kernel_that_is_not_one_fails_clearly() {
    if !kvm_available("a_kernel_that_is_not_one_fails_clearly") {
        return;
    }
    let dir = TempDir::new("probe-badkernel");
    let bogus = dir.path("bogus");
    std::fs::write(&bogus, vec![0x5au8; 64 << 10]).unwrap();
    let mut run = WardRun::probe(&dir, "badkernel", "");
    run.kernel = bogus;
    let fin = run.run(Duration::from_secs(30));
    assert_eq!(fin.status.code(), Some(1), "{fin}");
    assert!(
        fin.stderr.contains("bzImage") || fin.stderr.contains("neither an ELF"),
        "error should say what is wrong with the kernel: {fin}"
    );
}

#[test]
fn missing_disk_image_is_refused_before_anything_starts() {
    let dir = TempDir::new("probe-nodisk");
    let mut run = WardRun::probe(&dir, "nodisk", "");
    run.disks = vec![dir.path("does-not-exist.img").display().to_string()];
    let fin = run.run(Duration::from_secs(30));
    assert_eq!(fin.status.code(), Some(1), "{fin}");
    assert!(fin.stderr.contains("does-not-exist.img"), "{fin}");
    assert!(!fin.console.contains("PROBE READY"), "{fin}");
}
