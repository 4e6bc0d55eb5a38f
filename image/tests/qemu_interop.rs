//! Interoperability with qemu-img and qemu-io, the referees: images qemu makes read back
//! byte-for-byte through ward_image, and images ward_image makes and writes pass
//! `qemu-img check` and `qemu-img compare`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use ward_image::qcow2::MapKind;
use ward_image::{
    create_qcow2, create_raw, open, DiskImage, Error, Format, Qcow2CreateOptions, Qcow2Image,
};

const MIB: u64 = 1 << 20;

fn have_qemu() -> bool {
    let ok = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ok("qemu-img") && ok("qemu-io") {
        return true;
    }
    eprintln!("!!!!!!!! SKIPPING: qemu-img / qemu-io not installed; interop NOT tested !!!!!!!!");
    false
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ward-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(tool: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

fn open_img(path: &Path, readonly: bool) -> Result<Box<dyn DiskImage>, Error> {
    let dir = path.parent().unwrap().to_path_buf();
    let file = if readonly {
        File::open(path).unwrap()
    } else {
        rw(path)
    };
    open(file, None, readonly, &mut |name: &str| {
        File::open(dir.join(name))
    })
}

fn read_all(img: &dyn DiskImage) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(img.virtual_size()).unwrap()];
    // Odd-sized reads cross cluster boundaries.
    let step = 300_001;
    for (i, chunk) in buf.chunks_mut(step).enumerate() {
        img.read_at(chunk, (i * step) as u64).unwrap();
    }
    buf
}

/// `qemu-img convert -O raw` of `img`, read back.
fn qemu_raw(dir: &TempDir, img: &Path) -> Vec<u8> {
    let out = dir.path("converted.raw");
    run("qemu-img", &["convert", "-O", "raw", p(img), p(&out)]);
    std::fs::read(out).unwrap()
}

fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "{what}: first difference at byte {i:#x}: {:#x} vs {:#x}",
            a[i], b[i]
        );
    }
}

fn qemu_io(fmt: &str, img: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(p(img));
    run("qemu-io", &args);
}

fn info(img: &Path) -> serde_json::Value {
    let out = run("qemu-img", &["info", "--output=json", p(img)]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Both referees agree the image is clean: qemu-img check and our own.
fn check_clean(img: &Path) {
    run("qemu-img", &["check", p(img)]);
    let ours = Qcow2Image::open(File::open(img).unwrap(), true, &mut |n: &str| {
        File::open(img.parent().unwrap().join(n))
    })
    .unwrap()
    .check()
    .unwrap();
    assert!(ours.is_clean(), "ward check of {img:?}: {ours:?}");
}

/// Bytes qemu-img map says are stored in this image (not a backing file).
fn qemu_data_bytes(img: &Path) -> u64 {
    let out = run("qemu-img", &["map", "--output=json", p(img)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true && e["depth"] == 0)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

fn ward_data_bytes(img: &Path) -> u64 {
    let q = Qcow2Image::open(File::open(img).unwrap(), true, &mut |n: &str| {
        File::open(img.parent().unwrap().join(n))
    })
    .unwrap();
    q.map()
        .unwrap()
        .iter()
        .filter(|e| matches!(e.kind, MapKind::Data | MapKind::Compressed))
        .map(|e| e.length)
        .sum()
}

const PATTERN_WRITES: &[&str] = &[
    "write -P 0xab 0 1M",
    "write -P 0x12 3M 100k",
    "write -P 0x34 4095k 3k",
    "write -z 0 4k",
    "write -P 0x56 7M 1M",
];

#[test]
fn qemu_made_qcow2_reads_back() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("qemu-made");
    for (cluster, compat) in [
        ("65536", "1.1"),
        ("4096", "1.1"),
        ("2M", "1.1"),
        ("512", "1.1"),
        ("65536", "0.10"),
    ] {
        let img = dir.path("img.qcow2");
        let opts = format!("cluster_size={cluster},compat={compat}");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &opts, p(&img), "8M"],
        );
        qemu_io("qcow2", &img, PATTERN_WRITES);
        let ours = read_all(&*open_img(&img, true).unwrap());
        assert_same(&ours, &qemu_raw(&dir, &img), &opts);
        check_clean(&img);
        assert_eq!(ward_data_bytes(&img), qemu_data_bytes(&img), "{opts}: map");
    }
}

#[test]
fn qemu_made_image_with_snapshots_reads_back() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("qemu-snap");
    let img = dir.path("s.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", p(&img), "4M"]);
    qemu_io("qcow2", &img, &["write -P 0x61 0 2M"]);
    run("qemu-img", &["snapshot", "-c", "first", p(&img)]);
    qemu_io("qcow2", &img, &["write -P 0x62 1M 2M"]);
    run("qemu-img", &["snapshot", "-c", "second", p(&img)]);
    qemu_io("qcow2", &img, &["write -P 0x63 64k 4k"]);
    let ours = read_all(&*open_img(&img, true).unwrap());
    assert_same(&ours, &qemu_raw(&dir, &img), "active layer with snapshots");
    check_clean(&img);
    let q = Qcow2Image::open(
        File::open(&img).unwrap(),
        true,
        &mut |_: &str| unreachable!(),
    )
    .unwrap();
    let snaps = q.snapshots().unwrap();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(snaps[0].id, "1");
    assert_eq!(snaps[1].disk_size, Some(4 * MIB));
    let listed = run("qemu-img", &["snapshot", "-l", p(&img)]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("first") && listed.contains("second"),
        "{listed}"
    );
    // Applying a qemu-made snapshot through ward gives what qemu reads from it.
    let out = dir.path("first.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=first",
            "-O",
            "raw",
            p(&img),
            p(&out),
        ],
    );
    let first = std::fs::read(&out).unwrap();
    let mut q = Qcow2Image::open(rw(&img), false, &mut |_: &str| unreachable!()).unwrap();
    q.snapshot_apply("first").unwrap();
    drop(q);
    check_clean(&img);
    assert_same(
        &read_all(&*open_img(&img, true).unwrap()),
        &first,
        "applied",
    );
    assert_same(&qemu_raw(&dir, &img), &first, "applied, by qemu");
}

fn snapshot_raw(dir: &TempDir, img: &Path, name: &str) -> Vec<u8> {
    let out = dir.path("snap.raw");
    let sel = format!("snapshot.name={name}");
    run(
        "qemu-img",
        &["convert", "-l", &sel, "-O", "raw", p(img), p(&out)],
    );
    std::fs::read(out).unwrap()
}

#[test]
fn ward_snapshots_copy_on_write_and_qemu_agrees() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("ward-snap");
    for cs_bits in [12u32, 16] {
        let img = dir.path("w.qcow2");
        let _ = std::fs::remove_file(&img);
        let mut o = Qcow2CreateOptions::new(6 * MIB);
        o.cluster_bits = cs_bits;
        create_qcow2(&rw(&img), &o).unwrap();
        let mut mirror = vec![0u8; 6 * MIB as usize];
        {
            let w = open_img(&img, false).unwrap();
            random_writes(&*w, &mut mirror, 7, 60, 300_000);
            w.flush().unwrap();
        }
        let mut q = Qcow2Image::open(rw(&img), false, &mut |_: &str| unreachable!()).unwrap();
        q.snapshot_create("one").unwrap();
        let at_one = mirror.clone();
        // Writes after the snapshot copy shared clusters, L2 tables included.
        random_writes(&q, &mut mirror, 8, 60, 300_000);
        q.write_zeroes(0, MIB).unwrap();
        mirror[..MIB as usize].fill(0);
        q.snapshot_create("two").unwrap();
        random_writes(&q, &mut mirror, 9, 20, 100_000);
        let now = mirror.clone();
        drop(q);
        check_clean(&img);
        let listed = run("qemu-img", &["snapshot", "-l", p(&img)]);
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert!(
            listed.contains(" one ") && listed.contains(" two "),
            "{listed}"
        );
        assert_same(&snapshot_raw(&dir, &img, "one"), &at_one, "snapshot one");
        assert_same(&qemu_raw(&dir, &img), &now, "active layer");
        // Delete one, apply... and the rest still reads right.
        let mut q = Qcow2Image::open(rw(&img), false, &mut |_: &str| unreachable!()).unwrap();
        let two = snapshot_raw(&dir, &img, "two");
        q.snapshot_delete("one").unwrap();
        drop(q);
        check_clean(&img);
        assert_same(
            &snapshot_raw(&dir, &img, "two"),
            &two,
            "two after deleting one",
        );
        let mut q = Qcow2Image::open(rw(&img), false, &mut |_: &str| unreachable!()).unwrap();
        q.snapshot_apply("two").unwrap();
        drop(q);
        check_clean(&img);
        assert_same(&qemu_raw(&dir, &img), &two, "applied two");
        let mut q = Qcow2Image::open(rw(&img), false, &mut |_: &str| unreachable!()).unwrap();
        q.write_at(&[0xee; 5000], 70_000).unwrap();
        q.snapshot_delete("2").unwrap();
        drop(q);
        check_clean(&img);
        assert_eq!(info(&img).get("snapshots"), None);
        let mut want = two.clone();
        want[70_000..75_000].fill(0xee);
        assert_same(&qemu_raw(&dir, &img), &want, "after deleting two");
    }
}

#[test]
fn qemu_made_backing_chain_reads_back() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("qemu-chain");
    let (base, mid, top) = (
        dir.path("base.raw"),
        dir.path("mid.qcow2"),
        dir.path("top.qcow2"),
    );
    run("qemu-img", &["create", "-q", "-f", "raw", p(&base), "6M"]);
    qemu_io("raw", &base, &["write -P 0x11 0 6M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            p(&mid),
            "8M",
        ],
    );
    qemu_io("qcow2", &mid, &["write -P 0x22 1M 1M", "write -z 2M 64k"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            p(&top),
            "8M",
        ],
    );
    qemu_io(
        "qcow2",
        &top,
        &["write -P 0x33 1536k 4k", "write -P 0x44 7M 4k"],
    );
    let ours = read_all(&*open_img(&top, true).unwrap());
    assert_same(&ours, &qemu_raw(&dir, &top), "backing chain");
}

#[test]
fn qemu_compressed_reads_back_and_rewrites_cleanly() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("qemu-compressed");
    let src = dir.path("src.raw");
    let img = dir.path("c.qcow2");
    let mut data = vec![0u8; usize::try_from(4 * MIB).unwrap()];
    let mut x = 0x1234_5678u32;
    for (i, b) in data.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Compressible but not trivial; the last MiB stays zero.
        *b = if i < 3 << 20 { (x % 4) as u8 } else { 0 };
    }
    std::fs::write(&src, &data).unwrap();
    run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", p(&src), p(&img)],
    );
    let ours = read_all(&*open_img(&img, true).unwrap());
    assert_same(&ours, &data, "compressed read");
    check_clean(&img);
    assert_eq!(
        ward_data_bytes(&img),
        qemu_data_bytes(&img),
        "compressed map"
    );

    // Partial writes over compressed clusters copy-on-write them and free the old ones.
    let w = open_img(&img, false).unwrap();
    w.write_at(&[0xee; 1000], 70_000).unwrap();
    w.write_at(&[0xdd; 65536], 2 * MIB).unwrap();
    w.flush().unwrap();
    drop(w);
    data[70_000..71_000].fill(0xee);
    data[2 << 20..(2 << 20) + 65536].fill(0xdd);
    std::fs::write(&src, &data).unwrap();
    check_clean(&img);
    run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", p(&img), p(&src)],
    );
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random writes through ward_image, mirrored in memory; the image must pass check and
/// compare equal to the mirror.
fn random_writes(img: &dyn DiskImage, mirror: &mut [u8], seed: u64, count: usize, max_len: u64) {
    let mut rng = Rng(seed);
    let size = mirror.len() as u64;
    for i in 0..count {
        let len = 1 + rng.next() % max_len;
        let off = rng.next() % (size - len);
        let byte = (i % 250) as u8 + 1;
        let buf = vec![byte; usize::try_from(len).unwrap()];
        img.write_at(&buf, off).unwrap();
        let off = usize::try_from(off).unwrap();
        mirror[off..off + buf.len()].copy_from_slice(&buf);
    }
    img.flush().unwrap();
}

fn verify_against_qemu(dir: &TempDir, img: &Path, mirror: &[u8]) {
    let raw = dir.path("mirror.raw");
    std::fs::write(&raw, mirror).unwrap();
    check_clean(img);
    run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", p(img), p(&raw)],
    );
    let reopened = read_all(&*open_img(img, true).unwrap());
    assert_same(&reopened, mirror, "reopened");
}

#[test]
fn ward_created_qcow2_passes_qemu_check_and_compare() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("ward-made");
    for (cluster_bits, size) in [
        (16u32, 16 * MIB + 12345),
        (12, 8 * MIB),
        (21, 9 * MIB),
        (9, 3 * MIB),
    ] {
        let img = dir.path("w.qcow2");
        let mut opts = Qcow2CreateOptions::new(size);
        opts.cluster_bits = cluster_bits;
        create_qcow2(&rw(&img), &opts).unwrap();
        check_clean(&img);
        // Rounded up to whole sectors, as qemu-img create does.
        let size = size.next_multiple_of(512);
        let i = info(&img);
        assert_eq!(i["format"], "qcow2");
        assert_eq!(i["virtual-size"], size);
        assert_eq!(i["cluster-size"], 1u64 << cluster_bits);
        let mut mirror = vec![0u8; usize::try_from(size).unwrap()];
        let w = open_img(&img, false).unwrap();
        random_writes(
            &*w,
            &mut mirror,
            u64::from(cluster_bits) * 7 + 1,
            200,
            200_000,
        );
        // The last, partial cluster.
        w.write_at(&[0x5a; 3], size - 3).unwrap();
        mirror[usize::try_from(size - 3).unwrap()..].fill(0x5a);
        drop(w);
        verify_against_qemu(&dir, &img, &mirror);
    }
}

#[test]
fn ward_grows_refcount_table() {
    if !have_qemu() {
        return;
    }
    // 512-byte clusters: one refcount table cluster covers 64 blocks * 256 clusters = 8 MiB.
    let dir = TempDir::new("ward-grow");
    let img = dir.path("g.qcow2");
    let size = 24 * MIB;
    let mut opts = Qcow2CreateOptions::new(size);
    opts.cluster_bits = 9;
    create_qcow2(&rw(&img), &opts).unwrap();
    let w = open_img(&img, false).unwrap();
    let mut mirror = vec![0u8; usize::try_from(size).unwrap()];
    let chunk = vec![0x77u8; usize::try_from(MIB).unwrap()];
    for i in 0..20 {
        w.write_at(&chunk, i * MIB).unwrap();
    }
    mirror[..usize::try_from(20 * MIB).unwrap()].fill(0x77);
    random_writes(&*w, &mut mirror, 99, 50, 10_000);
    drop(w);
    let grown = Qcow2Image::open(
        File::open(&img).unwrap(),
        true,
        &mut |_: &str| unreachable!(),
    )
    .unwrap();
    assert!(
        grown.header().refcount_table_clusters > 1,
        "{:?}",
        grown.header()
    );
    assert_ne!(grown.header().refcount_table_offset, 512);
    verify_against_qemu(&dir, &img, &mirror);
}

#[test]
fn ward_writes_over_backing_file() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("ward-backing");
    let (base, top) = (dir.path("base.raw"), dir.path("top.qcow2"));
    let size = 5 * MIB + 512;
    let mut mirror: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(&base, &mirror).unwrap();
    let mut opts = Qcow2CreateOptions::new(size);
    opts.backing_file = Some("base.raw".into());
    opts.backing_format = Some(Format::Raw);
    create_qcow2(&rw(&top), &opts).unwrap();
    let i = info(&top);
    assert_eq!(i["backing-filename"], "base.raw");
    assert_eq!(i["backing-filename-format"], "raw");
    assert_eq!(i["virtual-size"], size);
    let w = open_img(&top, false).unwrap();
    random_writes(&*w, &mut mirror, 5, 100, 100_000);
    drop(w);
    verify_against_qemu(&dir, &top, &mirror);
    // The base is untouched.
    let base_now = std::fs::read(&base).unwrap();
    assert!(base_now
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 251) as u8));
}

#[test]
fn ward_writes_to_qemu_made_image() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("ward-on-qemu");
    let img = dir.path("q.qcow2");
    for compat in ["1.1", "0.10"] {
        let opts = format!("cluster_size=4096,compat={compat}");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &opts, p(&img), "6M"],
        );
        qemu_io("qcow2", &img, &["write -P 0xab 0 1M", "write -z 2M 1M"]);
        let mut mirror = qemu_raw(&dir, &img);
        let w = open_img(&img, false).unwrap();
        random_writes(&*w, &mut mirror, 77, 100, 30_000);
        w.write_zeroes(100_000, 500_000).unwrap();
        mirror[100_000..600_000].fill(0);
        drop(w);
        verify_against_qemu(&dir, &img, &mirror);
    }
}

#[test]
fn raw_create_and_info() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("raw");
    let img = dir.path("r.raw");
    create_raw(&rw(&img), 3 * MIB).unwrap();
    let i = info(&img);
    assert_eq!(i["format"], "raw");
    assert_eq!(i["virtual-size"], 3 * MIB);
    let w = open(
        rw(&img),
        Some(Format::Raw),
        false,
        &mut |_: &str| unreachable!(),
    )
    .unwrap();
    let mut mirror = vec![0u8; usize::try_from(3 * MIB).unwrap()];
    random_writes(&*w, &mut mirror, 3, 50, 50_000);
    assert_same(&std::fs::read(&img).unwrap(), &mirror, "raw");
}

#[test]
fn backing_loop_is_caught() {
    let dir = TempDir::new("loop");
    let img = dir.path("self.qcow2");
    let mut opts = Qcow2CreateOptions::new(MIB);
    opts.backing_file = Some("self.qcow2".into());
    create_qcow2(&rw(&img), &opts).unwrap();
    let err = open_img(&img, true).unwrap_err();
    assert!(matches!(err, Error::BackingChainTooDeep(16)), "{err}");
    // Through the typed entry point too.
    let err = Qcow2Image::open(File::open(&img).unwrap(), true, &mut |_: &str| {
        File::open(&img)
    })
    .unwrap_err();
    assert!(matches!(err, Error::BackingChainTooDeep(_)), "{err}");
}

#[test]
fn ward_write_zeroes_and_many_tables_per_request() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("ward-zeroes");
    let (base, top) = (dir.path("base.raw"), dir.path("z.qcow2"));
    let size = 12 * MIB;
    let mut mirror: Vec<u8> = (0..size).map(|i| (i % 253) as u8 + 1).collect();
    std::fs::write(&base, &mirror).unwrap();
    // 512-byte clusters: one L2 table covers 32 KiB, so a 4 MiB write fills 128 new tables.
    let mut opts = Qcow2CreateOptions::new(size);
    opts.cluster_bits = 9;
    opts.backing_file = Some("base.raw".into());
    opts.backing_format = Some(Format::Raw);
    create_qcow2(&rw(&top), &opts).unwrap();
    let w = open_img(&top, false).unwrap();
    let big = vec![0x42u8; usize::try_from(4 * MIB).unwrap()];
    w.write_at(&big, MIB + 100).unwrap();
    let at = usize::try_from(MIB + 100).unwrap();
    mirror[at..at + big.len()].fill(0x42);
    // Zeroes over data, over the backing file, unaligned ends, and up to the end of the disk.
    // 3 MiB over the backing file touches 96 L2 tables: committed in batches.
    for (off, len) in [
        (2 * MIB + 7, 300_000),
        (9 * MIB, MIB),
        (0, 1000),
        (size - 70_000, 70_000),
        (5 * MIB + 1, 3 * MIB),
    ] {
        w.write_zeroes(off, len).unwrap();
        let off = usize::try_from(off).unwrap();
        mirror[off..off + usize::try_from(len).unwrap()].fill(0);
    }
    w.flush().unwrap();
    assert_same(&read_all(&*w), &mirror, "zeroes before reopen");
    drop(w);
    verify_against_qemu(&dir, &top, &mirror);

    // Zeroes on a 64 KiB image without a backing file, twice over the same range.
    let img = dir.path("z2.qcow2");
    create_qcow2(&rw(&img), &Qcow2CreateOptions::new(size)).unwrap();
    let mut mirror = vec![0u8; usize::try_from(size).unwrap()];
    let w = open_img(&img, false).unwrap();
    random_writes(&*w, &mut mirror, 11, 40, 300_000);
    for _ in 0..2 {
        w.write_zeroes(MIB - 5, 3 * MIB).unwrap();
    }
    let at = usize::try_from(MIB - 5).unwrap();
    mirror[at..at + usize::try_from(3 * MIB).unwrap()].fill(0);
    drop(w);
    verify_against_qemu(&dir, &img, &mirror);
}

#[test]
fn ward_shared_between_threads() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("ward-threads");
    let img = dir.path("t.qcow2");
    let size = 8 * MIB;
    let mut opts = Qcow2CreateOptions::new(size);
    opts.cluster_bits = 12;
    create_qcow2(&rw(&img), &opts).unwrap();
    let shared: std::sync::Arc<dyn DiskImage> = open_img(&img, false).unwrap().into();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let img = shared.clone();
            std::thread::spawn(move || {
                // Interleaved 3000-byte writes: neighbours share clusters and L2 tables.
                for i in 0..200u64 {
                    let off = (i * 4 + u64::from(t)) * 3000;
                    img.write_at(&[t + 1; 3000], off).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    shared.flush().unwrap();
    drop(shared);
    let mut mirror = vec![0u8; usize::try_from(size).unwrap()];
    for i in 0..800usize {
        mirror[i * 3000..(i + 1) * 3000].fill((i % 4) as u8 + 1);
    }
    verify_against_qemu(&dir, &img, &mirror);
}
