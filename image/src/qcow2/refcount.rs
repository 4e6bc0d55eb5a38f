//! qcow2 refcounts (16-bit entries only) and cluster allocation.
//!
//! Clusters are allocated at the end of the file: `end` is the first cluster-aligned offset
//! past everything in use. An allocation records the refcount on disk before the caller writes
//! anything that points at the cluster, so a crash can leak it but never leave it referenced
//! with a zero refcount. A new refcount block is written and synced before the refcount table
//! entry that points at it; a grown refcount table (and the blocks covering it) is written and
//! synced before the header points at it, and only then is the old table freed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{check_region, Header, MAX_HOST_OFFSET, MAX_REFTABLE_BYTES};
use super::{read_u64_table, OFFSET_MASK};
use crate::raw::read_exact_or_zero;
use crate::Error;

/// Refcount blocks kept in memory before the cache is dropped.
const BLOCK_CACHE: usize = 64;

#[derive(Debug)]
pub struct Refcounts {
    cluster_bits: u32,
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u32,
    block_offsets: HashSet<u64>,
    cache: HashMap<u64, Vec<u16>>,
    /// First cluster-aligned offset past everything in use: where the next cluster goes.
    pub end: u64,
    /// Whether new refcount blocks and tables are synced before anything points at them (off
    /// only for an image discarded on failure, see `Qcow2Image::set_ordered_writes`).
    pub ordered: bool,
}

impl Refcounts {
    /// Loads and validates the refcount table of an image opened for writing.
    pub fn load(file: &File, h: &Header, file_len: u64) -> Result<Self, Error> {
        if h.refcount_order != 4 {
            return Err(Error::UnsupportedRefcountOrder(h.refcount_order));
        }
        let cs = h.cluster_size();
        let entries = u64::from(h.refcount_table_clusters) * cs / 8;
        let table = read_u64_table(file, h.refcount_table_offset, entries)?;
        let l1_len = u64::from(h.l1_size) * 8;
        let mut block_offsets = HashSet::new();
        for &e in &table {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            check_region("refcount block", off, cs, cs, file_len)?;
            if off < cs {
                return Err(Error::Overlap {
                    what: "refcount block",
                    offset: off,
                    other: "header",
                });
            }
            if off >= h.l1_table_offset && off - h.l1_table_offset < l1_len {
                return Err(Error::Overlap {
                    what: "refcount block",
                    offset: off,
                    other: "L1 table",
                });
            }
            let rt_len = u64::from(h.refcount_table_clusters) * cs;
            if off >= h.refcount_table_offset && off - h.refcount_table_offset < rt_len {
                return Err(Error::Overlap {
                    what: "refcount block",
                    offset: off,
                    other: "refcount table",
                });
            }
            if !block_offsets.insert(off) {
                return Err(Error::Overlap {
                    what: "refcount block",
                    offset: off,
                    other: "another refcount block",
                });
            }
        }
        let end = file_len
            .div_ceil(cs)
            .checked_mul(cs)
            .ok_or(Error::HostOffsetOverflow)?;
        Ok(Refcounts {
            cluster_bits: h.cluster_bits,
            table,
            table_offset: h.refcount_table_offset,
            table_clusters: h.refcount_table_clusters,
            block_offsets,
            cache: HashMap::new(),
            end,
            ordered: true,
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount entries per block.
    fn epb(&self) -> u64 {
        self.cs() / 2
    }

    /// Whether the cluster at `off` holds the refcount table or a refcount block.
    pub fn is_metadata(&self, off: u64) -> bool {
        let rt_len = u64::from(self.table_clusters) * self.cs();
        (off >= self.table_offset && off - self.table_offset < rt_len)
            || self.block_offsets.contains(&(off & !(self.cs() - 1)))
    }

    /// Whether refcount table index `i` points at a block.
    fn has_block(&self, i: u64) -> bool {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.table.get(i))
            .is_some_and(|&e| e & OFFSET_MASK != 0)
    }

    fn block(&mut self, file: &File, off: u64) -> Result<&mut Vec<u16>, Error> {
        if !self.cache.contains_key(&off) {
            if self.cache.len() >= BLOCK_CACHE {
                self.cache.clear();
            }
            let mut raw = vec![0u8; usize::try_from(self.cs()).expect("cluster fits usize")];
            read_exact_or_zero(file, &mut raw, off)?;
            let blk = raw
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            self.cache.insert(off, blk);
        }
        Ok(self.cache.get_mut(&off).expect("inserted above"))
    }

    /// Every cluster with a non-zero refcount, by index.
    pub fn all(&mut self, file: &File) -> Result<HashMap<u64, u16>, Error> {
        let epb = self.epb();
        let mut out = HashMap::new();
        for ti in 0..self.table.len() {
            let off = self.table[ti] & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let blk = self.block(file, off)?;
            for (i, &v) in blk.iter().enumerate() {
                if v != 0 {
                    out.insert(ti as u64 * epb + i as u64, v);
                }
            }
        }
        Ok(out)
    }

    /// Offsets of the refcount table's clusters and of every refcount block.
    pub fn metadata_clusters(&self) -> Vec<u64> {
        let cs = self.cs();
        let mut v: Vec<u64> = (0..u64::from(self.table_clusters))
            .map(|i| self.table_offset + i * cs)
            .collect();
        v.extend(self.block_offsets.iter().copied());
        v
    }

    /// The refcount of the cluster with index `cluster`.
    pub fn get(&mut self, file: &File, cluster: u64) -> Result<u16, Error> {
        let epb = self.epb();
        let Some(&e) = usize::try_from(cluster / epb)
            .ok()
            .and_then(|i| self.table.get(i))
        else {
            return Ok(0);
        };
        let off = e & OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        let idx = usize::try_from(cluster % epb).expect("below the block size");
        Ok(self.block(file, off)?[idx])
    }

    /// Sets the refcount of the cluster with index `cluster`, creating refcount blocks (and
    /// growing the table) as needed.
    pub fn set(&mut self, file: &File, cluster: u64, value: u16) -> Result<(), Error> {
        self.set_run(file, cluster, 1, value)
    }

    /// Sets the refcounts of `n` clusters from index `first` to `value`, with one write per
    /// refcount block touched.
    pub fn set_run(&mut self, file: &File, first: u64, n: u64, value: u16) -> Result<(), Error> {
        let epb = self.epb();
        let end = first.checked_add(n).ok_or(Error::HostOffsetOverflow)?;
        let mut c = first;
        while c < end {
            let ti = usize::try_from(c / epb).map_err(|_| Error::HostOffsetOverflow)?;
            if ti >= self.table.len() {
                self.grow_table(file, ti)?;
            }
            if self.table[ti] & OFFSET_MASK == 0 {
                self.new_block(file, ti)?;
            }
            let off = self.table[ti] & OFFSET_MASK;
            let idx = c % epb;
            let m = (epb - idx).min(end - c);
            let raw: Vec<u8> = std::iter::repeat_n(
                value.to_be_bytes(),
                usize::try_from(m).expect("below the block size"),
            )
            .flatten()
            .collect();
            file.write_all_at(&raw, off + idx * 2)
                .map_err(Error::Write)?;
            let i = usize::try_from(idx).expect("below the block size");
            let m = usize::try_from(m).expect("below the block size");
            self.block(file, off)?[i..i + m].fill(value);
            c += m as u64;
        }
        Ok(())
    }

    pub fn decrement(&mut self, file: &File, cluster: u64) -> Result<(), Error> {
        let v = self.get(file, cluster)?;
        let v = v
            .checked_sub(1)
            .ok_or(Error::RefcountUnderflow { cluster })?;
        self.set(file, cluster, v)
    }

    /// Reserves `n` clusters at the end of the file without touching refcounts.
    fn take(&mut self, n: u64) -> Result<u64, Error> {
        let off = self.end;
        let end = n
            .checked_mul(self.cs())
            .and_then(|len| off.checked_add(len))
            .filter(|&e| e <= MAX_HOST_OFFSET)
            .ok_or(Error::HostOffsetOverflow)?;
        self.end = end;
        Ok(off)
    }

    /// Allocates one cluster with refcount 1 and returns its offset.
    pub fn alloc(&mut self, file: &File) -> Result<u64, Error> {
        let off = self.take(1)?;
        self.set(file, off >> self.cluster_bits, 1)?;
        Ok(off)
    }

    /// Allocates `n` contiguous clusters with refcount 1 and returns the offset of the first.
    pub fn alloc_contiguous(&mut self, file: &File, n: u64) -> Result<u64, Error> {
        let off = self.take(n)?;
        self.set_run(file, off >> self.cluster_bits, n, 1)?;
        Ok(off)
    }

    fn sync(&self, file: &File) -> Result<(), Error> {
        if self.ordered {
            file.sync_data().map_err(Error::Flush)?;
        }
        Ok(())
    }

    fn write_block(&self, file: &File, off: u64, blk: &[u16]) -> Result<(), Error> {
        let raw: Vec<u8> = blk.iter().flat_map(|v| v.to_be_bytes()).collect();
        file.write_all_at(&raw, off).map_err(Error::Write)
    }

    fn new_block(&mut self, file: &File, ti: usize) -> Result<(), Error> {
        let epb = self.epb();
        let off = self.take(1)?;
        let cluster = off >> self.cluster_bits;
        let mut blk = vec![0u16; usize::try_from(epb).expect("block fits usize")];
        if cluster / epb == ti as u64 {
            blk[usize::try_from(cluster % epb).expect("below the block size")] = 1;
        } else {
            self.set(file, cluster, 1)?;
        }
        self.write_block(file, off, &blk)?;
        self.sync(file)?;
        file.write_all_at(&off.to_be_bytes(), self.table_offset + ti as u64 * 8)
            .map_err(Error::Write)?;
        self.table[ti] = off;
        self.block_offsets.insert(off);
        self.cache.insert(off, blk);
        Ok(())
    }

    /// Moves the refcount table to the end of the file, large enough for index `needed`.
    fn grow_table(&mut self, file: &File, needed: usize) -> Result<(), Error> {
        let cs = self.cs();
        let epb = self.epb();
        let first = self.end >> self.cluster_bits;
        let min_clusters = (needed as u64 + 1).saturating_mul(8).div_ceil(cs);
        let mut clusters = (u64::from(self.table_clusters) * 2).max(min_clusters);
        let (blocks, end_cluster) = loop {
            if clusters.saturating_mul(cs) > MAX_REFTABLE_BYTES {
                return Err(Error::HostOffsetOverflow);
            }
            let entries = clusters * cs / 8;
            // New blocks go right after the new table, for every index in the range the table
            // and blocks occupy that has no block yet.
            let mut extra = 0u64;
            let blocks = loop {
                let last = first + clusters + extra - 1;
                let missing: Vec<u64> = (first / epb..=last / epb)
                    .filter(|&i| !self.has_block(i))
                    .collect();
                if missing.len() as u64 == extra {
                    break missing;
                }
                extra = missing.len() as u64;
            };
            let end_cluster = first + clusters + extra;
            if (end_cluster - 1) / epb < entries && (needed as u64) < entries {
                break (blocks, end_cluster);
            }
            clusters *= 2;
        };
        let table_off = self.take(end_cluster - first)?;
        let entries = usize::try_from(clusters * cs / 8).expect("bounded by MAX_REFTABLE_BYTES");
        let mut table = self.table.clone();
        table.resize(entries, 0);
        let mut new_blocks = Vec::new();
        for (n, &ti) in blocks.iter().enumerate() {
            let off = table_off + (clusters + n as u64) * cs;
            table[usize::try_from(ti).expect("below entries")] = off;
            new_blocks.push((ti, off, vec![0u16; usize::try_from(epb).expect("fits")]));
        }
        // Refcounts of the new table and blocks: in new blocks, or in existing ones.
        for c in first..end_cluster {
            let ti = c / epb;
            let idx = usize::try_from(c % epb).expect("below the block size");
            if let Some((_, _, blk)) = new_blocks.iter_mut().find(|(i, _, _)| *i == ti) {
                blk[idx] = 1;
            } else {
                let off = table[usize::try_from(ti).expect("below entries")] & OFFSET_MASK;
                file.write_all_at(&1u16.to_be_bytes(), off + idx as u64 * 2)
                    .map_err(Error::Write)?;
                self.block(file, off)?[idx] = 1;
            }
        }
        for (_, off, blk) in &new_blocks {
            self.write_block(file, *off, blk)?;
        }
        let raw: Vec<u8> = table.iter().flat_map(|v| v.to_be_bytes()).collect();
        file.write_all_at(&raw, table_off).map_err(Error::Write)?;
        self.sync(file)?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&table_off.to_be_bytes());
        let clusters32 = u32::try_from(clusters).expect("bounded by MAX_REFTABLE_BYTES");
        hdr[8..].copy_from_slice(&clusters32.to_be_bytes());
        file.write_all_at(&hdr, 48).map_err(Error::Write)?;
        self.sync(file)?;
        let (old_off, old_clusters) = (self.table_offset, self.table_clusters);
        self.table = table;
        self.table_offset = table_off;
        self.table_clusters = clusters32;
        for (_, off, blk) in new_blocks {
            self.block_offsets.insert(off);
            self.cache.insert(off, blk);
        }
        for i in 0..u64::from(old_clusters) {
            self.set(file, (old_off >> self.cluster_bits) + i, 0)?;
        }
        Ok(())
    }
}
