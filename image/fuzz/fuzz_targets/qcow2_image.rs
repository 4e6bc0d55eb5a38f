//! A whole qcow2 image from arbitrary bytes: opened read-only (format detection, reads, map,
//! check, snapshots), then read-write (a few writes, each read back, a flush and a re-check),
//! then read-only again to see the writes persisted. The file is an anonymous memfd, so nothing
//! is left behind, and every backing file is refused.
//!
//! Work per input is bounded: at most a few MiB are read, and `map`, `check`, `repair_leaks`
//! and the writable open of a dirty image (which walk table entries: see `map_affordable` and
//! `walk_cost`) are skipped when the tables make them large. A mutated image may be refused
//! anywhere with an error; what must not happen is a panic, an abort, or a hang. An image
//! `check` finds clean must also behave: writes that succeed read back, persist, and leave it
//! clean (but for COPIED flags, see `corrupt_beyond_flags`).

#![no_main]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use ward_image::qcow2::CheckReport;
use ward_image::{DiskImage, Qcow2Image};

/// Bytes read from the start of the disk, and from its end.
const READ_HEAD: u64 = 1 << 20;
const READ_TAIL: u64 = 256 << 10;
/// Reads go in pieces of this many bytes (odd, so they straddle clusters).
const READ_PIECE: u64 = 65_536 + 511;
/// Map extents whose start is read, and how much of each.
const EXTENT_READS: usize = 64;
const EXTENT_READ: u64 = 4096;
/// Table entries `map` and a walk over every table may visit.
const MAX_WALK: u64 = 1 << 20;

fn refuse_backing(name: &str) -> io::Result<File> {
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("the fuzz target opens no backing file ({name:?})"),
    ))
}

fn memfd(data: &[u8]) -> File {
    let fd = memfd_create(c"ward-image-fuzz", MemFdCreateFlag::MFD_CLOEXEC)
        .expect("memfd_create works on Linux");
    let file = File::from(fd);
    file.write_all_at(data, 0).expect("memfd takes the input");
    file
}

fn open(file: &File, readonly: bool) -> Option<Qcow2Image> {
    let dup = file.try_clone().expect("dup of the memfd");
    Qcow2Image::open(dup, readonly, &mut refuse_backing).ok()
}

/// Whether `map` stays within the budget: it visits every cluster under an allocated L1 entry.
fn map_affordable(img: &Qcow2Image) -> bool {
    img.virtual_size() / img.cluster_size() <= MAX_WALK
}

/// L2 entries a walk over every table visits at most: `check`, and the repair of a dirty image
/// on a writable open, read every L2 table once per L1 entry (active and snapshots) reaching
/// it, so a small crafted image can make them slow (as qemu-img check). `None` when the
/// snapshot table is unreadable.
fn walk_cost(img: &Qcow2Image) -> Option<u64> {
    let snapshots = img.snapshots().ok()?;
    let l1_entries = u64::from(img.header().l1_size)
        + snapshots.iter().map(|s| u64::from(s.l1_size)).sum::<u64>();
    Some(l1_entries.saturating_mul(img.header().l2_entries()))
}

/// Runs `check` when its walk stays within the budget.
fn check_within_budget(img: &Qcow2Image) -> Option<CheckReport> {
    if walk_cost(img)? > MAX_WALK {
        return None;
    }
    img.check().ok()
}

/// Whether a check found more than COPIED flags missing on clusters that became unshared.
/// That one is expected: when two active entries share a cluster (refcount 2, which a repair
/// leaves and check accepts) and a write copies one of them away, the other is left the only
/// owner without the flag, as qemu leaves it; harmless, since the write path then looks at the
/// refcount.
fn corrupt_beyond_flags(r: &CheckReport) -> bool {
    let flags = r
        .messages
        .iter()
        .filter(|m| m.contains("OFLAG_COPIED") && m.ends_with("refcount=1"))
        .count();
    r.corruptions > flags as u64 || r.leaks > 0
}

/// Reads the head and tail of the disk, and the start of mapped extents.
fn read_around(img: &Qcow2Image) {
    let size = img.virtual_size();
    let mut ranges = vec![(0, size.min(READ_HEAD))];
    let tail = size.min(READ_TAIL);
    ranges.push((size - tail, tail));
    if map_affordable(img) {
        if let Ok(extents) = img.map() {
            let mut end = 0;
            for e in &extents {
                assert_eq!(e.start, end, "map extents are contiguous");
                assert!(e.length > 0, "map extents are not empty");
                end = e.start + e.length;
            }
            assert_eq!(end, size, "map covers the disk");
            for e in extents.iter().take(EXTENT_READS) {
                ranges.push((e.start, e.length.min(EXTENT_READ)));
            }
        }
    }
    let mut buf = vec![0u8; READ_PIECE as usize];
    for (start, len) in ranges {
        let mut pos = start;
        while pos < start + len {
            let n = (start + len - pos).min(READ_PIECE);
            if img.read_at(&mut buf[..n as usize], pos).is_err() {
                break;
            }
            pos += n;
        }
    }
}

/// One write to the disk, as the fuzz target issues them.
#[derive(Debug)]
enum Op {
    Data { offset: u64, fill: u8, len: u64 },
    Zeroes { offset: u64, len: u64 },
}

impl Op {
    fn range(&self) -> (u64, u64) {
        match *self {
            Op::Data { offset, len, .. } | Op::Zeroes { offset, len } => (offset, len),
        }
    }

    fn expected(&self) -> u8 {
        match *self {
            Op::Data { fill, .. } => fill,
            Op::Zeroes { .. } => 0,
        }
    }

    fn apply(&self, img: &Qcow2Image) -> bool {
        match *self {
            Op::Data { offset, fill, len } => {
                img.write_at(&vec![fill; len as usize], offset).is_ok()
            }
            Op::Zeroes { offset, len } => img.write_zeroes(offset, len).is_ok(),
        }
    }

    /// Whether the range reads back as written (`None` when the read fails).
    fn reads_back(&self, img: &Qcow2Image) -> Option<bool> {
        let (offset, len) = self.range();
        let mut buf = vec![!self.expected(); len as usize];
        img.read_at(&mut buf, offset).ok()?;
        Some(buf.iter().all(|&b| b == self.expected()))
    }
}

/// A partial-cluster write, a run of whole clusters, and zeroes across cluster boundaries,
/// placed by the disk's size and all inside it.
fn ops(size: u64, cs: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    let at = |offset: u64, want: u64| (offset, want.min(size - offset));
    let (offset, len) = at(size / 3, 1500);
    ops.push(Op::Data {
        offset,
        fill: 0xa5,
        len,
    });
    let (offset, len) = at((size / 2) / cs * cs, (4 * cs).min(256 << 10));
    ops.push(Op::Data {
        offset,
        fill: 0x3c,
        len,
    });
    let (offset, len) = at(size / 5, 3 * cs + 100);
    ops.push(Op::Zeroes { offset, len });
    ops.retain(|op| op.range().1 > 0);
    ops
}

fuzz_target!(|data: &[u8]| {
    let file = memfd(data);
    // Format detection as the launcher does it: a qcow2 image, or else raw bytes.
    let dup = file.try_clone().expect("dup of the memfd");
    if let Ok(disk) = ward_image::open(dup, None, true, &mut refuse_backing) {
        let mut buf = vec![0u8; disk.virtual_size().min(READ_PIECE) as usize];
        let _ = disk.read_at(&mut buf, 0);
    }
    let Some(img) = open(&file, true) else {
        return; // a writable open checks all a read-only one does, and more
    };
    read_around(&img);
    let _ = check_within_budget(&img);
    // A writable open of a dirty image walks every table to repair it.
    if img.is_dirty() && walk_cost(&img).is_none_or(|c| c > MAX_WALK) {
        return;
    }
    drop(img);

    // A writable open may change the file: start again from the input.
    let file = memfd(data);
    let Some(img) = open(&file, false) else {
        return;
    };
    let clean = check_within_budget(&img).is_some_and(|r| r.is_clean());
    let mut all_ok = true;
    let ops = ops(img.virtual_size(), img.cluster_size());
    for op in &ops {
        let ok = op.apply(&img);
        all_ok &= ok;
        if clean && ok {
            assert_eq!(op.reads_back(&img), Some(true), "{op:?} reads back");
        }
    }
    all_ok &= img.flush().is_ok();
    read_around(&img);
    let after = check_within_budget(&img);
    if clean && all_ok {
        let after = after.expect("a clean image stays checkable");
        assert!(
            !corrupt_beyond_flags(&after),
            "writes to a clean image left {after:?}"
        );
    }
    if walk_cost(&img).is_some_and(|c| c <= MAX_WALK) {
        let _ = img.repair_leaks();
    }
    drop(img);

    let Some(img) = open(&file, true) else {
        assert!(!(clean && all_ok), "a clean image reopens after writes");
        return;
    };
    read_around(&img);
    if clean && all_ok {
        // Later writes win where ranges overlap.
        for (i, op) in ops.iter().enumerate() {
            let (offset, len) = op.range();
            let overlapped = ops[i + 1..].iter().any(|later| {
                let (o, l) = later.range();
                o < offset + len && offset < o + l
            });
            if !overlapped {
                assert_eq!(op.reads_back(&img), Some(true), "{op:?} persisted");
            }
        }
    }
});
