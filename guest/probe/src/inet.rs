//! Ethernet, ARP, IPv4 and UDP, as much as the network scenarios need: building
//! frames and taking apart what arrives. Ethernet II without VLAN tags, ARP for
//! IPv4 over Ethernet, IPv4 (options skipped, fragments ignored), UDP. Every
//! multi-byte field is big endian. Frames here start at the Ethernet header
//! (the virtio-net header in front of it is the driver's business).

pub type Mac = [u8; 6];
pub type Ip = [u8; 4];

pub const ETH_LEN: usize = 14;
pub const IP_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
/// Offset of the UDP payload in the frames we build (no IP options).
pub const PAYLOAD_OFF: usize = ETH_LEN + IP_LEN + UDP_LEN;
pub const ARP_FRAME_LEN: usize = ETH_LEN + 28;
pub const BROADCAST: Mac = [0xff; 6];
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const PROTO_UDP: u8 = 17;

fn get16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

fn mac_at(b: &[u8], off: usize) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&b[off..off + 6]);
    m
}

fn ip_at(b: &[u8], off: usize) -> Ip {
    let mut a = [0; 4];
    a.copy_from_slice(&b[off..off + 4]);
    a
}

/// Adds `data` to a ones' complement sum (RFC 1071) as big-endian 16-bit words,
/// an odd last byte padded with zero. Pieces must have even lengths except the
/// last one.
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [b] = words.remainder() {
        sum = sum.wrapping_add(u32::from(*b) << 8);
    }
    sum
}

/// Folds a sum to 16 bits and complements it: the checksum field to store, or
/// 0 when the summed data already contained a correct checksum.
pub fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(frame: &mut [u8], dst: &Mac, src: &Mac, ethertype: u16) {
    frame[0..6].copy_from_slice(dst);
    frame[6..12].copy_from_slice(src);
    put16(frame, 12, ethertype);
}

/// Both ends of a UDP datagram.
#[derive(Clone, Copy)]
pub struct Flow {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src_ip: Ip,
    pub dst_ip: Ip,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Writes the Ethernet, IPv4 and UDP headers of a datagram with a
/// `payload_len`-byte payload, which the caller puts at [`PAYLOAD_OFF`]. The
/// IPv4 header checksum is computed; the UDP checksum is 0 (none). `id` is the
/// IPv4 identification. Returns the frame length.
pub fn build_udp(frame: &mut [u8], f: &Flow, payload_len: usize, id: u16) -> usize {
    eth(frame, &f.dst_mac, &f.src_mac, ETHERTYPE_IPV4);
    let ip = &mut frame[ETH_LEN..ETH_LEN + IP_LEN];
    ip[0] = 0x45; // version 4, 5 words
    ip[1] = 0;
    put16(ip, 2, (IP_LEN + UDP_LEN + payload_len) as u16);
    put16(ip, 4, id);
    put16(ip, 6, 0x4000); // don't fragment
    ip[8] = 64;
    ip[9] = PROTO_UDP;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&f.src_ip);
    ip[16..20].copy_from_slice(&f.dst_ip);
    let c = csum_fold(csum_add(0, ip));
    put16(ip, 10, c);
    let udp = &mut frame[ETH_LEN + IP_LEN..PAYLOAD_OFF];
    put16(udp, 0, f.src_port);
    put16(udp, 2, f.dst_port);
    put16(udp, 4, (UDP_LEN + payload_len) as u16);
    put16(udp, 6, 0);
    PAYLOAD_OFF + payload_len
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Clone, Copy)]
pub struct Arp {
    pub op: u16,
    pub sha: Mac,
    pub spa: Ip,
    pub tha: Mac,
    pub tpa: Ip,
}

/// Writes `a` as a frame: a request is broadcast, a reply goes to `a.tha`.
/// Returns the frame length.
pub fn build_arp(frame: &mut [u8], a: &Arp) -> usize {
    let dst = if a.op == ARP_REQUEST {
        BROADCAST
    } else {
        a.tha
    };
    eth(frame, &dst, &a.sha, ETHERTYPE_ARP);
    let p = &mut frame[ETH_LEN..ARP_FRAME_LEN];
    put16(p, 0, 1); // Ethernet
    put16(p, 2, ETHERTYPE_IPV4);
    p[4] = 6;
    p[5] = 4;
    put16(p, 6, a.op);
    p[8..14].copy_from_slice(&a.sha);
    p[14..18].copy_from_slice(&a.spa);
    p[18..24].copy_from_slice(&a.tha);
    p[24..28].copy_from_slice(&a.tpa);
    ARP_FRAME_LEN
}

/// A received UDP datagram: where its parts are and whether its checksums hold.
#[derive(Clone, Copy)]
pub struct Udp {
    /// As received: `src_*` is the sender.
    pub flow: Flow,
    pub payload_off: usize,
    pub payload_len: usize,
    /// Ethernet header plus the IPv4 total length (without link-layer padding).
    pub frame_len: usize,
    pub ip_csum_ok: bool,
    /// The UDP checksum is correct, or 0 (none).
    pub udp_csum_ok: bool,
}

pub enum Frame {
    Arp(Arp),
    Udp(Udp),
    Other,
}

/// Takes apart a received frame.
pub fn parse(frame: &[u8]) -> Frame {
    if frame.len() < ETH_LEN {
        return Frame::Other;
    }
    match get16(frame, 12) {
        ETHERTYPE_ARP => parse_arp(frame),
        ETHERTYPE_IPV4 => parse_udp(frame),
        _ => Frame::Other,
    }
}

fn parse_arp(frame: &[u8]) -> Frame {
    if frame.len() < ARP_FRAME_LEN {
        return Frame::Other;
    }
    let p = &frame[ETH_LEN..ARP_FRAME_LEN];
    if get16(p, 0) != 1 || get16(p, 2) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return Frame::Other;
    }
    Frame::Arp(Arp {
        op: get16(p, 6),
        sha: mac_at(p, 8),
        spa: ip_at(p, 14),
        tha: mac_at(p, 18),
        tpa: ip_at(p, 24),
    })
}

fn parse_udp(frame: &[u8]) -> Frame {
    let ip = &frame[ETH_LEN..];
    if ip.len() < IP_LEN || ip[0] >> 4 != 4 {
        return Frame::Other;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(get16(ip, 2));
    // Fragments (more-fragments set or a non-zero offset) are not for us.
    if ihl < IP_LEN || total < ihl + UDP_LEN || total > ip.len() || get16(ip, 6) & 0x3fff != 0 {
        return Frame::Other;
    }
    if ip[9] != PROTO_UDP {
        return Frame::Other;
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(get16(udp, 4));
    if udp_len < UDP_LEN || udp_len > udp.len() {
        return Frame::Other;
    }
    let (src_ip, dst_ip) = (ip_at(ip, 12), ip_at(ip, 16));
    let udp_csum_ok = get16(udp, 6) == 0 || {
        let pseudo = [0, PROTO_UDP, (udp_len >> 8) as u8, udp_len as u8];
        let sum = csum_add(csum_add(csum_add(0, &src_ip), &dst_ip), &pseudo);
        csum_fold(csum_add(sum, &udp[..udp_len])) == 0
    };
    Frame::Udp(Udp {
        flow: Flow {
            src_mac: mac_at(frame, 6),
            dst_mac: mac_at(frame, 0),
            src_ip,
            dst_ip,
            src_port: get16(udp, 0),
            dst_port: get16(udp, 2),
        },
        payload_off: ETH_LEN + ihl + UDP_LEN,
        payload_len: udp_len - UDP_LEN,
        frame_len: ETH_LEN + total,
        ip_csum_ok: csum_fold(csum_add(0, &ip[..ihl])) == 0,
        udp_csum_ok,
    })
}

/// Turns a received UDP frame around in place: Ethernet addresses (ours as the
/// source), IPv4 addresses and ports swapped. Neither checksum changes, since
/// ones' complement sums do not depend on the order of the words.
pub fn swap_udp(frame: &mut [u8], u: &Udp, our_mac: &Mac) {
    frame[0..6].copy_from_slice(&u.flow.src_mac);
    frame[6..12].copy_from_slice(our_mac);
    let ip = ETH_LEN;
    frame[ip + 12..ip + 16].copy_from_slice(&u.flow.dst_ip);
    frame[ip + 16..ip + 20].copy_from_slice(&u.flow.src_ip);
    let udp = u.payload_off - UDP_LEN;
    put16(frame, udp, u.flow.dst_port);
    put16(frame, udp + 2, u.flow.src_port);
}
