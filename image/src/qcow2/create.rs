//! Creating empty qcow2 (version 3) images.
//!
//! Layout, as qemu-img's: header cluster, refcount table, refcount block(s), L1 table.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{
    Header, MAX_BACKING_NAME, MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS, V3_HEADER_LEN,
};
use crate::{Error, Format};

/// Parameters of a new qcow2 image.
#[derive(Debug, Clone)]
pub struct Qcow2CreateOptions {
    /// Virtual size in bytes; rounded up to a multiple of 512 as qemu-img does.
    pub size: u64,
    /// log2 of the cluster size (9..=21); qemu's default is 16 (64 KiB).
    pub cluster_bits: u32,
    /// Backing file name, stored as given.
    pub backing_file: Option<String>,
    /// Format of the backing file, stored in the backing format header extension.
    pub backing_format: Option<Format>,
    /// Sets the lazy_refcounts compatible feature. Ward itself always writes refcounts
    /// eagerly (which the feature allows); other writers, like qemu, may then defer them and
    /// leave the dirty bit, which ward repairs when it opens the image for writing.
    pub lazy_refcounts: bool,
}

impl Qcow2CreateOptions {
    pub fn new(size: u64) -> Self {
        Qcow2CreateOptions {
            size,
            cluster_bits: 16,
            backing_file: None,
            backing_format: None,
            lazy_refcounts: false,
        }
    }
}

/// Writes an empty qcow2 image into `file`, truncating it first.
pub fn create_qcow2(file: &File, opts: &Qcow2CreateOptions) -> Result<(), Error> {
    let cb = opts.cluster_bits;
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cb) {
        return Err(Error::BadClusterBits(cb));
    }
    let cs = 1u64 << cb;
    let size = opts
        .size
        .checked_next_multiple_of(512)
        .ok_or(Error::BadCreateParam("size overflows"))?;
    let l1_entries = Header::l1_entries_for(size, cb);
    if l1_entries * 8 > MAX_L1_BYTES {
        let max = MAX_L1_BYTES / 8 * (1u64 << (2 * cb - 3));
        return Err(Error::VirtualSizeTooLarge { size, max });
    }
    if let Some(name) = &opts.backing_file {
        if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
            return Err(Error::BadCreateParam(
                "backing file name must be 1..=1023 bytes",
            ));
        }
    } else if opts.backing_format.is_some() {
        return Err(Error::BadCreateParam(
            "backing format without a backing file",
        ));
    }
    let backing_format = opts.backing_format.map(|f| f.name().to_string());
    let name_off = Header::backing_name_offset(V3_HEADER_LEN, backing_format.as_deref());
    let name_len = opts.backing_file.as_ref().map_or(0, |n| n.len() as u64);
    if name_off + name_len > cs {
        return Err(Error::BadCreateParam(
            "backing file name does not fit the header cluster",
        ));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    let epb = cs / 2;
    // Fixed point: table and blocks must cover every cluster, themselves included.
    let (mut rt_clusters, mut blocks) = (1u64, 1u64);
    let total = loop {
        let total = 1 + rt_clusters + blocks + l1_clusters;
        let need_blocks = total.div_ceil(epb);
        let need_rt = (need_blocks * 8).div_ceil(cs);
        if need_blocks == blocks && need_rt == rt_clusters {
            break total;
        }
        blocks = need_blocks;
        rt_clusters = need_rt;
    };
    let rt_off = cs;
    let blocks_off = rt_off + rt_clusters * cs;
    let l1_off = blocks_off + blocks * cs;
    let header = Header {
        version: 3,
        backing_file_offset: if opts.backing_file.is_some() {
            name_off
        } else {
            0
        },
        backing_file_size: u32::try_from(name_len).expect("at most 1023"),
        cluster_bits: cb,
        size,
        l1_size: u32::try_from(l1_entries).expect("bounded by MAX_L1_BYTES"),
        l1_table_offset: l1_off,
        refcount_table_offset: rt_off,
        refcount_table_clusters: u32::try_from(rt_clusters).expect("small"),
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: u64::from(opts.lazy_refcounts),
        autoclear_features: 0,
        refcount_order: 4,
        header_length: V3_HEADER_LEN,
        compression_type: 0,
        backing_file: opts.backing_file.clone(),
        backing_format,
    };
    crate::raw::reset_len(file, total * cs)?;
    let mut rt = vec![0u8; usize::try_from(rt_clusters * cs).expect("small")];
    for i in 0..blocks {
        let at = usize::try_from(i * 8).expect("small");
        rt[at..at + 8].copy_from_slice(&(blocks_off + i * cs).to_be_bytes());
    }
    file.write_all_at(&rt, rt_off).map_err(Error::Write)?;
    let mut rb = vec![0u8; usize::try_from(blocks * cs).expect("small")];
    for c in 0..total {
        let at = usize::try_from(c * 2).expect("small");
        rb[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    file.write_all_at(&rb, blocks_off).map_err(Error::Write)?;
    file.write_all_at(&header.to_bytes(), 0)
        .map_err(Error::Write)?;
    file.sync_all().map_err(Error::Flush)
}
