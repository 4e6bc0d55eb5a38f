//! Guest RAM: one memfd, mapped into the core and shared with workers through vhost-user's
//! SET_MEM_TABLE (the only way a worker ever sees it).

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Memory size {0} MiB is outside {min}..={max} MiB", min = layout::MIN_MEMORY_MIB, max = layout::MAX_MEMORY_MIB)]
    Size(u64),
    #[error("Cannot create the guest memory memfd")]
    Memfd(#[source] nix::Error),
    #[error("Cannot size the guest memory memfd")]
    Truncate(#[source] std::io::Error),
    #[error("Cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Guest RAM and the memfd behind it.
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    pub file: File,
    pub size: u64,
}

impl GuestRam {
    pub fn new(memory_mib: u64) -> Result<Self, Error> {
        if !(layout::MIN_MEMORY_MIB..=layout::MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(Error::Size(memory_mib));
        }
        let size = memory_mib << 20;
        let fd =
            memfd_create(c"ward-guest-ram", MemFdCreateFlag::MFD_CLOEXEC).map_err(Error::Memfd)?;
        let file = File::from(fd);
        file.set_len(size).map_err(Error::Truncate)?;
        let mut offset = 0;
        let mut ranges = Vec::new();
        for (gpa, len) in layout::ram_ranges(size) {
            let fo = FileOffset::new(file.try_clone().map_err(Error::Truncate)?, offset);
            ranges.push((GuestAddress(gpa), len as usize, Some(fo)));
            offset += len;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(Error::Map)?;
        Ok(GuestRam { mem, file, size })
    }

    /// Each region as vhost-user's SET_MEM_TABLE describes it: guest address, size, our
    /// mapping, and the memfd with the region's offset in it.
    pub fn vhost_regions(&self) -> Vec<vhost::VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|r| vhost::VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: r.file_offset().map(|f| f.start()).unwrap_or(0),
                mmap_handle: self.file.as_raw_fd(),
            })
            .collect()
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
