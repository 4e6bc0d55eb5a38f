//! Network benchmark with the probe guest: ward's `ward-net` worker against QEMU's virtio-net
//! with `vhost=off` (its own userspace back end), both on a TAP device in a network namespace the
//! benchmark creates (and deletes); no frame leaves it.
//!
//! Guest → host: the probe's `net-blast` sends N datagrams of 1472 payload bytes (full
//! 1500-byte frames) to a UDP socket at the host end of the TAP and reports TSC cycles from its
//! first send to the device's last completion; the socket counts what arrived. Host → guest:
//! once the probe's `net-sink` is waiting, the host sends N such datagrams back to back (UDP
//! checksum 0, so the guest checks nothing) and the probe reports how many arrived and the TSC
//! cycles from the first to the last; what the TAP could not queue meanwhile is dropped there.
//! Rounds alternate which VMM goes first.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ward_tests::NetNs;

use crate::measure::{self, median, Run};
use crate::probe::Vmm;

const GUEST_MAC: &str = "52:54:00:77:00:02";
const GUEST_IP: &str = "10.77.0.2";
const HOST_IP: &str = "10.77.0.1";
const PORT: u16 = 7777;
/// UDP payload bytes per datagram: a full 1500-byte IPv4 packet.
const LEN: usize = 1472;
/// The probe's idle timeout (ARP, and how long `net-sink` waits after the last datagram).
const GUEST_TIMEOUT_MS: u64 = 2000;

#[derive(Clone)]
pub struct Setup {
    pub bin_dir: PathBuf,
    pub probe: PathBuf,
    /// ward's runtime directory.
    pub dir: PathBuf,
    pub runs: usize,
    /// Datagrams per burst, each way.
    pub frames: u64,
    pub tsc_khz: u64,
    /// Run ward with `--unconfined` (seccomp filters only).
    pub unconfined: bool,
}

/// The samples of one VMM.
#[derive(Default)]
pub struct Samples {
    /// Guest → host, frames/s from the probe's cycles.
    tx_fps: Vec<f64>,
    /// Guest → host, frames/s between the first and the last arrival at the host socket.
    tx_host_fps: Vec<f64>,
    /// Guest → host, datagrams that did not reach the host socket.
    tx_lost: Vec<f64>,
    /// Host → guest, frames/s from the probe's cycles (first to last datagram).
    rx_fps: Vec<f64>,
    /// Host → guest, datagrams that reached the guest.
    rx_got: Vec<f64>,
}

pub struct Results {
    pub ward: Samples,
    pub qemu: Samples,
}

fn tap(vmm: Vmm) -> &'static str {
    match vmm {
        Vmm::Ward => "btap0",
        Vmm::Qemu => "btapq",
    }
}

fn command(s: &Setup, ns: &NetNs, vmm: Vmm, scenario: &str, n: usize) -> Command {
    let cmdline = format!("console=ttyS0 probe.timeout_ms={GUEST_TIMEOUT_MS} probe.run={scenario}");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    match vmm {
        Vmm::Ward => {
            cmd.arg(s.bin_dir.join("ward"))
                .args(["run", "--memory", "128M", "--vcpus", "1", "--name"])
                .arg(format!("netbench{n}"))
                .arg("--kernel")
                .arg(&s.probe)
                .arg("--cmdline")
                .arg(&cmdline)
                .arg("--net")
                .arg(format!("tap={},mac={GUEST_MAC}", tap(vmm)))
                .env("XDG_RUNTIME_DIR", &s.dir);
            if s.unconfined {
                cmd.arg("--unconfined");
            }
        }
        Vmm::Qemu => {
            // As in probe.rs, with a virtio-net device instead of the disk.
            cmd.arg("qemu-system-x86_64")
                .args(crate::probe::QEMU_MICROVM)
                .arg(&s.probe)
                .arg("-append")
                .arg(&cmdline)
                .arg("-netdev")
                .arg(format!(
                    "tap,id=n0,ifname={},script=no,downscript=no,vhost=off",
                    tap(vmm)
                ))
                .arg("-device")
                .arg(format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"));
        }
    }
    cmd
}

fn ip(ns: &NetNs, args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("ip")
        .arg("-n")
        .arg(&ns.name)
        .args(args)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "ip -n {} {}: {}",
        ns.name,
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

fn set_int_opt(sock: &UdpSocket, opt: libc::c_int, val: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: a valid socket and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(
        r == 0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Waits for the VMM to create `tap`, gives the host end 10.77.0.1/24, binds the host's UDP
/// socket (before the link comes up, so the first datagram finds it), then brings the link up
/// with a static neighbour entry for the guest.
fn host_side(ns: &NetNs, tap: &str) -> anyhow::Result<UdpSocket> {
    let start = Instant::now();
    while !ns.has_link(tap) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{tap} never appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    ip(ns, &["addr", "add", &format!("{HOST_IP}/24"), "dev", tap])?;
    let sock = ns.run(|| UdpSocket::bind((HOST_IP, PORT)))?;
    set_int_opt(&sock, libc::SO_RCVBUFFORCE, 8 << 20)?;
    // No UDP checksum on what the host sends: the probe would otherwise sum every payload.
    set_int_opt(&sock, libc::SO_NO_CHECK, 1)?;
    ip(ns, &["link", "set", tap, "up"])?;
    ip(
        ns,
        &[
            "neigh",
            "replace",
            GUEST_IP,
            "lladdr",
            GUEST_MAC,
            "dev",
            tap,
            "nud",
            "permanent",
        ],
    )?;
    Ok(sock)
}

fn spawn_vmm(
    cmd: Command,
    notify: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<anyhow::Result<Run>> {
    std::thread::spawn(move || measure::run_notify(cmd, Duration::from_secs(120), notify))
}

fn joined(
    h: std::thread::JoinHandle<anyhow::Result<Run>>,
    vmm: Vmm,
    ok_prefix: &str,
) -> anyhow::Result<Run> {
    let r = h
        .join()
        .map_err(|_| anyhow::anyhow!("VMM thread panicked"))??;
    if !r.success || r.line(ok_prefix).is_none() || r.line("PROBE DONE").is_none() {
        anyhow::bail!(
            "{} network run failed: {:?}",
            vmm.name(),
            r.lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>()
        );
    }
    Ok(r)
}

/// Guest → host: (frames/s by the probe, frames/s at the host socket, datagrams lost).
fn tx(s: &Setup, ns: &NetNs, vmm: Vmm, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let scen = format!("net-blast:0:{}:{LEN}", s.frames);
    let h = spawn_vmm(command(s, ns, vmm, &scen, n), None);
    let sock = host_side(ns, tap(vmm))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    let (mut got, mut first, mut last) = (0u64, None, Instant::now());
    while got < s.frames {
        match sock.recv(&mut buf) {
            Ok(len) if len == LEN && &buf[..4] == b"ward" => {
                last = Instant::now();
                first.get_or_insert(last);
                got += 1;
            }
            Ok(_) => {}
            Err(_) if h.is_finished() => break,
            Err(_) => {}
        }
    }
    let ok = format!("PROBE {scen} OK");
    let r = joined(h, vmm, &ok)?;
    let cycles = r
        .value(&ok, "cycles")
        .ok_or_else(|| anyhow::anyhow!("no cycles"))?;
    let fps = s.frames as f64 / (cycles as f64 / (s.tsc_khz as f64 * 1e3));
    let host_fps = match first {
        Some(f) if got > 1 => (got - 1) as f64 / (last - f).as_secs_f64(),
        _ => 0.0,
    };
    Ok((fps, host_fps, (s.frames - got) as f64))
}

/// Host → guest: (frames/s by the probe, datagrams that arrived).
fn rx(s: &Setup, ns: &NetNs, vmm: Vmm, n: usize) -> anyhow::Result<(f64, f64)> {
    let scen = format!("net-sink:0:{}", s.frames);
    let (send, lines) = mpsc::channel();
    let h = spawn_vmm(command(s, ns, vmm, &scen, n), Some(send));
    let sock = host_side(ns, tap(vmm))?;
    let waiting = format!("PROBE {scen} waiting");
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.starts_with(&waiting) => break,
            Ok(_) => {}
            Err(_) => break, // the VMM ended or hangs: joined() reports it
        }
    }
    let mut payload = vec![0u8; LEN];
    payload[..4].copy_from_slice(b"ward");
    for seq in 0..s.frames as u32 {
        payload[4..8].copy_from_slice(&seq.to_be_bytes());
        // A full TAP queue drops datagrams silently; ENOBUFS is a drop as well.
        let _ = sock.send_to(&payload, (GUEST_IP, PORT));
    }
    let ok = format!("PROBE {scen} OK");
    let r = joined(h, vmm, &ok)?;
    let (Some(got), Some(cycles)) = (r.value(&ok, "got"), r.value(&ok, "cycles")) else {
        anyhow::bail!("no got/cycles in {:?}", r.line(&ok));
    };
    // Rate over the gaps between the first and the last datagram.
    let fps = (got.saturating_sub(1)) as f64 / (cycles as f64 / (s.tsc_khz as f64 * 1e3));
    Ok((fps, got as f64))
}

pub fn run(s: &Setup) -> anyhow::Result<Results> {
    let ns = NetNs::create("network benchmark")
        .ok_or_else(|| anyhow::anyhow!("cannot create a network namespace"))?;
    ip(&ns, &["link", "set", "lo", "up"])?;
    let mut out = Results {
        ward: Samples::default(),
        qemu: Samples::default(),
    };
    let mut n = 0;
    for i in 0..s.runs {
        let order = measure::alternating(i, Vmm::Ward, Vmm::Qemu);
        for vmm in order {
            let res = match vmm {
                Vmm::Ward => &mut out.ward,
                Vmm::Qemu => &mut out.qemu,
            };
            n += 1;
            let (fps, host_fps, lost) = tx(s, &ns, vmm, n)?;
            res.tx_fps.push(fps);
            res.tx_host_fps.push(host_fps);
            res.tx_lost.push(lost);
            n += 1;
            let (fps, got) = rx(s, &ns, vmm, n)?;
            res.rx_fps.push(fps);
            res.rx_got.push(got);
        }
        eprintln!("network round {}/{} done", i + 1, s.runs);
    }
    Ok(out)
}

/// ward alone, under its default policy and `--unconfined`, alternating which goes first: the
/// cost of confinement on the network path. Returns (confined, unconfined).
pub fn run_confinement(s: &Setup) -> anyhow::Result<(Samples, Samples)> {
    let ns = NetNs::create("network confinement benchmark")
        .ok_or_else(|| anyhow::anyhow!("cannot create a network namespace"))?;
    ip(&ns, &["link", "set", "lo", "up"])?;
    let (mut on, mut off) = (Samples::default(), Samples::default());
    let mut n = 1000;
    for i in 0..s.runs {
        let order = measure::alternating(i, false, true);
        for unconfined in order {
            let setup = Setup {
                unconfined,
                ..s.clone()
            };
            let res = if unconfined { &mut off } else { &mut on };
            n += 1;
            let (fps, host_fps, lost) = tx(&setup, &ns, Vmm::Ward, n)?;
            res.tx_fps.push(fps);
            res.tx_host_fps.push(host_fps);
            res.tx_lost.push(lost);
            n += 1;
            let (fps, got) = rx(&setup, &ns, Vmm::Ward, n)?;
            res.rx_fps.push(fps);
            res.rx_got.push(got);
        }
        eprintln!("network confinement round {}/{} done", i + 1, s.runs);
    }
    Ok((on, off))
}

/// The table of [`run_confinement`].
pub fn report_confinement(s: &Setup, on: &Samples, off: &Samples) -> String {
    let mut t = format!(
        "| probe guest, virtio-net on a TAP, {LEN}-byte UDP payloads | ward confined: median \
         (min–max) | ward --unconfined: median (min–max) | confined/unconfined | target \
         (within 5 %) |\n|---|---|---|---|---|\n"
    );
    for (what, a, b) in [
        (
            "guest → host, frames/s (probe's TSC)",
            &on.tx_fps,
            &off.tx_fps,
        ),
        (
            "host → guest, frames/s (probe's TSC)",
            &on.rx_fps,
            &off.rx_fps,
        ),
    ] {
        let ratio = median(a.clone()) / median(b.clone());
        let verdict = crate::confine::verdict(ratio);
        t += &format!(
            "| {what} | {} | {} | {ratio:.3} | {verdict} |\n",
            cell(a, 0),
            cell(b, 0)
        );
    }
    t += &format!(
        "\n{} runs each, interleaved; {} datagrams per burst each way.\n",
        s.runs, s.frames
    );
    t
}

fn cell(v: &[f64], digits: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.digits$} ({lo:.digits$}–{hi:.digits$})",
        median(v.to_vec())
    )
}

pub fn report(s: &Setup, r: &Results) -> String {
    let mb = |v: &[f64]| -> Vec<f64> { v.iter().map(|f| f * LEN as f64 / 1e6).collect() };
    let mut t = String::from(
        "| probe guest, 1 vCPU, 128 MiB, virtio-net on a TAP, 1472-byte UDP payloads | ward: \
         median (min–max) | QEMU vhost=off: median (min–max) | ward/QEMU | target |\n\
         |---|---|---|---|---|\n",
    );
    let mut row = |what: &str, a: &[f64], b: &[f64], digits: usize, target: bool| {
        let (ma, mb) = (median(a.to_vec()), median(b.to_vec()));
        // Both 0 (no datagram lost): no ratio.
        let ratio = if ma == 0.0 && mb == 0.0 {
            "–".to_string()
        } else {
            format!("{:.2}", ma / mb)
        };
        let verdict = if !target {
            "–"
        } else if ma >= mb {
            "met"
        } else {
            "missed"
        };
        t += &format!(
            "| {what} | {} | {} | {ratio} | {verdict} |\n",
            cell(a, digits),
            cell(b, digits)
        );
    };
    let (w, q) = (&r.ward, &r.qemu);
    row(
        "guest → host, frames/s (probe's TSC)",
        &w.tx_fps,
        &q.tx_fps,
        0,
        true,
    );
    row(
        "guest → host, payload MB/s (probe's TSC)",
        &mb(&w.tx_fps),
        &mb(&q.tx_fps),
        2,
        true,
    );
    row(
        "guest → host, frames/s at the host socket",
        &w.tx_host_fps,
        &q.tx_host_fps,
        0,
        false,
    );
    row(
        &format!("guest → host, datagrams lost of {}", s.frames),
        &w.tx_lost,
        &q.tx_lost,
        0,
        false,
    );
    row(
        "host → guest, frames/s (probe's TSC, first to last)",
        &w.rx_fps,
        &q.rx_fps,
        0,
        true,
    );
    row(
        "host → guest, payload MB/s (probe's TSC)",
        &mb(&w.rx_fps),
        &mb(&q.rx_fps),
        2,
        true,
    );
    row(
        &format!(
            "host → guest, datagrams that arrived of {} sent back to back",
            s.frames
        ),
        &w.rx_got,
        &q.rx_got,
        0,
        false,
    );
    t += &format!(
        "\n{} runs each, interleaved; {} datagrams per burst each way; TSC {} kHz.\n",
        s.runs, s.frames, s.tsc_khz
    );
    t
}
