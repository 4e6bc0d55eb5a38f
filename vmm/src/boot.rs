//! Loading the guest: kernel (bzImage, ELF with or without a PVH note), initrd and command line,
//! and the boot information the kernel reads (Linux zero page with its e820 map, or the PVH
//! start_info with its memory map).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader, KernelLoaderResult};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::layout;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `boot_params.hdr.type_of_loader`: "other / undefined".
const LOADER_OTHER: u8 = 0xff;
const KERNEL_BOOT_FLAG: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// `loadflags`: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    #[error("Kernel is neither an ELF image nor a bzImage")]
    UnknownFormat,
    #[error("Cannot load the ELF kernel")]
    Elf(#[source] linux_loader::loader::Error),
    #[error("Cannot load the bzImage kernel")]
    BzImage(#[source] linux_loader::loader::Error),
    #[error("Cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
    #[error("Initrd of {0} bytes does not fit in guest memory below the kernel's limit")]
    InitrdTooLarge(u64),
    #[error("Cannot write the initrd into guest memory")]
    WriteInitrd(#[source] vm_memory::GuestMemoryError),
    #[error("Invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("Cannot write the kernel command line")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("Cannot write the boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
    #[error("Memory map has more entries than the zero page holds")]
    TooManyE820,
    #[error("Cannot write boot page tables or GDT")]
    WriteBootData(#[source] vm_memory::GuestMemoryError),
}

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit Linux boot protocol: long mode, `rsi` = zero page.
    Linux64 { rip: u64 },
    /// PVH: 32-bit protected mode, paging off, `ebx` = hvm_start_info.
    Pvh { rip: u64 },
}

/// What the guest gets besides its kernel.
pub struct BootInputs<'a> {
    pub kernel: &'a mut File,
    pub initrd: Option<&'a mut File>,
    pub cmdline: &'a str,
    pub rsdp: Option<GuestAddress>,
}

/// Loads kernel, initrd and command line and writes the boot information.
pub fn load(mem: &GuestMemoryMmap, input: BootInputs<'_>) -> Result<Entry, Error> {
    let mut magic = [0u8; 4];
    input
        .kernel
        .seek(SeekFrom::Start(0))
        .map_err(Error::ReadKernel)?;
    input
        .kernel
        .read_exact(&mut magic)
        .map_err(Error::ReadKernel)?;
    input
        .kernel
        .seek(SeekFrom::Start(0))
        .map_err(Error::ReadKernel)?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let (loaded, pvh) = if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, input.kernel, himem).map_err(Error::Elf)?;
        let pvh = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
            _ => None,
        };
        (r, pvh)
    } else {
        let r = BzImage::load(mem, None, input.kernel, himem).map_err(|e| match e {
            linux_loader::loader::Error::Bzimage(_) => Error::BzImage(e),
            _ => Error::UnknownFormat,
        })?;
        (r, None)
    };

    let cmdline = build_cmdline(input.cmdline)?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE), &cmdline).map_err(Error::WriteCmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(Error::Cmdline)?
        .as_bytes_with_nul()
        .len();

    let initrd_max = loaded
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(layout::MMIO_HOLE_START - 1);
    let initrd = match input.initrd {
        Some(f) => Some(load_initrd(mem, f, initrd_max)?),
        None => None,
    };

    match pvh {
        Some(rip) => {
            write_pvh_info(mem, initrd, input.rsdp)?;
            Ok(Entry::Pvh { rip })
        }
        None => {
            write_zero_page(mem, &loaded, initrd, cmdline_len, input.rsdp)?;
            write_boot_page_tables(mem)?;
            // bzImage: the 64-bit entry point sits 0x200 past the protected-mode kernel.
            // ELF vmlinux: the ELF entry point (linux-loader stores it in kernel_load).
            let rip = if loaded.setup_header.is_some() {
                loaded.kernel_load.0 + 0x200
            } else {
                loaded.kernel_load.0
            };
            Ok(Entry::Linux64 { rip })
        }
    }
}

fn build_cmdline(text: &str) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX).map_err(Error::Cmdline)?;
    cmdline.insert_str(text.trim()).map_err(Error::Cmdline)?;
    Ok(cmdline)
}

/// Places the initrd page-aligned at the top of the low RAM the kernel can address.
fn load_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    addr_max: u64,
) -> Result<(GuestAddress, u64), Error> {
    let size = file.seek(SeekFrom::End(0)).map_err(Error::ReadInitrd)?;
    file.seek(SeekFrom::Start(0)).map_err(Error::ReadInitrd)?;
    let low_end = mem
        .iter()
        .map(|r| r.last_addr().0)
        .filter(|&end| end < layout::MMIO_HOLE_START)
        .max()
        .unwrap_or(0);
    let top = low_end.min(addr_max);
    let start = top
        .checked_sub(size)
        .map(|s| s & !0xfff)
        .filter(|&s| s >= layout::HIMEM_START)
        .ok_or(Error::InitrdTooLarge(size))?;
    let len = usize::try_from(size).map_err(|_| Error::InitrdTooLarge(size))?;
    mem.read_exact_volatile_from(GuestAddress(start), file, len)
        .map_err(Error::WriteInitrd)?;
    Ok((GuestAddress(start), size))
}

/// The guest's RAM as (start, length, type), reserved areas included.
fn memory_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, layout::EBDA_START, E820_RAM)];
    // The EBDA and BIOS area: present in memory but not usable RAM (ACPI tables live here).
    map.push((
        layout::EBDA_START,
        layout::HIMEM_START - layout::EBDA_START,
        E820_RESERVED,
    ));
    for r in mem.iter() {
        let start = r.start_addr().0.max(layout::HIMEM_START);
        let end = r.last_addr().0 + 1;
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    loaded: &KernelLoaderResult,
    initrd: Option<(GuestAddress, u64)>,
    cmdline_len: usize,
    rsdp: Option<GuestAddress>,
) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = 0x100_0000;
    }
    if let Some((addr, size)) = initrd {
        // Both below 4 GiB by construction (placed under the MMIO hole).
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }
    let map = memory_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(Error::TooManyE820);
    }
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    let bp = BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(Error::BootParams)
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
) -> Result<(), Error> {
    let map: Vec<hvm_memmap_table_entry> = memory_map(mem)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut modules = Vec::new();
    if let Some((addr, size)) = initrd {
        modules.push(linux_loader::loader::elf::start_info::hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        });
    }
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let memmap_addr = GuestAddress(layout::PVH_INFO + info_size);
    let modlist_addr = memmap_addr
        .unchecked_add((map.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64);
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        memmap_paddr: memmap_addr.0,
        memmap_entries: map.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            modlist_addr.0
        },
        rsdp_paddr: rsdp.map(|a| a.0).unwrap_or(0),
        ..Default::default()
    };
    let mut bp = BootParams::new::<hvm_start_info>(&info, GuestAddress(layout::PVH_INFO));
    bp.set_sections::<hvm_memmap_table_entry>(&map, memmap_addr);
    if !modules.is_empty() {
        bp.set_modules(&modules, modlist_addr);
    }
    PvhBootConfigurator::write_bootparams(&bp, mem).map_err(Error::BootParams)
}

/// Identity-maps the first 1 GiB with 2 MiB pages for the 64-bit Linux entry, and writes the
/// boot GDT.
fn write_boot_page_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    mem.write_obj(layout::PDPT | 0x03, GuestAddress(layout::PML4))
        .map_err(Error::WriteBootData)?;
    mem.write_obj(layout::PD | 0x03, GuestAddress(layout::PDPT))
        .map_err(Error::WriteBootData)?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PD + i * 8))
            .map_err(Error::WriteBootData)?;
    }
    Ok(())
}

/// Writes the GDT the boot vCPU's segments are loaded from.
pub fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), Error> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT + i as u64 * 8))
            .map_err(Error::WriteBootData)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_reserves_the_bios_area_and_skips_the_hole() {
        let ram = crate::memory::GuestRam::new(4096).unwrap();
        let map = memory_map(&ram.mem);
        assert_eq!(map[0], (0, layout::EBDA_START, E820_RAM));
        assert_eq!(map[1].2, E820_RESERVED);
        assert_eq!(
            map[2],
            (
                layout::HIMEM_START,
                layout::MMIO_HOLE_START - layout::HIMEM_START,
                E820_RAM
            )
        );
        assert_eq!(map[3], (layout::MMIO_HOLE_END, 1 << 30, E820_RAM));
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let ram = crate::memory::GuestRam::new(64).unwrap();
        let mut f = tempfile(b"this is not a kernel at all, not even close................");
        let err = load(
            &ram.mem,
            BootInputs {
                kernel: &mut f,
                initrd: None,
                cmdline: "console=ttyS0",
                rsdp: None,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::UnknownFormat | Error::BzImage(_)),
            "{err:?}"
        );
        let mut f = tempfile(b"\x7fELFgarbage");
        let err = load(
            &ram.mem,
            BootInputs {
                kernel: &mut f,
                initrd: None,
                cmdline: "",
                rsdp: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::Elf(_)), "{err:?}");
    }

    fn tempfile(data: &[u8]) -> File {
        use std::io::Write;
        let fd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
        let mut f = File::from(fd);
        f.write_all(data).unwrap();
        f
    }
}
