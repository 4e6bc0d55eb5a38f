//! Repairs, like `qemu-img check -r leaks|all`, and the repair of an image left dirty by lazy
//! refcounts.
//!
//! A repair works from a walk over every table (see `check`) and changes the image in an
//! order that keeps it no worse after a crash at any point:
//!
//! 0. (all) reserved bits set in entries of the active tables are cleared;
//! 1. (all) entries of the active tables that point outside the file are dropped: an L2
//!    entry reads zeros from then on (a zero cluster in version 3, unallocated in version 2,
//!    where a backing file shows through), an L1 entry loses its L2 table;
//! 2. (all) refcounts lower than the references are raised: a cluster reached twice (two
//!    entries, or data on top of metadata) becomes shared, so the next write copies it
//!    instead of writing through both;
//! 3. refcounts higher than the references (leaks) are lowered;
//! 4. (all) COPIED flags are set again from the final refcounts.
//!
//! Each step is synced before the next. What cannot be mended (a snapshot's table pointing
//! outside the file, references beyond a 16-bit refcount) stays reported as corruption.

use std::os::unix::fs::FileExt;

use super::check::{Loc, L1_RESERVED, L2_RESERVED};
use super::header::INCOMPAT_DIRTY;
use super::refcount::Refcounts;
use super::{
    check_l2_clear_of_refcounts, l2_offsets_of, read_u64_table, CheckReport, Qcow2Image, COPIED,
    OFFSET_MASK, ZERO,
};
use crate::Error;

/// What a repair may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Only refcounts higher than the references (harmless leaks).
    Leaks,
    /// Leaks, refcounts lower than the references, invalid entries, COPIED flags.
    All,
}

impl Qcow2Image {
    /// Lowers every refcount that is higher than the cluster's references (leaks). Refused
    /// when the check finds corruption: references it could not follow would make live
    /// clusters look leaked.
    pub fn repair_leaks(&self) -> Result<CheckReport, Error> {
        self.repair(Repair::Leaks)
    }

    /// Repairs what `mode` allows; the report counts what was found before and what was
    /// fixed. Check again afterwards to see what is left.
    pub fn repair(&self, mode: Repair) -> Result<CheckReport, Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        self.write_metadata()?;
        let mut st = self.lock();
        let first = self.walk()?;
        let mut report = first.report.clone();
        if mode == Repair::Leaks && report.corruptions > 0 && report.leaks > 0 {
            return Err(Error::RepairWithCorruption(report.corruptions));
        }
        let r = self.repair_locked(mode, first, &mut report);
        // Whatever happened, the in-memory tables must be read again from the disk.
        st.l2_cache.clear();
        let h = &self.header;
        // The tables must be valid now, as for any image opened for writing; an image opened
        // leniently for repair stays unwritable otherwise.
        let reload = || -> Result<_, Error> {
            let l1 = read_u64_table(&self.file, h.l1_table_offset, u64::from(h.l1_size))?;
            let file_len = self.file.metadata().map_err(Error::FileSize)?.len();
            let mut rc = Refcounts::load(&self.file, h, file_len)?;
            rc.ordered = self.ordered_writes();
            let l2 = l2_offsets_of(h, &l1, file_len, false)?;
            check_l2_clear_of_refcounts(&l2, &rc, false)?;
            Ok((l1, l2, file_len, rc))
        };
        match reload() {
            Ok((l1, l2, file_len, rc)) => {
                st.l1 = l1;
                st.l2_offsets = l2;
                st.file_len = file_len;
                st.refcounts = Some(rc);
            }
            Err(e) => {
                st.poisoned = true;
                r?;
                return Err(e);
            }
        }
        r.map(|()| report)
    }

    fn repair_locked(
        &self,
        mode: Repair,
        mut w: super::check::Walked,
        report: &mut CheckReport,
    ) -> Result<(), Error> {
        if mode == Repair::All {
            // 0. Reserved bits cleared.
            if !w.reserved.is_empty() {
                for loc in &w.reserved {
                    let mask = if loc.l1 { L1_RESERVED } else { L2_RESERVED };
                    self.file
                        .write_all_at(&(loc.entry & !mask).to_be_bytes(), loc.at)
                        .map_err(Error::Write)?;
                }
                self.sync()?;
                report.corruptions_fixed += w.reserved.len() as u64;
                w = self.walk()?;
            }
            // 1. Entries pointing outside the file.
            if !w.bad.is_empty() {
                for loc in &w.bad {
                    let new = if loc.l1 || self.header.version < 3 {
                        0
                    } else {
                        ZERO
                    };
                    self.file
                        .write_all_at(&new.to_be_bytes(), loc.at)
                        .map_err(Error::Write)?;
                }
                self.sync()?;
                report.corruptions_fixed += w.bad.len() as u64;
                w = self.walk()?;
            }
            // 2. Refcounts below the references.
            let (copies, raised) = self.mend_undercounted(&mut w)?;
            if copies + raised > 0 {
                report.corruptions_fixed += copies + raised;
                w = self.walk()?;
            }
        }
        // 3. Leaks.
        let mut lower: Vec<(u64, u16)> = w
            .actual
            .iter()
            .filter_map(|(&c, &have)| {
                let want = w.refs.get(&c).copied().unwrap_or(0);
                (u32::from(have) > want).then(|| (c, u16::try_from(want).expect("below have")))
            })
            .collect();
        lower.sort_unstable();
        for &(c, want) in &lower {
            w.rc.set(&self.file, c, want)?;
        }
        if !lower.is_empty() {
            self.sync()?;
            report.leaks_fixed = lower.len() as u64;
        }
        // 4. COPIED flags, from the refcounts as they are now.
        if mode == Repair::All {
            let mut fixed = 0u64;
            for &(c, flag, loc) in &w.copied {
                let one = w.rc.get(&self.file, c)? == 1;
                if one != flag {
                    let e = if one {
                        loc.entry | COPIED
                    } else {
                        loc.entry & !COPIED
                    };
                    self.file
                        .write_all_at(&e.to_be_bytes(), loc.at)
                        .map_err(Error::Write)?;
                    fixed += 1;
                }
            }
            if fixed > 0 {
                self.sync()?;
                report.corruptions_fixed += fixed;
            }
        }
        Ok(())
    }

    /// Step 2: a data cluster reached by more active L2 entries than its refcount says gets
    /// copied, so that each entry owns its own copy (one keeps the original, unless metadata
    /// or a snapshot also reaches it); any other cluster has its refcount raised to its
    /// references, which makes it shared and copied on the next write. Returns (copies,
    /// refcounts raised).
    fn mend_undercounted(&self, w: &mut super::check::Walked) -> Result<(u64, u64), Error> {
        let cb = self.header.cluster_bits;
        let cs = self.header.cluster_size();
        let file_clusters = w.file_len.div_ceil(cs);
        let mut under: Vec<(u64, u32)> = w
            .refs
            .iter()
            .filter(|&(c, &want)| {
                u32::from(w.actual.get(c).copied().unwrap_or(0)) < want && *c < file_clusters
            })
            .map(|(&c, &want)| (c, want))
            .collect();
        under.sort_unstable();
        let (mut copies, mut raised) = (0u64, 0u64);
        let mut buf = vec![0u8; usize::try_from(cs).expect("cluster fits usize")];
        for (c, want) in under {
            let active: Vec<Loc> = w
                .copied
                .iter()
                .filter(|(cc, _, loc)| *cc == c && !loc.l1)
                .map(|&(_, _, loc)| loc)
                .collect();
            let others = want - active.len() as u32;
            let keep = usize::from(others == 0);
            if active.len() > keep {
                for loc in &active[keep..] {
                    crate::raw::read_exact_or_zero(&self.file, &mut buf, c << cb)?;
                    let new = w.rc.alloc(&self.file)?;
                    self.file.write_all_at(&buf, new).map_err(Error::Write)?;
                    self.sync()?;
                    let flags = loc.entry & !OFFSET_MASK;
                    let e = new | flags | COPIED;
                    self.file
                        .write_all_at(&e.to_be_bytes(), loc.at)
                        .map_err(Error::Write)?;
                    copies += 1;
                }
                self.sync()?;
            }
            let want = others + u32::try_from(keep).expect("0 or 1");
            let Ok(v) = u16::try_from(want) else {
                continue; // stays reported: no 16-bit refcount can say it
            };
            if v > w.rc.get(&self.file, c)? {
                w.rc.set(&self.file, c, v)?;
                raised += 1;
            }
        }
        if raised > 0 {
            self.sync()?;
        }
        Ok((copies, raised))
    }

    fn sync(&self) -> Result<(), Error> {
        self.file.sync_data().map_err(Error::Flush)
    }

    /// Opening an image with the dirty bit for writing: its refcounts may lag behind its
    /// tables (lazy refcounts), so they are rebuilt from the tables, then the bit is cleared.
    pub(super) fn repair_dirty(&mut self) -> Result<(), Error> {
        let report = self.repair(Repair::All)?;
        let left = self.check()?;
        if left.corruptions > 0 {
            return Err(Error::DirtyRepairFailed(left.corruptions));
        }
        let _ = report;
        let features = self.header.incompatible_features & !INCOMPAT_DIRTY;
        self.file
            .write_all_at(&features.to_be_bytes(), 72)
            .map_err(Error::Write)?;
        self.sync()?;
        self.header.incompatible_features = features;
        Ok(())
    }
}
