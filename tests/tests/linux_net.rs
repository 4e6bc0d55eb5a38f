//! Linux guests on ward's virtio-net, each interface served by its own `ward-net` worker over a
//! TAP device (`tests/guest/linux-net.sh`, in a network namespace of its own):
//!
//! - one guest and the host end of its tap: pings, then 16 MiB each way with `nc`, the md5 and
//!   size of what each end sent equal to what the other received; the throughput each way is
//!   printed (inside the nested machine an indication only);
//! - two guests at once on one bridge: pings and 4 MiB from one to the other, checksummed;
//! - every thread of each VM's `ward-net` is in seccomp filter mode while the VM runs, and
//!   killing one worker with SIGKILL stops that VM with ward's error naming the interface, while
//!   the other VM runs on and ends normally.
//!
//! Directly on a host whose KVM can run Linux (as root: namespaces, taps); inside the nested
//! machine (tests/nested) on the PVM host, where it cannot.

use std::time::Instant;

use ward_tests::{host_is_pvm, kvm_available, TempDir};

const MIB16: u64 = 16 << 20;
const MIB4: u64 = 4 << 20;

/// The first line containing `prefix`, trimmed of the serial console's `\r`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no line with {prefix:?} in:\n{out}"))
}

/// Value of `key=` in the first line containing `prefix`.
fn value<'a>(out: &'a str, prefix: &str, key: &str) -> &'a str {
    let l = line(out, prefix);
    let k = format!("{key}=");
    l.split_whitespace()
        .find_map(|w| w.strip_prefix(k.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {l:?}; output:\n{out}"))
}

/// md5 and size of what one end sent equal those of what the other received.
fn same_data(out: &str, sent: &str, received: &str, bytes: u64) {
    let (md5_s, md5_r) = (value(out, sent, "md5"), value(out, received, "md5"));
    assert_eq!(md5_s.len(), 32, "md5 of {sent:?}: {md5_s:?}");
    assert_eq!(md5_s, md5_r, "{sent:?} vs {received:?}:\n{out}");
    for what in [sent, received] {
        assert_eq!(
            value(out, what, "bytes"),
            bytes.to_string(),
            "size in {what:?}:\n{out}"
        );
    }
}

/// Every thread of the worker(s) reported for `vm` is in seccomp filter mode (2).
fn confined(out: &str, vm: &str) {
    let prefix = format!("LINUX-NET {vm} seccomp");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 1, "one ward-net for {vm}: {lines:?}\n{out}");
    let threads: usize = value(out, &prefix, "threads").parse().expect("threads=");
    let modes: Vec<&str> = value(out, &prefix, "modes").split(',').collect();
    assert!(threads >= 2, "{vm}'s worker has {threads} threads:\n{out}");
    assert_eq!(modes.len(), threads, "{lines:?}");
    assert!(
        modes.iter().all(|m| *m == "2"),
        "a thread of {vm}'s ward-net is not in seccomp filter mode: {lines:?}\n{out}"
    );
}

fn check(out: &str) {
    for want in [
        "LINUX-NET in a new network namespace",
        // one: the guest and the host end of wtap0.
        "[one] WARD-GUEST READY",
        "[one] NET PING ok=3",
        "LINUX-NET one host-rx rc=0",
        "[one] NET G-SENT rc=0",
        "[one] NET G-LISTEN",
        "LINUX-NET one host-sent rc=0",
        "[one] NET G-RX rc=0",
        "[one] WARD-GUEST EXIT status=0",
        "LINUX-NET one ward-exit=0",
        // a and b on br0.
        "LINUX-NET wtap1 on br0",
        "LINUX-NET wtap2 on br0",
        "[b] NET B-LISTEN",
        "[a] NET A-PING ok=3",
        "[a] NET A-SENT rc=0",
        "[b] NET B-RX rc=0",
        // b's worker killed: b stops with the error naming it; a runs on and ends normally.
        "LINUX-NET b kill -9 ward-net pid=",
        "LINUX-NET b ward-exit=1",
        "LINUX-NET b said: ward: worker for network net0 (tap wtap2) died (killed by SIGKILL)",
        "[a] NET A-TOLD rc=0",
        "[a] NET A-PEER-GONE",
        "[a] NET A-HOST-PING ok=3",
        "[a] WARD-GUEST EXIT status=0",
        "LINUX-NET a ward-exit=0",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    for absent in ["LINUX-NET timeout", "B-NOT-KILLED", "MODULE-FAILED"] {
        assert!(!out.contains(absent), "{absent:?} in:\n{out}");
    }
    same_data(out, "[one] NET G-TX", "LINUX-NET one host-rx", MIB16);
    same_data(out, "LINUX-NET one host-tx", "[one] NET G-RX", MIB16);
    same_data(out, "[a] NET A-TX", "[b] NET B-RX", MIB4);
    for vm in ["one", "a", "b"] {
        confined(out, vm);
    }
    // Linux posts enough receive buffers for the longest frame: ward-net read frames straight
    // into them (its counters, logged when it stopped).
    let counters = out
        .lines()
        .find(|l| l.starts_with("[one-ward]") && l.contains("device stopped"))
        .unwrap_or_else(|| panic!("no counters of one's worker in:\n{out}"));
    let counter = |name: &str| -> u64 {
        counters
            .split(&format!("\"{name}\":"))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {counters:?}"))
    };
    let (frames, direct) = (counter("rx_frames"), counter("rx_direct"));
    eprintln!("{counters}");
    // 16 MiB came in (GSO frames of up to 64 KiB, so hundreds of frames at least), most of
    // them read straight into the guest's buffers.
    assert!(frames > 200 && direct * 2 >= frames, "{counters}");
    for dir in ["guest-to-host", "host-to-guest"] {
        let l = line(out, &format!("LINUX-NET throughput {dir} "));
        assert_eq!(value(out, l, "bytes"), MIB16.to_string(), "{l}");
    }
}

#[test]
fn linux_guests_talk_over_ward_net() {
    if !kvm_available("linux_guests_talk_over_ward_net") {
        return;
    }
    // Directly, the script makes its own network namespace and taps: root only.
    // SAFETY: geteuid has no preconditions.
    if !host_is_pvm() && unsafe { libc::geteuid() } != 0 {
        eprintln!("\n*** SKIPPED linux_guests_talk_over_ward_net: needs root (taps, netns) ***\n");
        return;
    }
    let dir = TempDir::new("linux-net");
    let start = Instant::now();
    let out = ward_tests::run_linux_script("tests/guest/linux-net.sh", &dir, &[]);
    eprintln!("linux-net.sh took {:.1?}", start.elapsed());
    for l in out.lines().filter(|l| l.starts_with("LINUX-NET")) {
        eprintln!("{l}");
    }
    if out.contains("LINUX-NET pair failed") {
        eprintln!(
            "\n*** linux_guests_talk_over_ward_net: the transfer between guests a and b failed \
             once and was retried; see the [try-a] / [try-b] logs and LINUX-NET diag lines ***\n"
        );
    }
    check(&out);
}
