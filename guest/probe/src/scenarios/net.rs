//! virtio-net scenarios: the probe as a tiny IPv4/UDP host on device DEV.
//!
//! Its address, the peer's and the UDP port (the same at both ends) come from
//! `probe.ip=`, `probe.peer=` and `probe.port=` (10.77.0.2, 10.77.0.1, 7777).
//! While it waits for frames it answers ARP requests for its address; before
//! sending it resolves the peer with ARP (a request every 200 ms) and keeps the
//! answer per device. Frames that are neither ARP for it nor UDP to its address
//! and port (IPv6 chatter from the host, say) are counted as `other` and dropped.
//!
//! The payload of every datagram the scenarios send or check (LEN >= 8 bytes):
//! `ward`, the sequence number (u32, big endian), then byte i (i >= 8) =
//! [`payload_byte`]`(seq, i)`.
//!
//! * `net-info:DEV`: `OK mac=<mac> status=<n> link=<up|down> mtu=<n>
//!   max_pairs=<n> features=0x<negotiated>`.
//! * `net-send:DEV:N:LEN`: N datagrams (seq 0..N-1) of LEN payload bytes
//!   (8..=1472) to the peer: `OK sent=<N> bytes=<N*LEN> peer_mac=<mac>`, or
//!   `FAIL arp-timeout` / `FAIL tx-timeout sent=<n>`.
//! * `net-recv:DEV:N`: prints `waiting n=<N> ip=<ip> port=<port> mac=<mac>`,
//!   then takes N datagrams, which must carry seq 0..N-1 in order, a correct
//!   pattern, correct IPv4 and UDP checksums (a UDP checksum of 0 is allowed),
//!   and a virtio-net header with flags 0, gso_type 0 and num_buffers 1:
//!   `OK got=<N> bad=0 bytes=<payload bytes> other=<n>`, or
//!   `FAIL bad=<n> got=<N> first=<index> why=<vnet-hdr|ip-csum|udp-csum|short|magic|seq|pattern>`,
//!   or `FAIL timeout got=<n> bad=<n>` when nothing arrives for timeout_ms.
//! * `net-echo:DEV:N`: prints `waiting ...` as net-recv, then sends each
//!   datagram back to where it came from, in place and unchecked:
//!   `OK echoed=<N> bytes=<payload bytes>` or `FAIL timeout echoed=<n>`. With
//!   N = 0 it echoes until nothing has arrived for timeout_ms, then prints OK.
//! * `net-blast:DEV:N:LEN`: as net-send, for throughput: each datagram's
//!   payload gets only the magic and its seq (the rest of the buffer is left
//!   as it was), so the guest's own work per frame is small. `OK sent=<N>
//!   bytes=<N*LEN> cycles=<TSC, first send to last completion> peer_mac=<mac>`.
//! * `net-sink:DEV:N`: prints `waiting ...` as net-recv, then counts datagrams
//!   for us, unchecked (send them with UDP checksum 0 to keep the guest's work
//!   small), until N have come or nothing has for timeout_ms: `OK got=<n>
//!   bytes=<payload bytes> cycles=<TSC, first to last datagram> other=<n>`, or
//!   `FAIL timeout got=0`.
//! * `net-bad:DEV`: [`BAD_CASES`] malformed transmit chains, each (where it has
//!   room) carrying a datagram with seq 0xBAD0 + case, then one good datagram
//!   with seq 0x600D, all of LEN 64 to the peer. One line per case,
//!   `case=<name> returned=<0|1>`, then `OK cases=<n> returned=<n>` or
//!   `FAIL good-not-consumed cases=<n> returned=<n>`.

use core::mem::MaybeUninit;

use crate::cpu::rdtsc;
use crate::dma;
use crate::fmt::Line;
use crate::inet::{self, Arp, Flow, Frame, Ip, Mac, Udp, ARP_REPLY, ARP_REQUEST, PAYLOAD_OFF};
use crate::scenarios::Scen;
use crate::sync::RacyCell;
use crate::time::Deadline;
use crate::virtio::net::{Net, BUF_LEN, HDR_LEN, HDR_NUM_BUFFERS, S_LINK_UP};
use crate::virtio::queue::{F_NEXT, F_WRITE};
use crate::Ctx;

const MAGIC: &[u8; 4] = b"ward";
/// UDP payload bytes that fit a 1500-byte MTU.
const MAX_PAYLOAD: u64 = 1472;
const ARP_RETRY_MS: u64 = 200;
const BAD_LEN: usize = 64;
const GOOD_SEQ: u32 = 0x600D;
const BAD_SEQ: u32 = 0xBAD0;

/// Byte `i` (i >= 8) of the payload of datagram `seq`.
pub fn payload_byte(seq: u32, i: usize) -> u8 {
    ((i as u32 ^ (seq << 16)).wrapping_mul(0x9E37_79B1) >> 24) as u8
}

fn fill_payload(p: &mut [u8], seq: u32) {
    p[..4].copy_from_slice(MAGIC);
    p[4..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(8) {
        *b = payload_byte(seq, i);
    }
}

/// The sequence number of one of our payloads, or why it is not one.
fn check_payload(p: &[u8]) -> Result<u32, &'static str> {
    if p.len() < 8 {
        return Err("short");
    }
    if &p[..4] != MAGIC {
        return Err("magic");
    }
    let seq = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    if p.iter()
        .enumerate()
        .skip(8)
        .any(|(i, &b)| b != payload_byte(seq, i))
    {
        return Err("pattern");
    }
    Ok(seq)
}

fn put_mac<'l>(l: &'l mut Line, m: &Mac) -> &'l mut Line {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, &b) in m.iter().enumerate() {
        if i > 0 {
            l.s(":");
        }
        l.b(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
    l
}

fn put_ip<'l>(l: &'l mut Line, ip: &Ip) -> &'l mut Line {
    for (i, &b) in ip.iter().enumerate() {
        if i > 0 {
            l.s(".");
        }
        l.d(u64::from(b));
    }
    l
}

/// The one-entry ARP cache of a device.
#[derive(Clone, Copy)]
struct ArpEntry {
    ip: Ip,
    mac: Mac,
    known: bool,
}

struct Slot {
    net: MaybeUninit<Net>,
    ready: bool,
    stale: bool,
    arp: ArpEntry,
}

static SLOTS: RacyCell<[Slot; crate::cmdline::MAX_DEVS]> = RacyCell::new(
    [const {
        Slot {
            net: MaybeUninit::uninit(),
            ready: false,
            stale: false,
            arp: ArpEntry {
                ip: [0; 4],
                mac: [0; 6],
                known: false,
            },
        }
    }; crate::cmdline::MAX_DEVS],
);

/// One scenario's view of a device: the driver, our address, what was ignored.
struct Host {
    net: &'static mut Net,
    arp: &'static mut ArpEntry,
    idx: usize,
    ip: Ip,
    port: u16,
    /// Frames that were neither ARP for us nor UDP to our address and port.
    other: u64,
}

/// A datagram to our address and port, still in receive buffer `buf`.
struct Datagram {
    buf: usize,
    udp: Udp,
    /// The virtio-net header has flags 0, gso_type 0 and num_buffers 1.
    hdr_ok: bool,
}

/// The initialised driver for the device index in field 1 of `sc`.
fn host(ctx: &Ctx, sc: &Scen) -> Option<Host> {
    let (idx, addr) = crate::scenarios::device_addr(ctx, sc, 1)?;
    // SAFETY: boot CPU only; scenarios run one after another, and each hands
    // out the slot for the duration of one scenario.
    let slot = unsafe { &mut (*SLOTS.get())[idx] };
    let result = if !slot.ready {
        Net::init(idx, addr).map(|n| {
            slot.net.write(n);
            slot.ready = true;
        })
    } else if slot.stale {
        // SAFETY: ready means written.
        unsafe { slot.net.assume_init_mut() }.reinit()
    } else {
        Ok(())
    };
    if let Err(e) = result {
        slot.stale = true;
        sc.fail(e.as_str());
        return None;
    }
    slot.stale = false;
    Some(Host {
        // SAFETY: ready (checked or set above).
        net: unsafe { slot.net.assume_init_mut() },
        arp: &mut slot.arp,
        idx,
        ip: ctx.cmd.ip,
        port: ctx.cmd.port,
        other: 0,
    })
}

impl Host {
    /// Makes the next scenario on this device reset and re-initialise it (after
    /// a timeout, when the device may still hold our buffers).
    fn mark_stale(&self) {
        // SAFETY: boot CPU only; only the flag is written, no reference into
        // the slot is created.
        unsafe { (*SLOTS.get())[self.idx].stale = true };
    }

    /// Handles everything received so far until a datagram for us turns up.
    fn poll(&mut self) -> Option<Datagram> {
        self.net.reap_tx();
        while let Some((buf, len)) = self.net.pop_rx() {
            if !(HDR_LEN..=BUF_LEN).contains(&len) {
                self.other += 1;
                self.net.repost(buf);
                continue;
            }
            let b = self.net.rx_buf(buf);
            let nb = u16::from_le_bytes([b[HDR_NUM_BUFFERS], b[HDR_NUM_BUFFERS + 1]]);
            let hdr_ok = b[0] == 0 && b[1] == 0 && nb == 1;
            match inet::parse(&b[HDR_LEN..len]) {
                Frame::Udp(udp) if udp.flow.dst_ip == self.ip && udp.flow.dst_port == self.port => {
                    return Some(Datagram { buf, udp, hdr_ok });
                }
                Frame::Arp(a) => {
                    self.net.repost(buf);
                    self.arp_in(&a);
                }
                _ => {
                    self.other += 1;
                    self.net.repost(buf);
                }
            }
        }
        None
    }

    /// Learns the sender of ARP packets for our address and answers requests.
    fn arp_in(&mut self, a: &Arp) {
        if a.tpa != self.ip {
            return;
        }
        *self.arp = ArpEntry {
            ip: a.spa,
            mac: a.sha,
            known: true,
        };
        if a.op == ARP_REQUEST {
            let reply = Arp {
                op: ARP_REPLY,
                sha: self.net.mac,
                spa: self.ip,
                tha: a.sha,
                tpa: a.spa,
            };
            self.send_arp(&reply);
        }
    }

    /// Sends an ARP packet if a transmit buffer is free (ARP is retried anyway).
    fn send_arp(&mut self, a: &Arp) {
        let Some(b) = self.net.tx_alloc() else { return };
        let buf = self.net.tx_buf(b);
        buf[..HDR_LEN].fill(0);
        let len = inet::build_arp(&mut buf[HDR_LEN..], a);
        let _ = self.net.send(b, HDR_LEN + len);
    }

    /// The MAC address of `ip`, asking with ARP until `timeout_ms` passes.
    fn resolve(&mut self, ip: Ip, timeout_ms: u64) -> Option<Mac> {
        let deadline = Deadline::after_ms(timeout_ms);
        let mut retry = Deadline::after_ms(0);
        loop {
            if self.arp.known && self.arp.ip == ip {
                return Some(self.arp.mac);
            }
            if deadline.expired() {
                return None;
            }
            if retry.expired() {
                let req = Arp {
                    op: ARP_REQUEST,
                    sha: self.net.mac,
                    spa: self.ip,
                    tha: [0; 6],
                    tpa: ip,
                };
                self.send_arp(&req);
                retry = Deadline::after_ms(ARP_RETRY_MS);
            }
            if let Some(d) = self.poll() {
                self.other += 1;
                self.net.repost(d.buf);
            }
            core::hint::spin_loop();
        }
    }

    /// The next datagram for us, or None when nothing came for `timeout_ms`.
    fn next_datagram(&mut self, timeout_ms: u64) -> Option<Datagram> {
        let deadline = Deadline::after_ms(timeout_ms);
        loop {
            if let Some(d) = self.poll() {
                return Some(d);
            }
            if deadline.expired() {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// Our datagrams to `peer_mac`/the peer address.
    fn flow_to(&self, ctx: &Ctx, peer_mac: Mac) -> Flow {
        Flow {
            src_mac: self.net.mac,
            dst_mac: peer_mac,
            src_ip: self.ip,
            dst_ip: ctx.cmd.peer,
            src_port: self.port,
            dst_port: self.port,
        }
    }

    /// Writes a zeroed header and datagram `seq` with `len` payload bytes into
    /// transmit buffer `b`; returns the bytes to send (header included).
    fn build(&mut self, b: usize, flow: &Flow, seq: u32, len: usize) -> usize {
        let buf = self.net.tx_buf(b);
        buf[..HDR_LEN].fill(0);
        let frame = &mut buf[HDR_LEN..];
        fill_payload(&mut frame[PAYLOAD_OFF..PAYLOAD_OFF + len], seq);
        HDR_LEN + inet::build_udp(frame, flow, len, seq as u16)
    }

    /// `waiting n=<n> ip=<ip> port=<port> mac=<mac>`
    fn print_waiting(&self, sc: &Scen, n: u64) {
        let mut l = sc.out();
        l.s("waiting n=").d(n).s(" ip=");
        put_ip(&mut l, &self.ip)
            .s(" port=")
            .d(u64::from(self.port))
            .s(" mac=");
        put_mac(&mut l, &self.net.mac).end();
    }
}

pub fn info(ctx: &Ctx, sc: &Scen) {
    let Some(h) = host(ctx, sc) else { return };
    let n = &h.net;
    let mut l = sc.out();
    l.s("OK mac=");
    put_mac(&mut l, &n.mac)
        .s(" status=")
        .d(u64::from(n.status))
        .s(" link=")
        .s(if n.status & S_LINK_UP != 0 {
            "up"
        } else {
            "down"
        })
        .s(" mtu=")
        .d(u64::from(n.mtu))
        .s(" max_pairs=")
        .d(u64::from(n.max_pairs))
        .s(" features=")
        .hx(n.features)
        .end();
}

pub fn send(ctx: &Ctx, sc: &Scen) {
    let (Some(count), Some(len)) = (sc.num(2), sc.num(3)) else {
        return sc.fail("usage net-send:DEV:N:LEN");
    };
    if sc.nargs() != 3 || !(8..=MAX_PAYLOAD).contains(&len) {
        return sc.fail("usage net-send:DEV:N:LEN (LEN 8..=1472)");
    }
    let Some(mut h) = host(ctx, sc) else { return };
    let Some(peer_mac) = h.resolve(ctx.cmd.peer, ctx.cmd.timeout_ms) else {
        return sc.fail("arp-timeout");
    };
    let flow = h.flow_to(ctx, peer_mac);
    for seq in 0..count {
        // Keep answering ARP and recycling receive buffers while sending.
        if let Some(d) = h.poll() {
            h.other += 1;
            h.net.repost(d.buf);
        }
        let Ok(b) = h.net.tx_alloc_wait(ctx.cmd.timeout_ms) else {
            h.mark_stale();
            sc.out().s("FAIL tx-timeout sent=").d(seq).end();
            return;
        };
        let n = h.build(b, &flow, seq as u32, len as usize);
        if h.net.send(b, n).is_err() {
            h.mark_stale();
            sc.out().s("FAIL no-descriptors sent=").d(seq).end();
            return;
        }
    }
    if h.net.flush_tx(ctx.cmd.timeout_ms).is_err() {
        h.mark_stale();
        sc.out().s("FAIL tx-timeout sent=").d(count).end();
        return;
    }
    let mut l = sc.out();
    l.s("OK sent=")
        .d(count)
        .s(" bytes=")
        .d(count * len)
        .s(" peer_mac=");
    put_mac(&mut l, &peer_mac).end();
}

pub fn blast(ctx: &Ctx, sc: &Scen) {
    let (Some(count), Some(len)) = (sc.num(2), sc.num(3)) else {
        return sc.fail("usage net-blast:DEV:N:LEN");
    };
    if sc.nargs() != 3 || !(8..=MAX_PAYLOAD).contains(&len) {
        return sc.fail("usage net-blast:DEV:N:LEN (LEN 8..=1472)");
    }
    let Some(mut h) = host(ctx, sc) else { return };
    let Some(peer_mac) = h.resolve(ctx.cmd.peer, ctx.cmd.timeout_ms) else {
        return sc.fail("arp-timeout");
    };
    let flow = h.flow_to(ctx, peer_mac);
    let len = len as usize;
    let start = rdtsc();
    for seq in 0..count {
        if let Some(d) = h.poll() {
            h.other += 1;
            h.net.repost(d.buf);
        }
        let Ok(b) = h.net.tx_alloc_wait(ctx.cmd.timeout_ms) else {
            h.mark_stale();
            sc.out().s("FAIL tx-timeout sent=").d(seq).end();
            return;
        };
        let buf = h.net.tx_buf(b);
        buf[..HDR_LEN].fill(0);
        let frame = &mut buf[HDR_LEN..];
        frame[PAYLOAD_OFF..PAYLOAD_OFF + 4].copy_from_slice(MAGIC);
        frame[PAYLOAD_OFF + 4..PAYLOAD_OFF + 8].copy_from_slice(&(seq as u32).to_be_bytes());
        let n = HDR_LEN + inet::build_udp(frame, &flow, len, seq as u16);
        if h.net.send(b, n).is_err() {
            h.mark_stale();
            sc.out().s("FAIL no-descriptors sent=").d(seq).end();
            return;
        }
    }
    if h.net.flush_tx(ctx.cmd.timeout_ms).is_err() {
        h.mark_stale();
        sc.out().s("FAIL tx-timeout sent=").d(count).end();
        return;
    }
    let cycles = rdtsc() - start;
    let mut l = sc.out();
    l.s("OK sent=")
        .d(count)
        .s(" bytes=")
        .d(count * len as u64)
        .s(" cycles=")
        .d(cycles)
        .s(" peer_mac=");
    put_mac(&mut l, &peer_mac).end();
}

pub fn sink(ctx: &Ctx, sc: &Scen) {
    let Some(count) = sc.num(2).filter(|&n| n > 0 && sc.nargs() == 2) else {
        return sc.fail("usage net-sink:DEV:N (N > 0)");
    };
    let Some(mut h) = host(ctx, sc) else { return };
    h.print_waiting(sc, count);
    let (mut got, mut bytes, mut first, mut last) = (0u64, 0u64, 0u64, 0u64);
    while got < count {
        let Some(d) = h.next_datagram(ctx.cmd.timeout_ms) else {
            break;
        };
        last = rdtsc();
        if got == 0 {
            first = last;
        }
        bytes += d.udp.payload_len as u64;
        h.net.repost(d.buf);
        got += 1;
    }
    if got == 0 {
        return sc.fail("timeout got=0");
    }
    sc.out()
        .s("OK got=")
        .d(got)
        .s(" bytes=")
        .d(bytes)
        .s(" cycles=")
        .d(last - first)
        .s(" other=")
        .d(h.other)
        .end();
}

/// Why received datagram number `index` is not what the host was to send.
fn check(h: &mut Host, d: &Datagram, index: u64) -> Option<&'static str> {
    if !d.hdr_ok {
        return Some("vnet-hdr");
    }
    if !d.udp.ip_csum_ok {
        return Some("ip-csum");
    }
    if !d.udp.udp_csum_ok {
        return Some("udp-csum");
    }
    let off = HDR_LEN + d.udp.payload_off;
    let payload = &h.net.rx_buf(d.buf)[off..off + d.udp.payload_len];
    match check_payload(payload) {
        Err(why) => Some(why),
        Ok(seq) if u64::from(seq) != index => Some("seq"),
        Ok(_) => None,
    }
}

pub fn recv(ctx: &Ctx, sc: &Scen) {
    let Some(count) = sc.num(2).filter(|&n| n > 0 && sc.nargs() == 2) else {
        return sc.fail("usage net-recv:DEV:N (N > 0)");
    };
    let Some(mut h) = host(ctx, sc) else { return };
    h.print_waiting(sc, count);
    let (mut got, mut bad, mut bytes) = (0u64, 0u64, 0u64);
    let mut first: Option<(u64, &'static str)> = None;
    while got < count {
        let Some(d) = h.next_datagram(ctx.cmd.timeout_ms) else {
            sc.out()
                .s("FAIL timeout got=")
                .d(got)
                .s(" bad=")
                .d(bad)
                .end();
            return;
        };
        if let Some(why) = check(&mut h, &d, got) {
            bad += 1;
            first.get_or_insert((got, why));
        }
        bytes += d.udp.payload_len as u64;
        h.net.repost(d.buf);
        got += 1;
    }
    match first {
        None => {
            sc.out()
                .s("OK got=")
                .d(got)
                .s(" bad=0 bytes=")
                .d(bytes)
                .s(" other=")
                .d(h.other)
                .end();
        }
        Some((index, why)) => {
            sc.out()
                .s("FAIL bad=")
                .d(bad)
                .s(" got=")
                .d(got)
                .s(" first=")
                .d(index)
                .s(" why=")
                .s(why)
                .end();
        }
    }
}

pub fn echo(ctx: &Ctx, sc: &Scen) {
    let Some(count) = sc.num(2).filter(|_| sc.nargs() == 2) else {
        return sc.fail("usage net-echo:DEV:N");
    };
    let Some(mut h) = host(ctx, sc) else { return };
    h.print_waiting(sc, count);
    let (mut echoed, mut bytes) = (0u64, 0u64);
    while count == 0 || echoed < count {
        let Some(d) = h.next_datagram(ctx.cmd.timeout_ms) else {
            break;
        };
        let mac = h.net.mac;
        let b = h.net.rx_buf(d.buf);
        b[..HDR_LEN].fill(0);
        inet::swap_udp(&mut b[HDR_LEN..], &d.udp, &mac);
        if h.net.send_rx(d.buf, HDR_LEN + d.udp.frame_len).is_err() {
            break;
        }
        echoed += 1;
        bytes += d.udp.payload_len as u64;
    }
    let flushed = h.net.flush_tx(ctx.cmd.timeout_ms).is_ok();
    if !flushed {
        h.mark_stale();
    }
    let mut l = sc.out();
    if !flushed {
        l.s("FAIL tx-timeout echoed=");
    } else if count == 0 || echoed == count {
        l.s("OK echoed=");
    } else {
        l.s("FAIL timeout echoed=");
    }
    l.d(echoed).s(" bytes=").d(bytes).end();
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    /// One 8-byte descriptor: less than the header.
    Short,
    /// Header, then the frame in a device-writable descriptor.
    WriteOnly,
    /// Header, then the frame at ram_end + 1 GiB.
    OobAddr,
    /// Header and frame in one descriptor of 0xFFFFF000 bytes.
    HugeLen,
    /// gso_type TCPV4 (HOST_TSO4 was not negotiated), gso_size 1000.
    GsoTcpv4,
    /// gso_type 0x7f, which means nothing.
    GsoInvalid,
    /// flags NEEDS_CSUM (CSUM was not negotiated).
    CsumFlag,
    /// Header, then a 70000-byte frame (more than 65550).
    TooBig,
    /// Header and frame descriptors linked to each other.
    Loop,
}

/// The malformed transmit chains of `net-bad`, in order: case k carries seq
/// 0xBAD0 + k where it has a datagram at all.
const BAD_CASES: [(Case, &str); 9] = [
    (Case::Short, "short"),
    (Case::WriteOnly, "write-only"),
    (Case::OobAddr, "oob-addr"),
    (Case::HugeLen, "huge-len"),
    (Case::GsoTcpv4, "gso-tcpv4"),
    (Case::GsoInvalid, "gso-invalid"),
    (Case::CsumFlag, "csum-flag"),
    (Case::TooBig, "too-big"),
    (Case::Loop, "loop"),
];

/// Publishes malformed chain `k` (not notifying); returns its head.
fn publish_bad(h: &mut Host, flow: &Flow, k: usize, oob: u64) -> Option<u16> {
    let case = BAD_CASES[k].0;
    let b = h.net.tx_alloc()?;
    let (Some(d0), Some(d1)) = (h.net.txq.alloc(), h.net.txq.alloc()) else {
        return None;
    };
    let n = h.build(b, flow, BAD_SEQ + k as u32, BAD_LEN);
    let buf = h.net.tx_buf(b);
    match case {
        Case::GsoTcpv4 => {
            buf[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
            buf[2..4].copy_from_slice(&(PAYLOAD_OFF as u16).to_le_bytes()); // hdr_len
            buf[4..6].copy_from_slice(&1000u16.to_le_bytes()); // gso_size
        }
        Case::GsoInvalid => buf[1] = 0x7f,
        Case::CsumFlag => {
            buf[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
            buf[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the UDP header
            buf[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset
        }
        Case::TooBig => {
            // SAFETY: the pool is ours during this scenario; no request uses it.
            let big = unsafe { dma::slice(0, n - HDR_LEN) };
            big.copy_from_slice(&buf[HDR_LEN..n]);
        }
        _ => {}
    }
    let at = h.net.tx_paddr(b);
    let (hdr, frame) = (HDR_LEN as u32, (n - HDR_LEN) as u32);
    let q = &mut h.net.txq;
    match case {
        Case::Short => q.set_desc(d0, at, 8, 0, 0),
        Case::WriteOnly => {
            q.set_desc(d0, at, hdr, F_NEXT, d1);
            q.set_desc(d1, at + u64::from(hdr), frame, F_WRITE, 0);
        }
        Case::OobAddr => {
            q.set_desc(d0, at, hdr, F_NEXT, d1);
            q.set_desc(d1, oob, frame, 0, 0);
        }
        Case::HugeLen => q.set_desc(d0, at, 0xFFFF_F000, 0, 0),
        Case::GsoTcpv4 | Case::GsoInvalid | Case::CsumFlag => q.set_desc(d0, at, n as u32, 0, 0),
        Case::TooBig => {
            q.set_desc(d0, at, hdr, F_NEXT, d1);
            q.set_desc(d1, dma::base(), 70_000, 0, 0);
        }
        Case::Loop => {
            q.set_desc(d0, at, hdr, F_NEXT, d1);
            q.set_desc(d1, at + u64::from(hdr), frame, F_NEXT, d0);
        }
    }
    // Both descriptors are recorded with the head (the queue does not follow
    // `next`), so they come back together even where the chain uses one.
    h.net.publish_raw(d0, &[d0, d1], Some(b));
    Some(d0)
}

/// Sends the good datagram after the malformed ones and waits for it.
fn send_good(h: &mut Host, flow: &Flow, timeout_ms: u64) -> bool {
    let Ok(b) = h.net.tx_alloc_wait(timeout_ms) else {
        return false;
    };
    let n = h.build(b, flow, GOOD_SEQ, BAD_LEN);
    let Ok(head) = h.net.send(b, n) else {
        return false;
    };
    let deadline = Deadline::after_ms(timeout_ms);
    loop {
        match h.net.pop_tx() {
            Some(id) if id == head => return true,
            Some(_) => {}
            None if deadline.expired() => return false,
            None => core::hint::spin_loop(),
        }
    }
}

pub fn bad(ctx: &Ctx, sc: &Scen) {
    let Some(mut h) = host(ctx, sc) else { return };
    let Some(peer_mac) = h.resolve(ctx.cmd.peer, ctx.cmd.timeout_ms) else {
        return sc.fail("arp-timeout");
    };
    let flow = h.flow_to(ctx, peer_mac);
    let oob = ctx.boot.ram_end() + (1 << 30);
    let mut heads = [u16::MAX; BAD_CASES.len()];
    for (k, head) in heads.iter_mut().enumerate() {
        let Some(d) = publish_bad(&mut h, &flow, k, oob) else {
            h.mark_stale();
            return sc.fail("no-buffers");
        };
        *head = d;
    }
    h.net.notify_tx();
    let mut back = [false; BAD_CASES.len()];
    let deadline = Deadline::after_ms(ctx.cmd.bad_timeout_ms);
    while back.contains(&false) && !deadline.expired() {
        while let Some(id) = h.net.pop_tx() {
            if let Some(k) = heads.iter().position(|&x| x == id) {
                back[k] = true;
            }
        }
        core::hint::spin_loop();
    }
    for (k, (_, name)) in BAD_CASES.iter().enumerate() {
        sc.out()
            .s("case=")
            .s(name)
            .s(" returned=")
            .d(u64::from(back[k]))
            .end();
    }
    let returned = back.iter().filter(|&&b| b).count() as u64;
    if returned < BAD_CASES.len() as u64 {
        h.mark_stale();
    }
    let good = send_good(&mut h, &flow, ctx.cmd.timeout_ms);
    let mut l = sc.out();
    if good {
        l.s("OK cases=");
    } else {
        h.mark_stale();
        l.s("FAIL good-not-consumed cases=");
    }
    l.d(BAD_CASES.len() as u64)
        .s(" returned=")
        .d(returned)
        .end();
}
