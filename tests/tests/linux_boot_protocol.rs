//! The Linux guest proves ward's boot protocol: the Debian kernel, loaded as a bzImage through
//! the 64-bit entry, prints its banner, the command line ward gave it, the e820 map ward built,
//! and the ACPI tables ward wrote. On the PVM host this is as far as a stock kernel can get (it
//! crawls there through emulation, ~2 minutes); on real KVM it takes a moment.

use std::time::Duration;

use ward_tests::{kvm_available, linux_guest, wait_for, TempDir, WardRun};

#[test]
fn linux_prints_banner_cmdline_e820_and_acpi() {
    if !kvm_available("linux_prints_banner_cmdline_e820_and_acpi") {
        return;
    }
    let (kernel, initrd) = linux_guest();
    let dir = TempDir::new("linux-proto");
    let disk = dir.image("disk.img", 8 << 20);
    let run = WardRun {
        name: "linux-proto".into(),
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 earlyprintk=serial,ttyS0,115200 ward.test=proto".into(),
        vcpus: 2,
        memory: "256M".into(),
        disks: vec![disk.display().to_string()],
        seccomp: "enforce",
        dir: dir.0.clone(),
        virtio_console: false,
        extra: Vec::new(),
    };
    let mut child = run.spawn();
    let log = run.console_log();
    let seen = wait_for(Duration::from_secs(400), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("ward exited early with {st}");
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("ACPI: APIC").then_some(text)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let fin = ward_tests::finish(child, log, Duration::from_secs(20));
    let text = seen.unwrap_or_else(|| panic!("no ACPI MADT line in time: {fin}"));

    assert!(text.contains("Linux version 6."), "no banner:\n{text}");
    assert!(
        text.contains(
            "Command line: console=ttyS0 earlyprintk=serial,ttyS0,115200 ward.test=proto \
             virtio_mmio.device=4K@0xd0000000:5"
        ),
        "command line not as given:\n{text}"
    );
    for e820 in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    ] {
        assert!(text.contains(e820), "missing {e820:?}:\n{text}");
    }
    for table in [
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: XSDT",
        "ACPI: FACP",
        "ACPI: DSDT",
        "ACPI: APIC",
    ] {
        assert!(text.contains(table), "missing {table:?}:\n{text}");
    }
    assert!(
        !fin.stderr.contains("SIGSYS"),
        "a process hit its seccomp filter: {fin}"
    );
}
