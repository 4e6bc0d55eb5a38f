//! The core against a worker that answers vhost-user with garbage: the VM fails with an error
//! naming the device, the core exits, nothing hangs. Drives `ward-vmm` directly through its
//! control channel, with the test playing the worker.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use ward_ipc::channel::Channel;
use ward_ipc::core::{
    exit_code, CoreConfig, CoreToLauncher, DeviceConfig, DeviceKind, ExitReason, LauncherToCore,
    SeccompMode,
};
use ward_ipc::FdIndex;
use ward_tests::{bin, kvm_available, probe_elf, wait_for, TempDir};

fn run_against(reply: &'static [u8]) -> (Option<i32>, Option<ExitReason>) {
    let dir = TempDir::new("hostile-worker");
    let (ours, theirs) = Channel::pair().unwrap();
    let cfd = theirs.as_raw_fd();
    let mut cmd = Command::new(bin("ward-vmm"));
    cmd.args(["--control-fd", "3"])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec, only fcntl and dup2 on a descriptor we hold open.
    unsafe {
        cmd.pre_exec(move || {
            let high = libc::fcntl(cfd, libc::F_DUPFD, 100);
            if high < 0 || libc::dup2(high, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut core = cmd.spawn().unwrap();
    drop(theirs);

    let kernel = File::open(probe_elf()).unwrap();
    let serial = File::create(dir.path("serial")).unwrap();
    let (core_end, mut worker_end) = UnixStream::pair().unwrap();
    let cfg = CoreConfig {
        name: "hostile".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: FdIndex(0),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        serial_out: FdIndex(1),
        serial_in: None,
        devices: vec![DeviceConfig {
            name: "vda".into(),
            kind: DeviceKind::Block,
            socket: FdIndex(2),
        }],
        seccomp: SeccompMode::Enforce,
    };
    ours.send(
        &LauncherToCore::Start(Box::new(cfg)),
        &[kernel.as_raw_fd(), serial.as_raw_fd(), core_end.as_raw_fd()],
    )
    .unwrap();
    drop(core_end);

    // Play the worker: take whatever the core asks first, answer garbage.
    worker_end
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    let _ = worker_end.read(&mut buf);
    let _ = worker_end.write_all(reply);

    let status = wait_for(Duration::from_secs(30), || core.try_wait().unwrap());
    if status.is_none() {
        let _ = core.kill();
        panic!("the core hung on a garbage reply");
    }
    let mut report = None;
    while let Ok(r) = ours.recv::<CoreToLauncher>() {
        if let CoreToLauncher::Exited(reason) = r.msg {
            report = Some(reason);
        }
    }
    (status.and_then(|s| s.code()), report)
}

#[test]
fn garbage_from_a_worker_fails_the_vm_naming_the_device() {
    if !kvm_available("garbage_from_a_worker_fails_the_vm_naming_the_device") {
        return;
    }
    for reply in [
        &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        &b"this is not vhost-user at all, not even a header"[..],
        &[][..],
    ] {
        let (code, report) = run_against(reply);
        assert_eq!(code, Some(exit_code::ERROR), "reply {reply:?}: {report:?}");
        match report {
            Some(ExitReason::Error(msg)) => {
                assert!(msg.contains("vda"), "error should name the device: {msg}")
            }
            other => panic!("reply {reply:?}: unexpected report {other:?}"),
        }
    }
}
