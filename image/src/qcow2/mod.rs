//! qcow2 images: version 3 read and write, version 2 read (and write, without zero clusters).
//!
//! # Write ordering (crash consistency)
//!
//! Refcounts are kept consistent at all times (no lazy refcounts, so the dirty bit stays
//! clear). Table updates are written back, like a disk's write cache that FLUSH empties:
//!
//! 1. a write that needs new clusters allocates them at the end of the file, recording
//!    refcount 1 first (new refcount blocks and a grown refcount table are written and synced
//!    before anything points at them, see the `refcount` module), then writes the data (whole
//!    clusters; over zeros, only the new bytes into a never-written cluster; otherwise a
//!    copy-on-write of the old contents or the backing file);
//! 2. its L2/L1 updates wait in memory (tables with waiting updates are never evicted), and
//!    reads see them;
//! 3. at [`DiskImage::flush`] (or when many updates wait, or on drop): `fdatasync`, so data and
//!    refcounts are durable before anything points at them;
//! 4. new L2 tables are written in full, entries of existing tables (neighbours in one
//!    write), then the L1 entries of new tables;
//! 5. only if clusters were replaced (compressed, zero-flagged or shared ones): `fdatasync`,
//!    then their refcounts are dropped; a flush ends with a final `fdatasync`.
//!
//! [`DiskImage::write_zeroes`] turns whole clusters into zero clusters (version 3) the same
//! way. A crash anywhere leaves at worst leaked clusters (refcount without a reference) and
//! loses only writes not yet flushed, never a reference to unwritten data or to a cluster whose
//! refcount is zero. Operations that read or rewrite tables on the disk (check, repair,
//! snapshots, resize) write waiting updates out first.
//!
//! Clusters shared with an internal snapshot (refcount above 1, no COPIED flag) are copied
//! before being written, L2 tables included (see `snapshot_ops`). Images with the corrupt bit,
//! or refcounts other than 16 bits, open read-only only; an image left dirty by another
//! writer's lazy refcounts has its refcounts rebuilt when opened for writing (see `repair`).
//! An error in the middle of a write poisons the image: later writes are refused rather than
//! risk writing through inconsistent in-memory tables.

mod check;
mod compressed;
pub mod create;
pub mod header;
mod refcount;
mod repair;
mod resize;
mod snapshot;
mod snapshot_ops;
mod write;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};

pub use check::{CheckReport, MapExtent, MapKind};
pub use create::{create_qcow2, Qcow2CreateOptions};
use header::{check_region, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use refcount::Refcounts;
pub use repair::Repair;
pub use snapshot::Snapshot;

use crate::raw::read_exact_or_zero;
use crate::{check_range, open_at_depth, DiskImage, Error, Format, Resolver, MAX_CHAIN_DEPTH};

/// Host offset bits of L1, L2 and refcount table entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
pub(super) const L2_CACHE: usize = 64;

/// Reads a big-endian table of `entries` u64 at `offset` (the caller bounded `entries`).
pub(crate) fn read_u64_table(file: &File, offset: u64, entries: u64) -> Result<Vec<u64>, Error> {
    let len = usize::try_from(entries * 8).map_err(|_| Error::HostOffsetOverflow)?;
    let mut raw = vec![0u8; len];
    read_exact_or_zero(file, &mut raw, offset)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8-byte chunk")))
        .collect())
}

/// What a guest cluster maps to.
#[derive(Debug, Clone, Copy)]
enum Mapping {
    Unallocated,
    Zero,
    Data(u64),
    Compressed(u64),
}

#[derive(Debug)]
struct State {
    l1: Vec<u64>,
    l2_offsets: HashSet<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
    /// Present when the image is writable.
    refcounts: Option<Refcounts>,
    file_len: u64,
    poisoned: bool,
    /// Table updates waiting for the next flush (see the module documentation).
    pending: write::Pending,
}

/// A qcow2 image, shareable between threads.
pub struct Qcow2Image {
    file: File,
    header: Header,
    readonly: bool,
    backing: Option<Box<dyn DiskImage>>,
    state: Mutex<State>,
    /// Whether allocating writes keep the crash-safe order with its syncs (see the module
    /// documentation). Off only for a new image nobody else uses yet, like `convert`'s output.
    ordered: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("header", &self.header)
            .field("readonly", &self.readonly)
            .field("has_backing", &self.backing.is_some())
            .finish_non_exhaustive()
    }
}

impl Qcow2Image {
    /// Opens a qcow2 image; its backing chain is opened read-only through `resolver`.
    pub fn open(file: File, readonly: bool, resolver: &mut Resolver<'_>) -> Result<Self, Error> {
        Self::open_at_depth(file, readonly, resolver, 0)
    }

    pub(crate) fn open_at_depth(
        file: File,
        readonly: bool,
        resolver: &mut Resolver<'_>,
        depth: u32,
    ) -> Result<Self, Error> {
        Self::open_inner(file, readonly, resolver, depth, false)
    }

    /// Opens an image for writing in order to repair it (`check -r`): L1 entries pointing at
    /// nothing valid are tolerated until the repair has dropped them. Returns the image,
    /// usable as any other if the repair left its tables valid, and the repair's report.
    pub fn open_for_repair(
        file: File,
        mode: Repair,
        resolver: &mut Resolver<'_>,
    ) -> Result<(Self, CheckReport), Error> {
        let img = Self::open_inner(file, false, resolver, 0, true)?;
        let report = img.repair(mode)?;
        Ok((img, report))
    }

    fn open_inner(
        file: File,
        readonly: bool,
        resolver: &mut Resolver<'_>,
        depth: u32,
        lenient: bool,
    ) -> Result<Self, Error> {
        let file_len = file.metadata().map_err(Error::FileSize)?.len();
        let mut buf = vec![
            0u8;
            usize::try_from(file_len.min(1 << header::MAX_CLUSTER_BITS))
                .expect("at most 2 MiB")
        ];
        read_exact_or_zero(&file, &mut buf, 0)?;
        let header = Header::parse(&buf, file_len)?;
        if !readonly && header.incompatible_features & INCOMPAT_CORRUPT != 0 {
            return Err(Error::MarkedCorrupt);
        }
        let l1 = read_u64_table(&file, header.l1_table_offset, u64::from(header.l1_size))?;
        let (l2_offsets, refcounts) = if readonly {
            (l2_offsets_of(&header, &l1, file_len, lenient)?, None)
        } else {
            let rc = Refcounts::load(&file, &header, file_len)?;
            let l2 = l2_offsets_of(&header, &l1, file_len, lenient)?;
            check_l2_clear_of_refcounts(&l2, &rc, lenient)?;
            (l2, Some(rc))
        };
        if !readonly && header.version == 3 && header.autoclear_features != 0 {
            // Features we don't maintain (bitmaps, raw external data) become invalid.
            file.write_all_at(&0u64.to_be_bytes(), 88)
                .map_err(Error::Write)?;
            file.sync_data().map_err(Error::Flush)?;
        }
        let backing = match &header.backing_file {
            None => None,
            Some(name) => Some(open_backing(&header, name, resolver, depth)?),
        };
        let dirty = !readonly && header.incompatible_features & INCOMPAT_DIRTY != 0;
        let mut img = Qcow2Image {
            file,
            header,
            readonly,
            backing,
            state: Mutex::new(State {
                l1,
                l2_offsets,
                l2_cache: HashMap::new(),
                refcounts,
                file_len,
                poisoned: false,
                pending: write::Pending::default(),
            }),
            ordered: std::sync::atomic::AtomicBool::new(true),
        };
        if dirty {
            img.repair_dirty()?;
        }
        Ok(img)
    }

    /// Drops (`false`) or restores (`true`) the syncs that order allocating writes. Without
    /// them a crash can leave the image inconsistent, so this is only for an image that is
    /// discarded on failure, such as a conversion's output before it is renamed into place:
    /// call [`DiskImage::flush`] when done.
    pub fn set_ordered_writes(&self, ordered: bool) {
        let mut st = self.lock();
        if let Some(rc) = st.refcounts.as_mut() {
            rc.ordered = ordered;
        }
        self.ordered
            .store(ordered, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn ordered_writes(&self) -> bool {
        self.ordered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether the image carries the dirty bit (lazy refcounts not yet written back); such an
    /// image opens read-only only.
    pub fn is_dirty(&self) -> bool {
        self.header.incompatible_features & INCOMPAT_DIRTY != 0
    }

    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// Locks the metadata state. The L2 cache is trimmed here, between requests only, and
    /// never of tables whose updates wait for the next flush.
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.l2_cache.len() >= L2_CACHE {
            if st.pending.is_empty() {
                st.l2_cache.clear();
            } else {
                let State {
                    l2_cache, pending, ..
                } = &mut *st;
                let dirty = pending.dirty_tables();
                l2_cache.retain(|off, _| dirty.contains(off));
            }
        }
        st
    }

    /// Writes out the table updates waiting for the next flush (in the crash-safe order, see
    /// the module documentation) without the final sync: for operations that read the tables
    /// from the disk or rewrite them, and for a caller that wants a failure reported rather
    /// than left to drop, like `convert` writing a new image.
    pub fn write_metadata(&self) -> Result<(), Error> {
        if self.readonly {
            return Ok(());
        }
        let mut st = self.lock();
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        let r = self.flush_metadata(&mut st);
        self.poison_on_error(&mut st, r)
    }

    fn l2_table<'a>(&self, st: &'a mut State, off: u64) -> Result<&'a mut Vec<u64>, Error> {
        match st.l2_cache.entry(off) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(v) => {
                let t = read_u64_table(&self.file, off, self.header.l2_entries())?;
                Ok(v.insert(t))
            }
        }
    }

    /// Where the guest cluster holding `pos` lives, plus its L2 table offset and index.
    fn lookup(&self, st: &mut State, pos: u64) -> Result<(Mapping, u64, usize), Error> {
        let h = &self.header;
        let l1_idx = pos / h.l1_coverage();
        let l2_idx =
            usize::try_from((pos >> h.cluster_bits) % h.l2_entries()).expect("below the L2 size");
        let Some(&l1e) = usize::try_from(l1_idx).ok().and_then(|i| st.l1.get(i)) else {
            return Ok((Mapping::Unallocated, 0, l2_idx));
        };
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            return Ok((Mapping::Unallocated, 0, l2_idx));
        }
        let e = self.l2_table(st, l2_off)?[l2_idx];
        Ok((self.classify(e, st.file_len)?, l2_off, l2_idx))
    }

    fn classify(&self, e: u64, file_len: u64) -> Result<Mapping, Error> {
        if e & COMPRESSED != 0 {
            return Ok(Mapping::Compressed(e));
        }
        if self.header.version >= 3 && e & ZERO != 0 {
            return Ok(Mapping::Zero);
        }
        let host = e & OFFSET_MASK;
        if host == 0 {
            return Ok(Mapping::Unallocated);
        }
        let cs = self.cluster_size();
        check_region("data cluster", host, cs, cs, file_len.div_ceil(cs) * cs)?;
        Ok(Mapping::Data(host))
    }

    /// Fills `buf` (inside one guest cluster, starting at `pos`) according to `m`.
    fn read_mapped(&self, m: Mapping, buf: &mut [u8], pos: u64) -> Result<(), Error> {
        let cs = self.cluster_size();
        let in_cluster = pos % cs;
        match m {
            Mapping::Zero => buf.fill(0),
            Mapping::Data(host) => read_exact_or_zero(&self.file, buf, host + in_cluster)?,
            Mapping::Unallocated => self.read_backing(buf, pos)?,
            Mapping::Compressed(e) => {
                let ext = compressed::decode(e, self.header.cluster_bits);
                let mut input = vec![0u8; usize::try_from(ext.len).expect("at most 4 MiB")];
                read_exact_or_zero(&self.file, &mut input, ext.offset)?;
                let mut out = vec![0u8; usize::try_from(cs).expect("cluster fits usize")];
                compressed::inflate(&input, &mut out, ext.offset)?;
                let start = usize::try_from(in_cluster).expect("below the cluster size");
                buf.copy_from_slice(&out[start..start + buf.len()]);
            }
        }
        Ok(())
    }

    fn read_backing(&self, buf: &mut [u8], pos: u64) -> Result<(), Error> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.virtual_size();
        let avail = usize::try_from(bsize.saturating_sub(pos).min(buf.len() as u64))
            .expect("bounded by the buffer length");
        if avail > 0 {
            b.read_at(&mut buf[..avail], pos)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }
}

impl Qcow2Image {
    /// After a failed write the in-memory tables may be ahead of the disk: reload the L1 table,
    /// drop the cache, and refuse further writes.
    fn poison_on_error(&self, st: &mut State, r: Result<(), Error>) -> Result<(), Error> {
        if r.is_err() {
            st.poisoned = true;
            st.pending = write::Pending::default();
            st.l2_cache.clear();
            let h = &self.header;
            if let Ok(l1) = read_u64_table(&self.file, h.l1_table_offset, u64::from(h.l1_size)) {
                st.l1 = l1;
            }
        }
        r
    }
}

/// The L2 tables the L1 table `l1` points at, each checked to lie inside the file and clear of
/// the header, L1 and refcount tables; with `lenient`, entries that fail are left out instead.
pub(super) fn l2_offsets_of(
    header: &Header,
    l1: &[u64],
    file_len: u64,
    lenient: bool,
) -> Result<HashSet<u64>, Error> {
    let cs = header.cluster_size();
    let l1_len = u64::from(header.l1_size) * 8;
    let rt_len = u64::from(header.refcount_table_clusters) * cs;
    let mut l2_offsets = HashSet::new();
    for &e in l1 {
        let off = e & OFFSET_MASK;
        if off == 0 {
            continue;
        }
        let other = if off < cs {
            Some("header")
        } else if off >= header.l1_table_offset && off - header.l1_table_offset < l1_len {
            Some("L1 table")
        } else if off >= header.refcount_table_offset && off - header.refcount_table_offset < rt_len
        {
            Some("refcount table")
        } else {
            None
        };
        let r = check_region("L2 table", off, cs, cs, file_len).and(match other {
            Some(other) => Err(Error::Overlap {
                what: "L2 table",
                offset: off,
                other,
            }),
            None => Ok(()),
        });
        match r {
            Ok(()) => {
                l2_offsets.insert(off);
            }
            Err(_) if lenient => {}
            Err(e) => return Err(e),
        }
    }
    Ok(l2_offsets)
}

fn check_l2_clear_of_refcounts(
    l2: &HashSet<u64>,
    rc: &Refcounts,
    lenient: bool,
) -> Result<(), Error> {
    match l2.iter().find(|&&o| rc.is_metadata(o)) {
        Some(&off) if !lenient => Err(Error::Overlap {
            what: "L2 table",
            offset: off,
            other: "refcounts",
        }),
        _ => Ok(()),
    }
}

fn open_backing(
    header: &Header,
    name: &str,
    resolver: &mut Resolver<'_>,
    depth: u32,
) -> Result<Box<dyn DiskImage>, Error> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(Error::BackingChainTooDeep(MAX_CHAIN_DEPTH));
    }
    let format = match header.backing_format.as_deref() {
        None => None,
        Some(f) => {
            Some(Format::from_name(f).ok_or_else(|| Error::UnsupportedBackingFormat(f.into()))?)
        }
    };
    let file = resolver(name).map_err(|source| Error::OpenBacking {
        name: name.into(),
        source,
    })?;
    open_at_depth(file, format, true, resolver, depth + 1).map_err(|e| match e {
        e @ Error::BackingChainTooDeep(_) => e,
        e => Error::Backing {
            name: name.into(),
            source: Box::new(e),
        },
    })
}

impl DiskImage for Qcow2Image {
    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        check_range(offset, buf.len(), self.header.size)?;
        let cs = self.cluster_size();
        let mut st = self.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = usize::try_from((cs - pos % cs).min((buf.len() - done) as u64))
                .expect("bounded by the buffer length");
            let (m, _, _) = self.lookup(&mut st, pos)?;
            let mut n = n;
            if let Mapping::Data(host) = m {
                // Clusters that follow each other on the host too are read with one pread.
                while done + n < buf.len() {
                    let next = offset + (done + n) as u64;
                    match self.lookup(&mut st, next)?.0 {
                        Mapping::Data(h) if h == host + (next - pos + pos % cs) => {
                            n += usize::try_from(cs.min((buf.len() - done - n) as u64))
                                .expect("bounded by the buffer length");
                        }
                        _ => break,
                    }
                }
            }
            self.read_mapped(m, &mut buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        check_range(offset, buf.len(), self.header.size)?;
        let mut st = self.lock();
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        let r = self.write_locked(&mut st, buf, offset);
        self.poison_on_error(&mut st, r)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let size = self.header.size;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange { offset, len, size });
        }
        let mut st = self.lock();
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        let r = self.zero_locked(&mut st, offset, len);
        self.poison_on_error(&mut st, r)
    }

    fn flush(&self) -> Result<(), Error> {
        if self.readonly {
            return Ok(());
        }
        self.write_metadata()?;
        self.file.sync_data().map_err(Error::Flush)
    }

    fn readonly(&self) -> bool {
        self.readonly
    }
}

#[cfg(test)]
mod repair_tests;
impl Drop for Qcow2Image {
    /// Table updates still waiting are written (in the crash-safe order) so that what was
    /// written is not lost to leaks; not synced: call [`DiskImage::flush`] for that.
    fn drop(&mut self) {
        if self.readonly {
            return;
        }
        let mut st = self.lock();
        if !st.poisoned {
            let _ = self.flush_metadata(&mut st);
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;
