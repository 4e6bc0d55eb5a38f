//! Networking through `ward-net`: the probe guest as a small IPv4/UDP host on a TAP device that
//! ward creates inside a network namespace the test owns. Datagrams both ways with their contents
//! checked at the other end; malformed transmit chains dropped while a good datagram after them
//! arrives; two VMs on one bridge; the worker confined on every thread, and its death ending the
//! VM with its name. Every frame stays inside the test's namespace.

use std::net::UdpSocket;
use std::process::Child;
use std::time::Duration;

use ward_tests::{
    finish, kvm_available, net_payload, net_payload_seq, seccomp_modes, wait_for, workers_named,
    NetNs, TempDir, WardRun,
};

const TAP: &str = "wtap0";
const GUEST_MAC: &str = "52:54:00:77:00:02";
const GUEST_IP: &str = "10.77.0.2";
const HOST_IP: &str = "10.77.0.1";
const PORT: u16 = 7777;

/// Skips loudly unless network namespaces (root, `ip`, /dev/net/tun) and KVM are available.
/// The namespace comes first, so a test skipped for want of it is not recorded as a KVM test.
fn setup(test: &str) -> Option<NetNs> {
    let ns = NetNs::create(test)?;
    kvm_available(test).then_some(ns)
}

/// A probe VM with one network interface on `tap`.
fn probe_vm(dir: &TempDir, name: &str, scenarios: &str, tap: &str, mac: &str) -> WardRun {
    let mut run = WardRun::probe(dir, name, scenarios);
    run.cmdline.push_str(" probe.timeout_ms=30000");
    run.extra = vec!["--net".into(), format!("tap={tap},mac={mac}")];
    run
}

/// Waits until ward has created `tap` in `ns` (panicking if ward exits first).
fn wait_tap(ns: &NetNs, child: &mut Child, tap: &str) {
    wait_for(Duration::from_secs(30), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("ward exited with {st} before creating {tap}");
        }
        ns.has_link(tap).then_some(())
    })
    .unwrap_or_else(|| panic!("ward never created {tap}"));
}

/// Brings the guest's TAP up as the host end of 10.77.0.0/24, with a static neighbour entry for
/// the guest.
fn host_side(ns: &NetNs, child: &mut Child) {
    wait_tap(ns, child, TAP);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    ns.ip(&[
        "neigh",
        "add",
        GUEST_IP,
        "lladdr",
        GUEST_MAC,
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
}

/// A UDP socket at the host end, in the namespace.
fn host_socket(ns: &NetNs) -> UdpSocket {
    let s = ns.run(|| UdpSocket::bind((HOST_IP, PORT)).expect("bind the host socket"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Waits until the probe has printed `line` (panicking if ward exits first).
fn wait_serial(run: &WardRun, child: &mut Child, line: &str) {
    run.wait_serial(Some(child), line, Duration::from_secs(60));
}

/// The counter `key` in the worker's `device stopped metrics={…}` log line.
fn metric(stderr: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains("device stopped"))?;
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn datagrams_between_guest_and_host_arrive_intact() {
    let Some(ns) = setup("datagrams_between_guest_and_host_arrive_intact") else {
        return;
    };
    let dir = TempDir::new("net-io");
    let run = probe_vm(
        &dir,
        "netio",
        "net-info:0,net-recv:0:8,net-recv:0:1,net-send:0:8:1000",
        TAP,
        GUEST_MAC,
    );
    let mut child = run.spawn_in(&ns);
    host_side(&ns, &mut child);
    // Ward's TAP goes away with ward: read its MAC while the VM runs.
    let host_mac = ns.mac_of(TAP);
    let sock = host_socket(&ns);
    let guest = (GUEST_IP, PORT);

    // Host to guest: eight datagrams from 8 bytes to a full 1500-byte frame.
    let lens = [8usize, 64, 200, 512, 1000, 1400, 1472, 100];
    wait_serial(&run, &mut child, "PROBE net-recv:0:8 waiting");
    for (seq, &len) in lens.iter().enumerate() {
        sock.send_to(&net_payload(seq as u32, len), guest).unwrap();
    }
    // The guest's check can fail: one byte changed.
    wait_serial(&run, &mut child, "PROBE net-recv:0:1 waiting");
    let mut spoilt = net_payload(0, 100);
    spoilt[50] ^= 0xff;
    sock.send_to(&spoilt, guest).unwrap();

    // Guest to host: eight datagrams of 1000 bytes, in order.
    let mut buf = [0u8; 2048];
    for seq in 0..8u32 {
        let (n, from) = sock.recv_from(&mut buf).expect("a datagram from the guest");
        assert_eq!(from, format!("{GUEST_IP}:{PORT}").parse().unwrap());
        assert_eq!(n, 1000, "datagram {seq}");
        assert_eq!(net_payload_seq(&buf[..n]), Some(seq), "datagram {seq}");
    }

    let fin = finish(child, run.console_log(), Duration::from_secs(120));
    fin.assert_clean_probe_exit();
    assert_eq!(
        fin.probe_line("net-info:0"),
        Some(format!("PROBE net-info:0 OK mac={GUEST_MAC} status=1 link=up mtu=1500 max_pairs=1 features=0x100010028").as_str()),
        "{fin}"
    );
    let bytes: usize = lens.iter().sum();
    let ok = fin
        .probe_line("net-recv:0:8 OK")
        .unwrap_or_else(|| panic!("{fin}"));
    assert!(
        ok.starts_with(&format!("PROBE net-recv:0:8 OK got=8 bad=0 bytes={bytes} ")),
        "{ok}"
    );
    assert_eq!(
        fin.probe_line("net-recv:0:1 FAIL"),
        Some("PROBE net-recv:0:1 FAIL bad=1 got=1 first=0 why=pattern"),
        "{fin}"
    );
    // The guest found the host's MAC by ARP.
    assert_eq!(
        fin.probe_line("net-send:0:8:1000"),
        Some(format!("PROBE net-send:0:8:1000 OK sent=8 bytes=8000 peer_mac={host_mac}").as_str()),
        "{fin}"
    );
}

#[test]
fn malformed_transmit_chains_are_dropped_and_the_network_goes_on() {
    let Some(ns) = setup("malformed_transmit_chains_are_dropped_and_the_network_goes_on") else {
        return;
    };
    let dir = TempDir::new("net-bad");
    let run = probe_vm(&dir, "netbad", "net-bad:0,net-send:0:2:64", TAP, GUEST_MAC);
    let mut child = run.spawn_in(&ns);
    host_side(&ns, &mut child);
    let sock = host_socket(&ns);
    let fin = finish(child, run.console_log(), Duration::from_secs(120));
    fin.assert_clean_probe_exit();

    // Every malformed chain came back, the good datagram after them was consumed, and the
    // device still sends.
    let cases = [
        "short",
        "write-only",
        "oob-addr",
        "huge-len",
        "gso-tcpv4",
        "gso-invalid",
        "csum-flag",
        "too-big",
        "loop",
    ];
    for case in cases {
        assert!(
            fin.probe_line(&format!("net-bad:0 case={case} returned=1"))
                .is_some(),
            "{case}: {fin}"
        );
    }
    assert_eq!(
        fin.probe_line("net-bad:0 OK"),
        Some("PROBE net-bad:0 OK cases=9 returned=9"),
        "{fin}"
    );
    assert!(
        fin.probe_line("net-send:0:2:64 OK sent=2").is_some(),
        "{fin}"
    );

    // What reached the host: the good datagram (0x600D), then the two of net-send; none of the
    // malformed ones (0xBAD0 + case).
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut seqs = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        seqs.push(
            net_payload_seq(&buf[..n]).unwrap_or_else(|| {
                panic!("a datagram that is not the probe's: {:02x?}", &buf[..n])
            }),
        );
    }
    assert_eq!(seqs, [0x600D, 0, 1], "{fin}");

    // The worker logged each drop (before giving the chain back) ...
    assert_eq!(
        fin.stderr.matches("transmit frame dropped").count(),
        cases.len(),
        "{fin}"
    );
    // ... and counted it under its own reason. The counters are logged when the worker sees
    // its frontend go, which the launcher's SIGTERM at the end of the VM can pre-empt.
    if fin.stderr.contains("device stopped metrics=") {
        for (key, count) in [
            ("tx_short", 1),
            ("tx_write_only", 1),
            ("tx_out_of_memory", 2),
            ("tx_bad_gso", 2),
            ("tx_bad_flags", 1),
            ("tx_too_big", 1),
            ("tx_bad_chain", 1),
        ] {
            assert_eq!(metric(&fin.stderr, key), Some(count), "{key}: {fin}");
        }
    }
}

#[test]
fn two_vms_on_one_bridge_talk_to_each_other() {
    let Some(ns) = setup("two_vms_on_one_bridge_talk_to_each_other") else {
        return;
    };
    let dir = TempDir::new("net-bridge");
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["link", "set", "br0", "up"]);
    let join_bridge = |child: &mut Child, tap: &str| {
        wait_tap(&ns, child, tap);
        ns.ip(&["link", "set", tap, "master", "br0"]);
        ns.ip(&["link", "set", tap, "up"]);
    };

    // The receiver, 10.77.0.3, first: it answers the sender's ARP request.
    let mut rx = probe_vm(&dir, "netrx", "net-recv:0:16", "wtapb", "52:54:00:77:00:03");
    rx.cmdline.push_str(" probe.ip=10.77.0.3");
    let mut rx_child = rx.spawn_in(&ns);
    join_bridge(&mut rx_child, "wtapb");
    wait_serial(&rx, &mut rx_child, "PROBE net-recv:0:16 waiting");

    let mut tx = probe_vm(&dir, "nettx", "net-send:0:16:512", "wtapa", GUEST_MAC);
    tx.cmdline
        .push_str(" probe.ip=10.77.0.2 probe.peer=10.77.0.3");
    let mut tx_child = tx.spawn_in(&ns);
    join_bridge(&mut tx_child, "wtapa");

    let tx_fin = finish(tx_child, tx.console_log(), Duration::from_secs(120));
    let rx_fin = finish(rx_child, rx.console_log(), Duration::from_secs(120));
    tx_fin.assert_clean_probe_exit();
    rx_fin.assert_clean_probe_exit();
    assert_eq!(
        tx_fin.probe_line("net-send:0:16:512"),
        Some("PROBE net-send:0:16:512 OK sent=16 bytes=8192 peer_mac=52:54:00:77:00:03"),
        "{tx_fin}"
    );
    let ok = rx_fin
        .probe_line("net-recv:0:16 OK")
        .unwrap_or_else(|| panic!("{rx_fin}"));
    assert!(
        ok.starts_with("PROBE net-recv:0:16 OK got=16 bad=0 bytes=8192 "),
        "{ok}"
    );
}

#[test]
fn the_net_worker_is_confined_and_its_death_ends_the_vm() {
    let Some(ns) = setup("the_net_worker_is_confined_and_its_death_ends_the_vm") else {
        return;
    };
    let dir = TempDir::new("net-kill");
    let run = probe_vm(&dir, "netkill", "net-info:0,idle:30000", TAP, GUEST_MAC);
    let mut child = run.spawn_in(&ns);
    // `ip netns exec` execs ward, so the workers are the child's children.
    let worker = wait_for(Duration::from_secs(30), || {
        workers_named(child.id(), "ward-net").first().copied()
    })
    .expect("network worker started");
    wait_serial(&run, &mut child, "PROBE idle:30000 started");
    // With the device live, every thread of the worker runs under its filter.
    let modes = seccomp_modes(worker);
    assert!(
        modes.len() >= 2 && modes.iter().all(|(_, m)| m == "2"),
        "network worker threads not all filtered: {modes:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let fin = finish(child, run.console_log(), Duration::from_secs(30));
    assert_eq!(fin.status.code(), Some(1), "{fin}");
    assert!(
        fin.stderr.contains(&format!(
            "worker for network net0 (tap {TAP}) died (killed by SIGKILL)"
        )),
        "{fin}"
    );
    assert!(fin.probe_line("net-info:0 OK").is_some(), "{fin}");
}
