use vm_memory::GuestMemoryMmap;

use super::*;

const START: u64 = 0xE_0000;
const MAX_LEN: u64 = 0x2_0000;

const DEVICES: [MmioDevice; 2] = [
    MmioDevice {
        base: 0xD000_0000,
        size: 0x1000,
        irq: 5,
    },
    MmioDevice {
        base: 0xD000_1000,
        size: 0x1000,
        irq: 6,
    },
];

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn write(mem: &GuestMemoryMmap, vcpus: u8, devices: &[MmioDevice]) -> Result<GuestAddress, Error> {
    let cfg = AcpiConfig {
        vcpus,
        virtio_mmio: devices,
    };
    write_acpi_tables(mem, GuestAddress(START), MAX_LEN, &cfg)
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Finds the RSDP the way a legacy BIOS-area scan does and checks both checksums.
fn find_rsdp(mem: &GuestMemoryMmap) -> (u64, Vec<u8>) {
    let area = read(mem, 0xE_0000, 0x2_0000);
    let off = (0..area.len())
        .step_by(16)
        .find(|&off| area[off..].starts_with(b"RSD PTR "))
        .expect("RSDP not found by the legacy scan");
    let rsdp = area[off..off + 36].to_vec();
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], b"WARD  ");
    (0xE_0000 + off as u64, rsdp)
}

/// Reads a whole SDT at `addr`, checking signature, length, checksum and OEM IDs.
fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let header = read(mem, addr, 36);
    assert_eq!(&header[..4], signature);
    let len = u32_at(&header, 4) as usize;
    assert!(len >= 36, "{signature:?} length {len}");
    assert!(
        addr + len as u64 <= START + MAX_LEN,
        "{signature:?} ends outside the area"
    );
    let bytes = read(mem, addr, len);
    assert_eq!(sum(&bytes), 0, "{signature:?} checksum");
    assert_eq!(&bytes[10..16], b"WARD  ");
    assert_eq!(&bytes[16..24], b"WARDVMM ");
    bytes
}

/// All tables reachable from the RSDP, by signature.
struct Tables {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

fn parse(mem: &GuestMemoryMmap) -> Tables {
    let (_, rsdp) = find_rsdp(mem);
    let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(&xsdt, o))
        .collect();
    assert_eq!(entries.len(), 2, "XSDT lists FADT and MADT");
    let fadt = table(mem, entries[0], b"FACP");
    let madt = table(mem, entries[1], b"APIC");
    assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
    let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
    Tables { fadt, madt, dsdt }
}

/// MADT interrupt-controller structures as (type, bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut entries = Vec::new();
    let mut off = 44;
    while off < madt.len() {
        let len = madt[off + 1] as usize;
        assert!(len >= 2 && off + len <= madt.len());
        entries.push((madt[off], &madt[off..off + len]));
        off += len;
    }
    entries
}

#[test]
fn tables_round_trip() {
    let mem = guest_memory();
    let rsdp = write(&mem, 2, &DEVICES).unwrap();
    assert_eq!(rsdp, GuestAddress(START));
    assert_eq!(find_rsdp(&mem).0, START);
    let t = parse(&mem);
    assert_eq!(t.fadt.len(), 276, "FADT 6.x length");
    assert_eq!(t.dsdt[8], 2, "DSDT revision 2 (64-bit integers)");
}

#[test]
fn madt_has_one_enabled_lapic_per_vcpu() {
    for vcpus in [1u8, 2, 7, 254] {
        let mem = guest_memory();
        write(&mem, vcpus, &DEVICES).unwrap();
        let madt = parse(&mem).madt;
        assert_eq!(u32_at(&madt, 36), 0xFEE0_0000, "local APIC address");
        assert_eq!(u32_at(&madt, 40), 0, "PCAT_COMPAT clear");

        let entries = madt_entries(&madt);
        let lapics: Vec<(u8, u8, u32)> = entries
            .iter()
            .filter(|(ty, _)| *ty == 0)
            .map(|(_, e)| (e[2], e[3], u32_at(e, 4)))
            .collect();
        let expected: Vec<(u8, u8, u32)> = (0..vcpus).map(|i| (i, i, 1)).collect();
        assert_eq!(
            lapics, expected,
            "(uid, apic id, enabled) for {vcpus} vCPUs"
        );

        let ioapics: Vec<&[u8]> = entries
            .iter()
            .filter(|(ty, _)| *ty == 1)
            .map(|e| e.1)
            .collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(ioapics[0][2], 0, "IOAPIC id");
        assert_eq!(u32_at(ioapics[0], 4), 0xFEC0_0000);
        assert_eq!(u32_at(ioapics[0], 8), 0, "GSI base");

        let isos: Vec<&[u8]> = entries
            .iter()
            .filter(|(ty, _)| *ty == 2)
            .map(|e| e.1)
            .collect();
        assert_eq!(isos.len(), 1);
        assert_eq!((isos[0][2], isos[0][3]), (0, 0), "ISA bus, IRQ 0");
        assert_eq!(u32_at(isos[0], 4), 2, "GSI 2");
        assert_eq!(u16_at(isos[0], 8), 0b0101, "edge, active high");

        let nmis: Vec<&[u8]> = entries
            .iter()
            .filter(|(ty, _)| *ty == 4)
            .map(|e| e.1)
            .collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!((nmis[0][2], nmis[0][5]), (0xFF, 1), "all CPUs, LINT1");
        assert_eq!(entries.len(), usize::from(vcpus) + 3);
    }
}

#[test]
fn fadt_is_hardware_reduced() {
    let mem = guest_memory();
    write(&mem, 2, &DEVICES).unwrap();
    let fadt = parse(&mem).fadt;
    assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT revision 6.5");
    let flags = u32_at(&fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(
        u16_at(&fadt, 109),
        0b10_1100,
        "IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC"
    );
    // Generic address structures: space, bit width, bit offset, access size, address.
    let gas = |off: usize| {
        (
            fadt[off],
            fadt[off + 1],
            fadt[off + 2],
            fadt[off + 3],
            u64_at(&fadt, off + 4),
        )
    };
    assert_eq!(gas(116), (1, 8, 0, 1, u64::from(RESET_PORT)), "RESET_REG");
    assert_eq!(fadt[128], RESET_VALUE);
    assert_eq!(
        gas(244),
        (1, 8, 0, 1, u64::from(SLEEP_CONTROL_PORT)),
        "SLEEP_CONTROL_REG"
    );
    assert_eq!(
        gas(256),
        (1, 8, 0, 1, u64::from(SLEEP_STATUS_PORT)),
        "SLEEP_STATUS_REG"
    );
    assert_eq!(&fadt[268..276], b"WARDVMM ", "hypervisor vendor identity");
}

#[test]
fn dsdt_describes_each_device() {
    let devices: Vec<MmioDevice> = (0..5u32)
        .map(|i| MmioDevice {
            base: 0xD000_0000 + u64::from(i) * 0x1000,
            size: 0x1000,
            irq: 5 + i,
        })
        .collect();
    let mem = guest_memory();
    write(&mem, 3, &devices).unwrap();
    let dsdt = parse(&mem).dsdt;
    assert_eq!(count(&dsdt, b"LNRO0005\0"), devices.len());
    for (i, dev) in devices.iter().enumerate() {
        // Memory32Fixed(ReadWrite, base, size).
        let mut mem32 = vec![0x86, 9, 0, 1];
        mem32.extend_from_slice(&(dev.base as u32).to_le_bytes());
        mem32.extend_from_slice(&(dev.size as u32).to_le_bytes());
        assert_eq!(count(&dsdt, &mem32), 1, "Memory32Fixed of device {i}");
        // Extended interrupt: consumer, edge, active high, exclusive, one IRQ.
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&dev.irq.to_le_bytes());
        assert_eq!(count(&dsdt, &irq), 1, "interrupt of device {i}");
        assert_eq!(count(&dsdt, format!("V{i:03X}").as_bytes()), 1);
    }
    assert_eq!(count(&dsdt, b"ACPI0007\0"), 3);
    assert_eq!(count(&dsdt, b"_S5_"), 1);
    // COM1: IO(Decode16, 0x3F8, 0x3F8, 1, 8) and IRQ 4.
    assert_eq!(count(&dsdt, &[0x47, 1, 0xF8, 3, 0xF8, 3, 1, 8]), 1);
    assert_eq!(count(&dsdt, &[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]), 1);
}

#[test]
fn works_without_devices() {
    let mem = guest_memory();
    write(&mem, 1, &[]).unwrap();
    assert_eq!(count(&parse(&mem).dsdt, b"LNRO0005"), 0);
}

#[test]
fn s5_request_decoding() {
    assert!(is_s5_request((5 << 2) | (1 << 5)));
    assert!(!is_s5_request(5 << 2), "no SLP_EN");
    assert!(!is_s5_request((3 << 2) | (1 << 5)), "S3");
    assert!(!is_s5_request(0x80), "WAK_STS write");
}

#[test]
fn rejects_bad_vcpu_counts() {
    let mem = guest_memory();
    assert!(matches!(write(&mem, 0, &DEVICES), Err(Error::NoVcpus)));
    assert!(matches!(
        write(&mem, 255, &DEVICES),
        Err(Error::TooManyVcpus(255))
    ));
}

#[test]
fn rejects_bad_areas() {
    let mem = guest_memory();
    let cfg = AcpiConfig {
        vcpus: 2,
        virtio_mmio: &DEVICES,
    };
    let err = write_acpi_tables(&mem, GuestAddress(START), 0x100, &cfg).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { max_len: 0x100, .. }),
        "{err}"
    );
    let err = write_acpi_tables(&mem, GuestAddress(START + 8), MAX_LEN, &cfg).unwrap_err();
    assert!(matches!(err, Error::MisalignedStart(_)), "{err}");
    let err = write_acpi_tables(&mem, GuestAddress(u64::MAX - 15), 0x100, &cfg).unwrap_err();
    assert!(matches!(err, Error::AreaWraps { .. }), "{err}");
    // Fits the length check but is not backed by guest memory.
    let err = write_acpi_tables(&mem, GuestAddress(0x20_0000), MAX_LEN, &cfg).unwrap_err();
    assert!(
        matches!(err, Error::WriteTable { table: "RSDP", .. }),
        "{err}"
    );
}

#[test]
fn rejects_bad_windows() {
    let mem = guest_memory();
    let dev = |base: u64, size: u64, irq: u32| MmioDevice { base, size, irq };
    let ok = dev(0xD000_0000, 0x1000, 5);

    type Case<'a> = (&'a [MmioDevice], fn(&Error) -> bool);
    let cases: [Case; 10] = [
        (&[ok, dev(0xD000_0800, 0x1000, 6)], |e| {
            matches!(e, Error::WindowOverlap { index: 1, other: 0 })
        }),
        (&[ok, dev(0xCFFF_F000, 0x2000, 6)], |e| {
            matches!(e, Error::WindowOverlap { index: 1, other: 0 })
        }),
        (&[dev(0xFEC0_0000, 0x1000, 5)], |e| {
            matches!(e, Error::WindowOverlapsApic { what: "IOAPIC", .. })
        }),
        (&[dev(0xFEDF_F000, 0x2000, 5)], |e| {
            matches!(
                e,
                Error::WindowOverlapsApic {
                    what: "local APIC",
                    ..
                }
            )
        }),
        (&[dev(0xD000_0000, 0, 5)], |e| {
            matches!(e, Error::BadWindow { .. })
        }),
        (&[dev(0x1_0000_0000, 0x1000, 5)], |e| {
            matches!(e, Error::BadWindow { .. })
        }),
        (&[dev(0xFFFF_F000, 0x2000, 5)], |e| {
            matches!(e, Error::BadWindow { .. })
        }),
        (&[dev(0xD000_0000, 0x1000, 24)], |e| {
            matches!(e, Error::IrqOutOfRange { irq: 24, .. })
        }),
        (&[dev(0xD000_0000, 0x1000, 4)], |e| {
            matches!(
                e,
                Error::IrqTaken {
                    irq: 4,
                    user: "serial port",
                    ..
                }
            )
        }),
        (&[ok, dev(0xD000_1000, 0x1000, 5)], |e| {
            matches!(
                e,
                Error::IrqShared {
                    index: 1,
                    other: 0,
                    irq: 5
                }
            )
        }),
    ];
    for (devices, expected) in cases {
        let err = write(&mem, 1, devices).unwrap_err();
        assert!(expected(&err), "{devices:x?}: {err:?}");
    }
    // A window ending exactly at 4 GiB is fine.
    write(&mem, 1, &[dev(0xFFFF_F000, 0x1000, 5)]).unwrap();
}

/// Dumps the tables of a 2-vCPU, 2-device VM to `$WARD_ACPI_DUMP` (default
/// `/tmp/ward-acpi`) for `iasl -d`. Run with `--ignored`.
#[test]
#[ignore]
fn dump_tables_for_iasl() {
    let dir = std::env::var("WARD_ACPI_DUMP").unwrap_or_else(|_| "/tmp/ward-acpi".into());
    std::fs::create_dir_all(&dir).unwrap();
    let mem = guest_memory();
    write(&mem, 2, &DEVICES).unwrap();
    let t = parse(&mem);
    let (_, rsdp) = find_rsdp(&mem);
    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    for (name, bytes) in [
        ("rsdp", &rsdp),
        ("xsdt", &xsdt),
        ("facp", &t.fadt),
        ("apic", &t.madt),
        ("dsdt", &t.dsdt),
    ] {
        std::fs::write(format!("{dir}/{name}.dat"), bytes).unwrap();
    }
}
