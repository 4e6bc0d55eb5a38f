//! Consistency check (like `qemu-img check`, with repair of leaks) and allocation map.

use std::collections::{BTreeMap, HashMap};

use super::header::check_region;
use super::refcount::Refcounts;
use super::{compressed, read_u64_table, Mapping, Qcow2Image, COMPRESSED, COPIED, OFFSET_MASK};
use crate::Error;

/// Bits of an L1 entry that must be zero: 0-8 and 56-62.
pub(super) const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Bits of a standard L2 entry that must be zero: 1-8 and 56-61.
pub(super) const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;

/// Messages kept in a report; the counts go on past this.
const MAX_MESSAGES: usize = 100;

/// Outcome of [`Qcow2Image::check`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// References to invalid places, refcounts lower than the references, wrong COPIED flags.
    pub corruptions: u64,
    /// Clusters whose refcount is higher than their references (harmless, wasted space).
    pub leaks: u64,
    /// Clusters in use (metadata and data).
    pub allocated_clusters: u64,
    /// The first problems found, described.
    pub messages: Vec<String>,
    /// Leaked clusters whose refcount a repair lowered.
    pub leaks_fixed: u64,
    /// Corruptions a repair (`Repair::All`) mended.
    pub corruptions_fixed: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0
    }

    fn corrupt(&mut self, msg: String) {
        self.corruptions += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("ERROR {msg}"));
        }
    }
}

/// What a guest range maps to in this image (backing files not consulted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// Not allocated here: reads come from the backing file, or zeros.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Stored at `host_offset`.
    Data,
    /// Stored compressed.
    Compressed,
}

/// A run of guest clusters with the same mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapExtent {
    pub start: u64,
    pub length: u64,
    pub kind: MapKind,
    /// Host offset of `start`, for `Data` extents (contiguous on the host).
    pub host_offset: Option<u64>,
}

/// Where a table entry lives, for repairs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    /// File offset of the entry.
    pub at: u64,
    pub entry: u64,
    /// An L1 entry (else L2).
    pub l1: bool,
}

struct Walk<'a> {
    img: &'a Qcow2Image,
    file_len: u64,
    refs: HashMap<u64, u32>,
    /// (cluster index, whether the entry has the COPIED flag, the entry), for the active
    /// tables.
    copied: Vec<(u64, bool, Loc)>,
    /// Entries of the active tables that point at nothing valid.
    bad: Vec<Loc>,
    /// Entries of the active tables with reserved bits set.
    reserved: Vec<Loc>,
    /// L2 tables reached so far: how many times, and whether from the active L1 table.
    reached: BTreeMap<u64, (u32, bool)>,
    report: CheckReport,
}

/// What a walk over every table found, with the refcounts on disk.
pub(super) struct Walked {
    pub refs: HashMap<u64, u32>,
    pub copied: Vec<(u64, bool, Loc)>,
    pub bad: Vec<Loc>,
    pub reserved: Vec<Loc>,
    pub actual: HashMap<u64, u16>,
    pub rc: Refcounts,
    pub file_len: u64,
    pub report: CheckReport,
}

impl Walk<'_> {
    fn add(&mut self, off: u64) {
        self.add_times(off, 1);
    }

    fn add_times(&mut self, off: u64, times: u32) {
        let c = off >> self.img.header().cluster_bits;
        let r = self.refs.entry(c).or_insert(0);
        *r = r.saturating_add(times);
    }

    fn add_range(&mut self, off: u64, len: u64) {
        let cs = self.img.cluster_size();
        let mut o = off & !(cs - 1);
        while o < off + len {
            self.add(o);
            o += cs;
        }
    }

    /// Follows one L1 table: each L2 table it reaches is recorded (read once later, however
    /// many L1 entries reach it, see [`Walk::tables`]).
    fn l1(&mut self, l1_off: u64, l1_size: u32, active: bool) -> Result<(), Error> {
        let cs = self.img.cluster_size();
        let cb = self.img.header().cluster_bits;
        let l1 = read_u64_table(&self.img.file, l1_off, u64::from(l1_size))?;
        for (i, e) in l1.into_iter().enumerate() {
            let l2 = e & OFFSET_MASK;
            let loc = Loc {
                at: l1_off + i as u64 * 8,
                entry: e,
                l1: true,
            };
            if e & L1_RESERVED != 0 {
                self.report
                    .corrupt(format!("L1 entry {e:#x} has reserved bits set"));
                if active {
                    self.reserved.push(loc);
                }
            }
            if l2 == 0 {
                continue;
            }
            if let Err(err) = check_region("L2 table", l2, cs, cs, self.file_len) {
                self.report.corrupt(err.to_string());
                if active {
                    self.bad.push(loc);
                }
                continue;
            }
            self.add(l2);
            if active {
                self.copied.push((l2 >> cb, e & COPIED != 0, loc));
            }
            let t = self.reached.entry(l2).or_insert((0, false));
            t.0 += 1;
            t.1 |= active;
        }
        Ok(())
    }

    /// Reads every L2 table reached once, counting its entries' references as many times as
    /// the table is reached (a crafted image may reach one table from thousands of entries).
    fn tables(&mut self) -> Result<(), Error> {
        let reached = std::mem::take(&mut self.reached);
        for (l2, (times, active)) in reached {
            let table = read_u64_table(&self.img.file, l2, self.img.header().l2_entries())?;
            for (j, e) in table.into_iter().enumerate() {
                let loc = Loc {
                    at: l2 + j as u64 * 8,
                    entry: e,
                    l1: false,
                };
                self.l2_entry(loc, times, active);
            }
        }
        Ok(())
    }

    fn l2_entry(&mut self, loc: Loc, times: u32, active: bool) {
        let e = loc.entry;
        let h = self.img.header();
        let cs = h.cluster_size();
        if e & COMPRESSED == 0 && e & L2_RESERVED != 0 {
            self.report
                .corrupt(format!("L2 entry {e:#x} has reserved bits set"));
            if active {
                self.reserved.push(loc);
            }
        }
        if e & COMPRESSED != 0 {
            let ext = compressed::decode(e, h.cluster_bits);
            if ext.offset + ext.len > self.file_len.next_multiple_of(512) {
                let msg = format!(
                    "compressed cluster at {:#x} lies beyond the end of the file",
                    ext.offset
                );
                self.report.corrupt(msg);
                if active {
                    self.bad.push(loc);
                }
                return;
            }
            for off in compressed::host_clusters(ext, h.cluster_bits) {
                self.add_times(off, times);
            }
            return;
        }
        let host = e & OFFSET_MASK;
        if host == 0 {
            return;
        }
        if let Err(err) = check_region(
            "data cluster",
            host,
            cs,
            cs,
            self.file_len.next_multiple_of(cs),
        ) {
            self.report.corrupt(err.to_string());
            if active {
                self.bad.push(loc);
            }
            return;
        }
        self.add_times(host, times);
        // Preallocated zero clusters (ZERO flag with an offset) are references too.
        if active {
            self.copied
                .push((host >> h.cluster_bits, e & COPIED != 0, loc));
        }
    }
}

impl Qcow2Image {
    /// Recounts every reference and compares with the refcounts on disk, like
    /// `qemu-img check` (16-bit refcounts only; bitmaps are not accounted for).
    pub fn check(&self) -> Result<CheckReport, Error> {
        // The walk reads the tables from the disk: updates waiting for a flush go there first
        // (a poisoned image is checked as the disk has it).
        match self.write_metadata() {
            Ok(()) | Err(Error::Poisoned) => {}
            Err(e) => return Err(e),
        }
        let _st = self.lock();
        Ok(self.walk()?.report)
    }

    /// Walks every table (the caller holds the state lock) and compares the references found
    /// with the refcounts on disk.
    pub(super) fn walk(&self) -> Result<Walked, Error> {
        let h = self.header().clone();
        let cs = h.cluster_size();
        let file_len = self.file.metadata().map_err(Error::FileSize)?.len();
        let mut rc = Refcounts::load(&self.file, &h, file_len)?;
        let (snapshots, table_len) = self.snapshot_table()?;
        let mut w = Walk {
            img: self,
            file_len,
            refs: HashMap::new(),
            copied: Vec::new(),
            bad: Vec::new(),
            reserved: Vec::new(),
            reached: BTreeMap::new(),
            report: CheckReport::default(),
        };
        w.add(0);
        w.add_range(h.l1_table_offset, u64::from(h.l1_size) * 8);
        for off in rc.metadata_clusters() {
            w.add(off);
        }
        if table_len > 0 {
            w.add_range(h.snapshots_offset, table_len);
        }
        w.l1(h.l1_table_offset, h.l1_size, true)?;
        for s in &snapshots {
            w.add_range(s.l1_table_offset, u64::from(s.l1_size) * 8);
            w.l1(s.l1_table_offset, s.l1_size, false)?;
        }
        w.tables()?;
        let actual = rc.all(&self.file)?;
        let Walk {
            refs,
            copied,
            bad,
            reserved,
            mut report,
            ..
        } = w;
        let file_clusters = file_len.div_ceil(cs);
        let mut sorted: Vec<(u64, u32)> = refs.iter().map(|(&c, &n)| (c, n)).collect();
        sorted.sort_unstable();
        for (c, want) in sorted {
            let have = u32::from(actual.get(&c).copied().unwrap_or(0));
            if c >= file_clusters {
                report.corrupt(format!("cluster {c:#x} lies beyond the end of the file"));
            } else if have < want {
                report.corrupt(format!("cluster {c:#x} refcount={have} reference={want}"));
            } else if have > want {
                report.leaks += 1;
            }
        }
        report.leaks += actual.keys().filter(|c| !refs.contains_key(c)).count() as u64;
        for (c, flag, loc) in &copied {
            let have = actual.get(c).copied().unwrap_or(0);
            if (have == 1) != *flag {
                let table = if loc.l1 { "L1" } else { "L2" };
                report.corrupt(format!(
                    "OFLAG_COPIED {table} cluster {c:#x}: refcount={have}"
                ));
            }
        }
        report.allocated_clusters = refs.len() as u64;
        Ok(Walked {
            refs,
            copied,
            bad,
            reserved,
            actual,
            rc,
            file_len,
            report,
        })
    }

    /// Lists how the guest disk maps onto this image, in merged extents.
    pub fn map(&self) -> Result<Vec<MapExtent>, Error> {
        let h = self.header().clone();
        let cs = h.cluster_size();
        let mut out: Vec<MapExtent> = Vec::new();
        let mut st = self.lock();
        let mut pos = 0u64;
        while pos < h.size {
            let l1_idx = usize::try_from(pos / h.l1_coverage()).expect("bounded by the L1 size");
            let (kind, host, len) = if st.l1.get(l1_idx).is_none_or(|e| e & OFFSET_MASK == 0) {
                let next = (pos / h.l1_coverage() + 1) * h.l1_coverage();
                (MapKind::Unallocated, None, next.min(h.size) - pos)
            } else {
                let len = cs.min(h.size - pos);
                match self.lookup(&mut st, pos)?.0 {
                    Mapping::Unallocated => (MapKind::Unallocated, None, len),
                    Mapping::Zero => (MapKind::Zero, None, len),
                    Mapping::Data(host) => (MapKind::Data, Some(host), len),
                    Mapping::Compressed(_) => (MapKind::Compressed, None, len),
                }
            };
            match out.last_mut() {
                Some(last)
                    if last.kind == kind && last.host_offset.map(|o| o + last.length) == host =>
                {
                    last.length += len;
                }
                _ => out.push(MapExtent {
                    start: pos,
                    length: len,
                    kind,
                    host_offset: host,
                }),
            }
            pos += len;
        }
        Ok(out)
    }
}
