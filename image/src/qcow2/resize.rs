//! Changing the virtual size of a qcow2 image.
//!
//! Growing keeps the image valid at every step: when the L1 table must grow, the new table is
//! allocated at the end of the file (refcounts first), written and synced before the header
//! points at it, and the old table is freed only after the header update is synced. The area
//! that becomes visible is then made to read as zeros (it could otherwise show the backing
//! file, or the stale tail of a partial cluster) while still beyond the size recorded in the
//! header, and only after that is synced does the header's size change. A crash at any point
//! leaves the old or the new size, at worst with leaked clusters.
//!
//! Shrinking is refused unless no cluster wholly beyond the new size holds data; then the tail
//! of a partial last cluster is zeroed and the size lowered.

use std::os::unix::fs::FileExt;

use super::header::{Header, MAX_HOST_OFFSET, MAX_L1_BYTES};
use super::{Mapping, Qcow2Image, OFFSET_MASK};
use crate::{DiskImage, Error};

/// Header offsets of `size` and of `l1_size` (followed by `l1_table_offset`).
const SIZE_AT: u64 = 24;
const L1_SIZE_AT: u64 = 36;

impl Qcow2Image {
    /// Sets the virtual size to `new_size`; shrinking needs `allow_shrink` and an image with no
    /// data beyond the new size. Consumes the image: its in-memory header would be stale.
    pub fn resize(mut self, new_size: u64, allow_shrink: bool) -> Result<(), Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        self.write_metadata()?;
        if self.header.nb_snapshots > 0 {
            // As qemu: a snapshot's disk size and L1 table would no longer match the image.
            return Err(Error::ResizeWithSnapshots);
        }
        let old_size = self.header.size;
        let cs = self.cluster_size();
        let max = (MAX_L1_BYTES / 8)
            .saturating_mul(self.header.l1_coverage())
            .min(MAX_HOST_OFFSET);
        if new_size > max {
            return Err(Error::VirtualSizeTooLarge {
                size: new_size,
                max,
            });
        }
        if !new_size.is_multiple_of(512) {
            return Err(Error::UnalignedSize(new_size));
        }
        if new_size == old_size {
            return Ok(());
        }
        if new_size < old_size {
            if !allow_shrink {
                return Err(Error::ShrinkNotAllowed);
            }
            self.check_unallocated_beyond(new_size.next_multiple_of(cs))?;
            // Zero the tail of a partial last cluster, so growing again shows zeros.
            let tail_end = new_size.next_multiple_of(cs).min(old_size);
            if tail_end > new_size && self.tail_needs_zeroing(new_size)? {
                self.write_zeroes(new_size, tail_end - new_size)?;
                self.flush()?;
            }
            return self.write_size(new_size);
        }
        let needed = Header::l1_entries_for(new_size, self.header.cluster_bits);
        if needed > u64::from(self.header.l1_size) {
            self.grow_l1(u32::try_from(needed).expect("bounded by MAX_L1_BYTES"))?;
        }
        // The new area reads as zeros before the header exposes it.
        self.header.size = new_size;
        let zero_end = self.exposed_end(old_size, new_size)?;
        if zero_end > old_size {
            self.write_zeroes(old_size, zero_end - old_size)?;
            self.flush()?;
        }
        self.write_size(new_size)
    }

    /// How far past `old_size` the grown area might not read as zeros by itself: the rest of
    /// a partial cluster that holds something, and whatever the backing file covers.
    fn exposed_end(&self, old_size: u64, new_size: u64) -> Result<u64, Error> {
        let cs = self.cluster_size();
        let mut end = old_size;
        if !old_size.is_multiple_of(cs) && self.tail_needs_zeroing(old_size)? {
            end = old_size.next_multiple_of(cs);
        }
        if let Some(b) = &self.backing {
            end = end.max(b.virtual_size());
        }
        Ok(end.min(new_size))
    }

    fn tail_needs_zeroing(&self, pos: u64) -> Result<bool, Error> {
        let mut st = self.lock();
        Ok(match self.lookup(&mut st, pos)?.0 {
            Mapping::Zero => false,
            Mapping::Unallocated => self.backing.is_some(),
            Mapping::Data(_) | Mapping::Compressed(_) => true,
        })
    }

    /// Fails if any guest cluster from `from` (cluster-aligned) on holds data.
    fn check_unallocated_beyond(&self, from: u64) -> Result<(), Error> {
        let h = &self.header;
        let cs = h.cluster_size();
        let mut st = self.lock();
        let mut pos = from;
        while pos < h.size {
            let l1_idx = usize::try_from(pos / h.l1_coverage()).expect("bounded by the L1 size");
            if st.l1.get(l1_idx).is_none_or(|e| e & OFFSET_MASK == 0) {
                pos = (l1_idx as u64 + 1) * h.l1_coverage();
                continue;
            }
            let (m, l2_off, l2_idx) = self.lookup(&mut st, pos)?;
            let e = self.l2_table(&mut st, l2_off)?[l2_idx];
            let holds = match m {
                Mapping::Unallocated => false,
                Mapping::Zero => e & OFFSET_MASK != 0,
                Mapping::Data(_) | Mapping::Compressed(_) => true,
            };
            if holds {
                return Err(Error::ShrinkAllocated { offset: pos });
            }
            pos += cs;
        }
        Ok(())
    }

    /// Moves the L1 table to a new, larger one at the end of the file.
    pub(super) fn grow_l1(&mut self, entries: u32) -> Result<(), Error> {
        let cs = self.cluster_size();
        let cb = self.header.cluster_bits;
        let (old_off, old_size) = (self.header.l1_table_offset, self.header.l1_size);
        let bytes = u64::from(entries) * 8;
        let clusters = bytes.div_ceil(cs);
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        let new_off = rc.alloc_contiguous(&self.file, clusters)?;
        let mut l1 = st.l1.clone();
        l1.resize(entries as usize, 0);
        let mut raw: Vec<u8> = l1.iter().flat_map(|v| v.to_be_bytes()).collect();
        raw.resize(
            usize::try_from(clusters * cs).expect("bounded by MAX_L1_BYTES"),
            0,
        );
        self.file
            .write_all_at(&raw, new_off)
            .map_err(Error::Write)?;
        st.file_len = st.file_len.max(new_off + clusters * cs);
        self.file.sync_data().map_err(Error::Flush)?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&entries.to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        self.file
            .write_all_at(&hdr, L1_SIZE_AT)
            .map_err(Error::Write)?;
        self.file.sync_data().map_err(Error::Flush)?;
        st.l1 = l1;
        self.header.l1_size = entries;
        self.header.l1_table_offset = new_off;
        let old_clusters = (u64::from(old_size) * 8).div_ceil(cs);
        for i in 0..old_clusters {
            rc.decrement(&self.file, (old_off >> cb) + i)?;
        }
        self.file.sync_data().map_err(Error::Flush)
    }

    fn write_size(&self, size: u64) -> Result<(), Error> {
        self.file
            .write_all_at(&size.to_be_bytes(), SIZE_AT)
            .map_err(Error::Write)?;
        self.file.sync_data().map_err(Error::Flush)
    }
}
