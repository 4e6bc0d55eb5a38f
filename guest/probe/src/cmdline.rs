//! Kernel command line parsing.
//!
//! Recognised parameters (everything else, e.g. `console=ttyS0`, is ignored):
//!
//! * `virtio_mmio.device=SIZE@ADDR:IRQ[:ID]`: the Linux/Firecracker convention
//!   for describing a virtio-mmio transport. SIZE and ADDR use Linux `memparse`
//!   syntax (decimal or 0x-hex, optional K/M/G suffix), IRQ is the GSI, ID the
//!   optional platform device id. Repeatable; devices are numbered in order.
//! * `probe.run=SCEN[,SCEN...]`: scenarios to run (see scenarios/mod.rs).
//! * `probe.timeout_ms=N`: timeout for ordinary I/O (default 10000).
//! * `probe.bad_timeout_ms=N`: how long to wait for a reaction to a malformed
//!   request (default 1000).
//! * `probe.ip=A.B.C.D`, `probe.peer=A.B.C.D`, `probe.port=N`: the guest's own
//!   IPv4 address (default 10.77.0.2), the address the network scenarios send
//!   to (default 10.77.0.1), and the UDP port used at both ends (default 7777).

pub const MAX_DEVS: usize = 8;

#[derive(Clone, Copy)]
pub struct MmioDevCfg {
    pub size: u64,
    pub addr: u64,
    pub irq: u32,
}

pub struct Cmdline {
    pub devs: [MmioDevCfg; MAX_DEVS],
    pub ndevs: usize,
    /// `virtio_mmio.device=` entries that could not be parsed or did not fit.
    pub bad_devs: usize,
    pub run: &'static [u8],
    pub timeout_ms: u64,
    pub bad_timeout_ms: u64,
    pub ip: [u8; 4],
    pub peer: [u8; 4],
    pub port: u16,
}

impl Cmdline {
    pub const fn empty() -> Self {
        Self {
            devs: [MmioDevCfg {
                size: 0,
                addr: 0,
                irq: 0,
            }; MAX_DEVS],
            ndevs: 0,
            bad_devs: 0,
            run: &[],
            timeout_ms: 10_000,
            bad_timeout_ms: 1_000,
            ip: [10, 77, 0, 2],
            peer: [10, 77, 0, 1],
            port: 7777,
        }
    }

    pub fn parse(cmd: &'static [u8]) -> Self {
        let mut c = Self::empty();
        for tok in cmd
            .split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty())
        {
            if let Some(v) = tok.strip_prefix(b"virtio_mmio.device=") {
                match parse_mmio_dev(v) {
                    Some(d) if c.ndevs < MAX_DEVS => {
                        c.devs[c.ndevs] = d;
                        c.ndevs += 1;
                    }
                    _ => c.bad_devs += 1,
                }
            } else if let Some(v) = tok.strip_prefix(b"probe.run=") {
                c.run = v;
            } else if let Some(v) = tok.strip_prefix(b"probe.timeout_ms=") {
                c.timeout_ms = parse_num(v).unwrap_or(c.timeout_ms);
            } else if let Some(v) = tok.strip_prefix(b"probe.bad_timeout_ms=") {
                c.bad_timeout_ms = parse_num(v).unwrap_or(c.bad_timeout_ms);
            } else if let Some(v) = tok.strip_prefix(b"probe.ip=") {
                c.ip = parse_ipv4(v).unwrap_or(c.ip);
            } else if let Some(v) = tok.strip_prefix(b"probe.peer=") {
                c.peer = parse_ipv4(v).unwrap_or(c.peer);
            } else if let Some(v) = tok.strip_prefix(b"probe.port=") {
                c.port = parse_num(v)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0)
                    .unwrap_or(c.port);
            }
        }
        c
    }
}

/// `SIZE@ADDR:IRQ[:ID]`
fn parse_mmio_dev(v: &[u8]) -> Option<MmioDevCfg> {
    let at = v.iter().position(|&b| b == b'@')?;
    let size = parse_size(&v[..at])?;
    let mut rest = v[at + 1..].split(|&b| b == b':');
    let addr = parse_size(rest.next()?)?;
    let irq = u32::try_from(parse_num(rest.next()?)?).ok()?;
    // The optional platform device id is accepted and ignored.
    if let Some(id) = rest.next() {
        parse_num(id)?;
    }
    if rest.next().is_some() {
        return None;
    }
    Some(MmioDevCfg { size, addr, irq })
}

/// A dotted-quad IPv4 address, `A.B.C.D`, each part decimal 0..=255.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for o in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *o = u8::try_from(parse_num(p)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Decimal or `0x` hexadecimal.
pub fn parse_num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Linux `memparse`: a number with an optional K/M/G (binary) suffix.
pub fn parse_size(s: &[u8]) -> Option<u64> {
    let (num, shift) = match s.last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    // k/m/g are not hex digits, so the suffix is never part of a hex number.
    parse_num(num)?.checked_mul(1 << shift)
}
