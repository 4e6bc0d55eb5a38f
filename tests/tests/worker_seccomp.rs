//! A forbidden syscall kills the real workers (block, console) under their real policies. A
//! worker makes no forbidden call on its own, so the test makes it make one: an LD_PRELOAD shim
//! wraps `accept4` — which a worker calls only after its filter is installed — and opens an
//! IPv4 socket first. Under `--seccomp enforce` that kills the worker with SIGSYS; the same
//! worker with `--seccomp off` carries on (the sandbox-off twin shows the shim is harmless).

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

/// A worker to start: its binary, arguments, and the files it gets at 3, 4, ... (the first is
/// the listening vhost-user socket, bound at `sock`).
struct Worker {
    binary: &'static str,
    args: Vec<String>,
    files: Vec<std::os::fd::OwnedFd>,
    sock: std::path::PathBuf,
}

fn file(dir: &TempDir, name: &str, len: u64, append: bool) -> std::os::fd::OwnedFd {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(!append)
        .append(append)
        .create(true)
        .truncate(!append)
        .open(dir.path(name))
        .unwrap();
    f.set_len(len).unwrap();
    f.into()
}

fn block(dir: &TempDir, mode: &str) -> Worker {
    let sock = dir.path(&format!("blk-{mode}.sock"));
    let listener = UnixListener::bind(&sock).unwrap();
    Worker {
        binary: "ward-block",
        args: [
            "--socket-fd",
            "3",
            "--image-fd",
            "4",
            "--name",
            "vda",
            "--seccomp",
            mode,
        ]
        .map(String::from)
        .to_vec(),
        files: vec![
            listener.into(),
            file(dir, &format!("{mode}.img"), 1 << 20, false),
        ],
        sock,
    }
}

fn console(dir: &TempDir, mode: &str) -> Worker {
    let sock = dir.path(&format!("hvc-{mode}.sock"));
    let listener = UnixListener::bind(&sock).unwrap();
    let attach = UnixListener::bind(dir.path(&format!("attach-{mode}.sock"))).unwrap();
    Worker {
        binary: "ward-console",
        args: [
            "--socket-fd",
            "3",
            "--attach-fd",
            "4",
            "--log-fd",
            "5",
            "--log-old-fd",
            "6",
            "--name",
            "hvc0",
            "--seccomp",
            mode,
        ]
        .map(String::from)
        .to_vec(),
        files: vec![
            listener.into(),
            attach.into(),
            file(dir, &format!("{mode}.log"), 0, true),
            file(dir, &format!("{mode}.log.1"), 0, false),
        ],
        sock,
    }
}

/// Starts the worker with the shim preloaded, connects as a frontend would, and returns how
/// the worker ended (or None if it was still serving, after ending its session cleanly).
fn run_worker(w: Worker, shim: &std::path::Path) -> Option<std::process::ExitStatus> {
    let raw: Vec<i32> = w.files.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(bin(w.binary));
    cmd.args(&w.args)
        .env("LD_PRELOAD", shim)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec, only fcntl and dup2 on descriptors this process holds
    // open. Copies above 100 first, so that placing one at 3, 4, ... cannot clobber another.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0i32; 8];
            for (i, &fd) in raw.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..raw.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let conn = UnixStream::connect(&w.sock).unwrap();
    // The worker accepts at once; under enforce it dies right there.
    let status = wait_for(Duration::from_secs(3), || child.try_wait().unwrap());
    if status.is_none() {
        // Still serving: end the session the way a frontend does.
        drop(conn);
        let end = wait_for(Duration::from_secs(10), || child.try_wait().unwrap());
        assert!(
            end.is_some_and(|s| s.success()),
            "{} did not end cleanly: {end:?}",
            w.binary
        );
        return None;
    }
    status
}

#[test]
fn forbidden_syscall_kills_each_worker() {
    let dir = TempDir::new("worker-teeth");
    let Some(shim) = build_shim(&dir) else {
        eprintln!("\n*** SKIPPED forbidden_syscall_kills_each_worker: no C compiler ***\n");
        return;
    };
    for make in [block as fn(&TempDir, &str) -> Worker, console] {
        let w = make(&dir, "enforce");
        let name = w.binary;
        let enforced = run_worker(w, &shim);
        assert_eq!(
            enforced.and_then(|s| s.signal()),
            Some(libc::SIGSYS),
            "{name} under its policy was not killed by SIGSYS: {enforced:?}"
        );
        assert_eq!(
            run_worker(make(&dir, "off"), &shim),
            None,
            "{name} without a filter should live on"
        );
    }
}
