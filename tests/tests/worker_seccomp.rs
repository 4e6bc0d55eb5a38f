//! A forbidden syscall kills the real block worker under its real policy. The worker makes no
//! forbidden call on its own, so the test makes it make one: an LD_PRELOAD shim wraps
//! `accept4` — which the worker calls only after its filter is installed — and opens an IPv4
//! socket first. Under `--seccomp enforce` that kills the worker with SIGSYS; the same worker
//! with `--seccomp off` carries on (the sandbox-off twin shows the shim itself is harmless).

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use ward_tests::{bin, wait_for, TempDir};

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>
int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    int (*real)(int, struct sockaddr *, socklen_t *, int) = dlsym(RTLD_NEXT, "accept4");
    socket(AF_INET, SOCK_STREAM, 0); /* forbidden by every ward policy */
    return real(fd, addr, len, flags);
}
"#;

fn build_shim(dir: &TempDir) -> Option<std::path::PathBuf> {
    let src = dir.path("shim.c");
    let so = dir.path("shim.so");
    std::fs::write(&src, SHIM).unwrap();
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .ok()?;
    st.success().then_some(so)
}

/// Starts ward-block on a fresh socket and image with the shim preloaded, connects as a
/// frontend would, and returns how the worker ended (or None if it is still running).
fn run_worker(
    dir: &TempDir,
    shim: &std::path::Path,
    mode: &str,
) -> Option<std::process::ExitStatus> {
    let sock = dir.path(&format!("{mode}.sock"));
    let listener = UnixListener::bind(&sock).unwrap();
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path(&format!("{mode}.img")))
        .unwrap();
    image.set_len(1 << 20).unwrap();
    let (lfd, ifd) = (listener.as_raw_fd(), image.as_raw_fd());
    let mut cmd = Command::new(bin("ward-block"));
    cmd.args([
        "--socket-fd",
        "3",
        "--image-fd",
        "4",
        "--name",
        "vda",
        "--seccomp",
        mode,
    ])
    .env("LD_PRELOAD", shim)
    .stdin(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: between fork and exec, only fcntl and dup2 on descriptors this process holds
    // open. Copies above 100 first, so that placing one at 3 or 4 cannot clobber the other.
    unsafe {
        cmd.pre_exec(move || {
            let (l, i) = (
                libc::fcntl(lfd, libc::F_DUPFD, 100),
                libc::fcntl(ifd, libc::F_DUPFD, 100),
            );
            if l < 0 || i < 0 || libc::dup2(l, 3) < 0 || libc::dup2(i, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let conn = UnixStream::connect(&sock).unwrap();
    // The worker accepts at once; under enforce it dies right there.
    let status = wait_for(Duration::from_secs(3), || child.try_wait().unwrap());
    if status.is_none() {
        // Still serving: end the session the way a frontend does.
        drop(conn);
        let end = wait_for(Duration::from_secs(10), || child.try_wait().unwrap());
        assert!(
            end.is_some_and(|s| s.success()),
            "worker did not end cleanly: {end:?}"
        );
        return None;
    }
    status
}

#[test]
fn forbidden_syscall_kills_the_block_worker() {
    let dir = TempDir::new("worker-teeth");
    let Some(shim) = build_shim(&dir) else {
        eprintln!("\n*** SKIPPED forbidden_syscall_kills_the_block_worker: no C compiler ***\n");
        return;
    };
    let enforced = run_worker(&dir, &shim, "enforce");
    assert_eq!(
        enforced.and_then(|s| s.signal()),
        Some(libc::SIGSYS),
        "worker under its policy was not killed by SIGSYS: {enforced:?}"
    );
    assert_eq!(
        run_worker(&dir, &shim, "off"),
        None,
        "worker without a filter should live on"
    );
}
