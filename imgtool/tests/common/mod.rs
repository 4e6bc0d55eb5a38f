//! Helpers shared by the ward-img integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        eprintln!("\n*** SKIPPED: qemu-img/qemu-io are not installed ***\n");
    }
    ok
}

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("ward-img-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    pub fn p(&self, n: &str) -> PathBuf {
        self.0.join(n)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(cmd: &str, args: &[&str], dir: &Path) -> (i32, String) {
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

pub fn ward_img(args: &[&str], dir: &Path) -> (i32, String) {
    run(env!("CARGO_BIN_EXE_ward-img"), args, dir)
}

pub fn ok(r: (i32, String)) -> String {
    assert_eq!(r.0, 0, "{}", r.1);
    r.1
}

pub fn qemu_info(file: &str, dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(run("qemu-img", &["info", "--output=json", file], dir))).unwrap()
}

pub fn raw_bytes(img: &str, out: &str, dir: &Path) -> Vec<u8> {
    ok(run("qemu-img", &["convert", "-O", "raw", img, out], dir));
    std::fs::read(dir.join(out)).unwrap()
}
