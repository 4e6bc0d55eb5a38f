//! Internal snapshots: create, apply and delete.
//!
//! A snapshot is a copy of the active L1 table; every cluster reachable from it counts one
//! reference per L1 table that reaches it (as qemu counts). Clusters shared with a snapshot
//! have a refcount above 1 and lose the COPIED flag in the active tables, so the write path
//! copies them (L2 tables and data) before writing.
//!
//! Ordering keeps a crash harmless (leaked clusters at worst): refcounts are raised before
//! anything new references the clusters, the snapshot table and its L1 copy are written and
//! synced before the header points at them, and refcounts are lowered only after the
//! reference is gone from disk.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::header::check_region;
use super::snapshot::Snapshot;
use super::{compressed, read_u64_table, Qcow2Image, COMPRESSED, COPIED, OFFSET_MASK};
use crate::Error;

/// Header offset of `nb_snapshots` (followed by `snapshots_offset`).
const NB_SNAPSHOTS_AT: u64 = 60;

impl Qcow2Image {
    /// The file's length, once updates waiting for a flush are on the disk (snapshot
    /// operations read and rewrite tables there). Fails on a read-only or poisoned image.
    fn writable_len(&self) -> Result<u64, Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        self.write_metadata()?;
        self.file
            .metadata()
            .map_err(Error::FileSize)
            .map(|m| m.len())
    }

    /// Host clusters an L2 entry references.
    fn entry_clusters(&self, e: u64, file_len: u64) -> Result<Vec<u64>, Error> {
        let cb = self.header.cluster_bits;
        let cs = self.cluster_size();
        if e & COMPRESSED != 0 {
            let ext = compressed::decode(e, cb);
            if ext.offset.saturating_add(ext.len) > file_len.next_multiple_of(512) {
                return Err(Error::BeyondEof {
                    what: "compressed cluster",
                    offset: ext.offset,
                    file_len,
                });
            }
            return Ok(compressed::host_clusters(ext, cb).collect());
        }
        let host = e & OFFSET_MASK;
        if host == 0 {
            return Ok(Vec::new());
        }
        check_region("data cluster", host, cs, cs, file_len.next_multiple_of(cs))?;
        Ok(vec![host])
    }

    /// Adds `up ? 1 : -1` to the refcount of every L2 table and data cluster `l1` reaches.
    fn adjust_refcounts(&mut self, l1: &[u64], up: bool) -> Result<(), Error> {
        let cs = self.cluster_size();
        let cb = self.header.cluster_bits;
        let file_len = self.file.metadata().map_err(Error::FileSize)?.len();
        let mut clusters = Vec::new();
        for &l1e in l1 {
            let l2 = l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            check_region("L2 table", l2, cs, cs, file_len)?;
            for e in read_u64_table(&self.file, l2, self.header.l2_entries())? {
                clusters.extend(self.entry_clusters(e, file_len)?);
            }
            clusters.push(l2);
        }
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        for off in clusters {
            let cluster = off >> cb;
            let v = rc.get(&self.file, cluster)?;
            let v = if up {
                v.checked_add(1)
                    .ok_or(Error::RefcountOverflow { cluster })?
            } else {
                v.checked_sub(1)
                    .ok_or(Error::RefcountUnderflow { cluster })?
            };
            rc.set(&self.file, cluster, v)?;
        }
        Ok(())
    }

    /// Sets the COPIED flag in the active L1 and L2 tables exactly where the refcount is 1.
    fn fix_copied_flags(&mut self) -> Result<(), Error> {
        let cb = self.header.cluster_bits;
        let l1_off = self.header.l1_table_offset;
        let l2_entries = self.header.l2_entries();
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        st.l2_cache.clear();
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        for i in 0..st.l1.len() {
            let l1e = st.l1[i];
            let l2 = l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let mut table = read_u64_table(&self.file, l2, l2_entries)?;
            let mut changed = false;
            for e in table.iter_mut() {
                let host = *e & OFFSET_MASK;
                if *e & COMPRESSED != 0 || host == 0 {
                    continue;
                }
                let want = if rc.get(&self.file, host >> cb)? == 1 {
                    *e | COPIED
                } else {
                    *e & !COPIED
                };
                changed |= want != *e;
                *e = want;
            }
            if changed {
                let raw: Vec<u8> = table.iter().flat_map(|v| v.to_be_bytes()).collect();
                self.file.write_all_at(&raw, l2).map_err(Error::Write)?;
            }
            let want = if rc.get(&self.file, l2 >> cb)? == 1 {
                l1e | COPIED
            } else {
                l1e & !COPIED
            };
            if want != l1e {
                st.l1[i] = want;
                self.file
                    .write_all_at(&want.to_be_bytes(), l1_off + i as u64 * 8)
                    .map_err(Error::Write)?;
            }
        }
        self.file.sync_data().map_err(Error::Flush)
    }

    /// Writes `bytes` into newly allocated contiguous clusters; returns their offset.
    fn write_new(&mut self, bytes: &[u8]) -> Result<u64, Error> {
        let cs = self.cluster_size();
        let clusters = (bytes.len() as u64).div_ceil(cs).max(1);
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        let off = rc.alloc_contiguous(&self.file, clusters)?;
        let mut raw = bytes.to_vec();
        raw.resize(
            usize::try_from(clusters * cs).expect("bounded by the input"),
            0,
        );
        self.file.write_all_at(&raw, off).map_err(Error::Write)?;
        st.file_len = st.file_len.max(off + clusters * cs);
        Ok(off)
    }

    /// Drops one reference from each cluster of `len` bytes at `off`.
    fn free_range(&mut self, off: u64, len: u64) -> Result<(), Error> {
        let cs = self.cluster_size();
        let cb = self.header.cluster_bits;
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        for i in 0..len.div_ceil(cs) {
            rc.decrement(&self.file, (off >> cb) + i)?;
        }
        Ok(())
    }

    /// Replaces the snapshot table: new table written and synced, header switched and synced,
    /// then the old table freed.
    fn replace_snapshot_table(&mut self, list: &[Snapshot], old_len: u64) -> Result<(), Error> {
        let raw: Vec<u8> = list.iter().flat_map(encode_entry).collect();
        let new_off = if list.is_empty() {
            0
        } else {
            self.write_new(&raw)?
        };
        self.file.sync_data().map_err(Error::Flush)?;
        let nb = u32::try_from(list.len()).map_err(|_| Error::TooManySnapshots(u32::MAX))?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&nb.to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        self.file
            .write_all_at(&hdr, NB_SNAPSHOTS_AT)
            .map_err(Error::Write)?;
        self.file.sync_data().map_err(Error::Flush)?;
        let old_off = self.header.snapshots_offset;
        self.header.nb_snapshots = nb;
        self.header.snapshots_offset = new_off;
        if old_len > 0 {
            self.free_range(old_off, old_len)?;
        }
        Ok(())
    }

    /// Creates an internal snapshot of the current disk named `name`.
    pub fn snapshot_create(&mut self, name: &str) -> Result<Snapshot, Error> {
        self.writable_len()?;
        if name.is_empty() || name.len() > usize::from(u16::MAX) {
            return Err(Error::BadSnapshotName);
        }
        let (mut list, old_len) = self.snapshot_table()?;
        if list.iter().any(|s| s.name == name) {
            return Err(Error::SnapshotExists(name.into()));
        }
        let id = list
            .iter()
            .filter_map(|s| s.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let l1 = self.active_l1();
        self.adjust_refcounts(&l1, true)?;
        self.fix_copied_flags()?;
        let copy: Vec<u8> = l1
            .iter()
            .flat_map(|e| (e & !COPIED).to_be_bytes())
            .collect();
        let l1_table_offset = self.write_new(&copy)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let snap = Snapshot {
            id: id.to_string(),
            name: name.into(),
            l1_table_offset,
            l1_size: self.header.l1_size,
            date_sec: u32::try_from(now.as_secs()).unwrap_or(u32::MAX),
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: 0,
            vm_state_size: 0,
            disk_size: (self.header.version >= 3).then_some(self.header.size),
            icount: None,
        };
        list.push(snap.clone());
        self.replace_snapshot_table(&list, old_len)?;
        Ok(snap)
    }

    /// The snapshot whose id or name is `name`.
    fn find_snapshot(&self, name: &str) -> Result<(Vec<Snapshot>, u64, usize), Error> {
        let (list, len) = self.snapshot_table()?;
        let i = list
            .iter()
            .position(|s| s.id == name || s.name == name)
            .ok_or_else(|| Error::NoSuchSnapshot(name.into()))?;
        Ok((list, len, i))
    }

    fn active_l1(&mut self) -> Vec<u64> {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        st.l1.clone()
    }

    /// Makes the disk what it was when snapshot `name` (a name or an id) was taken.
    pub fn snapshot_apply(&mut self, name: &str) -> Result<(), Error> {
        self.writable_len()?;
        let (list, _, i) = self.find_snapshot(name)?;
        let snap = &list[i];
        let mut l1 = read_u64_table(&self.file, snap.l1_table_offset, u64::from(snap.l1_size))?;
        if snap.l1_size > self.header.l1_size {
            self.grow_l1(snap.l1_size)?;
        }
        l1.resize(self.header.l1_size as usize, 0);
        let size = snap.disk_size.unwrap_or(self.header.size);
        let coverage = u64::from(self.header.l1_size) * self.header.l1_coverage();
        if size > coverage {
            return Err(Error::BadSnapshotTable("disk size exceeds the L1 table"));
        }
        let old = self.active_l1();
        self.adjust_refcounts(&l1, true)?;
        self.file.sync_data().map_err(Error::Flush)?;
        let raw: Vec<u8> = l1
            .iter()
            .flat_map(|e| (e & !COPIED).to_be_bytes())
            .collect();
        self.file
            .write_all_at(&raw, self.header.l1_table_offset)
            .map_err(Error::Write)?;
        if size != self.header.size {
            self.file
                .write_all_at(&size.to_be_bytes(), 24)
                .map_err(Error::Write)?;
            self.header.size = size;
        }
        self.file.sync_data().map_err(Error::Flush)?;
        {
            let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            st.l1 = l1.iter().map(|e| e & !COPIED).collect();
            st.l2_offsets = l1
                .iter()
                .map(|e| e & OFFSET_MASK)
                .filter(|&o| o != 0)
                .collect::<HashSet<_>>();
            st.l2_cache.clear();
        }
        self.adjust_refcounts(&old, false)?;
        self.fix_copied_flags()
    }

    /// Deletes snapshot `name` (a name or an id), freeing what only it referenced.
    pub fn snapshot_delete(&mut self, name: &str) -> Result<(), Error> {
        self.writable_len()?;
        let (mut list, old_len, i) = self.find_snapshot(name)?;
        let snap = list.remove(i);
        let l1 = read_u64_table(&self.file, snap.l1_table_offset, u64::from(snap.l1_size))?;
        self.replace_snapshot_table(&list, old_len)?;
        self.adjust_refcounts(&l1, false)?;
        self.free_range(snap.l1_table_offset, u64::from(snap.l1_size) * 8)?;
        self.fix_copied_flags()
    }
}

/// One snapshot table entry in the qcow2 format, padded to 8 bytes.
fn encode_entry(s: &Snapshot) -> Vec<u8> {
    let mut extra = Vec::new();
    if let Some(disk) = s.disk_size {
        extra.extend_from_slice(&s.vm_state_size.to_be_bytes());
        extra.extend_from_slice(&disk.to_be_bytes());
        if let Some(ic) = s.icount {
            extra.extend_from_slice(&ic.to_be_bytes());
        }
    }
    let mut b = Vec::new();
    b.extend_from_slice(&s.l1_table_offset.to_be_bytes());
    b.extend_from_slice(&s.l1_size.to_be_bytes());
    b.extend_from_slice(&(s.id.len() as u16).to_be_bytes());
    b.extend_from_slice(&(s.name.len() as u16).to_be_bytes());
    b.extend_from_slice(&s.date_sec.to_be_bytes());
    b.extend_from_slice(&s.date_nsec.to_be_bytes());
    b.extend_from_slice(&s.vm_clock_nsec.to_be_bytes());
    let small_state = u32::try_from(s.vm_state_size).unwrap_or(0);
    b.extend_from_slice(&small_state.to_be_bytes());
    b.extend_from_slice(&(extra.len() as u32).to_be_bytes());
    b.extend_from_slice(&extra);
    b.extend_from_slice(s.id.as_bytes());
    b.extend_from_slice(s.name.as_bytes());
    b.resize(b.len().next_multiple_of(8), 0);
    b
}
