//! The launcher's helper, `ward_net::tap::open_tap`, against the kernel: a real tap made inside
//! a network namespace this test creates, owns and deletes. It must carry
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` with a 12-byte header (TUNGETIFF, TUNGETVNETHDRSZ),
//! be close-on-exec, live in that namespace only, pass the worker's own check, and take the
//! TUNSETOFFLOAD values the worker sets. Skipped (loudly) without root or `ip`.

mod common;

use std::os::fd::{AsFd, AsRawFd};

use common::Netns;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use ward_net::tap::{self, open_tap, Tap, TapIo, TAP_FLAGS, VNET_HDR_SIZE};

#[test]
fn open_tap_makes_a_vnet_tap_inside_the_namespace() {
    let Some(ns) = Netns::create("open_tap_makes_a_vnet_tap_inside_the_namespace") else {
        return;
    };
    let fd = ns.run(|| open_tap("wardtap0").expect("open_tap"));

    let (name, flags) = tap::interface(fd.as_fd()).unwrap();
    assert_eq!(name, "wardtap0");
    assert_eq!(flags & TAP_FLAGS, TAP_FLAGS, "flags {flags:#x}");
    assert_eq!(flags & libc::IFF_TUN, 0);
    assert_eq!(tap::vnet_hdr_size(fd.as_fd()).unwrap(), VNET_HDR_SIZE);
    assert_eq!(VNET_HDR_SIZE, 12);
    let fdflags = FdFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap());
    assert!(fdflags.contains(FdFlag::FD_CLOEXEC));

    // The interface exists in the test's namespace, not in the one the test runs in.
    ns.ip(&["link", "show", "wardtap0"]);
    let outside = std::process::Command::new("ip")
        .args(["link", "show", "wardtap0"])
        .output()
        .unwrap();
    assert!(
        !outside.status.success(),
        "wardtap0 leaked out of {}",
        ns.name
    );

    // The worker's check takes it and makes it non-blocking; with the link down there is
    // nothing to read.
    let tap = Tap::from_inherited(fd).unwrap();
    assert_eq!(tap.name(), "wardtap0");
    let fl = OFlag::from_bits_truncate(fcntl(tap.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
    assert!(fl.contains(OFlag::O_NONBLOCK));
    let mut buf = [0u8; 128];
    let e = tap.recv(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

    // What the worker sets after SET_FEATURES, and on a reset.
    for flags in [0x7, 0x1, 0] {
        tap.set_offload(flags).unwrap();
    }
    // An offload the kernel does not know is refused, not ignored.
    assert!(tap.set_offload(0x8000_0000).is_err());
}

#[test]
fn attaching_to_an_existing_tap_and_refusing_a_wrong_header_size() {
    let Some(ns) = Netns::create("attaching_to_an_existing_tap_and_refusing_a_wrong_header_size")
    else {
        return;
    };
    // A persistent tap made by the administrator beforehand; open_tap attaches to it.
    ns.ip(&[
        "tuntap", "add", "dev", "wardtap1", "mode", "tap", "vnet_hdr",
    ]);
    let fd = ns.run(|| open_tap("wardtap1").expect("open_tap on an existing tap"));
    assert_eq!(tap::vnet_hdr_size(fd.as_fd()).unwrap(), 12);

    // The same tap with a 10-byte header (what a legacy VMM would set) is refused by the
    // worker's check.
    let ten: libc::c_int = 10;
    // SAFETY: TUNSETVNETHDRSZ reads one int at the pointer, which outlives the call; `fd` is
    // an open tap.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &ten as *const _) };
    assert_eq!(r, 0);
    let e = Tap::from_inherited(fd).unwrap_err();
    assert!(matches!(e, tap::Error::HdrSize { size: 10, .. }), "{e:?}");
}

#[test]
fn bad_names_are_refused_before_touching_the_kernel() {
    for name in ["", "a/b", "x".repeat(16).as_str()] {
        assert!(
            matches!(open_tap(name), Err(tap::Error::Name(_))),
            "{name:?}"
        );
    }
}
