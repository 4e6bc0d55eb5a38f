//! Compressed clusters: raw deflate, as qemu writes them (`qemu-img convert -c`).

use flate2::{Decompress, FlushDecompress};

use crate::Error;

/// Where a compressed cluster's data lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedExtent {
    pub offset: u64,
    pub len: u64,
}

/// Decodes a compressed L2 entry (bit 62 set) of an image with `cluster_bits`.
pub fn decode(entry: u64, cluster_bits: u32) -> CompressedExtent {
    let shift = 62 - (cluster_bits - 8);
    let offset = entry & ((1u64 << shift) - 1);
    let sectors_mask = (1u64 << (cluster_bits - 8)) - 1;
    let sectors = ((entry >> shift) & sectors_mask) + 1;
    // At most 2^(cluster_bits + 1) bytes: bounded whatever the entry holds.
    let len = sectors * 512 - (offset & 511);
    CompressedExtent { offset, len }
}

/// Host clusters (by offset) the compressed data touches.
pub fn host_clusters(ext: CompressedExtent, cluster_bits: u32) -> impl Iterator<Item = u64> {
    let first = ext.offset >> cluster_bits;
    let last = (ext.offset + ext.len - 1) >> cluster_bits;
    (first..=last).map(move |c| c << cluster_bits)
}

/// Inflates `input` into `out`, which must come out completely filled.
pub fn inflate(input: &[u8], out: &mut [u8], offset: u64) -> Result<(), Error> {
    let mut d = Decompress::new(false);
    match d.decompress(input, out, FlushDecompress::Finish) {
        Ok(_) if d.total_out() == out.len() as u64 => Ok(()),
        _ => Err(Error::Decompress { offset }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_64k() {
        // 64 KiB clusters: 14 bits of sector count above a 54-bit offset... shift 54.
        let e = (1u64 << 62) | (3u64 << 54) | 0x1_0200;
        let ext = decode(e, 16);
        assert_eq!(ext.offset, 0x1_0200);
        assert_eq!(ext.len, 4 * 512);
        assert_eq!(host_clusters(ext, 16).collect::<Vec<_>>(), vec![0x1_0000]);
    }

    #[test]
    fn inflate_rejects_garbage_and_short() {
        let mut out = vec![0u8; 512];
        assert!(inflate(&[0xff; 16], &mut out, 0).is_err());
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut buf = vec![0u8; 1024];
        c.compress(&[7u8; 100], &mut buf, flate2::FlushCompress::Finish)
            .unwrap();
        let n = usize::try_from(c.total_out()).unwrap();
        assert!(inflate(&buf[..n], &mut out, 0).is_err());
        let mut out = vec![0u8; 100];
        inflate(&buf[..n], &mut out, 0).unwrap();
        assert!(out.iter().all(|&b| b == 7));
    }
}
