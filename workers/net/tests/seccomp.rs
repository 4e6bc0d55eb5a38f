//! Teeth of the `net` filter's one ioctl rule: a child of this test binary installs the filter in
//! enforce mode and makes one ioctl. `TUNSETOFFLOAD` passes the filter (and fails in the kernel:
//! the descriptor is a socket, not a tap); any other request, the tap-making ones first, kills
//! the child with SIGSYS. No privileges needed.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use ward_policy::seccomp::{apply_to_thread, Profile, SeccompMode};

const REQUESTS: [(&str, libc::Ioctl, bool); 6] = [
    ("TUNSETOFFLOAD", libc::TUNSETOFFLOAD, false),
    ("TUNSETIFF", libc::TUNSETIFF, true),
    ("TUNSETVNETHDRSZ", libc::TUNSETVNETHDRSZ, true),
    ("TUNGETIFF", libc::TUNGETIFF, true),
    ("TUNSETPERSIST", libc::TUNSETPERSIST, true),
    ("FIONBIO", libc::FIONBIO, true),
];

/// Child half of `only_tunsetoffload_passes`: runs only when re-executed by it.
#[test]
fn teeth_child() {
    let Ok(name) = std::env::var("WARD_NET_TEETH") else {
        return;
    };
    let (_, req, _) = *REQUESTS.iter().find(|(n, _, _)| *n == name).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    apply_to_thread(Profile::Net, SeccompMode::Enforce).unwrap();
    // SAFETY: the argument is a plain 0 (no pointer is dereferenced by TUNSETOFFLOAD, and a
    // socket rejects every tun request before looking at its argument); a forbidden request
    // never reaches the kernel.
    let r = unsafe { libc::ioctl(a.as_raw_fd(), req, 0 as libc::c_ulong) };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    println!("{name} returned {r} errno {errno}");
    std::process::exit(0);
}

#[test]
fn only_tunsetoffload_passes() {
    let me = std::env::current_exe().unwrap();
    for (name, _, killed) in REQUESTS {
        let out = Command::new(&me)
            .args(["--exact", "teeth_child", "--nocapture", "--test-threads=1"])
            .env("WARD_NET_TEETH", name)
            .output()
            .unwrap();
        if killed {
            assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{name}: {out:?}");
        } else {
            assert!(out.status.success(), "{name}: {out:?}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            // A socket is not a tap: the kernel answers ENOTTY.
            assert!(
                stdout.contains(&format!("{name} returned -1 errno {}", libc::ENOTTY)),
                "{stdout}"
            );
        }
    }
}
