//! Internal snapshots: reading and validating the snapshot table.

use super::header::{check_region, MAX_HOST_OFFSET};
use super::Qcow2Image;
use crate::raw::read_exact_or_zero;
use crate::Error;

/// Fixed part of a snapshot table entry.
const ENTRY_FIXED: usize = 40;
/// qemu's limits on the extra data of one entry and on the whole table.
const MAX_EXTRA: u32 = 1024;
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// One internal snapshot, as listed by `qemu-img snapshot -l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    /// Virtual disk size when the snapshot was taken (version 3 extra data).
    pub disk_size: Option<u64>,
    /// Instruction count when the snapshot was taken (extra data), if recorded.
    pub icount: Option<u64>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

impl Qcow2Image {
    /// Lists the internal snapshots, validating the table as it goes.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, Error> {
        Ok(self.snapshot_table()?.0)
    }

    /// The snapshots and the length in bytes of the table holding them.
    pub(crate) fn snapshot_table(&self) -> Result<(Vec<Snapshot>, u64), Error> {
        let h = self.header();
        let cs = h.cluster_size();
        let file_len = self.file.metadata().map_err(Error::FileSize)?.len();
        let mut list = Vec::new();
        if h.nb_snapshots == 0 {
            return Ok((list, 0));
        }
        let mut at = h.snapshots_offset;
        check_region("snapshot table", at, 0, cs, file_len)?;
        for _ in 0..h.nb_snapshots {
            if at - h.snapshots_offset > MAX_TABLE_BYTES {
                return Err(Error::BadSnapshotTable("table larger than 64 MiB"));
            }
            let mut fixed = [0u8; ENTRY_FIXED];
            read_within(self, &mut fixed, at, file_len)?;
            let extra = be32(&fixed, 36);
            if extra > MAX_EXTRA {
                return Err(Error::BadSnapshotTable("extra data too large"));
            }
            let (id_len, name_len) = (be16(&fixed, 12), be16(&fixed, 14));
            let var_len = extra as usize + usize::from(id_len) + usize::from(name_len);
            let mut var = vec![0u8; var_len];
            read_within(self, &mut var, at + ENTRY_FIXED as u64, file_len)?;
            let extra = extra as usize;
            let vm_state_large = (extra >= 8).then(|| be64(&var, 0));
            let disk_size = (extra >= 16).then(|| be64(&var, 8));
            let icount = (extra >= 24)
                .then(|| be64(&var, 16))
                .filter(|&v| v != u64::MAX);
            let id = &var[extra..extra + usize::from(id_len)];
            let name = &var[extra + usize::from(id_len)..];
            let snap = Snapshot {
                id: String::from_utf8_lossy(id).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
                l1_table_offset: be64(&fixed, 0),
                l1_size: be32(&fixed, 8),
                date_sec: be32(&fixed, 16),
                date_nsec: be32(&fixed, 20),
                vm_clock_nsec: be64(&fixed, 24),
                vm_state_size: vm_state_large.unwrap_or(u64::from(be32(&fixed, 32))),
                disk_size,
                icount,
            };
            if u64::from(snap.l1_size) * 8 > super::header::MAX_L1_BYTES {
                return Err(Error::L1TooLarge(snap.l1_size));
            }
            check_region(
                "snapshot L1 table",
                snap.l1_table_offset,
                u64::from(snap.l1_size) * 8,
                cs,
                file_len,
            )?;
            list.push(snap);
            at += (ENTRY_FIXED + var_len).next_multiple_of(8) as u64;
        }
        Ok((list, at - h.snapshots_offset))
    }
}

fn read_within(img: &Qcow2Image, buf: &mut [u8], at: u64, file_len: u64) -> Result<(), Error> {
    match at.checked_add(buf.len() as u64) {
        Some(end) if end <= file_len && end <= MAX_HOST_OFFSET => {
            read_exact_or_zero(&img.file, buf, at)
        }
        _ => Err(Error::BadSnapshotTable(
            "entry lies beyond the end of the file",
        )),
    }
}
