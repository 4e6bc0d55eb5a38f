//! ward-img against the referee, qemu-img: images ward-img makes pass `qemu-img check` and
//! `qemu-img info` agrees on them; images qemu-img makes (plain, compressed, with a backing
//! file, several cluster sizes) convert to the same raw bytes as `qemu-img convert` gives.

mod common;

use common::*;

#[test]
fn created_images_pass_qemu_img_check_and_info_agrees() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("create");
    ok(ward_img(&["create", "-f", "raw", "base.raw", "64M"], &d.0));
    let cases: [(&str, &[&str]); 4] = [
        ("c64.qcow2", &["create", "-f", "qcow2", "c64.qcow2", "1G"]),
        (
            "c4.qcow2",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4K",
                "c4.qcow2",
                "100M",
            ],
        ),
        (
            "c2m.qcow2",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=2M",
                "c2m.qcow2",
                "3G",
            ],
        ),
        (
            "over.qcow2",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                "over.qcow2",
            ],
        ),
    ];
    for (name, args) in cases {
        ok(ward_img(args, &d.0));
        ok(run("qemu-img", &["check", name], &d.0));
        let q = qemu_info(name, &d.0);
        let w: serde_json::Value =
            serde_json::from_str(&ok(ward_img(&["info", "--output", "json", name], &d.0))).unwrap();
        for key in ["virtual-size", "format", "cluster-size", "backing-filename"] {
            assert_eq!(
                q.get(key),
                w.get(key),
                "{name}: {key} differs: qemu {q} ward {w}"
            );
        }
    }
    assert_eq!(qemu_info("c4.qcow2", &d.0)["cluster-size"], 4096);
    assert_eq!(qemu_info("over.qcow2", &d.0)["virtual-size"], 64 << 20);
}

#[test]
fn qemu_images_convert_to_the_same_bytes() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("convert");
    ok(run(
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "16M"],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 0 3M", "base.raw"],
        &d.0,
    ));
    let writes = [
        "write -P 0xab 0 1M",
        "write -P 0x11 5M 64k",
        "write -z 8M 1M",
        "write -P 0x22 12M 4k",
    ];
    let cases: [(&str, Vec<&str>); 4] = [
        (
            "plain.qcow2",
            vec!["create", "-q", "-f", "qcow2", "plain.qcow2", "16M"],
        ),
        (
            "small.qcow2",
            vec![
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096",
                "small.qcow2",
                "16M",
            ],
        ),
        (
            "v2.qcow2",
            vec![
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10",
                "v2.qcow2",
                "16M",
            ],
        ),
        (
            "over.qcow2",
            vec![
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                "over.qcow2",
            ],
        ),
    ];
    for (name, create) in &cases {
        ok(run("qemu-img", create, &d.0));
        for w in writes {
            ok(run("qemu-io", &["-c", w, name], &d.0));
        }
    }
    ok(run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", "plain.qcow2", "comp.qcow2"],
        &d.0,
    ));
    for name in [
        "plain.qcow2",
        "small.qcow2",
        "v2.qcow2",
        "over.qcow2",
        "comp.qcow2",
    ] {
        ok(run(
            "qemu-img",
            &["convert", "-O", "raw", name, "want.raw"],
            &d.0,
        ));
        ok(ward_img(&["convert", "-O", "raw", name, "got.raw"], &d.0));
        let (want, got) = (
            std::fs::read(d.p("want.raw")).unwrap(),
            std::fs::read(d.p("got.raw")).unwrap(),
        );
        assert!(
            want == got,
            "{name}: ward-img's raw differs from qemu-img's"
        );
    }
}

#[test]
fn raw_to_qcow2_is_clean_and_identical() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("toqcow2");
    ok(run(
        "qemu-img",
        &["create", "-q", "-f", "raw", "in.raw", "20M"],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x77 1M 300k",
            "-c",
            "write -P 0x01 19M 1M",
            "in.raw",
        ],
        &d.0,
    ));
    // 1 MiB of data crosses the converter's 2 MiB chunks at 2 MiB: several chunks, read by
    // two threads, written in order.
    ok(run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x33 1536k 1M", "in.raw"],
        &d.0,
    ));
    for (cs, cache) in [("4K", "unsafe"), ("64K", "writeback"), ("1M", "unsafe")] {
        ok(ward_img(
            &[
                "convert",
                "-p",
                "-t",
                cache,
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &format!("cluster_size={cs}"),
                "in.raw",
                "out.qcow2",
            ],
            &d.0,
        ));
        ok(run("qemu-img", &["check", "out.qcow2"], &d.0));
        let cmp = ok(run("qemu-img", &["compare", "in.raw", "out.qcow2"], &d.0));
        assert!(cmp.contains("Images are identical"), "{cs}: {cmp}");
        let check = ok(ward_img(&["check", "out.qcow2"], &d.0));
        assert!(check.contains("No errors were found"), "{check}");
        // Clusters lie on the host in guest order.
        let map: serde_json::Value = serde_json::from_str(&ok(run(
            "qemu-img",
            &["map", "--output=json", "out.qcow2"],
            &d.0,
        )))
        .unwrap();
        let offsets: Vec<u64> = map
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.get("offset").and_then(|o| o.as_u64()))
            .collect();
        assert!(offsets.len() >= 2, "{cs}: {map}");
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{cs}: {map}");
    }
}

#[test]
fn failures_say_why_and_leave_nothing_behind() {
    let d = Dir::new("fail");
    let (code, text) = ward_img(&["convert", "-O", "raw", "missing.qcow2", "out.raw"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("missing.qcow2"), "{text}");
    let (code, text) = ward_img(&["create", "-f", "qcow2", "x.qcow2", "12Q"], &d.0);
    assert_ne!(code, 0, "{text}");
    let (code, text) = ward_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=3000",
            "y.qcow2",
            "1G",
        ],
        &d.0,
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("power of two"), "{text}");
    std::fs::write(d.p("junk.qcow2"), b"QFI\xfb\x00\x00\x00\x03garbage").unwrap();
    let (code, text) = ward_img(&["info", "junk.qcow2"], &d.0);
    assert_eq!(code, 1, "{text}");
    // A qcow2 whose last data cluster was cut off: the conversion fails naming the problem,
    // after it has written the earlier data, and leaves no output behind.
    if have_qemu() {
        ok(run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "cut.qcow2", "64M"],
            &d.0,
        ));
        ok(run(
            "qemu-io",
            &[
                "-c",
                "write -P 1 0 8M",
                "-c",
                "write -P 2 40M 1M",
                "cut.qcow2",
            ],
            &d.0,
        ));
        let len = std::fs::metadata(d.p("cut.qcow2")).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.p("cut.qcow2"))
            .unwrap();
        f.set_len(len - (512 << 10)).unwrap();
        for fmt in ["raw", "qcow2"] {
            let (code, text) = ward_img(&["convert", "-O", fmt, "cut.qcow2", "out"], &d.0);
            assert_eq!(code, 1, "{text}");
            assert!(text.contains("beyond the end of the file"), "{text}");
        }
        std::fs::remove_file(d.p("cut.qcow2")).unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["junk.qcow2".to_string()],
        "half-written files left: {left:?}"
    );
}

#[test]
fn resize_grows_and_shrinks_like_qemu_img() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("resize");
    ok(ward_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4K",
            "a.qcow2",
            "1M",
        ],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x61 0 12k",
            "-c",
            "write -P 0x62 1020k 4k",
            "a.qcow2",
        ],
        &d.0,
    ));
    let before = raw_bytes("a.qcow2", "before.raw", &d.0);
    // 4 KiB clusters: one L1 entry covers 2 MiB, so this grows the L1 table.
    let out = ok(ward_img(&["resize", "a.qcow2", "10M"], &d.0));
    assert!(out.contains("Image resized."), "{out}");
    ok(run("qemu-img", &["check", "a.qcow2"], &d.0));
    assert_eq!(qemu_info("a.qcow2", &d.0)["virtual-size"], 10 << 20);
    let after = raw_bytes("a.qcow2", "after.raw", &d.0);
    assert_eq!(after.len(), 10 << 20);
    assert_eq!(&after[..1 << 20], &before[..]);
    assert!(after[1 << 20..].iter().all(|&b| b == 0));
    ok(run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x63 9M 64k", "a.qcow2"],
        &d.0,
    ));
    ok(run("qemu-img", &["check", "a.qcow2"], &d.0));
    // Relative sizes; shrinking needs --shrink and must not drop data.
    ok(ward_img(&["resize", "a.qcow2", "+1M"], &d.0));
    assert_eq!(qemu_info("a.qcow2", &d.0)["virtual-size"], 11 << 20);
    let (code, text) = ward_img(&["resize", "a.qcow2", "-2M"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--shrink"), "{text}");
    let (code, text) = ward_img(&["resize", "--shrink", "a.qcow2", "-2M"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("holds data"), "{text}");
    assert_eq!(qemu_info("a.qcow2", &d.0)["virtual-size"], 11 << 20);
    ok(run(
        "qemu-io",
        &["-f", "qcow2", "-c", "discard 9M 64k", "a.qcow2"],
        &d.0,
    ));
    ok(ward_img(&["resize", "--shrink", "a.qcow2", "-2M"], &d.0));
    ok(run("qemu-img", &["check", "a.qcow2"], &d.0));
    assert_eq!(qemu_info("a.qcow2", &d.0)["virtual-size"], 9 << 20);
    ok(ward_img(&["resize", "--shrink", "a.qcow2", "2M"], &d.0));
    ok(run("qemu-img", &["check", "a.qcow2"], &d.0));
    let small = raw_bytes("a.qcow2", "small.raw", &d.0);
    assert_eq!(&small[..1 << 20], &before[..]);
    assert!(small[1 << 20..].iter().all(|&b| b == 0));

    // Raw: the file is the disk.
    ok(run(
        "qemu-img",
        &["create", "-q", "-f", "raw", "b.raw", "1M"],
        &d.0,
    ));
    ok(ward_img(&["resize", "b.raw", "+1M"], &d.0));
    assert_eq!(std::fs::metadata(d.p("b.raw")).unwrap().len(), 2 << 20);
    assert_ne!(ward_img(&["resize", "b.raw", "1M"], &d.0).0, 0);
    ok(ward_img(
        &["resize", "--shrink", "-f", "raw", "b.raw", "1M"],
        &d.0,
    ));
    assert_eq!(std::fs::metadata(d.p("b.raw")).unwrap().len(), 1 << 20);
}

#[test]
fn resize_hides_a_larger_backing_file() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("resize-backing");
    ok(run(
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "4M"],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x71 0 4M", "base.raw"],
        &d.0,
    ));
    ok(run(
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
            "-o",
            "cluster_size=4K",
            "top.qcow2",
            "1M",
        ],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x72 4k 4k", "top.qcow2"],
        &d.0,
    ));
    ok(ward_img(&["resize", "top.qcow2", "6M"], &d.0));
    ok(run("qemu-img", &["check", "top.qcow2"], &d.0));
    let got = raw_bytes("top.qcow2", "top.raw", &d.0);
    assert_eq!(got.len(), 6 << 20);
    assert!(got[..4096].iter().all(|&b| b == 0x71));
    assert!(got[4096..8192].iter().all(|&b| b == 0x72));
    assert!(got[8192..1 << 20].iter().all(|&b| b == 0x71));
    // What the backing file holds past the old size stays hidden, as qemu-img does it.
    assert!(got[1 << 20..].iter().all(|&b| b == 0));
}

#[test]
fn snapshots_made_by_ward_img_are_qemu_snapshots() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("snapshot");
    ok(ward_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4K",
            "s.qcow2",
            "4M",
        ],
        &d.0,
    ));
    ok(run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x41 0 2M", "s.qcow2"],
        &d.0,
    ));
    let first = raw_bytes("s.qcow2", "first.raw", &d.0);
    ok(ward_img(&["snapshot", "-c", "first", "s.qcow2"], &d.0));
    ok(run("qemu-img", &["check", "s.qcow2"], &d.0));
    let ours = ok(ward_img(&["snapshot", "-l", "s.qcow2"], &d.0));
    let theirs = ok(run("qemu-img", &["snapshot", "-l", "s.qcow2"], &d.0));
    assert_eq!(ours, theirs);
    assert!(ours.starts_with("Snapshot list:\nID        TAG "), "{ours}");
    // Dates are local time, as qemu-img prints them: the same in a zone far from UTC.
    let in_zone = |cmd: &str, args: &[&str]| {
        let o = std::process::Command::new(cmd)
            .args(args)
            .current_dir(&d.0)
            .env("TZ", "JST-9")
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    };
    let ours_jst = in_zone(
        env!("CARGO_BIN_EXE_ward-img"),
        &["snapshot", "-l", "s.qcow2"],
    );
    assert_eq!(
        ours_jst,
        in_zone("qemu-img", &["snapshot", "-l", "s.qcow2"])
    );
    assert_ne!(ours_jst, ours, "TZ changes the dates");
    let (code, text) = ward_img(&["snapshot", "-c", "first", "s.qcow2"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("already exists"), "{text}");
    // Writes after the snapshot leave it alone.
    ok(run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x42 1M 2M", "s.qcow2"],
        &d.0,
    ));
    ok(run(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=first",
            "-O",
            "raw",
            "s.qcow2",
            "snap.raw",
        ],
        &d.0,
    ));
    assert!(std::fs::read(d.p("snap.raw")).unwrap() == first);
    // A qemu-made snapshot, applied and deleted by ward-img.
    ok(run(
        "qemu-img",
        &["snapshot", "-c", "second", "s.qcow2"],
        &d.0,
    ));
    let second = raw_bytes("s.qcow2", "second.raw", &d.0);
    ok(ward_img(&["snapshot", "-a", "first", "s.qcow2"], &d.0));
    ok(run("qemu-img", &["check", "s.qcow2"], &d.0));
    assert!(raw_bytes("s.qcow2", "now.raw", &d.0) == first);
    ok(ward_img(&["snapshot", "-a", "second", "s.qcow2"], &d.0));
    ok(run("qemu-img", &["check", "s.qcow2"], &d.0));
    assert!(raw_bytes("s.qcow2", "now.raw", &d.0) == second);
    let (code, text) = ward_img(&["resize", "s.qcow2", "8M"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("internal snapshots"), "{text}");
    ok(ward_img(&["snapshot", "-d", "first", "s.qcow2"], &d.0));
    ok(run("qemu-img", &["check", "s.qcow2"], &d.0));
    let listed = ok(run("qemu-img", &["snapshot", "-l", "s.qcow2"], &d.0));
    assert!(
        !listed.contains("first") && listed.contains("second"),
        "{listed}"
    );
    ok(ward_img(&["snapshot", "-d", "second", "s.qcow2"], &d.0));
    ok(run("qemu-img", &["check", "s.qcow2"], &d.0));
    assert_eq!(ok(ward_img(&["snapshot", "-l", "s.qcow2"], &d.0)), "");
    let (code, text) = ward_img(&["snapshot", "-d", "nope", "s.qcow2"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("No snapshot"), "{text}");
    assert!(raw_bytes("s.qcow2", "now.raw", &d.0) == second);
}
