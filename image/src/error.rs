//! The one error type of the crate: a variant per failure, naming the problem.

use std::io;

/// Everything that can go wrong while opening, reading, writing or creating an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to read the image file")]
    Read(#[source] io::Error),
    #[error("Failed to write the image file")]
    Write(#[source] io::Error),
    #[error("Failed to flush the image file")]
    Flush(#[source] io::Error),
    #[error("Failed to query the size of the image file")]
    FileSize(#[source] io::Error),
    #[error("Failed to resize the image file")]
    SetLen(#[source] io::Error),
    #[error("Failed to punch a hole in the image file")]
    Discard(#[source] nix::Error),
    #[error("An earlier write failed half-way; the image refuses further writes")]
    Poisoned,
    #[error("The image is read-only")]
    ReadOnly,
    #[error("Access of {len} bytes at offset {offset} lies beyond the virtual size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    #[error("qcow2 header is truncated ({0} bytes)")]
    TruncatedHeader(u64),
    #[error("Bad qcow2 magic {0:#010x}")]
    BadMagic(u32),
    #[error("Unsupported qcow2 version {0}")]
    UnsupportedVersion(u32),
    #[error("qcow2 header length {0} is invalid")]
    BadHeaderLength(u32),
    #[error("qcow2 cluster_bits {0} outside 9..=21")]
    BadClusterBits(u32),
    #[error("Encrypted qcow2 images (method {0}) are not supported")]
    Encrypted(u32),
    #[error("qcow2 refcount_order {0} is not supported")]
    UnsupportedRefcountOrder(u32),
    #[error("Unsupported incompatible qcow2 feature bit {bit} ({name})")]
    UnsupportedIncompatibleFeature { bit: u32, name: &'static str },
    #[error("Unsupported qcow2 compression type {0}")]
    UnsupportedCompressionType(u8),
    #[error("Virtual size {size} exceeds the maximum {max}")]
    VirtualSizeTooLarge { size: u64, max: u64 },
    #[error("L1 table of {l1_size} entries is too small for the virtual size (needs {needed})")]
    L1TooSmall { l1_size: u32, needed: u64 },
    #[error("L1 table of {0} entries is too large")]
    L1TooLarge(u32),
    #[error("Refcount table of {0} clusters is too large")]
    RefcountTableTooLarge(u32),
    #[error("{what} at {offset:#x} is not cluster-aligned")]
    Unaligned { what: &'static str, offset: u64 },
    #[error("{what} at {offset:#x} lies beyond the end of the file ({file_len:#x})")]
    BeyondEof {
        what: &'static str,
        offset: u64,
        file_len: u64,
    },
    #[error("{what} at {offset:#x} overlaps the {other}")]
    Overlap {
        what: &'static str,
        offset: u64,
        other: &'static str,
    },
    #[error("Backing file name is invalid (offset {offset:#x}, length {len})")]
    BadBackingName { offset: u64, len: u32 },
    #[error("Header extension {ext_type:#010x} of length {len} overruns the header cluster")]
    BadExtension { ext_type: u32, len: u32 },
    #[error("Too many internal snapshots ({0})")]
    TooManySnapshots(u32),
    #[error("Snapshot table is invalid: {0}")]
    BadSnapshotTable(&'static str),
    #[error("Image has internal snapshots and can only be opened read-only")]
    SnapshotsReadOnly,
    #[error("Refusing to repair leaks: the image has {0} corruptions")]
    RepairWithCorruption(u64),
    #[error("Snapshot name must be 1 to 65535 bytes")]
    BadSnapshotName,
    #[error("A snapshot named {0:?} already exists")]
    SnapshotExists(String),
    #[error("No snapshot with id or name {0:?}")]
    NoSuchSnapshot(String),
    #[error("Image is marked corrupt and can only be opened read-only")]
    MarkedCorrupt,
    #[error("Image was left dirty (lazy refcounts) and {0} corruptions remain after rebuilding its refcounts; it can only be opened read-only")]
    DirtyRepairFailed(u64),
    #[error("Refcount of cluster {cluster:#x} overflows")]
    RefcountOverflow { cluster: u64 },
    #[error("Refcount of cluster {cluster:#x} is already zero")]
    RefcountUnderflow { cluster: u64 },
    #[error("Image would grow beyond the maximum host offset")]
    HostOffsetOverflow,
    #[error("L2 table at {0:#x} is shared with a snapshot; writing it is not supported")]
    SharedL2(u64),
    #[error("Compressed cluster at {offset:#x} does not decompress to a full cluster")]
    Decompress { offset: u64 },

    #[error("Unsupported backing file format {0:?}")]
    UnsupportedBackingFormat(String),
    #[error("Backing chain deeper than {0} (loop?)")]
    BackingChainTooDeep(u32),
    #[error("Failed to open backing file {name:?}")]
    OpenBacking {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("Backing file {name:?} is invalid")]
    Backing {
        name: String,
        #[source]
        source: Box<Error>,
    },
    #[error("New size {0} is not a multiple of 512")]
    UnalignedSize(u64),
    #[error("Cannot resize an image that has internal snapshots")]
    ResizeWithSnapshots,
    #[error("Shrinking the image needs explicit permission")]
    ShrinkNotAllowed,
    #[error("Cannot shrink: the cluster at guest offset {offset:#x} holds data")]
    ShrinkAllocated { offset: u64 },
    #[error("Invalid image creation parameter: {0}")]
    BadCreateParam(&'static str),
}
