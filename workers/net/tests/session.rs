//! Smoke test under the real filter: the `ward-net` binary with its seccomp filter in enforce
//! mode (kill on violation), serving a real tap, driven through a whole vhost-user session by a
//! real `vhost::vhost_user::Frontend` and a hand-written split-queue driver over shared memfd
//! memory: negotiation (which sets TUNSETOFFLOAD under the filter), configuration space, memory
//! table, both queues, frames both ways, a malformed frame, disconnecting. The worker must exit
//! 0 and never die by SIGSYS, and every thread of it must run under exactly one filter. The
//! same session with `--seccomp off` is the sandbox-off twin: if only the enforce run fails,
//! the policy lacks a syscall.
//!
//! The tap lives in a network namespace the test creates and deletes; frames are sent and
//! captured there with a packet socket bound to the tap. Nothing leaves that namespace.
//! Skipped (loudly) without root or `ip`.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::Netns;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_bindings::virtio_net::virtio_net_config;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use ward_net::backend::FEATURES;
use ward_net::header::VnetHdr;
use ward_worker::dev::{self, SplitRing};

const QSIZE: u16 = 64;
const MEM_SIZE: usize = 2 << 20;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const NET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// An EtherType for local experiments (IEEE 802), so no stack in the namespace answers.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const TAP: &str = "wnet0";
/// Where the driver keeps receive buffers (4 KiB each) and frames to send.
const RX_BUFS: u64 = 0x1_0000;
const TX_BUFS: u64 = 0x8_0000;

const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;

/// Waits until the device used `n` more chains of `q`; returns them (head, length).
fn wait_used(q: &mut SplitRing, mem: &GuestMemoryMmap<()>, n: usize) -> Vec<(u16, u32)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        if q.used_idx(mem) == q.used_seen {
            assert!(
                Instant::now() < deadline,
                "device used {} of {n}",
                out.len()
            );
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let (id, len) = q.next_used(mem);
        out.push((u16::try_from(id).unwrap(), len));
    }
    out
}

/// The namespace with a tap in it, up, and a packet socket bound to the tap.
fn network(ns: &Netns) -> (OwnedFd, OwnedFd) {
    let tap = ns.run(|| {
        // No IPv6 chatter (router solicitations, MLD) on the tap: the test's frames only.
        for f in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1");
        }
        ward_net::tap::open_tap(TAP).expect("open_tap")
    });
    // Up before the packet socket is bound to it (binding to a down link reports ENETDOWN).
    ns.ip(&["link", "set", TAP, "up"]);
    let sock = ns.run(|| {
        let sock = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::EthAll,
        )
        .expect("packet socket");
        // SAFETY: a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(c"wnet0".as_ptr()) };
        assert_ne!(index, 0, "tap index: {}", std::io::Error::last_os_error());
        let sll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: i32::try_from(index).unwrap(),
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `sll` is a valid sockaddr_ll that outlives the call, and the length passed
        // is its size; the socket is open.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        sock
    });
    (tap, sock)
}

fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// Waits for `want` on the packet socket; returns every frame seen before it.
fn capture(sock: &OwnedFd, want: &[u8]) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = Vec::new();
    let mut buf = vec![0u8; 70_000];
    loop {
        match socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if &buf[..n] == want => return before,
            Ok(n) => before.push(buf[..n].to_vec()),
            Err(nix::errno::Errno::EAGAIN) => {
                assert!(Instant::now() < deadline, "frame never reached the tap");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("recv on the packet socket: {e}"),
        }
    }
}

fn session(seccomp: &str) {
    let Some(ns) = Netns::create(&format!("session --seccomp {seccomp}")) else {
        return;
    };
    let (tap, sock) = network(&ns);
    let dir = common::temp_dir("session");
    let path = dir.join("net0.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let args = [
        "--socket-fd",
        "3",
        "--tap-fd",
        "4",
        "--name",
        "net0",
        "--mac",
        "52:54:00:12:34:56",
        "--mtu",
        "1400",
        "--seccomp",
        seccomp,
    ];
    let mut worker = common::spawn(
        &args,
        &[listener.as_fd(), tap.as_fd()],
        &[("WARD_LOG", "debug")],
    );
    drop(tap);

    // Negotiation: every offered feature is taken, which sets the tap's offloads (an ioctl the
    // filter must allow).
    let stream = UnixStream::connect(&path).unwrap();
    let mut fe = Frontend::from_stream(stream, 2);
    let features = dev::negotiate(&mut fe);
    assert_eq!(features, FEATURES | dev::PROTOCOL_FEATURES);
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    fe.set_features(features).unwrap();

    // Configuration space: what the core asks for, all of struct virtio_net_config.
    let size = std::mem::size_of::<virtio_net_config>() as u32;
    assert_eq!(size, 24);
    let (_, cfg) = fe
        .get_config(0, size, VhostUserConfigFlags::WRITABLE, &[0; 24])
        .unwrap();
    assert_eq!(cfg.len(), 24);
    assert_eq!(cfg[0..6], GUEST_MAC);
    assert_eq!(cfg[6..12], [1, 0, 1, 0, 0x78, 0x05]); // LINK_UP, 1 pair, MTU 1400

    // Guest memory and both queues.
    let (mem, host) = dev::share_memory(&mut fe, MEM_SIZE);
    let mut rxq = SplitRing::new(0, QSIZE);
    let mut txq = SplitRing::new(0x3000, QSIZE);
    rxq.start(&mut fe, 0, host);
    txq.start(&mut fe, 1, host);

    // Transmit: a frame with a header the device must refuse (DATA_VALID is a receive flag),
    // then a good one. Only the good one reaches the namespace, byte for byte.
    let bad = frame([0xff; 6], GUEST_MAC, 100, 1);
    let good = frame([0xff; 6], GUEST_MAC, 200, 2);
    let bad_hdr = VnetHdr {
        flags: 2,
        ..VnetHdr::default()
    };
    mem.write_slice(&bad_hdr.to_bytes(), GuestAddress(TX_BUFS))
        .unwrap();
    mem.write_slice(&bad, GuestAddress(TX_BUFS + 0x100))
        .unwrap();
    mem.write_slice(
        &VnetHdr::default().to_bytes(),
        GuestAddress(TX_BUFS + 0x1000),
    )
    .unwrap();
    mem.write_slice(&good, GuestAddress(TX_BUFS + 0x1100))
        .unwrap();
    let hb = txq.chain(
        &mem,
        &[(TX_BUFS, 12, R), (TX_BUFS + 0x100, bad.len() as u32, R)],
    );
    let hg = txq.chain(
        &mem,
        &[
            (TX_BUFS + 0x1000, 12, R),
            (TX_BUFS + 0x1100, good.len() as u32, R),
        ],
    );
    txq.kick.write(1).unwrap();
    assert_eq!(wait_used(&mut txq, &mem, 2), vec![(hb, 0), (hg, 0)]);
    let earlier = capture(&sock, &good);
    assert!(!earlier.contains(&bad), "the refused frame reached the tap");

    // Receive: buffers first, then a frame from the namespace towards the guest. Twenty 4 KiB
    // buffers hold the longest frame, so frames are read from the tap straight into them.
    let heads: Vec<u16> = (0..20)
        .map(|i| rxq.chain(&mem, &[(RX_BUFS + 0x1000 * i, 4096, W)]))
        .collect();
    rxq.kick.write(1).unwrap();
    let incoming = frame(GUEST_MAC, NET_MAC, 300, 3);
    // Give the worker a moment to start watching the tap; frames sent before are queued anyway.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        socket::send(sock.as_raw_fd(), &incoming, MsgFlags::empty()).unwrap(),
        incoming.len()
    );
    // Whatever else the namespace's stack sends out of the tap lands in the guest too; the
    // test's frame is among the first few.
    let mut rx_used: u32 = 0;
    loop {
        let (head, len) = wait_used(&mut rxq, &mem, 1)[0];
        rx_used += 1;
        let i = heads
            .iter()
            .position(|&h| h == head)
            .expect("a posted head") as u64;
        let at = RX_BUFS + 0x1000 * i;
        let mut got = vec![0u8; len as usize];
        mem.read_slice(&mut got, GuestAddress(at)).unwrap();
        let hdr = VnetHdr::parse(got[..12].try_into().unwrap());
        assert_eq!(hdr.num_buffers, 1);
        if got[12..] == incoming[..] {
            break;
        }
        assert!(
            (rx_used as usize) < heads.len(),
            "the frame never reached the guest"
        );
    }

    // Every thread (main, vring thread, the frontend's request thread) is confined.
    dev::assert_confined(worker.pid(), seccomp == "enforce");

    // Stop the receive queue as a driver reset does, then disconnect: the worker exits.
    fe.set_vring_enable(0, false).unwrap();
    assert_eq!(fe.get_vring_base(0).unwrap(), rx_used);
    drop(fe);
    let log = worker.finish_clean();
    // TUNSETOFFLOAD went through the filter and the kernel took it.
    assert!(log.contains("tap offloads set"), "log:\n{log}");
    assert!(!log.contains("TUNSETOFFLOAD failed"), "log:\n{log}");
    let rx_frames = format!("\"rx_frames\":{rx_used},");
    dev::assert_counters(
        &log,
        &[
            "\"tx_frames\":1,",
            "\"tx_bad_flags\":1,",
            &rx_frames,
            "\"offload_errors\":0,",
        ],
    );
    // With twenty 4 KiB buffers posted, the first frames were read straight into them.
    assert!(!log.contains("\"rx_direct\":0,"), "log:\n{log}");
}

#[test]
fn full_session_under_enforced_filter() {
    session("enforce");
}

#[test]
fn full_session_without_filter() {
    session("off");
}
