//! ward-img locks images as qemu-img does: shared to read, exclusive to write. An image a VM
//! is writing (ward's launcher holds an exclusive lock on it) cannot be read half-written or
//! changed under the VM; `-U` reads it anyway.

mod common;

use common::*;
use nix::fcntl::{Flock, FlockArg};

#[test]
fn an_image_in_use_is_neither_read_nor_written_unless_forced() {
    let d = Dir::new("locking");
    ok(ward_img(
        &["create", "-f", "qcow2", "busy.qcow2", "16M"],
        &d.0,
    ));
    // What the launcher does for a writable disk of a running VM.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.p("busy.qcow2"))
        .unwrap();
    let held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
    for args in [
        &["info", "busy.qcow2"][..],
        &["check", "busy.qcow2"],
        &["map", "busy.qcow2"],
        &["convert", "-O", "raw", "busy.qcow2", "out.raw"],
        &["resize", "busy.qcow2", "32M"],
        &["snapshot", "-c", "s1", "busy.qcow2"],
    ] {
        let (code, text) = ward_img(args, &d.0);
        assert_eq!(code, 1, "{args:?}: {text}");
        assert!(text.contains("in use by a running VM"), "{args:?}: {text}");
    }
    // Reading it anyway is the user's call; writing never is.
    ok(ward_img(&["-U", "info", "busy.qcow2"], &d.0));
    ok(ward_img(
        &["convert", "-U", "-O", "raw", "busy.qcow2", "out.raw"],
        &d.0,
    ));
    let (code, text) = ward_img(&["-U", "resize", "busy.qcow2", "32M"], &d.0);
    assert_eq!(code, 1, "{text}");
    drop(held);
    ok(ward_img(&["resize", "busy.qcow2", "32M"], &d.0));
    // A backing file in use for writing cannot back a read either.
    ok(ward_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "busy.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
        &d.0,
    ));
    let f = std::fs::File::open(d.p("busy.qcow2")).unwrap();
    let _held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
    let (code, text) = ward_img(&["info", "top.qcow2"], &d.0);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("busy.qcow2"), "{text}");
}
