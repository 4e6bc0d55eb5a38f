//! Consistency check (like `qemu-img check`, with repair of leaks) and allocation map.

use std::collections::HashMap;

use super::header::check_region;
use super::refcount::Refcounts;
use super::{compressed, read_u64_table, Mapping, Qcow2Image, COMPRESSED, COPIED, OFFSET_MASK};
use crate::Error;

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
    /// Leaked clusters whose refcount [`Qcow2Image::repair_leaks`] lowered.
    pub leaks_fixed: u64,
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

struct Walk<'a> {
    img: &'a Qcow2Image,
    file_len: u64,
    refs: HashMap<u64, u32>,
    /// (cluster index, whether the table entry has the COPIED flag), for the active tables.
    copied: Vec<(u64, bool, &'static str)>,
    report: CheckReport,
}

impl Walk<'_> {
    fn add(&mut self, off: u64) {
        let c = off >> self.img.header().cluster_bits;
        *self.refs.entry(c).or_insert(0) += 1;
    }

    fn add_range(&mut self, off: u64, len: u64) {
        let cs = self.img.cluster_size();
        let mut o = off & !(cs - 1);
        while o < off + len {
            self.add(o);
            o += cs;
        }
    }

    fn l1(&mut self, l1_off: u64, l1_size: u32, active: bool) -> Result<(), Error> {
        let cs = self.img.cluster_size();
        let l1 = read_u64_table(&self.img.file, l1_off, u64::from(l1_size))?;
        for e in l1 {
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if let Err(err) = check_region("L2 table", l2, cs, cs, self.file_len) {
                self.report.corrupt(err.to_string());
                continue;
            }
            self.add(l2);
            if active {
                self.copied
                    .push((l2 >> self.img.header().cluster_bits, e & COPIED != 0, "L1"));
            }
            let table = read_u64_table(&self.img.file, l2, self.img.header().l2_entries())?;
            for e in table {
                self.l2_entry(e, active);
            }
        }
        Ok(())
    }

    fn l2_entry(&mut self, e: u64, active: bool) {
        let h = self.img.header();
        let cs = h.cluster_size();
        if e & COMPRESSED != 0 {
            let ext = compressed::decode(e, h.cluster_bits);
            if ext.offset + ext.len > self.file_len.next_multiple_of(512) {
                let msg = format!(
                    "compressed cluster at {:#x} lies beyond the end of the file",
                    ext.offset
                );
                self.report.corrupt(msg);
                return;
            }
            for off in compressed::host_clusters(ext, h.cluster_bits) {
                self.add(off);
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
            return;
        }
        self.add(host);
        // Preallocated zero clusters (ZERO flag with an offset) are references too.
        if active {
            self.copied
                .push((host >> h.cluster_bits, e & COPIED != 0, "L2"));
        }
    }
}

impl Qcow2Image {
    /// Recounts every reference and compares with the refcounts on disk, like
    /// `qemu-img check` (16-bit refcounts only; bitmaps are not accounted for).
    pub fn check(&self) -> Result<CheckReport, Error> {
        self.check_and_repair(false)
    }

    /// Checks, then lowers every refcount that is higher than the cluster's references (leaks)
    /// to the number of references. Each refcount is written on its own, so a crash leaves at
    /// worst some leaks unrepaired. Refused when the check finds corruption: references it
    /// could not follow would make live clusters look leaked.
    pub fn repair_leaks(&self) -> Result<CheckReport, Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        self.check_and_repair(true)
    }

    fn check_and_repair(&self, repair: bool) -> Result<CheckReport, Error> {
        let h = self.header().clone();
        let cs = h.cluster_size();
        let file_len = self.file.metadata().map_err(Error::FileSize)?.len();
        let mut st = self.lock();
        let mut rc = Refcounts::load(&self.file, &h, file_len)?;
        let (snapshots, table_len) = self.snapshot_table()?;
        let mut w = Walk {
            img: self,
            file_len,
            refs: HashMap::new(),
            copied: Vec::new(),
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
        let actual = rc.all(&self.file)?;
        let Walk {
            refs,
            copied,
            mut report,
            ..
        } = w;
        let file_clusters = file_len.div_ceil(cs);
        let mut fixes = Vec::new();
        for (&c, &want) in &refs {
            let have = u32::from(actual.get(&c).copied().unwrap_or(0));
            if c >= file_clusters {
                report.corrupt(format!("cluster {c:#x} lies beyond the end of the file"));
            } else if have < want {
                report.corrupt(format!("cluster {c:#x} refcount={have} reference={want}"));
            } else if have > want {
                report.leaks += 1;
                fixes.push((c, want));
            }
        }
        for &c in actual.keys().filter(|c| !refs.contains_key(c)) {
            report.leaks += 1;
            fixes.push((c, 0));
        }
        for (c, flag, table) in copied {
            let have = actual.get(&c).copied().unwrap_or(0);
            if (have == 1) != flag {
                report.corrupt(format!(
                    "OFLAG_COPIED {table} cluster {c:#x}: refcount={have}"
                ));
            }
        }
        report.allocated_clusters = refs.len() as u64;
        if repair && !fixes.is_empty() {
            if report.corruptions > 0 {
                return Err(Error::RepairWithCorruption(report.corruptions));
            }
            fixes.sort_unstable();
            for &(c, want) in &fixes {
                let want = u16::try_from(want).expect("below the current refcount");
                rc.set(&self.file, c, want)?;
            }
            self.file.sync_data().map_err(Error::Flush)?;
            report.leaks_fixed = fixes.len() as u64;
            // The image's own refcount cache is stale now.
            st.refcounts = Some(Refcounts::load(&self.file, &h, file_len)?);
        }
        Ok(report)
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
