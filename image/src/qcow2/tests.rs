//! Header parsing and every malformed-image case, plus a small mutation fuzz.

use std::sync::atomic::{AtomicU32, Ordering};

use super::header::{EXT_BACKING_FORMAT, V3_HEADER_LEN};
use super::*;

const CS: u64 = 0x1_0000;
const RT: u64 = CS;
const L1: u64 = 3 * CS;

pub(super) fn temp_file() -> File {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ward-image-unit-{}-{n}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create temp file");
    std::fs::remove_file(&path).expect("unlink temp file");
    f
}

/// A fresh 64 KiB-cluster image of 1 GiB: header, refcount table, block, L1 (one cluster).
pub(super) fn fresh() -> File {
    let f = temp_file();
    create_qcow2(&f, &Qcow2CreateOptions::new(1 << 30)).unwrap();
    f
}

pub(super) fn poke(f: &File, at: u64, bytes: &[u8]) {
    f.write_all_at(bytes, at).unwrap();
}

pub(super) fn no_backing(_: &str) -> std::io::Result<File> {
    Err(std::io::Error::other("no backing expected"))
}

fn open_ro(f: File) -> Result<Qcow2Image, Error> {
    Qcow2Image::open(f, true, &mut no_backing)
}

fn open_rw(f: File) -> Result<Qcow2Image, Error> {
    Qcow2Image::open(f, false, &mut no_backing)
}

fn header_bytes(f: &File) -> Vec<u8> {
    let mut b = vec![0u8; CS as usize];
    f.read_exact_at(&mut b, 0).unwrap();
    b
}

fn parse_with(edit: impl FnOnce(&mut Vec<u8>)) -> Result<Header, Error> {
    let mut b = header_bytes(&fresh());
    edit(&mut b);
    Header::parse(&b, 4 * CS)
}

#[test]
fn fresh_header_round_trips() {
    let f = fresh();
    let h = Header::parse(&header_bytes(&f), 4 * CS).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.cluster_bits, 16);
    assert_eq!(h.size, 1 << 30);
    assert_eq!(h.l1_size, 2);
    assert_eq!((h.refcount_table_offset, h.l1_table_offset), (RT, L1));
    assert_eq!(h.header_length, V3_HEADER_LEN);
    assert_eq!(Header::parse(&h.to_bytes(), 4 * CS).unwrap(), h);
    let img = open_rw(f).unwrap();
    let mut buf = vec![1u8; 4096];
    img.read_at(&mut buf, 5000).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn truncated_header() {
    let b = header_bytes(&fresh());
    assert!(matches!(
        Header::parse(&b[..50], 50),
        Err(Error::TruncatedHeader(50))
    ));
    assert!(matches!(
        Header::parse(&b[..80], 80),
        Err(Error::TruncatedHeader(80))
    ));
    let f = temp_file();
    poke(&f, 0, &b[..90]);
    assert!(matches!(open_ro(f), Err(Error::TruncatedHeader(90))));
}

#[test]
fn bad_magic_and_version() {
    assert!(matches!(
        parse_with(|b| b[0] = b'X'),
        Err(Error::BadMagic(_))
    ));
    assert!(matches!(
        parse_with(|b| b[7] = 4),
        Err(Error::UnsupportedVersion(4))
    ));
    assert!(matches!(
        parse_with(|b| b[7] = 1),
        Err(Error::UnsupportedVersion(1))
    ));
}

#[test]
fn cluster_bits_out_of_range() {
    assert!(matches!(
        parse_with(|b| b[23] = 8),
        Err(Error::BadClusterBits(8))
    ));
    assert!(matches!(
        parse_with(|b| b[23] = 22),
        Err(Error::BadClusterBits(22))
    ));
    assert!(matches!(
        parse_with(|b| b[20..24].copy_from_slice(&u32::MAX.to_be_bytes())),
        Err(Error::BadClusterBits(u32::MAX))
    ));
}

#[test]
fn header_length_and_encryption() {
    assert!(matches!(
        parse_with(|b| b[103] = 96),
        Err(Error::BadHeaderLength(96))
    ));
    assert!(matches!(
        parse_with(|b| b[103] = 105),
        Err(Error::BadHeaderLength(105))
    ));
    assert!(matches!(
        parse_with(|b| b[35] = 2),
        Err(Error::Encrypted(2))
    ));
}

#[test]
fn size_overflow_and_l1_consistency() {
    let r = parse_with(|b| b[24..32].copy_from_slice(&u64::MAX.to_be_bytes()));
    assert!(matches!(r, Err(Error::VirtualSizeTooLarge { .. })), "{r:?}");
    let r = parse_with(|b| b[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes()));
    assert!(
        matches!(
            r,
            Err(Error::L1TooSmall {
                l1_size: 2,
                needed: 2048
            })
        ),
        "{r:?}"
    );
    let r = parse_with(|b| b[36..40].copy_from_slice(&u32::MAX.to_be_bytes()));
    assert!(matches!(r, Err(Error::L1TooLarge(u32::MAX))), "{r:?}");
}

#[test]
fn l1_table_beyond_eof_or_unaligned() {
    let r = parse_with(|b| b[40..48].copy_from_slice(&(100 * CS).to_be_bytes()));
    assert!(
        matches!(
            r,
            Err(Error::BeyondEof {
                what: "L1 table",
                ..
            })
        ),
        "{r:?}"
    );
    let r = parse_with(|b| b[40..48].copy_from_slice(&(!0xffff_u64).to_be_bytes()));
    assert!(
        matches!(
            r,
            Err(Error::BeyondEof {
                what: "L1 table",
                ..
            })
        ),
        "{r:?}"
    );
    let r = parse_with(|b| b[40..48].copy_from_slice(&(L1 + 8).to_be_bytes()));
    assert!(
        matches!(
            r,
            Err(Error::Unaligned {
                what: "L1 table",
                ..
            })
        ),
        "{r:?}"
    );
    // A truncated file: the L1 table is gone.
    let f = fresh();
    f.set_len(3 * CS).unwrap();
    assert!(matches!(
        open_ro(f),
        Err(Error::BeyondEof {
            what: "L1 table",
            ..
        })
    ));
}

#[test]
fn refcount_table_overlaps() {
    let r = parse_with(|b| b[48..56].copy_from_slice(&L1.to_be_bytes()));
    assert!(
        matches!(
            r,
            Err(Error::Overlap {
                what: "refcount table",
                other: "L1 table",
                ..
            })
        ),
        "{r:?}"
    );
    let r = parse_with(|b| b[48..56].copy_from_slice(&0u64.to_be_bytes()));
    assert!(
        matches!(
            r,
            Err(Error::Overlap {
                other: "header",
                ..
            })
        ),
        "{r:?}"
    );
    let r = parse_with(|b| b[56..60].copy_from_slice(&0u32.to_be_bytes()));
    assert!(matches!(r, Err(Error::BeyondEof { .. })), "{r:?}");
    let r = parse_with(|b| b[56..60].copy_from_slice(&1000u32.to_be_bytes()));
    assert!(
        matches!(r, Err(Error::RefcountTableTooLarge(1000))),
        "{r:?}"
    );
}

#[test]
fn incompatible_features_are_named() {
    let r = parse_with(|b| b[79] = 1 << 2);
    assert!(
        matches!(
            r,
            Err(Error::UnsupportedIncompatibleFeature {
                bit: 2,
                name: "external data file"
            })
        ),
        "{r:?}"
    );
    let r = parse_with(|b| b[79] = 1 << 4);
    assert!(
        matches!(r, Err(Error::UnsupportedIncompatibleFeature { bit: 4, .. })),
        "{r:?}"
    );
    let r = parse_with(|b| b[74] = 1);
    assert!(
        matches!(
            r,
            Err(Error::UnsupportedIncompatibleFeature {
                bit: 40,
                name: "unknown"
            })
        ),
        "{r:?}"
    );
    let r = parse_with(|b| b[79] = 1 << 3);
    assert!(
        matches!(r, Err(Error::UnsupportedIncompatibleFeature { bit: 3, .. })),
        "{r:?}"
    );
}

#[test]
fn compression_type_and_refcount_order() {
    let r = parse_with(|b| b[104] = 1);
    assert!(
        matches!(r, Err(Error::UnsupportedCompressionType(1))),
        "{r:?}"
    );
    let r = parse_with(|b| b[99] = 7);
    assert!(
        matches!(r, Err(Error::UnsupportedRefcountOrder(7))),
        "{r:?}"
    );
    // 32-bit refcounts: readable, not writable.
    let f = fresh();
    poke(&f, 99, &[5]);
    let g = f.try_clone().unwrap();
    assert!(matches!(
        open_rw(f),
        Err(Error::UnsupportedRefcountOrder(5))
    ));
    open_ro(g).unwrap();
}

#[test]
fn corrupt_is_read_only() {
    let f = fresh();
    poke(&f, 79, &[2]);
    let g = f.try_clone().unwrap();
    let r = open_rw(f);
    assert!(matches!(r, Err(Error::MarkedCorrupt)), "{r:?}");
    let img = open_ro(g).unwrap();
    assert!(matches!(img.write_at(&[1], 0), Err(Error::ReadOnly)));
}

#[test]
fn backing_name_and_extensions() {
    let r = parse_with(|b| {
        b[8..16].copy_from_slice(&(CS - 4).to_be_bytes());
        b[16..20].copy_from_slice(&100u32.to_be_bytes());
    });
    assert!(matches!(r, Err(Error::BadBackingName { .. })), "{r:?}");
    let r = parse_with(|b| {
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        b[16..20].copy_from_slice(&10u32.to_be_bytes());
    });
    assert!(matches!(r, Err(Error::BadBackingName { .. })), "{r:?}");
    let r = parse_with(|b| {
        let at = V3_HEADER_LEN as usize;
        b[at..at + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
    });
    assert!(matches!(r, Err(Error::BadExtension { .. })), "{r:?}");
    // Unknown extensions are skipped.
    let h = parse_with(|b| {
        let at = V3_HEADER_LEN as usize;
        b[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&3u32.to_be_bytes());
    })
    .unwrap();
    assert_eq!(h.backing_format, None);
}

#[test]
fn bad_backing_format_and_missing_backing() {
    let f = temp_file();
    let mut o = Qcow2CreateOptions::new(1 << 20);
    o.backing_file = Some("base".into());
    create_qcow2(&f, &o).unwrap();
    let r = open_ro(f.try_clone().unwrap());
    assert!(matches!(r, Err(Error::OpenBacking { .. })), "{r:?}");
    o.backing_format = Some(Format::Qcow2);
    create_qcow2(&f, &o).unwrap();
    let base = temp_file();
    base.set_len(1 << 20).unwrap();
    // Declared qcow2, but the base is raw zeros: the chain is refused.
    let r = Qcow2Image::open(f, true, &mut |_: &str| base.try_clone());
    assert!(matches!(r, Err(Error::Backing { .. })), "{r:?}");
}

#[test]
fn l2_table_beyond_eof_or_overlapping() {
    for (l2, want) in [
        (100 * CS, "eof"),
        (L1, "L1 table"),
        (RT, "refcount table"),
        (0x200, "align"),
    ] {
        let f = fresh();
        poke(&f, L1, &(l2 | COPIED).to_be_bytes());
        let r = open_ro(f);
        if want == "eof" {
            assert!(
                matches!(
                    r,
                    Err(Error::BeyondEof {
                        what: "L2 table",
                        ..
                    })
                ),
                "{r:?}"
            );
        } else if want == "align" {
            assert!(matches!(r, Err(Error::Unaligned { .. })), "{r:?}");
        } else {
            assert!(
                matches!(r, Err(Error::Overlap { other, .. }) if other == want),
                "{r:?}"
            );
        }
    }
    // An L2 table on a refcount block is caught when opening for writing.
    let f = fresh();
    poke(&f, L1, &((2 * CS) | COPIED).to_be_bytes());
    let r = open_rw(f);
    assert!(
        matches!(
            r,
            Err(Error::Overlap {
                what: "L2 table",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn refcount_block_overlapping_l1_is_refused_for_writing() {
    let f = fresh();
    poke(&f, RT, &L1.to_be_bytes());
    let r = open_rw(f);
    assert!(
        matches!(
            r,
            Err(Error::Overlap {
                what: "refcount block",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn data_cluster_beyond_eof_or_on_metadata() {
    let f = fresh();
    f.set_len(5 * CS).unwrap();
    poke(&f, L1, &((4 * CS) | COPIED).to_be_bytes());
    poke(&f, 4 * CS, &((100 * CS) | COPIED).to_be_bytes());
    poke(&f, 4 * CS + 8, &(L1 | COPIED).to_be_bytes());
    poke(&f, 4 * CS + 16, &((4 * CS) + 0x200).to_be_bytes());
    let img = open_ro(f.try_clone().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let r = img.read_at(&mut buf, 0);
    assert!(
        matches!(
            r,
            Err(Error::BeyondEof {
                what: "data cluster",
                ..
            })
        ),
        "{r:?}"
    );
    let r = img.read_at(&mut buf, 2 * CS);
    assert!(
        matches!(
            r,
            Err(Error::Unaligned {
                what: "data cluster",
                ..
            })
        ),
        "{r:?}"
    );
    // Writing through an entry that points at the L1 table is refused, then poisoned.
    let f2 = f.try_clone().unwrap();
    // Give the L2 table a refcount so the image opens for writing.
    poke(&f, 2 * CS + 8, &1u16.to_be_bytes());
    let img = open_rw(f2).unwrap();
    let r = img.write_at(&[1; 16], CS);
    assert!(
        matches!(
            r,
            Err(Error::Overlap {
                what: "data cluster",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(matches!(
        img.write_at(&[1; 16], 3 * CS),
        Err(Error::Poisoned)
    ));
    let mut l1 = [0u8; 8];
    f.read_exact_at(&mut l1, L1 + 8).unwrap();
    assert_eq!(l1, [0; 8], "nothing written through the corrupt image");
}

#[test]
fn out_of_range_access() {
    let img = open_rw(fresh()).unwrap();
    let mut buf = [0u8; 2];
    assert!(matches!(
        img.read_at(&mut buf, (1 << 30) - 1),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        img.write_at(&buf, u64::MAX),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn create_rejects_bad_parameters() {
    let f = temp_file();
    let mut o = Qcow2CreateOptions::new(1 << 20);
    o.cluster_bits = 22;
    assert!(matches!(
        create_qcow2(&f, &o),
        Err(Error::BadClusterBits(22))
    ));
    o.cluster_bits = 16;
    o.backing_file = Some("x".repeat(2000));
    assert!(matches!(
        create_qcow2(&f, &o),
        Err(Error::BadCreateParam(_))
    ));
    let o = Qcow2CreateOptions::new(u64::MAX - 10);
    assert!(create_qcow2(&f, &o).is_err());
}

/// Random byte mutations of the first clusters must give errors or data, never a panic.
#[test]
fn mutated_images_never_panic() {
    let base = {
        let f = fresh();
        let img = open_rw(f.try_clone().unwrap()).unwrap();
        img.write_at(&[0xab; 100_000], 30_000).unwrap();
        drop(img);
        let len = f.metadata().unwrap().len();
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, 0).unwrap();
        b
    };
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let f = temp_file();
    for _ in 0..300 {
        let mut b = base.clone();
        for _ in 0..1 + rnd() % 4 {
            // Mostly the header, sometimes the tables.
            let at = if rnd() % 2 == 0 {
                rnd() % 112
            } else {
                rnd() % b.len() as u64
            };
            b[at as usize] = rnd() as u8;
        }
        f.set_len(0).unwrap();
        f.write_all_at(&b, 0).unwrap();
        for ro in [true, false] {
            if let Ok(img) = Qcow2Image::open(f.try_clone().unwrap(), ro, &mut no_backing) {
                let mut buf = vec![0u8; 200_000];
                let _ = img.read_at(&mut buf, 0);
                let _ = img.snapshots();
                let _ = img.check();
                let _ = img.map();
                if !ro {
                    let _ = img.write_at(&buf[..70_000], 10_000);
                }
            }
        }
    }
}

#[test]
fn check_counts_leaks_and_corruptions() {
    let f = fresh();
    let img = open_rw(f.try_clone().unwrap()).unwrap();
    img.write_at(&[0x5a; 100_000], 0).unwrap();
    // L2 table at 4 * CS, data at 5 * CS and 6 * CS.
    let report = img.check().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.allocated_clusters, 7);
    let map = img.map().unwrap();
    assert_eq!(
        map[0],
        MapExtent {
            start: 0,
            length: 2 * CS,
            kind: MapKind::Data,
            host_offset: Some(5 * CS)
        }
    );
    assert_eq!(map[1].kind, MapKind::Unallocated);
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), 1 << 30);
    drop(img);

    // A refcount nobody references is a leak.
    poke(&f, 2 * CS + 9 * 2, &1u16.to_be_bytes());
    let report = open_ro(f.try_clone().unwrap()).unwrap().check().unwrap();
    assert_eq!((report.leaks, report.corruptions), (1, 0), "{report:?}");
    // A referenced cluster with refcount 0 is a corruption (and its COPIED flag is wrong).
    poke(&f, 2 * CS + 5 * 2, &0u16.to_be_bytes());
    let report = open_ro(f).unwrap().check().unwrap();
    assert_eq!((report.leaks, report.corruptions), (1, 2), "{report:?}");
    assert!(
        report.messages[0].contains("refcount=0 reference=1"),
        "{report:?}"
    );
}

#[test]
fn hostile_snapshot_table() {
    let f = fresh();
    poke(&f, 60, &1u32.to_be_bytes());
    f.set_len(5 * CS).unwrap();
    poke(&f, 64, &(4 * CS).to_be_bytes());
    // An entry of zeros but for an absurd extra size, then an id running past the file.
    poke(&f, 4 * CS + 36, &u32::MAX.to_be_bytes());
    let img = open_ro(f.try_clone().unwrap()).unwrap();
    let r = img.snapshots();
    assert!(matches!(r, Err(Error::BadSnapshotTable(_))), "{r:?}");
    poke(&f, 4 * CS + 36, &0u32.to_be_bytes());
    poke(&f, 4 * CS + 12, &u16::MAX.to_be_bytes());
    let img = open_ro(f.try_clone().unwrap()).unwrap();
    let r = img.snapshots();
    assert!(matches!(r, Err(Error::BadSnapshotTable(_))), "{r:?}");
}

fn small_image(size: u64) -> File {
    let f = temp_file();
    let mut o = Qcow2CreateOptions::new(size);
    o.cluster_bits = 12;
    create_qcow2(&f, &o).unwrap();
    f
}

fn reopen(f: &File) -> Qcow2Image {
    open_rw(f.try_clone().unwrap()).unwrap()
}

#[test]
fn resize_grows_the_l1_table_and_keeps_data() {
    // 4 KiB clusters: one L1 entry covers 2 MiB.
    let f = small_image(1 << 20);
    let img = reopen(&f);
    img.write_at(&[0x5a; 8192], 4096 * 3 + 100).unwrap();
    img.write_at(&[0x11; 512], (1 << 20) - 512).unwrap();
    let old_l1 = img.header().l1_table_offset;
    img.resize(10 << 20, false).unwrap();
    let img = reopen(&f);
    assert_eq!(img.virtual_size(), 10 << 20);
    assert_eq!(img.header().l1_size, 5);
    assert_ne!(img.header().l1_table_offset, old_l1);
    assert!(img.check().unwrap().is_clean(), "{:?}", img.check());
    let mut buf = vec![0u8; 8192];
    img.read_at(&mut buf, 4096 * 3 + 100).unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));
    let mut buf = vec![0u8; 512];
    img.read_at(&mut buf, (1 << 20) - 512).unwrap();
    assert!(buf.iter().all(|&b| b == 0x11));
    let mut buf = vec![1u8; 4096];
    img.read_at(&mut buf, 9 << 20).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    img.write_at(&[0x22; 4096], (10 << 20) - 4096).unwrap();
    assert!(img.check().unwrap().is_clean());
    // Growing within the L1 table's coverage only changes the size.
    img.resize((10 << 20) + 512, false).unwrap();
    let img = reopen(&f);
    assert_eq!(img.header().l1_size, 6);
    assert!(img.check().unwrap().is_clean());
}

#[test]
fn resize_shrinks_only_what_holds_nothing() {
    let f = small_image(4 << 20);
    let img = reopen(&f);
    img.write_at(&[0x33; 4096], 3 << 20).unwrap();
    img.write_at(&[0x44; 4096], 1 << 20).unwrap();
    // Another opener sees the tables once they are flushed.
    img.flush().unwrap();
    let r = reopen(&f).resize(2 << 20, false);
    assert!(matches!(r, Err(Error::ShrinkNotAllowed)), "{r:?}");
    let r = reopen(&f).resize(2 << 20, true);
    assert!(
        matches!(r, Err(Error::ShrinkAllocated { offset }) if offset == 3 << 20),
        "{r:?}"
    );
    let r = reopen(&f).resize(1000, true);
    assert!(matches!(r, Err(Error::UnalignedSize(1000))), "{r:?}");
    drop(img);
    let img = reopen(&f);
    img.write_zeroes(3 << 20, 4096).unwrap();
    img.flush().unwrap();
    // The cluster at 1 MiB is cut in half: its tail must read as zeros after growing again.
    img.resize((1 << 20) + 2048, true).unwrap();
    let img = reopen(&f);
    assert_eq!(img.virtual_size(), (1 << 20) + 2048);
    assert!(img.check().unwrap().is_clean());
    img.resize(4 << 20, false).unwrap();
    let img = reopen(&f);
    let mut buf = vec![0u8; 4096];
    img.read_at(&mut buf, 1 << 20).unwrap();
    assert!(buf[..2048].iter().all(|&b| b == 0x44));
    assert!(buf[2048..].iter().all(|&b| b == 0));
    assert!(img.check().unwrap().is_clean());
}
