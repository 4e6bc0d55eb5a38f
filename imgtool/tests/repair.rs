//! `ward-img check -r leaks|all` and the dirty bit, with qemu-img as the referee.

mod common;

use std::path::Path;

use common::*;

/// Sets the 16-bit refcount of cluster `c` in the first refcount block of a qcow2 image.
fn poke_refcount(path: &Path, c: u64, v: u16) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 48).unwrap();
    let table = u64::from_be_bytes(b);
    f.read_exact_at(&mut b, table).unwrap();
    let block = u64::from_be_bytes(b);
    f.write_all_at(&v.to_be_bytes(), block + 2 * c).unwrap();
}

#[test]
fn check_repairs_leaks() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("repair");
    ok(ward_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4K",
            "l.qcow2",
            "4M",
        ],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x51 0 64k", "l.qcow2"],
        &d.0,
    ));
    let before = raw_bytes("l.qcow2", "before.raw", &d.0);
    // Leaks: the header's refcount raised, and a cluster past the data counted but unused.
    let img = d.p("l.qcow2");
    poke_refcount(&img, 0, 2);
    let len = std::fs::metadata(&img).unwrap().len();
    let spare = len.div_ceil(4096);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len((spare + 1) * 4096)
        .unwrap();
    poke_refcount(&img, spare, 1);
    let (code, text) = run("qemu-img", &["check", "l.qcow2"], &d.0);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("2 leaked clusters"), "{text}");
    let (code, text) = ward_img(&["check", "l.qcow2"], &d.0);
    assert_eq!(code, 3, "{text}");
    let out = ok(ward_img(&["check", "-r", "leaks", "l.qcow2"], &d.0));
    assert!(out.contains("2 leaked clusters"), "{out}");
    assert!(out.contains("No errors were found"), "{out}");
    ok(run("qemu-img", &["check", "l.qcow2"], &d.0));
    assert!(raw_bytes("l.qcow2", "after.raw", &d.0) == before);
    // Nothing to repair: the same as a plain check.
    let out = ok(ward_img(&["check", "-r", "all", "l.qcow2"], &d.0));
    assert!(out.starts_with("No errors were found"), "{out}");
    // Corruption (a refcount below the references) is not "repaired" by lowering others.
    poke_refcount(&img, 0, 0);
    poke_refcount(&img, spare, 1);
    let (code, text) = ward_img(&["check", "-r", "leaks", "l.qcow2"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("corruption"), "{text}");
}

/// Reads the big-endian u64 at `at`.
fn be64_at(path: &Path, at: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

fn poke_u64(path: &Path, at: u64, v: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&v.to_be_bytes(), at).unwrap();
}

#[test]
fn check_repairs_corruption_with_all() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("repair-all");
    ok(run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4K",
            "c.qcow2",
            "4M",
        ],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x61 0 8k",
            "-c",
            "write -P 0x62 1M 4k",
            "c.qcow2",
        ],
        &d.0,
    ));
    let img = d.p("c.qcow2");
    // The first L2 table (the L1 table's first entry): guest cluster 5 is made to point at
    // guest cluster 1's data, guest cluster 6 past the end of the file.
    let l1 = be64_at(&img, 40);
    let l2 = be64_at(&img, l1) & 0x00ff_ffff_ffff_fe00;
    let data1 = be64_at(&img, l2 + 8);
    poke_u64(&img, l2 + 5 * 8, data1);
    poke_u64(&img, l2 + 6 * 8, (1 << 63) | (1 << 30));
    let (code, text) = run("qemu-img", &["check", "c.qcow2"], &d.0);
    assert_eq!(code, 2, "{text}");
    let (code, text) = ward_img(&["check", "c.qcow2"], &d.0);
    assert_eq!(code, 2, "{text}");
    // Leaks-only repair refuses to touch a corrupt image.
    let (code, text) = ward_img(&["check", "-r", "leaks", "c.qcow2"], &d.0);
    assert_ne!(code, 0, "{text}");
    let out = ok(ward_img(&["check", "-r", "all", "c.qcow2"], &d.0));
    assert!(
        out.contains("corruptions") && out.contains("No errors were found"),
        "{out}"
    );
    ok(run("qemu-img", &["check", "c.qcow2"], &d.0));
    // Cluster 5 has its own copy of cluster 1's data; cluster 6 reads zeros.
    ok(run(
        "qemu-io",
        &[
            "-c",
            "read -P 0x61 0 8k",
            "-c",
            "read -P 0x61 20k 4k",
            "-c",
            "read -P 0 24k 4k",
            "-c",
            "read -P 0x62 1M 4k",
            "-c",
            "write -P 0x63 20k 4k",
            "-c",
            "read -P 0x61 4k 4k",
            "c.qcow2",
        ],
        &d.0,
    ));
    ok(run("qemu-img", &["check", "c.qcow2"], &d.0));
}

#[test]
fn a_dirty_image_left_by_qemu_is_repaired_when_ward_opens_it_for_writing() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("dirty");
    ok(run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "z.qcow2",
            "16M",
        ],
        &d.0,
    ));
    // qemu-io killed mid-session: with lazy refcounts, the image keeps its dirty bit and
    // refcounts behind its tables.
    let _ = run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x71 0 3M",
            "-c",
            "write -P 0x72 8M 64k",
            "-c",
            "sigraise 9",
            "z.qcow2",
        ],
        &d.0,
    );
    let img = d.p("z.qcow2");
    assert_eq!(be64_at(&img, 72) & 1, 1, "qemu left the dirty bit");
    let (code, text) = run("qemu-img", &["check", "z.qcow2"], &d.0);
    assert_eq!(code, 2, "refcounts behind the tables: {text}");
    let info = ok(ward_img(&["info", "z.qcow2"], &d.0));
    assert!(info.contains("lazy refcounts: true"), "{info}");
    // A snapshot is a write: the image is repaired first, then the bit cleared.
    ok(ward_img(
        &["snapshot", "-c", "after-crash", "z.qcow2"],
        &d.0,
    ));
    assert_eq!(be64_at(&img, 72) & 1, 0, "ward cleared the dirty bit");
    ok(run("qemu-img", &["check", "z.qcow2"], &d.0));
    ok(run(
        "qemu-io",
        &[
            "-c",
            "read -P 0x71 0 3M",
            "-c",
            "read -P 0x72 8M 64k",
            "z.qcow2",
        ],
        &d.0,
    ));
}
