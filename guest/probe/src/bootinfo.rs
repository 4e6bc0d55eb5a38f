//! The PVH `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).
//!
//! On entry %ebx holds its physical address. Layout (all little endian):
//!
//! | off | field                          |
//! |-----|--------------------------------|
//! | 0   | u32 magic = 0x336ec578         |
//! | 4   | u32 version (0 or 1)           |
//! | 8   | u32 flags                      |
//! | 12  | u32 nr_modules                 |
//! | 16  | u64 modlist_paddr              |
//! | 24  | u64 cmdline_paddr (NUL-term.)  |
//! | 32  | u64 rsdp_paddr                 |
//! | 40  | u64 memmap_paddr   (version≥1) |
//! | 48  | u32 memmap_entries (version≥1) |
//!
//! A memmap entry (`struct hvm_memmap_table_entry`) is 24 bytes: u64 addr,
//! u64 size, u32 type (1 = RAM, E820 numbering), u32 reserved.
//!
//! Everything is copied into our own statics at boot, so later scenarios (e.g.
//! the SMP trampoline written to low memory) cannot clobber it.

use crate::cpu::phys_mapped;
use crate::sync::RacyCell;

pub const START_INFO_MAGIC: u32 = 0x336e_c578;
pub const MEMMAP_RAM: u32 = 1;
pub const MAX_MEMMAP: usize = 64;
const CMDLINE_MAX: usize = 4096;

#[derive(Clone, Copy)]
pub struct MemRange {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    pub start_info: u64,
    pub magic_ok: bool,
    pub version: u32,
    pub cmdline: &'static [u8],
    pub rsdp: u64,
    pub memmap: [MemRange; MAX_MEMMAP],
    pub memmap_len: usize,
}

static CMDLINE: RacyCell<[u8; CMDLINE_MAX]> = RacyCell::new([0; CMDLINE_MAX]);

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: callers check with `phys_mapped` that addr lies below 4 GiB; the VMM
    // put start_info and its tables into guest RAM there. Unaligned reads are fine.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

impl BootInfo {
    pub const fn empty() -> Self {
        Self {
            start_info: 0,
            magic_ok: false,
            version: 0,
            cmdline: &[],
            rsdp: 0,
            memmap: [MemRange {
                addr: 0,
                size: 0,
                kind: 0,
            }; MAX_MEMMAP],
            memmap_len: 0,
        }
    }

    /// Parses start_info at `si`. Must run once, on the boot CPU, before any
    /// other CPU runs (it fills the static command line buffer).
    pub fn parse(si: u64) -> Self {
        let mut bi = Self::empty();
        bi.start_info = si;
        if si == 0 || !phys_mapped(si, 56) {
            return bi;
        }
        bi.magic_ok = read::<u32>(si) == START_INFO_MAGIC;
        if !bi.magic_ok {
            return bi;
        }
        bi.version = read::<u32>(si + 4);
        bi.rsdp = read::<u64>(si + 32);
        bi.cmdline = copy_cmdline(read::<u64>(si + 24));
        if bi.version >= 1 {
            let table = read::<u64>(si + 40);
            let entries = read::<u32>(si + 48) as usize;
            let n = entries.min(MAX_MEMMAP);
            if table != 0 && phys_mapped(table, (n * 24) as u64) {
                for i in 0..n {
                    let e = table + (i * 24) as u64;
                    bi.memmap[i] = MemRange {
                        addr: read(e),
                        size: read(e + 8),
                        kind: read(e + 16),
                    };
                }
                bi.memmap_len = n;
            }
        }
        bi
    }

    pub fn ram(&self) -> impl Iterator<Item = &MemRange> {
        self.memmap[..self.memmap_len]
            .iter()
            .filter(|r| r.kind == MEMMAP_RAM)
    }

    /// Total usable RAM in bytes (sum of the type-1 ranges).
    pub fn usable_ram(&self) -> u64 {
        self.ram().fold(0u64, |acc, r| acc.saturating_add(r.size))
    }

    /// One past the highest RAM byte.
    pub fn ram_end(&self) -> u64 {
        self.ram()
            .map(|r| r.addr.saturating_add(r.size))
            .max()
            .unwrap_or(0)
    }

    /// The lowest RAM address.
    pub fn ram_start(&self) -> u64 {
        self.ram().map(|r| r.addr).min().unwrap_or(0)
    }

    /// Whether `[addr, addr+len)` lies entirely in one RAM range.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        self.ram()
            .any(|r| addr >= r.addr && addr.saturating_add(len) <= r.addr.saturating_add(r.size))
    }
}

fn copy_cmdline(paddr: u64) -> &'static [u8] {
    if paddr == 0 {
        return &[];
    }
    // SAFETY: boot CPU only, before anything else reads CMDLINE; afterwards the
    // buffer is only ever read through the returned shared slice.
    let buf = unsafe { &mut *CMDLINE.get() };
    let mut n = 0;
    while n < CMDLINE_MAX - 1 && phys_mapped(paddr + n as u64, 1) {
        let c = read::<u8>(paddr + n as u64);
        if c == 0 {
            break;
        }
        buf[n] = c;
        n += 1;
    }
    &buf[..n]
}
