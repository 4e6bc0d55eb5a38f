//! The TAP device.
//!
//! - [`open_tap`] is the launcher's half: it opens `/dev/net/tun`, creates (or attaches to) the
//!   interface with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and sets the virtio-net header size to
//!   12 bytes (`TUNSETVNETHDRSZ`), so every frame on the descriptor carries a
//!   `struct virtio_net_hdr_v1` exactly as the queues do. The worker cannot do this itself: its
//!   filter allows neither `open` nor these ioctls.
//! - [`Tap::from_inherited`] is the worker's check of the descriptor it inherits, made before
//!   the filter is installed.
//! - [`TapIo`] is what the data path needs from a tap: one `writev` per transmitted frame, one
//!   `readv` (straight into guest memory) or `read` (into a bounce buffer) per received frame, and `TUNSETOFFLOAD` once the driver's features are known (the
//!   only ioctl the worker's filter allows). Tests put a `SOCK_SEQPACKET` socket pair behind
//!   it, which keeps frame boundaries as a tap does.
//!
//! The ioctls are the only `unsafe` code of the crate besides taking ownership of inherited
//! descriptors.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use libc::{c_int, c_short, c_ulong, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFNAMSIZ};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};
use vm_memory::VolatileSlice;

use crate::header::HDR_LEN;

/// The flags a ward tap is created with, and that the worker insists on.
pub const TAP_FLAGS: c_int = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
/// The virtio-net header size set on the tap (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_SIZE: c_int = HDR_LEN as c_int;
/// Where TAP devices are made.
pub const TUN_PATH: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Interface name {0:?} must be 1 to 15 printable characters without '/', ':' or spaces"
    )]
    Name(String),
    #[error("Cannot open {TUN_PATH}")]
    Open(#[source] io::Error),
    #[error("Cannot create or attach to tap interface {0:?} (TUNSETIFF)")]
    SetIff(String, #[source] io::Error),
    #[error("Cannot set the virtio-net header size (TUNSETVNETHDRSZ)")]
    SetHdrSize(#[source] io::Error),
    #[error("The descriptor is not an attached tun/tap device (TUNGETIFF)")]
    NotATap(#[source] io::Error),
    #[error("Cannot read the virtio-net header size (TUNGETVNETHDRSZ)")]
    GetHdrSize(#[source] io::Error),
    #[error("Interface {name:?} has flags {flags:#x}; a ward tap needs IFF_TAP, IFF_NO_PI and IFF_VNET_HDR ({TAP_FLAGS:#x})")]
    Flags { name: String, flags: c_int },
    #[error(
        "Interface {name:?} has a {size}-byte virtio-net header; a ward tap needs {VNET_HDR_SIZE}"
    )]
    HdrSize { name: String, size: c_int },
    #[error("Cannot make the tap non-blocking")]
    NonBlocking(#[source] nix::Error),
}

/// What the data path needs from a tap.
pub trait TapIo: Send + Sync {
    /// Writes one frame (its virtio-net header and its bytes, gathered) in one `writev`.
    fn send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Reads one frame, header first, into `buf`.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads one frame, header first, straight into guest memory: `bufs` in order, with one
    /// `readv` (see [`readv_guest`]).
    fn recv_guest(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
    /// `TUNSETOFFLOAD`: which offloads the kernel may leave to the reader of the tap.
    fn set_offload(&self, flags: u32) -> io::Result<()>;
}

/// Most buffers one [`readv_guest`] takes (the kernel's `UIO_MAXIOV`).
pub const MAX_IOV: usize = 1024;

/// One `readv` on `fd` into `bufs`, in order: the receive path's one copy, from the tap
/// straight into the guest's buffers. Written by hand because `std`'s `read_vectored` wants
/// `&mut [u8]`, which guest memory cannot be (the guest may write it at any time; `vm-memory`
/// hands out `VolatileSlice`s for that reason) and `vm-memory` has no vectored read.
pub fn readv_guest(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    if bufs.len() > MAX_IOV {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The guards keep the mappings behind the pointers for the duration of the call.
    let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
    let iov: Vec<libc::iovec> = guards
        .iter()
        .zip(bufs)
        .map(|(g, b)| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: each iovec is a slice of guest memory that `vm-memory` checked and keeps mapped
    // while its guard lives (until the end of this function); the kernel writes at most
    // `iov_len` bytes into each, as a device's DMA would, and no Rust reference to those bytes
    // exists. The count is at most MAX_IOV, so it fits a c_int.
    let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as c_int) };
    // A negative count is an error; any other fits usize.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `struct ifreq` with the one member TUNSETIFF and TUNGETIFF use, `ifr_flags`.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: c_short,
    _pad: [u8; IFREQ_PAD],
}

const IFREQ_PAD: usize =
    std::mem::size_of::<libc::ifreq>() - IFNAMSIZ - std::mem::size_of::<c_short>();
// The kernel copies a whole `struct ifreq` in and out.
const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());

impl IfReq {
    fn new(name: &str, flags: c_int) -> IfReq {
        let mut n = [0u8; IFNAMSIZ];
        // check_name keeps names under IFNAMSIZ bytes, so the last byte stays NUL.
        let len = name.len().min(IFNAMSIZ - 1);
        n[..len].copy_from_slice(&name.as_bytes()[..len]);
        IfReq {
            name: n,
            // The TUNSETIFF flags all fit in the 16-bit ifr_flags.
            flags: c_short::try_from(flags).unwrap_or(0),
            _pad: [0; IFREQ_PAD],
        }
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does, and also refuses
/// anything that is not printable ASCII.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::Name(name.to_string()))
    }
}

fn last_error(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The launcher's helper: creates the tap interface `name` (or attaches to an existing one the
/// caller may use) with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, sets its virtio-net header size
/// to 12 bytes, and returns the descriptor (close-on-exec) to hand to `ward-net --tap-fd`.
/// The interface is created in the caller's network namespace, down; bringing it up and
/// wiring it to anything is the caller's business.
pub fn open_tap(name: &str) -> Result<OwnedFd, Error> {
    check_name(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(Error::Open)?;
    let fd = file.as_raw_fd();
    let mut req = IfReq::new(name, TAP_FLAGS);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` at the pointer. `req` has that
    // layout and size (asserted above), is exclusively borrowed and outlives the call, and
    // `fd` is open (`file` owns it).
    last_error(unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReq) })
        .map_err(|e| Error::SetIff(name.to_string(), e))?;
    let size: c_int = VNET_HDR_SIZE;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` at the pointer; `size` outlives the call and
    // `fd` is open.
    last_error(unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size as *const c_int) })
        .map_err(Error::SetHdrSize)?;
    Ok(OwnedFd::from(file))
}

/// The interface name and `TUNGETIFF` flags of a tap descriptor.
pub fn interface(fd: BorrowedFd<'_>) -> Result<(String, c_int), Error> {
    let mut req = IfReq::new("", 0);
    // SAFETY: TUNGETIFF writes one `struct ifreq` at the pointer; `req` has that layout and
    // size, is exclusively borrowed and outlives the call; `fd` is open while borrowed.
    last_error(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) })
        .map_err(Error::NotATap)?;
    Ok((req.name(), c_int::from(req.flags)))
}

/// The virtio-net header size of a tap descriptor (`TUNGETVNETHDRSZ`).
pub fn vnet_hdr_size(fd: BorrowedFd<'_>) -> Result<c_int, Error> {
    let mut size: c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one `int` at the pointer; `size` outlives the call and
    // `fd` is open while borrowed.
    last_error(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETVNETHDRSZ,
            &mut size as *mut c_int,
        )
    })
    .map_err(Error::GetHdrSize)?;
    Ok(size)
}

/// The `TUNSETOFFLOAD` flags for a driver that acked `features`: the kernel may hand the tap
/// frames with a partial checksum only if the guest accepts them (`GUEST_CSUM`), and TCP
/// segments larger than the MTU only if it also accepts those (`GUEST_TSO4`, `GUEST_TSO6`).
pub fn offload_flags(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// Whether `flags` (from `TUNGETIFF`) describe a ward tap.
pub fn flags_ok(flags: c_int) -> bool {
    flags & TAP_FLAGS == TAP_FLAGS && flags & libc::IFF_TUN == 0
}

/// The worker's tap: the inherited descriptor, checked and non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Takes the inherited tap descriptor after checking it is a tap made by [`open_tap`]
    /// (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, 12-byte header), and makes it non-blocking.
    /// Runs before the seccomp filter, which does not allow these ioctls.
    pub fn from_inherited(fd: OwnedFd) -> Result<Tap, Error> {
        let (name, flags) = interface(fd.as_fd())?;
        if !flags_ok(flags) {
            return Err(Error::Flags { name, flags });
        }
        let size = vnet_hdr_size(fd.as_fd())?;
        if size != VNET_HDR_SIZE {
            return Err(Error::HdrSize { name, size });
        }
        let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(Error::NonBlocking)?;
        let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl)).map_err(Error::NonBlocking)?;
        Ok(Tap {
            file: File::from(fd),
            name,
        })
    }

    /// The interface's name, as the kernel reports it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl TapIo for Tap {
    fn send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn recv_guest(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        readv_guest(self.file.as_fd(), bufs)
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long) and touches no
        // memory of ours; the descriptor is open for the life of `self.file`.
        last_error(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                c_ulong::from(flags),
            )
        })
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4};

    use super::*;

    #[test]
    fn names_follow_the_kernel_rules() {
        for ok in ["tap0", "ward-vm1.0", "a", "x".repeat(15).as_str(), "tap%d"] {
            assert!(check_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "tab\t",
            "nul\0",
            "é",
            "x".repeat(16).as_str(),
        ] {
            assert!(
                matches!(check_name(bad), Err(Error::Name(_))),
                "{bad:?} accepted"
            );
        }
        // The launcher's helper refuses a bad name before touching /dev/net/tun.
        assert!(matches!(open_tap("a/b"), Err(Error::Name(_))));
    }

    #[test]
    fn ifreq_layout() {
        let r = IfReq::new("tap7", TAP_FLAGS);
        assert_eq!(&r.name[..5], b"tap7\0");
        assert_eq!(r.flags, 0x5002);
        assert_eq!(r.name(), "tap7");
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
        // A 15-byte name keeps its terminating NUL.
        let long = IfReq::new(&"y".repeat(15), 0);
        assert_eq!(long.name[15], 0);
        assert_eq!(long.name(), "y".repeat(15));
    }

    #[test]
    fn tap_flags() {
        assert!(flags_ok(TAP_FLAGS));
        // TUNGETIFF also reports IFF_ONE_QUEUE, IFF_PERSIST and the like; they do no harm.
        assert!(flags_ok(
            TAP_FLAGS | libc::IFF_ONE_QUEUE | libc::IFF_PERSIST
        ));
        assert!(!flags_ok(IFF_TAP | IFF_NO_PI));
        assert!(!flags_ok(IFF_TAP | IFF_VNET_HDR));
        assert!(!flags_ok(IFF_NO_PI | IFF_VNET_HDR | libc::IFF_TUN));
    }

    #[test]
    fn offload_follows_what_the_guest_accepts() {
        use virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_ECN;
        let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | (1 << b));
        let (csum, tso4, tso6) = (
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
        );
        assert_eq!(offload_flags(0), 0);
        assert_eq!(offload_flags(f(&[csum])), libc::TUN_F_CSUM);
        assert_eq!(offload_flags(f(&[csum, tso4])), 0x3);
        assert_eq!(offload_flags(f(&[csum, tso6])), 0x5);
        assert_eq!(offload_flags(f(&[csum, tso4, tso6])), 0x7);
        // TSO without GUEST_CSUM is meaningless: nothing is offloaded.
        assert_eq!(offload_flags(f(&[tso4, tso6])), 0);
        // Host-side (transmit) features and ECN do not change what the tap may hand us.
        assert_eq!(
            offload_flags(f(&[
                csum,
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_GUEST_ECN
            ])),
            libc::TUN_F_CSUM
        );
    }

    #[test]
    fn a_socket_is_not_a_tap() {
        let (a, _b) = UnixStream::pair().unwrap();
        let e = Tap::from_inherited(OwnedFd::from(a)).unwrap_err();
        assert!(matches!(e, Error::NotATap(_)), "{e:?}");
    }

    /// The seccomp layer allows exactly the ioctl the worker makes after its filter is
    /// installed, and nothing else.
    #[test]
    fn policy_allows_exactly_tunsetoffload() {
        let layer: serde_json::Value =
            serde_json::from_str(include_str!("../../../policy/seccomp/x86_64/net.json")).unwrap();
        let ioctls: Vec<&serde_json::Value> = layer["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["syscall"] == "ioctl")
            .collect();
        assert_eq!(ioctls.len(), 1, "{ioctls:?}");
        let args = ioctls[0]["args"].as_array().unwrap();
        assert_eq!(args.len(), 1);
        assert_eq!(args[0]["index"], 1);
        assert_eq!(args[0]["op"], "eq");
        assert_eq!(args[0]["val"], u64::from(libc::TUNSETOFFLOAD as u32));
        assert_eq!(libc::TUNSETOFFLOAD, 0x4004_54d0);
    }
}
