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
#[path = "acpi_tests.rs"]
mod tests;
