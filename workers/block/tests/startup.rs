//! How `ward-block` ends when it cannot start: each failure class has its exit code
//! (`ward_block::exit_code`), so the launcher can tell a usage error from a missing descriptor.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use ward_block::exit_code;

fn run(args: &[&str], fds: &[std::os::fd::BorrowedFd<'_>]) -> (Option<i32>, String) {
    common::spawn(args, fds, &[]).exit_code()
}

const BASE: [&str; 6] = ["--socket-fd", "3", "--image-fd", "4", "--name", "vda"];

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["--image-fd", "4", "--name", "vda"],
        vec!["--socket-fd", "1", "--image-fd", "4", "--name", "vda"],
        vec!["--socket-fd", "3", "--image-fd", "3", "--name", "vda"],
        vec!["--socket-fd", "3", "--image-fd", "4", "--name", "../etc"],
        [&BASE[..], &["--seccomp", "sometimes"]].concat(),
        [&BASE[..], &["--serial", "a-serial-longer-than-twenty"]].concat(),
    ] {
        let (code, log) = run(&args, &[]);
        assert_eq!(code, Some(exit_code::USAGE), "{args:?}: {log}");
    }
}

#[test]
fn missing_or_wrong_descriptors_exit_3() {
    let dir = common::temp_dir("startup");
    let listener = UnixListener::bind(dir.join("s")).unwrap();
    let image = common::memfd(c"img", 4096);
    let (a, _b) = UnixStream::pair().unwrap();

    // Nothing at 3 and 4.
    let (code, log) = run(&BASE, &[]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
    assert!(log.contains("is not open"), "{log}");
    // The image where the socket should be, and the other way round.
    let (code, log) = run(&BASE, &[image.as_fd(), listener.as_fd()]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
    // A connected socket rather than a listening one.
    let (code, log) = run(&BASE, &[a.as_fd(), image.as_fd()]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
    assert!(log.contains("not a listening"), "{log}");
    // A read-only image without --readonly.
    let ro = std::fs::File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&image)
    ))
    .unwrap();
    let (code, log) = run(&BASE, &[listener.as_fd(), ro.as_fd()]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log}");
    assert!(log.contains("read-only"), "{log}");
}
