//! How `ward-net` ends when it cannot start: each failure class has its exit code
//! (`ward_net::exit_code`), so the launcher can tell a usage error from a wrong descriptor.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use common::Netns;
use ward_net::exit_code;

fn run(args: &[&str], fds: &[BorrowedFd<'_>]) -> (Option<i32>, String) {
    common::spawn(args, fds, &[]).exit_code()
}

const BASE: [&str; 8] = [
    "--socket-fd",
    "3",
    "--tap-fd",
    "4",
    "--name",
    "net0",
    "--mac",
    "52:54:00:12:34:56",
];

#[test]
fn usage_errors_exit_2() {
    let with = |extra: &[&'static str]| [&BASE[..], extra].concat();
    for args in [
        BASE[..6].to_vec(),
        vec!["--tap-fd", "4", "--name", "n", "--mac", "52:54:00:12:34:56"],
        vec![
            "--socket-fd",
            "1",
            "--tap-fd",
            "4",
            "--name",
            "n",
            "--mac",
            "52:54:00:12:34:56",
        ],
        vec![
            "--socket-fd",
            "3",
            "--tap-fd",
            "3",
            "--name",
            "n",
            "--mac",
            "52:54:00:12:34:56",
        ],
        vec![
            "--socket-fd",
            "3",
            "--tap-fd",
            "4",
            "--name",
            "../x",
            "--mac",
            "52:54:00:12:34:56",
        ],
        vec![
            "--socket-fd",
            "3",
            "--tap-fd",
            "4",
            "--name",
            "n",
            "--mac",
            "52:54:00:12:34",
        ],
        vec![
            "--socket-fd",
            "3",
            "--tap-fd",
            "4",
            "--name",
            "n",
            "--mac",
            "01:00:5e:00:00:01",
        ],
        with(&["--mtu", "20"]),
        with(&["--mtu", "70000"]),
        with(&["--seccomp", "sometimes"]),
    ] {
        let (code, log) = run(&args, &[]);
        assert_eq!(code, Some(exit_code::USAGE), "{args:?}: {log}");
    }
}

#[test]
fn missing_or_wrong_descriptors_exit_3() {
    let dir = common::temp_dir("startup");
    let listener = UnixListener::bind(dir.join("s")).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let file = ward_worker::dev::memfd(c"not-a-tap", 0);

    // Nothing at 3 and 4.
    let (code, log) = run(&BASE, &[]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
    assert!(log.contains("is not open"), "{log}");
    // A connected socket rather than a listening one.
    let (code, log) = run(&BASE, &[a.as_fd(), file.as_fd()]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
    assert!(log.contains("not a listening"), "{log}");
    // A socket, or a plain file, where the tap should be.
    for not_a_tap in [a.as_fd(), file.as_fd()] {
        let (code, log) = run(&BASE, &[listener.as_fd(), not_a_tap]);
        assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
        assert!(log.contains("not a usable tap"), "{log}");
    }
}

#[test]
fn a_tap_without_the_vnet_header_exits_3() {
    let Some(ns) = Netns::create("a_tap_without_the_vnet_header_exits_3") else {
        return;
    };
    let dir = common::temp_dir("startup-tap");
    let listener = UnixListener::bind(dir.join("s")).unwrap();
    let fd = ns.run(|| ward_net::tap::open_tap("wardtap2").expect("open_tap"));
    let ten: libc::c_int = 10;
    // SAFETY: TUNSETVNETHDRSZ reads one int at the pointer, which outlives the call; `fd` is
    // an open tap.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &ten as *const _) };
    assert_eq!(r, 0);
    let (code, log) = run(&BASE, &[listener.as_fd(), fd.as_fd()]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
    assert!(log.contains("10-byte virtio-net header"), "{log}");
}
