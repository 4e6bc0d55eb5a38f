//! qcow2 header: parsing with full validation, and serialisation for `create`.
//!
//! Every field read from the file is untrusted: arithmetic on them is checked and nothing is
//! allocated or sliced by a length that was not bounded first.

use crate::Error;

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Size of a version 2 header; version 3 headers are at least `V3_HEADER_MIN` bytes.
pub const V2_HEADER_LEN: u32 = 72;
pub const V3_HEADER_MIN: u32 = 104;
/// The header length this crate writes (qemu's, including the compression type byte).
pub const V3_HEADER_LEN: u32 = 112;

pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// qemu's limits: 32 MiB of L1 table, 8 MiB of refcount table, 1023-byte backing names.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_BACKING_NAME: u32 = 1023;
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Host offsets are 56 bits wide in L1/L2 entries.
pub const MAX_HOST_OFFSET: u64 = (1 << 56) - 1;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_NAMES: [&str; 5] = [
    "dirty",
    "corrupt",
    "external data file",
    "compression type",
    "extended L2 entries",
];
const INCOMPAT_SUPPORTED: u64 = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;

/// A validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    /// Name of the backing file, if any.
    pub backing_file: Option<String>,
    /// Contents of the backing format header extension, if present.
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

fn ranges_overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a_len != 0 && b_len != 0 && a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Bytes of virtual disk covered by one L1 entry.
    pub fn l1_coverage(&self) -> u64 {
        self.cluster_size() * self.l2_entries()
    }

    /// L1 entries needed to cover `size` bytes with `cluster_bits`.
    pub fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
        let coverage = 1u64 << (2 * cluster_bits - 3);
        size.div_ceil(coverage)
    }

    /// Parses and validates a header from the start of an image (`buf`, at most one cluster of
    /// it is looked at) whose file is `file_len` bytes long.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header, Error> {
        if buf.len() < V2_HEADER_LEN as usize {
            return Err(Error::TruncatedHeader(buf.len() as u64));
        }
        let magic = be32(buf, 0);
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion(version));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::BadClusterBits(cluster_bits));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
        };
        let crypt = be32(buf, 32);
        if crypt != 0 {
            return Err(Error::Encrypted(crypt));
        }
        if version == 3 {
            if buf.len() < V3_HEADER_MIN as usize {
                return Err(Error::TruncatedHeader(buf.len() as u64));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < V3_HEADER_MIN
                || u64::from(h.header_length) > cluster_size
                || !h.header_length.is_multiple_of(8)
            {
                return Err(Error::BadHeaderLength(h.header_length));
            }
            if buf.len() < h.header_length as usize {
                return Err(Error::TruncatedHeader(buf.len() as u64));
            }
            if h.header_length > V3_HEADER_MIN {
                h.compression_type = buf[104];
            }
        }
        h.validate_features()?;
        h.validate_layout(file_len)?;
        h.parse_backing_name(buf)?;
        h.parse_extensions(buf)?;
        Ok(h)
    }

    fn validate_features(&self) -> Result<(), Error> {
        if self.refcount_order > 6 {
            return Err(Error::UnsupportedRefcountOrder(self.refcount_order));
        }
        // Only zlib (type 0) is supported, and the compression type bit goes with the others.
        if self.compression_type != 0 {
            return Err(Error::UnsupportedCompressionType(self.compression_type));
        }
        let unsupported = self.incompatible_features & !INCOMPAT_SUPPORTED;
        if unsupported != 0 {
            let bit = unsupported.trailing_zeros();
            let name = INCOMPAT_NAMES
                .get(bit as usize)
                .copied()
                .unwrap_or("unknown");
            return Err(Error::UnsupportedIncompatibleFeature { bit, name });
        }
        Ok(())
    }

    fn validate_layout(&self, file_len: u64) -> Result<(), Error> {
        let cs = self.cluster_size();
        let max_l1_entries = MAX_L1_BYTES / 8;
        if u64::from(self.l1_size) > max_l1_entries {
            return Err(Error::L1TooLarge(self.l1_size));
        }
        let max_size = max_l1_entries
            .checked_mul(self.l1_coverage())
            .expect("2^22 * 2^39 fits")
            .min(MAX_HOST_OFFSET);
        if self.size > max_size {
            return Err(Error::VirtualSizeTooLarge {
                size: self.size,
                max: max_size,
            });
        }
        let needed = Self::l1_entries_for(self.size, self.cluster_bits);
        if u64::from(self.l1_size) < needed {
            return Err(Error::L1TooSmall {
                l1_size: self.l1_size,
                needed,
            });
        }
        let l1_len = u64::from(self.l1_size) * 8;
        if l1_len > 0 {
            check_region("L1 table", self.l1_table_offset, l1_len, cs, file_len)?;
        }
        if self.refcount_table_clusters == 0 {
            return Err(Error::BeyondEof {
                what: "refcount table (empty)",
                offset: self.refcount_table_offset,
                file_len,
            });
        }
        let rt_len = u64::from(self.refcount_table_clusters) * cs;
        if rt_len > MAX_REFTABLE_BYTES.max(cs) {
            return Err(Error::RefcountTableTooLarge(self.refcount_table_clusters));
        }
        check_region(
            "refcount table",
            self.refcount_table_offset,
            rt_len,
            cs,
            file_len,
        )?;
        for (what, off, len) in [
            ("L1 table", self.l1_table_offset, l1_len),
            ("refcount table", self.refcount_table_offset, rt_len),
        ] {
            if ranges_overlap(off, len, 0, cs) {
                return Err(Error::Overlap {
                    what,
                    offset: off,
                    other: "header",
                });
            }
        }
        if ranges_overlap(
            self.l1_table_offset,
            l1_len,
            self.refcount_table_offset,
            rt_len,
        ) {
            return Err(Error::Overlap {
                what: "refcount table",
                offset: self.refcount_table_offset,
                other: "L1 table",
            });
        }
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::TooManySnapshots(self.nb_snapshots));
        }
        if self.nb_snapshots > 0 {
            check_region("snapshot table", self.snapshots_offset, 1, cs, file_len)?;
        }
        Ok(())
    }

    fn parse_backing_name(&mut self, buf: &[u8]) -> Result<(), Error> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let (offset, len) = (self.backing_file_offset, self.backing_file_size);
        let bad = Error::BadBackingName { offset, len };
        if len == 0 || len > MAX_BACKING_NAME {
            return Err(bad);
        }
        let end = offset
            .checked_add(u64::from(len))
            .ok_or(Error::BadBackingName { offset, len })?;
        if end > buf.len() as u64 || end > self.cluster_size() {
            return Err(bad);
        }
        let name = &buf[offset as usize..end as usize];
        self.backing_file = Some(String::from_utf8(name.to_vec()).map_err(|_| bad)?);
        Ok(())
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<(), Error> {
        let limit = if self.backing_file_offset != 0 {
            self.backing_file_offset.min(buf.len() as u64)
        } else {
            (buf.len() as u64).min(self.cluster_size())
        };
        let limit = usize::try_from(limit).expect("bounded by the buffer length");
        let mut at = self.header_length as usize;
        while at + 8 <= limit {
            let ext_type = be32(buf, at);
            let len = be32(buf, at + 4);
            if ext_type == EXT_END {
                return Ok(());
            }
            let start = at + 8;
            let padded = (u64::from(len) + 7) & !7;
            if padded > (limit - start) as u64 {
                return Err(Error::BadExtension { ext_type, len });
            }
            let data = &buf[start..start + len as usize];
            if ext_type == EXT_BACKING_FORMAT {
                let s = String::from_utf8(data.to_vec())
                    .map_err(|_| Error::BadExtension { ext_type, len })?;
                self.backing_format = Some(s);
            }
            // The feature table and unknown extensions are skipped.
            at = start + padded as usize;
        }
        Ok(())
    }

    /// Serialises the header, its extensions and the backing name into the first cluster.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.cluster_size() as usize];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        b[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
        b[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
        b[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
        b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
        b[100..104].copy_from_slice(&self.header_length.to_be_bytes());
        b[104] = self.compression_type;
        let mut at = self.header_length as usize;
        if let Some(fmt) = &self.backing_format {
            b[at..at + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&(fmt.len() as u32).to_be_bytes());
            b[at + 8..at + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
            at += 8 + ((fmt.len() + 7) & !7);
        }
        // End-of-extensions marker (8 zero bytes) is already there.
        at += 8;
        if let Some(name) = &self.backing_file {
            debug_assert_eq!(at as u64, self.backing_file_offset);
            b[at..at + name.len()].copy_from_slice(name.as_bytes());
        }
        b
    }

    /// Where `to_bytes` puts the backing file name.
    pub fn backing_name_offset(header_length: u32, backing_format: Option<&str>) -> u64 {
        let ext = backing_format.map_or(0, |f| 8 + ((f.len() as u64 + 7) & !7));
        u64::from(header_length) + ext + 8
    }
}

/// Checks that a metadata region is cluster-aligned, and lies inside the file.
pub fn check_region(
    what: &'static str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), Error> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(Error::Unaligned { what, offset });
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len && offset <= MAX_HOST_OFFSET => Ok(()),
        _ => Err(Error::BeyondEof {
            what,
            offset,
            file_len,
        }),
    }
}
