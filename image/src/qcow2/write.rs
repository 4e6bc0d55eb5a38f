//! The qcow2 write paths (data and zeroes), in the order the module documentation gives.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;

use super::{compressed, Mapping, Qcow2Image, State, COPIED, OFFSET_MASK, ZERO};
use crate::Error;

/// Dirty L2 tables held in memory before their updates are written out anyway.
const MAX_DIRTY_TABLES: usize = 16;
/// Entries changed, or clusters to free, before the updates are written out anyway.
const MAX_PENDING: usize = 8192;

/// Table updates not on disk yet: one request's (see [`Qcow2Image::record`]), then all
/// requests' since the last [`Qcow2Image::flush_metadata`].
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// (L2 table, index) of entries changed in tables already referenced from the L1 table;
    /// the new values are in the cached tables.
    l2_updates: Vec<(u64, usize)>,
    /// (L1 index, offset) of new L2 tables, written in full.
    new_l2: Vec<(usize, u64)>,
    /// Host clusters whose reference was dropped.
    frees: Vec<u64>,
    /// The L2 tables of `l2_updates` and `new_l2` (kept up to date by `merge`).
    tables: HashSet<u64>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.l2_updates.is_empty() && self.new_l2.is_empty() && self.frees.is_empty()
    }

    /// L2 tables whose in-memory contents are ahead of the disk.
    pub(super) fn dirty_tables(&self) -> &HashSet<u64> {
        &self.tables
    }

    fn merge(&mut self, p: Pending) {
        self.tables.extend(p.l2_updates.iter().map(|&(t, _)| t));
        self.tables.extend(p.new_l2.iter().map(|&(_, t)| t));
        self.l2_updates.extend(p.l2_updates);
        self.new_l2.extend(p.new_l2);
        self.frees.extend(p.frees);
    }
}

impl Qcow2Image {
    /// The L2 table covering L1 index `l1_idx`, creating one (refcount recorded, contents in
    /// memory until commit) if there is none.
    fn l2_for_write(&self, st: &mut State, l1_idx: usize, p: &mut Pending) -> Result<u64, Error> {
        let h = &self.header;
        let l1e = *st.l1.get(l1_idx).ok_or(Error::OutOfRange {
            offset: l1_idx as u64,
            len: 0,
            size: u64::from(h.l1_size),
        })?;
        let l2_off = l1e & OFFSET_MASK;
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        if l2_off != 0 && (l1e & COPIED != 0 || rc.get(&self.file, l2_off >> h.cluster_bits)? == 1)
        {
            return Ok(l2_off);
        }
        let table = if l2_off != 0 {
            // Shared with a snapshot: the active layer gets its own copy. The data clusters
            // are reached by as many L1 tables as before, so their refcounts stay; the old
            // table loses the active layer's reference once the copy is in place.
            p.frees.push(l2_off);
            self.l2_table(st, l2_off)?.clone()
        } else {
            let entries = usize::try_from(h.l2_entries()).expect("at most 2^18");
            vec![0u64; entries]
        };
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        let off = rc.alloc(&self.file)?;
        st.l1[l1_idx] = off | COPIED;
        st.l2_offsets.insert(off);
        st.l2_cache.insert(off, table);
        p.new_l2.push((l1_idx, off));
        Ok(off)
    }

    /// Records the host clusters a replaced entry `e` (mapped as `m`) referenced.
    fn drop_old(&self, m: Mapping, e: u64, frees: &mut Vec<u64>) {
        let cb = self.header.cluster_bits;
        match m {
            Mapping::Data(old) => frees.push(old),
            Mapping::Zero if e & OFFSET_MASK != 0 => frees.push(e & OFFSET_MASK),
            Mapping::Compressed(e) => {
                frees.extend(compressed::host_clusters(compressed::decode(e, cb), cb));
            }
            Mapping::Zero | Mapping::Unallocated => {}
        }
    }

    fn set_l2(
        &self,
        st: &mut State,
        l2_off: u64,
        idx: usize,
        e: u64,
        p: &mut Pending,
    ) -> Result<(), Error> {
        self.l2_table(st, l2_off)?[idx] = e;
        if !p.new_l2.iter().any(|&(_, o)| o == l2_off) {
            p.l2_updates.push((l2_off, idx));
        }
        Ok(())
    }

    /// Ends a request: its table updates join those waiting for the next flush (phase 2 of
    /// the module documentation), written out early only when too many are waiting.
    fn record(&self, st: &mut State, p: Pending) -> Result<(), Error> {
        st.pending.merge(p);
        let full = st.pending.l2_updates.len() > MAX_PENDING
            || st.pending.frees.len() > MAX_PENDING
            || st.pending.dirty_tables().len() > MAX_DIRTY_TABLES;
        if full {
            self.flush_metadata(st)?;
        }
        Ok(())
    }

    /// Phases 3 to 5 of the module documentation: makes the data and refcounts written so far
    /// durable, then writes the waiting table updates, then frees what they replaced.
    pub(super) fn flush_metadata(&self, st: &mut State) -> Result<(), Error> {
        let p = std::mem::take(&mut st.pending);
        if p.is_empty() {
            return Ok(());
        }
        let h = &self.header;
        let cs = h.cluster_size();
        if self.ordered_writes() {
            self.file.sync_data().map_err(Error::Flush)?;
        }
        for &(_, off) in &p.new_l2 {
            let table = self.l2_table(st, off)?;
            let raw: Vec<u8> = table.iter().flat_map(|v| v.to_be_bytes()).collect();
            self.file.write_all_at(&raw, off).map_err(Error::Write)?;
            st.file_len = st.file_len.max(off + cs);
        }
        // Entries next to each other in one table go out in one write, from the table in
        // memory (which holds the latest value of each).
        let mut updates = p.l2_updates;
        updates.sort_unstable();
        updates.dedup();
        let mut i = 0;
        while i < updates.len() {
            let (l2_off, first) = updates[i];
            let mut last = first;
            while updates
                .get(i + 1)
                .is_some_and(|&(t, j)| t == l2_off && j == last + 1)
            {
                last += 1;
                i += 1;
            }
            i += 1;
            let table = self.l2_table(st, l2_off)?;
            let raw: Vec<u8> = table[first..=last]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect();
            self.file
                .write_all_at(&raw, l2_off + first as u64 * 8)
                .map_err(Error::Write)?;
        }
        for &(l1_idx, off) in &p.new_l2 {
            let at = h.l1_table_offset + l1_idx as u64 * 8;
            let e = off | COPIED;
            self.file
                .write_all_at(&e.to_be_bytes(), at)
                .map_err(Error::Write)?;
        }
        if !p.frees.is_empty() {
            if self.ordered_writes() {
                self.file.sync_data().map_err(Error::Flush)?;
            }
            let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
            for off in p.frees {
                rc.decrement(&self.file, off >> h.cluster_bits)?;
            }
        }
        Ok(())
    }

    /// Whether `host` holds metadata (header, L1, L2, refcount table or blocks).
    fn is_metadata(&self, st: &State, host: u64) -> bool {
        let h = &self.header;
        let in_l1 =
            host >= h.l1_table_offset && host - h.l1_table_offset < u64::from(h.l1_size) * 8;
        host < h.cluster_size()
            || in_l1
            || st.l2_offsets.contains(&host)
            || st.refcounts.as_ref().is_some_and(|rc| rc.is_metadata(host))
    }

    /// The host cluster of entry `e` (mapped as `m`) if it can be written in place: data owned
    /// by the active layer alone.
    fn in_place(&self, st: &mut State, m: Mapping, e: u64) -> Result<Option<u64>, Error> {
        let Mapping::Data(host) = m else {
            return Ok(None);
        };
        let cb = self.header.cluster_bits;
        let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
        if e & COPIED == 0 && rc.get(&self.file, host >> cb)? != 1 {
            return Ok(None);
        }
        if self.is_metadata(st, host) {
            return Err(Error::Overlap {
                what: "data cluster",
                offset: host,
                other: "metadata",
            });
        }
        Ok(Some(host))
    }

    pub(super) fn write_locked(
        &self,
        st: &mut State,
        buf: &[u8],
        offset: u64,
    ) -> Result<(), Error> {
        let h = &self.header;
        let cs = h.cluster_size();
        let cs_usize = usize::try_from(cs).expect("cluster fits usize");
        let mut p = Pending::default();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_cluster = pos % cs;
            let n = usize::try_from((cs - in_cluster).min((buf.len() - done) as u64))
                .expect("bounded by the buffer length");
            let l1_idx =
                usize::try_from(pos / h.l1_coverage()).map_err(|_| Error::HostOffsetOverflow)?;
            let l2_off = self.l2_for_write(st, l1_idx, &mut p)?;
            let (m, _, l2_idx) = self.lookup(st, pos)?;
            let e = self.l2_table(st, l2_off)?[l2_idx];
            if let Some(host) = self.in_place(st, m, e)? {
                self.file
                    .write_all_at(&buf[done..done + n], host + in_cluster)
                    .map_err(Error::Write)?;
                done += n;
                continue;
            }
            if n == cs_usize {
                // Whole clusters that all need a new home: allocated together and written
                // with one pwrite, their L2 entries updated together at commit.
                let room = (buf.len() - done) / cs_usize;
                let table_left = usize::try_from(h.l2_entries()).expect("at most 2^18") - l2_idx;
                let mut k = 1;
                while k < room.min(table_left) {
                    let e = self.l2_table(st, l2_off)?[l2_idx + k];
                    let m = self.classify(e, st.file_len)?;
                    if self.in_place(st, m, e)?.is_some() {
                        break;
                    }
                    k += 1;
                }
                let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
                let host = rc.alloc_contiguous(&self.file, k as u64)?;
                self.file
                    .write_all_at(&buf[done..done + k * cs_usize], host)
                    .map_err(Error::Write)?;
                st.file_len = st.file_len.max(host + k as u64 * cs);
                for i in 0..k {
                    let e = self.l2_table(st, l2_off)?[l2_idx + i];
                    let m = self.classify(e, st.file_len)?;
                    self.drop_old(m, e, &mut p.frees);
                    let new = (host + i as u64 * cs) | COPIED;
                    self.set_l2(st, l2_off, l2_idx + i, new, &mut p)?;
                }
                done += k * cs_usize;
                continue;
            }
            // Part of a cluster: copy-on-write into a new one.
            let rc = st.refcounts.as_mut().ok_or(Error::ReadOnly)?;
            let host = rc.alloc(&self.file)?;
            let reads_zero = match m {
                Mapping::Zero => true,
                Mapping::Unallocated => self.backing.is_none(),
                _ => false,
            };
            if reads_zero && host >= st.file_len {
                // Over zeros, into a cluster never written before (allocation only moves
                // forward from the end of the file): only the new bytes are written, plus the
                // cluster's last byte (a zero) so that the file covers the whole cluster. That
                // byte is ours to write whatever lies beyond (a refcount block allocated just
                // now may), and it costs no syscall the confined worker lacks.
                self.file
                    .write_all_at(&buf[done..done + n], host + in_cluster)
                    .map_err(Error::Write)?;
                if in_cluster + (n as u64) < cs {
                    self.file
                        .write_all_at(&[0], host + cs - 1)
                        .map_err(Error::Write)?;
                }
            } else {
                let mut data = vec![0u8; cs_usize];
                let cluster_start = pos - in_cluster;
                let len = usize::try_from((h.size - cluster_start).min(cs)).expect("<= cs");
                self.read_mapped(m, &mut data[..len], cluster_start)?;
                let start = usize::try_from(in_cluster).expect("below the cluster size");
                data[start..start + n].copy_from_slice(&buf[done..done + n]);
                self.file.write_all_at(&data, host).map_err(Error::Write)?;
            }
            st.file_len = st.file_len.max(host + cs);
            self.drop_old(m, e, &mut p.frees);
            self.set_l2(st, l2_off, l2_idx, host | COPIED, &mut p)?;
            done += n;
        }
        self.record(st, p)
    }

    /// Makes `len` bytes at `offset` read as zeros: whole clusters become zero clusters
    /// (version 3), freeing what they held; partial clusters get zeros written.
    pub(super) fn zero_locked(&self, st: &mut State, offset: u64, len: u64) -> Result<(), Error> {
        let h = &self.header;
        let cs = h.cluster_size();
        let end = offset + len;
        let a = offset.next_multiple_of(cs).min(end);
        let b = if end == h.size { end } else { end - end % cs }.max(a);
        let zeros = vec![0u8; usize::try_from(cs).expect("cluster fits usize")];
        let write_zeros = |st: &mut State, from: u64, to: u64| -> Result<(), Error> {
            let mut pos = from;
            while pos < to {
                let n = (to - pos).min(cs - pos % cs);
                let n_usize = usize::try_from(n).expect("<= cs");
                self.write_locked(st, &zeros[..n_usize], pos)?;
                pos += n;
            }
            Ok(())
        };
        if h.version < 3 {
            return write_zeros(st, offset, end);
        }
        write_zeros(st, offset, a)?;
        let mut p = Pending::default();
        let mut pos = a;
        let mut last_l1 = None;
        let mut tables = 0usize;
        while pos < b {
            let l1_idx =
                usize::try_from(pos / h.l1_coverage()).map_err(|_| Error::HostOffsetOverflow)?;
            if last_l1 != Some(l1_idx) {
                last_l1 = Some(l1_idx);
                tables += 1;
                if tables > super::L2_CACHE {
                    // Bound the memory of a huge request: write out, then start afresh.
                    self.record(st, std::mem::take(&mut p))?;
                    self.flush_metadata(st)?;
                    st.l2_cache.clear();
                    tables = 1;
                }
            }
            let unmapped = st.l1.get(l1_idx).is_none_or(|e| e & OFFSET_MASK == 0);
            if unmapped && self.backing.is_none() {
                // A whole L1 entry's worth already reads as zeros.
                pos = ((l1_idx as u64 + 1) * h.l1_coverage()).min(b);
                continue;
            }
            let l2_off = self.l2_for_write(st, l1_idx, &mut p)?;
            let (m, _, l2_idx) = self.lookup(st, pos)?;
            let e = self.l2_table(st, l2_off)?[l2_idx];
            let reads_zero = match m {
                Mapping::Zero => e & OFFSET_MASK == 0,
                Mapping::Unallocated => self.backing.is_none(),
                _ => false,
            };
            if !reads_zero {
                self.drop_old(m, e, &mut p.frees);
                self.set_l2(st, l2_off, l2_idx, ZERO, &mut p)?;
            }
            pos = (pos + cs).min(b);
        }
        self.record(st, p)?;
        write_zeros(st, b, end)
    }
}
