//! ward-img against the referee, qemu-img: images ward-img makes pass `qemu-img check` and
//! `qemu-img info` agrees on them; images qemu-img makes (plain, compressed, with a backing
//! file, several cluster sizes) convert to the same raw bytes as `qemu-img convert` gives.

use std::path::{Path, PathBuf};
use std::process::Command;

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        eprintln!("\n*** SKIPPED: qemu-img/qemu-io are not installed ***\n");
    }
    ok
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("ward-img-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn p(&self, n: &str) -> PathBuf {
        self.0.join(n)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &str, args: &[&str], dir: &Path) -> (i32, String) {
    let o = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

fn ward_img(args: &[&str], dir: &Path) -> (i32, String) {
    run(env!("CARGO_BIN_EXE_ward-img"), args, dir)
}

fn ok(r: (i32, String)) -> String {
    assert_eq!(r.0, 0, "{}", r.1);
    r.1
}

fn qemu_info(file: &str, dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(run("qemu-img", &["info", "--output=json", file], dir))).unwrap()
}

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
    for cs in ["4K", "64K", "1M"] {
        ok(ward_img(
            &[
                "convert",
                "-p",
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
