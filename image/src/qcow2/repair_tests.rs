//! Repairs (`Repair::All`, leaks only) and the dirty bit, on images broken by hand.

use super::tests::{fresh, no_backing, poke};
use super::*;

const CS: u64 = 0x1_0000;
/// Where a fresh image keeps its refcount block and L1 table, and where the first write puts
/// its L2 table and data (see `tests::check_counts_leaks_and_corruptions`).
const RB: u64 = 2 * CS;
const L1: u64 = 3 * CS;
const L2: u64 = 4 * CS;

fn open_rw(f: &File) -> Result<Qcow2Image, Error> {
    Qcow2Image::open(f.try_clone().unwrap(), false, &mut no_backing)
}

fn open_ro(f: &File) -> Qcow2Image {
    Qcow2Image::open(f.try_clone().unwrap(), true, &mut no_backing).unwrap()
}

fn read(img: &Qcow2Image, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    img.read_at(&mut b, off).unwrap();
    b
}

/// Two guest clusters of data: L2 at 4 CS, data at 5 CS and 6 CS.
fn with_data() -> File {
    let f = fresh();
    let img = open_rw(&f).unwrap();
    img.write_at(&vec![0xab; CS as usize], 0).unwrap();
    img.write_at(&vec![0xcd; CS as usize], CS).unwrap();
    drop(img);
    f
}

#[test]
fn repair_all_mends_what_check_finds() {
    let f = with_data();
    // Guest cluster 0's data lost its refcount; guest cluster 2 points past the end of the
    // file; guest cluster 3 points at guest cluster 1's data too; cluster 9 leaked.
    poke(&f, RB + 5 * 2, &0u16.to_be_bytes());
    poke(&f, L2 + 2 * 8, &((100 * CS) | COPIED).to_be_bytes());
    poke(&f, L2 + 3 * 8, &((6 * CS) | COPIED).to_be_bytes());
    f.set_len(10 * CS).unwrap();
    poke(&f, RB + 9 * 2, &1u16.to_be_bytes());
    let before = open_ro(&f).check().unwrap();
    assert!(before.corruptions >= 3, "{before:?}");
    assert_eq!(before.leaks, 1, "{before:?}");

    let img = open_rw(&f).unwrap();
    assert!(matches!(
        img.repair_leaks(),
        Err(Error::RepairWithCorruption(_))
    ));
    let fixed = img.repair(Repair::All).unwrap();
    assert!(fixed.corruptions_fixed >= 3, "{fixed:?}");
    assert_eq!(fixed.leaks_fixed, 1, "{fixed:?}");
    let after = img.check().unwrap();
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(read(&img, 0, 16), vec![0xab; 16]);
    assert_eq!(read(&img, 2 * CS, 16), vec![0; 16]);
    assert_eq!(read(&img, 3 * CS, 16), vec![0xcd; 16]);
    // The doubly referenced cluster is shared now: writing one copy leaves the other.
    img.write_at(&[0x11; 16], 3 * CS).unwrap();
    assert_eq!(read(&img, CS, 16), vec![0xcd; 16]);
    assert_eq!(read(&img, 3 * CS, 16), vec![0x11; 16]);
    let r = img.check().unwrap();
    assert!(r.is_clean(), "{r:?}");
}

#[test]
fn repair_all_drops_an_l2_table_outside_the_file() {
    let f = with_data();
    poke(&f, L1 + 8, &((200 * CS) | COPIED).to_be_bytes());
    // Refused for normal use, and for a repair of leaks only.
    assert!(matches!(open_rw(&f), Err(Error::BeyondEof { .. })));
    let r = Qcow2Image::open_for_repair(f.try_clone().unwrap(), Repair::Leaks, &mut no_backing);
    assert!(matches!(r, Err(Error::BeyondEof { .. })), "{r:?}");
    let (img, fixed) =
        Qcow2Image::open_for_repair(f.try_clone().unwrap(), Repair::All, &mut no_backing).unwrap();
    assert!(img.check().unwrap().corruptions == 0 && fixed.corruptions_fixed >= 1);
    assert!(img.check().unwrap().is_clean());
    // The second L1 entry covers 512 MiB onwards: zeros there now, data before intact.
    assert_eq!(read(&img, 512 << 20, 16), vec![0; 16]);
    assert_eq!(read(&img, 0, 16), vec![0xab; 16]);
    img.write_at(&[0x22; 16], 512 << 20).unwrap();
    assert!(img.check().unwrap().is_clean());
}

#[test]
fn a_dirty_image_gets_its_refcounts_rebuilt_when_opened_for_writing() {
    // What lazy refcounts leave after a crash: tables ahead of the refcounts.
    let f = with_data();
    poke(&f, RB + 6 * 2, &0u16.to_be_bytes());
    poke(&f, 72, &INCOMPAT_DIRTY.to_be_bytes());
    // Read-only, it stays as it is.
    let ro = open_ro(&f);
    assert!(ro.is_dirty());
    assert_eq!(read(&ro, CS, 16), vec![0xcd; 16]);
    assert!(ro.check().unwrap().corruptions > 0);
    drop(ro);
    let img = open_rw(&f).unwrap();
    assert!(!img.is_dirty());
    assert!(img.check().unwrap().is_clean());
    assert_eq!(read(&img, CS, 16), vec![0xcd; 16]);
    drop(img);
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 72).unwrap();
    assert_eq!(
        u64::from_be_bytes(b) & INCOMPAT_DIRTY,
        0,
        "bit cleared on disk"
    );
}

#[test]
fn a_dirty_image_that_cannot_be_mended_stays_read_only() {
    let f = with_data();
    let mut img = open_rw(&f).unwrap();
    img.snapshot_create("s").unwrap();
    let snap_l1 = img.snapshots().unwrap()[0].l1_table_offset;
    drop(img);
    // A snapshot's table pointing outside the file is reported, never rewritten.
    poke(&f, snap_l1, &(300 * CS).to_be_bytes());
    poke(&f, 72, &INCOMPAT_DIRTY.to_be_bytes());
    let r = open_rw(&f);
    assert!(matches!(r, Err(Error::DirtyRepairFailed(_))), "{r:?}");
    assert!(open_ro(&f).is_dirty());
}

#[test]
fn reserved_bits_are_reported_and_cleared() {
    let f = with_data();
    let l1e = (L2 | COPIED) | 0x4000_0000_0000_0000;
    poke(&f, L1, &l1e.to_be_bytes());
    let l2e = (5 * CS) | COPIED | 0x2;
    poke(&f, L2, &l2e.to_be_bytes());
    let r = open_ro(&f).check().unwrap();
    assert!(
        r.messages.iter().any(|m| m.contains("L1 entry")) && r.corruptions >= 2,
        "{r:?}"
    );
    let (img, fixed) =
        Qcow2Image::open_for_repair(f.try_clone().unwrap(), Repair::All, &mut no_backing).unwrap();
    assert!(fixed.corruptions_fixed >= 2, "{fixed:?}");
    assert!(img.check().unwrap().is_clean());
    assert_eq!(read(&img, 0, 16), vec![0xab; 16]);
}

#[test]
fn one_l2_table_reached_many_times_is_read_once_and_counted_each_time() {
    let f = with_data();
    // Two L1 entries reach the same L2 table: its data clusters have two references.
    poke(&f, L1 + 8, &L2.to_be_bytes());
    let r = open_ro(&f).check().unwrap();
    assert!(
        r.messages
            .iter()
            .any(|m| m.contains("cluster 0x5 refcount=1 reference=2")),
        "{r:?}"
    );
}
