//! How `ward-console` ends when it cannot start: each failure class has its exit code
//! (`ward_console::exit_code`), so the launcher can tell a usage error from a bad descriptor.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use ward_console::exit_code;

fn run(args: &[&str], fds: &[std::os::fd::BorrowedFd<'_>]) -> (Option<i32>, String) {
    common::spawn(args, fds).exit_code()
}

const BASE: [&str; 10] = [
    "--socket-fd",
    "3",
    "--attach-fd",
    "4",
    "--log-fd",
    "5",
    "--log-old-fd",
    "6",
    "--name",
    "console",
];

#[test]
fn usage_errors_exit_2() {
    for args in [
        BASE[2..].to_vec(),
        [&BASE[..], &["--log-max", "1000"]].concat(),
        [&BASE[..], &["--seccomp", "sometimes"]].concat(),
        [&BASE[..8], &["--name", "a/b"]].concat(),
        [&["--socket-fd", "6"][..], &BASE[2..]].concat(),
    ] {
        let (code, log) = run(&args, &[]);
        assert_eq!(code, Some(exit_code::USAGE), "{args:?}: {log}");
    }
}

#[test]
fn missing_or_wrong_descriptors_exit_3() {
    let dir = common::temp_dir("startup");
    let vhost = UnixListener::bind(dir.join("v")).unwrap();
    let attach = UnixListener::bind(dir.join("a")).unwrap();
    let (log, old) = (common::memfd(c"log"), common::memfd(c"old"));
    let (conn, _peer) = UnixStream::pair().unwrap();

    // Nothing at 3 to 6.
    let (code, log_text) = run(&BASE, &[]);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log_text}");
    assert!(log_text.contains("is not open"), "{log_text}");
    // A connected socket where the attach listener should be.
    let fds = [vhost.as_fd(), conn.as_fd(), log.as_fd(), old.as_fd()];
    let (code, log_text) = run(&BASE, &fds);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log_text}");
    assert!(log_text.contains("not a listening"), "{log_text}");
    // A write-only current log: rotation could not copy it.
    let wo = std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/self/fd/{}", log.as_raw_fd()))
        .unwrap();
    let fds = [vhost.as_fd(), attach.as_fd(), wo.as_fd(), old.as_fd()];
    let (code, log_text) = run(&BASE, &fds);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log_text}");
    assert!(log_text.contains("reading and writing"), "{log_text}");
    // A socket where the old log should be.
    let fds = [vhost.as_fd(), attach.as_fd(), log.as_fd(), conn.as_fd()];
    let (code, log_text) = run(&BASE, &fds);
    assert_eq!(code, Some(exit_code::BAD_FD), "{log_text}");
    assert!(log_text.contains("not a regular file"), "{log_text}");
}
