//! ACPI tables for a hardware-reduced x86_64 microVM.
//!
//! The guest kernel finds its CPUs, the serial port and the virtio-mmio devices only through
//! these tables, so they are the one description of the platform the guest sees:
//!
//! ```text
//! RSDP (rev 2) ──► XSDT ──┬─► FACP (FADT 6.5, HW_REDUCED_ACPI) ──X_DSDT──► DSDT
//!                         └─► APIC (MADT)
//! ```
//!
//! - FADT: hardware-reduced, so there is no PM1/GPE block, no SCI and no FACS. Reset goes through
//!   the reset register ([`RESET_PORT`]/[`RESET_VALUE`], the i8042 pulse), power-off through the
//!   sleep control register ([`SLEEP_CONTROL_PORT`], see [`is_s5_request`]).
//! - MADT: one enabled local APIC per vCPU (ACPI processor UID = APIC ID = vCPU index), KVM's
//!   IOAPIC, ISA IRQ 0 → GSI 2 (how KVM wires the PIT), LINT1 = NMI. `PCAT_COMPAT` is clear: a
//!   hardware-reduced guest must not use KVM's in-kernel 8259 (Linux installs a null PIC anyway).
//! - DSDT: `\_S5_`, a `PNP0501` COM1, one `ACPI0007` processor device per vCPU and one
//!   `LNRO0005` (virtio-mmio) device per window.
//!
//! All tables are built in host memory, checked to fit, then written to guest memory in one
//! area, RSDP first (16-byte aligned, so the legacy `0xE0000..0x100000` scan finds it too).

use acpi_tables::{
    aml,
    fadt::{FADTBuilder, Flags},
    gas::{AccessSize, AddressSpace, GAS},
    madt::{EnabledStatus, IoApic, ProcessorLocalApic},
    rsdp::Rsdp,
    sdt::Sdt,
    xsdt::XSDT,
    Aml,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

/// Hardware-reduced sleep control and status registers (FADT `SLEEP_CONTROL_REG` and
/// `SLEEP_STATUS_REG`, 8-bit I/O ports). The guest writes `WAK_STS` (bit 7) to the status
/// register before sleeping; it can be ignored.
pub use crate::layout::{SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
/// FADT reset register: an 8-bit write of [`RESET_VALUE`] to the i8042 command port.
pub const RESET_PORT: u16 = 0x64;
/// Value the guest writes to [`RESET_PORT`] to reset (i8042 "pulse reset line").
pub const RESET_VALUE: u8 = 0xFE;
/// `SLP_TYP` of `\_S5_` (soft off) in the DSDT.
pub const S5_SLEEP_TYPE: u8 = 5;
/// `SLP_EN` bit of the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;

const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111 << SLEEP_TYPE_SHIFT;

/// Whether a byte written to [`SLEEP_CONTROL_PORT`] asks to enter S5 (power off).
pub fn is_s5_request(value: u8) -> bool {
    value & SLEEP_ENABLE != 0 && (value & SLEEP_TYPE_MASK) >> SLEEP_TYPE_SHIFT == S5_SLEEP_TYPE
}

// Fixed platform facts (KVM in-kernel irqchip and the legacy serial port the core emulates).
const LAPIC_ADDR: u32 = 0xFEE0_0000;
const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// Size of the LAPIC and IOAPIC MMIO windows that virtio-mmio windows must not overlap.
const APIC_WINDOW_SIZE: u64 = 0x1000;
const IOAPIC_ID: u8 = 0;
const IOAPIC_GSI_BASE: u32 = 0;
use crate::layout::{IOAPIC_PINS, SERIAL_IRQ as COM1_IRQ, SERIAL_PORT as COM1_PORT};
const COM1_PORT_LEN: u8 = 8;
/// KVM routes the PIT (ISA IRQ 0) to IOAPIC pin 2.
const PIT_GSI: u32 = 2;

const OEM_ID: [u8; 6] = *b"WARD  ";
const OEM_TABLE_ID: [u8; 8] = *b"WARDVMM ";
const OEM_REVISION: u32 = 1;
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"WARDVMM ";

/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// MADT revision of ACPI 6.2–6.4 (we only use structures that exist since ACPI 1.0).
const MADT_REVISION: u8 = 5;
/// Size of the MADT header: SDT header, local APIC address, flags.
const MADT_HEADER_LEN: u32 = 44;

// MADT interrupt-controller structure types and MPS INTI flags.
const MADT_INT_SRC_OVERRIDE: u8 = 2;
const MADT_LAPIC_NMI: u8 = 4;
const MPS_INTI_ACTIVE_HIGH: u16 = 0b01;
const MPS_INTI_EDGE: u16 = 0b01 << 2;
/// "All processors" in a local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xFF;

// FADT IAPC_BOOT_ARCH flags (ACPI 6.5, table 5.11). LEGACY_DEVICES and 8042 stay clear: there is
// no PnP BIOS and no i8042 for input (the i8042 ports only take the reset command).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Alignment of each table inside the area (the RSDP needs 16 for the legacy scan).
const TABLE_ALIGN: u64 = 16;

/// One virtio-mmio transport window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Window size in bytes (4 KiB for virtio-mmio).
    pub size: u64,
    /// IOAPIC pin (= GSI), edge-triggered active-high.
    pub irq: u32,
}

/// What the tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; vCPU `i` has APIC ID and ACPI processor UID `i`.
    pub vcpus: u8,
    /// The virtio-mmio devices, in guest enumeration order (`_UID` = index).
    pub virtio_mmio: &'a [MmioDevice],
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("The VM has no vCPU")]
    NoVcpus,
    #[error("Too many vCPUs for xAPIC IDs: {0}")]
    TooManyVcpus(u8),
    #[error("ACPI area start {0:#x} is not 16-byte aligned")]
    MisalignedStart(u64),
    #[error("ACPI area at {start:#x} with length {len:#x} wraps around")]
    AreaWraps { start: u64, len: u64 },
    #[error("ACPI tables need {needed:#x} bytes, the area holds {max_len:#x}")]
    TooLarge { needed: u64, max_len: u64 },
    #[error("Virtio-mmio window {index} ({base:#x}, size {size:#x}) is empty or not below 4 GiB")]
    BadWindow { index: usize, base: u64, size: u64 },
    #[error("Virtio-mmio window {index} overlaps window {other}")]
    WindowOverlap { index: usize, other: usize },
    #[error("Virtio-mmio window {index} overlaps the {what}")]
    WindowOverlapsApic { index: usize, what: &'static str },
    #[error("Virtio-mmio device {index} IRQ {irq} is not an IOAPIC pin")]
    IrqOutOfRange { index: usize, irq: u32 },
    #[error("Virtio-mmio device {index} IRQ {irq} is already used by the {user}")]
    IrqTaken {
        index: usize,
        irq: u32,
        user: &'static str,
    },
    #[error("Virtio-mmio devices {index} and {other} share IRQ {irq}")]
    IrqShared {
        index: usize,
        other: usize,
        irq: u32,
    },
    #[error("Failed to write the {table} table to guest memory")]
    WriteTable {
        table: &'static str,
        #[source]
        source: GuestMemoryError,
    },
}

/// A virtio-mmio device after validation: its window fits a `Memory32Fixed` descriptor.
struct Window {
    base: u32,
    size: u32,
    irq: u32,
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT into guest memory in `[start, start + max_len)` and
/// returns the guest address of the RSDP (which is `start`).
pub fn write_acpi_tables<M: GuestMemory + ?Sized>(
    mem: &M,
    start: GuestAddress,
    max_len: u64,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, Error> {
    if cfg.vcpus == 0 {
        return Err(Error::NoVcpus);
    }
    // APIC ID 0xFF is the xAPIC broadcast ID, so IDs 0..=0xFE are usable.
    if cfg.vcpus == u8::MAX {
        return Err(Error::TooManyVcpus(cfg.vcpus));
    }
    if !start.0.is_multiple_of(TABLE_ALIGN) {
        return Err(Error::MisalignedStart(start.0));
    }
    if start.0.checked_add(max_len).is_none() {
        return Err(Error::AreaWraps {
            start: start.0,
            len: max_len,
        });
    }
    let windows = validate_devices(cfg.virtio_mmio)?;

    // Tables whose content does not depend on where they land.
    let dsdt = build_dsdt(cfg.vcpus, &windows);
    let madt = build_madt(cfg.vcpus);

    // Place them: RSDP, XSDT, FADT, MADT, DSDT, each 16-byte aligned. Sizes are tiny (a few KiB
    // at most), so the sums below cannot overflow; the area check is what can fail.
    let rsdp_off = 0u64;
    let xsdt_len = 36 + 2 * 8;
    let xsdt_off = align(rsdp_off + Rsdp::len() as u64);
    let fadt_off = align(xsdt_off + xsdt_len);
    let madt_off = align(fadt_off + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_off = align(madt_off + madt.len() as u64);
    let end = dsdt_off + dsdt.len() as u64;
    if end > max_len {
        return Err(Error::TooLarge {
            needed: end,
            max_len,
        });
    }
    let at = |off: u64| start.0 + off;

    let fadt = build_fadt(at(dsdt_off));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(at(fadt_off));
    xsdt.add_entry(at(madt_off));
    let xsdt = to_bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, at(xsdt_off)));

    for (table, off, bytes) in [
        ("RSDP", rsdp_off, &rsdp),
        ("XSDT", xsdt_off, &xsdt),
        ("FADT", fadt_off, &fadt),
        ("MADT", madt_off, &madt),
        ("DSDT", dsdt_off, &dsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(at(off)))
            .map_err(|source| Error::WriteTable { table, source })?;
    }
    Ok(start)
}

fn align(off: u64) -> u64 {
    off.next_multiple_of(TABLE_ALIGN)
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Checks every window (non-empty, below 4 GiB, no overlap with another window or the APICs) and
/// IRQ (an IOAPIC pin of its own).
fn validate_devices(devices: &[MmioDevice]) -> Result<Vec<Window>, Error> {
    let apics = [
        (u64::from(IOAPIC_ADDR), "IOAPIC"),
        (u64::from(LAPIC_ADDR), "local APIC"),
    ];
    // KVM's default routing sends GSI 0 to IOAPIC pin 2, shared with the PIT: neither is usable.
    let fixed_irqs = [(COM1_IRQ, "serial port"), (PIT_GSI, "PIT"), (0, "PIT")];
    let overlaps = |a: u64, a_len: u64, b: u64, b_len: u64| a < b + b_len && b < a + a_len;

    let mut windows = Vec::with_capacity(devices.len());
    for (index, dev) in devices.iter().enumerate() {
        let bad = Error::BadWindow {
            index,
            base: dev.base,
            size: dev.size,
        };
        let (Ok(base), Ok(size)) = (u32::try_from(dev.base), u32::try_from(dev.size)) else {
            return Err(bad);
        };
        if size == 0 || base.checked_add(size - 1).is_none() {
            return Err(bad);
        }
        // From here on base + size <= 4 GiB, so the u64 sums below cannot overflow.
        for (addr, what) in apics {
            if overlaps(dev.base, dev.size, addr, APIC_WINDOW_SIZE) {
                return Err(Error::WindowOverlapsApic { index, what });
            }
        }
        if dev.irq >= IOAPIC_GSI_BASE + IOAPIC_PINS {
            return Err(Error::IrqOutOfRange {
                index,
                irq: dev.irq,
            });
        }
        if let Some(&(_, user)) = fixed_irqs.iter().find(|(irq, _)| *irq == dev.irq) {
            return Err(Error::IrqTaken {
                index,
                irq: dev.irq,
                user,
            });
        }
        for (other, prev) in devices[..index].iter().enumerate() {
            if overlaps(dev.base, dev.size, prev.base, prev.size) {
                return Err(Error::WindowOverlap { index, other });
            }
            if dev.irq == prev.irq {
                return Err(Error::IrqShared {
                    index,
                    other,
                    irq: dev.irq,
                });
            }
        }
        windows.push(Window {
            base,
            size,
            irq: dev.irq,
        });
    }
    Ok(windows)
}

fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let io_byte_reg = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button: don't let the guest create LNXPWRBN/LNXSLPBN.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.iapc_boot_arch =
        (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_byte_reg(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_byte_reg(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte_reg(SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    to_bytes(&fadt.finalize())
}

fn build_madt(vcpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, LAPIC_ADDR);
    madt.write_u32(40, 0); // Flags: PCAT_COMPAT clear.
    for id in 0..vcpus {
        madt.append_slice(&to_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&to_bytes(&IoApic::new(
        IOAPIC_ID,
        IOAPIC_ADDR,
        IOAPIC_GSI_BASE,
    )));

    // Interrupt Source Override: ISA bus 0, IRQ 0 → GSI 2, edge, active high.
    let mut iso = vec![MADT_INT_SRC_OVERRIDE, 10, 0, 0];
    iso.extend_from_slice(&PIT_GSI.to_le_bytes());
    iso.extend_from_slice(&(MPS_INTI_ACTIVE_HIGH | MPS_INTI_EDGE).to_le_bytes());
    madt.append_slice(&iso);

    // Local APIC NMI: all processors, LINT1, edge, active high.
    let mut nmi = vec![MADT_LAPIC_NMI, 6, ALL_PROCESSORS];
    nmi.extend_from_slice(&(MPS_INTI_ACTIVE_HIGH | MPS_INTI_EDGE).to_le_bytes());
    nmi.push(1);
    madt.append_slice(&nmi);

    madt.as_slice().to_vec()
}

fn build_dsdt(vcpus: u8, windows: &[Window]) -> Vec<u8> {
    let mut body = Vec::new();

    // \_S5_: SLP_TYPa = S5_SLEEP_TYPE (the only one used on hardware-reduced platforms).
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);

    let mut devices: Vec<Vec<u8>> = Vec::new();

    for id in 0..vcpus {
        let uid = u32::from(id);
        devices.push(to_bytes(&aml::Device::new(
            // At most 0xFE vCPUs, so three hex digits always fit the 4-character name.
            format!("C{id:03X}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"ACPI0007"),
                &aml::Name::new("_UID".into(), &uid),
            ],
        )));
    }

    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_LEN);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    devices.push(to_bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
            ),
        ],
    )));

    for (index, w) in windows.iter().enumerate() {
        // IRQs are distinct IOAPIC pins, so there are at most 24 windows and the name fits.
        let uid = u32::try_from(index).expect("at most 24 devices");
        let mem = aml::Memory32Fixed::new(true, w.base, w.size);
        let irq = aml::Interrupt::new(true, true, false, false, w.irq);
        devices.push(to_bytes(&aml::Device::new(
            format!("V{index:03X}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem, &irq])),
            ],
        )));
    }

    body.extend(aml::Scope::raw("\\_SB_".into(), devices.concat()));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
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

    fn write(
        mem: &GuestMemoryMmap,
        vcpus: u8,
        devices: &[MmioDevice],
    ) -> Result<GuestAddress, Error> {
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
}
