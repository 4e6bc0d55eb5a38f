//! The virtio console (hvc0), served by `ward-console` under its seccomp policy: a client
//! drives it interactively through the attach socket, detaches and re-attaches while the guest
//! keeps running, a second attach is refused unless it forces a takeover, `ward console` does
//! the same from the command line, the log holds the whole session and is rotated within its
//! bound, malformed transmit chains are dropped, and a killed worker ends the VM naming it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_tests::{
    bin, children_named, finish, kvm_available, seccomp_modes, wait_for, TempDir, WardRun,
};

/// Connects to the attach socket and does the handshake; returns the stream and the reply.
fn attach(path: &Path, request: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(path).expect("connect to the attach socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        reply.push(b[0]);
    }
    (s, String::from_utf8_lossy(&reply).into_owned())
}

/// Reads from `s` until `want` has arrived (or panics after `timeout`); returns all read.
fn read_until(s: &mut UnixStream, want: &str, timeout: Duration) -> String {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while start.elapsed() < timeout {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&got).contains(want) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains(want), "wanted {want:?}, got {text:?}");
    text
}

fn wait_serial(run: &WardRun, line: &str) {
    run.wait_serial(None, line, Duration::from_secs(30));
}

#[test]
fn console_sessions_attach_detach_takeover_and_the_log() {
    if !kvm_available("console_sessions_attach_detach_takeover_and_the_log") {
        return;
    }
    let dir = TempDir::new("hvc");
    let mut run = WardRun::probe(&dir, "hvc", "cons-echo:0:5,cons-echo:0:3,cons-echo:0:4");
    run.virtio_console = true;
    let child = run.spawn();
    let sock = run.attach_socket();

    // First session: interactive.
    wait_serial(&run, "PROBE cons-echo:0:5 waiting");
    let (mut a, reply) = attach(&sock, "attach\n");
    assert_eq!(reply, "ok");
    // The worker is confined on every thread.
    let worker = ward_tests::workers_named(child.id(), "ward-console")[0];
    let modes = seccomp_modes(worker);
    assert!(
        !modes.is_empty() && modes.iter().all(|(_, m)| m == "2"),
        "console worker threads not all filtered: {modes:?}"
    );
    // A second interactive attach is refused; a watcher is welcome.
    let (_b, reply) = attach(&sock, "attach\n");
    assert_eq!(reply, "busy");
    let (mut w, reply) = attach(&sock, "watch\n");
    assert_eq!(reply, "ok");
    a.write_all(b"hello").unwrap();
    read_until(&mut a, "echo:hello\n", Duration::from_secs(20));
    read_until(&mut w, "echo:hello\n", Duration::from_secs(20));
    // Detach: the guest goes on to its next scenario.
    drop(a);

    // Second session, re-attached: a forced takeover of a client that just attached.
    wait_serial(&run, "PROBE cons-echo:0:3 waiting");
    let (mut c, reply) = attach(&sock, "attach\n");
    assert_eq!(reply, "ok");
    let (mut d, reply) = attach(&sock, "attach force\n");
    assert_eq!(reply, "ok");
    read_until(&mut c, "taken over", Duration::from_secs(10));
    d.write_all(b"abc").unwrap();
    read_until(&mut d, "echo:abc\n", Duration::from_secs(20));
    drop(d);
    drop(c);

    // Third session through `ward console`, detached with ^].
    wait_serial(&run, "PROBE cons-echo:0:4 waiting");
    let mut cli = Command::new(bin("ward"))
        .args(["console", "hvc"])
        .env("XDG_RUNTIME_DIR", &dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    let stdout = cli.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("echo:wxyz") {
                break;
            }
        }
        seen
    });
    // Give the client time to attach before typing.
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"wxyz").unwrap();
    stdin.flush().unwrap();
    let seen = reader.join().unwrap();
    assert!(seen.contains("echo:wxyz"), "ward console saw {seen:?}");
    stdin.write_all(&[0x1d]).unwrap();
    stdin.flush().unwrap();
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("detached"),
        "{out:?}"
    );

    let fin = finish(child, run.console_log(), Duration::from_secs(30));
    fin.assert_clean_probe_exit();
    for (scen, got) in [
        ("cons-echo:0:5", "hello"),
        ("cons-echo:0:3", "abc"),
        ("cons-echo:0:4", "wxyz"),
    ] {
        assert_eq!(
            fin.probe_line(&format!("{scen} OK")),
            Some(format!("PROBE {scen} OK got={got}").as_str()),
            "{fin}"
        );
    }
    // The log holds all three sessions, including what the guest wrote while nobody was
    // attached.
    let log = std::fs::read_to_string(run.hvc_log()).unwrap();
    assert_eq!(log.matches("ward-probe console ready").count(), 3, "{log}");
    for echo in ["echo:hello", "echo:abc", "echo:wxyz"] {
        assert!(log.contains(echo), "{echo} missing from the log: {log}");
    }
}

#[test]
fn the_console_log_is_rotated_within_its_bound() {
    if !kvm_available("the_console_log_is_rotated_within_its_bound") {
        return;
    }
    let dir = TempDir::new("hvc-rot");
    let mut run = WardRun::probe(&dir, "hvcrot", "cons-write:0:300");
    run.virtio_console = true;
    run.extra = vec!["--console-log-max".into(), "8K".into()];
    let fin = run.run(Duration::from_secs(60));
    fin.assert_clean_probe_exit();
    assert_eq!(
        fin.probe_line("cons-write:0:300"),
        Some("PROBE cons-write:0:300 OK lines=300 bytes=19200"),
        "{fin}"
    );
    let cur = std::fs::read_to_string(run.hvc_log()).unwrap();
    let old_path = format!("{}.1", run.hvc_log().display());
    let old = std::fs::read_to_string(&old_path).unwrap();
    assert!(
        cur.len() <= 8192 && old.len() <= 8192,
        "{} {}",
        cur.len(),
        old.len()
    );
    // The newest line is in the current log, and old + current are the unbroken tail.
    assert!(cur.contains("cons line 000299 "), "{cur}");
    let both = format!("{old}{cur}");
    let lines: Vec<&str> = both.lines().collect();
    assert!(lines.len() >= 100, "too little kept: {}", lines.len());
    let first: u64 = lines[1][10..16].parse().unwrap();
    for (k, l) in lines[1..].iter().enumerate() {
        assert_eq!(
            l[10..16].parse::<u64>().unwrap(),
            first + k as u64,
            "gap in the rotated log at {l:?}"
        );
    }
}

#[test]
fn malformed_transmit_chains_are_dropped_and_the_console_goes_on() {
    if !kvm_available("malformed_transmit_chains_are_dropped_and_the_console_goes_on") {
        return;
    }
    let dir = TempDir::new("hvc-bad");
    let mut run = WardRun::probe(&dir, "hvcbad", "cons-bad:0,cons-write:0:2");
    run.virtio_console = true;
    let fin = run.run(Duration::from_secs(60));
    fin.assert_clean_probe_exit();
    // All four malformed chains came back (dropped, used length 0), and the good line after
    // them was consumed.
    assert_eq!(
        fin.probe_line("cons-bad:0"),
        Some("PROBE cons-bad:0 OK returned=4"),
        "{fin}"
    );
    assert_eq!(
        fin.probe_line("cons-write:0:2"),
        Some("PROBE cons-write:0:2 OK lines=2 bytes=128")
    );
    let log = std::fs::read_to_string(run.hvc_log()).unwrap();
    assert!(log.contains("after-bad\n"), "{log:?}");
    assert!(log.contains("cons line 000001"), "{log:?}");
}

#[test]
fn a_killed_console_worker_ends_the_vm_with_its_name() {
    if !kvm_available("a_killed_console_worker_ends_the_vm_with_its_name") {
        return;
    }
    let dir = TempDir::new("hvc-kill");
    let mut run = WardRun::probe(&dir, "hvckill", "idle:20000");
    run.virtio_console = true;
    let child = run.spawn();
    let worker = wait_for(Duration::from_secs(20), || {
        children_named(child.id(), "ward-console").first().copied()
    })
    .expect("console worker started");
    wait_serial(&run, "PROBE READY");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let fin = finish(child, run.console_log(), Duration::from_secs(30));
    assert_eq!(fin.status.code(), Some(1), "{fin}");
    assert!(
        fin.stderr
            .contains("worker for console died (killed by SIGKILL)"),
        "{fin}"
    );
}

/// `ward run --console virtio` on a terminal (script(1) gives it one): the terminal is
/// attached in raw mode — Ctrl-C reaches the guest as a byte instead of stopping ward — and
/// `^]` detaches while the VM runs on to its end.
#[test]
fn ward_run_on_a_terminal_attaches_in_raw_mode_and_detaches() {
    if !kvm_available("ward_run_on_a_terminal_attaches_in_raw_mode_and_detaches") {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("\n*** SKIPPED ward_run_on_a_terminal_attaches_in_raw_mode_and_detaches: no script(1) ***\n");
        return;
    }
    let dir = TempDir::new("hvc-tty");
    let mut run = WardRun::probe(&dir, "hvctty", "cons-echo:0:3,cons-echo:0:2,idle:1500");
    run.virtio_console = true;
    let cmd = run.command();
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut expect = |want: &str| {
        let start = Instant::now();
        while !String::from_utf8_lossy(&seen).contains(want) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "terminal never showed {want:?}: {:?}",
                String::from_utf8_lossy(&seen)
            );
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend(b);
            }
        }
    };
    expect("Connected to the console of hvctty");
    wait_serial(&run, "PROBE cons-echo:0:3 waiting");
    // Ctrl-C is a byte for the guest in raw mode.
    stdin.write_all(b"a\x03b").unwrap();
    stdin.flush().unwrap();
    expect("echo:a\x03b");
    wait_serial(&run, "PROBE cons-echo:0:2 waiting");
    stdin.write_all(b"ok").unwrap();
    stdin.flush().unwrap();
    expect("echo:ok");
    stdin.write_all(&[0x1d]).unwrap();
    stdin.flush().unwrap();
    expect("detached");
    // The VM runs on to its end (the idle scenario), and ward exits cleanly.
    let status =
        wait_for(Duration::from_secs(30), || child.try_wait().unwrap()).expect("ward run ended");
    assert!(status.success(), "{status}");
    let serial = std::fs::read_to_string(run.console_log()).unwrap();
    assert!(
        serial.contains("PROBE cons-echo:0:3 OK got=a_b"),
        "{serial}"
    );
    assert!(serial.contains("PROBE idle:1500"), "{serial}");
}
