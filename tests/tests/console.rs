//! The serial console on the terminal: the guest's output arrives on `ward run`'s stdout, and
//! what is typed on its stdin reaches the guest.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ward_tests::{bin, kvm_available, probe_elf, TempDir};

#[test]
fn terminal_input_reaches_the_guest_and_output_comes_back() {
    if !kvm_available("terminal_input_reaches_the_guest_and_output_comes_back") {
        return;
    }
    let dir = TempDir::new("console");
    let mut child = Command::new(bin("ward"))
        .args(["run", "--name", "console", "--kernel"])
        .arg(probe_elf())
        .args(["--cmdline", "console=ttyS0 probe.run=echo-serial:5"])
        .env("XDG_RUNTIME_DIR", &dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut typed = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let line = line.trim_end_matches('\r').to_string();
        if line.starts_with("PROBE echo-serial:5 waiting") && !typed {
            stdin.write_all(b"hello").unwrap();
            stdin.flush().unwrap();
            typed = true;
        }
        let done = line.starts_with("PROBE DONE");
        seen.push(line);
        if done {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(typed, "the guest never asked for input: {seen:#?}");
    assert!(
        seen.iter().any(|l| l == "PROBE echo-serial:5 OK got=hello"),
        "typed input did not reach the guest: {seen:#?}"
    );
    assert!(status.success(), "{status}");
}
