//! Helpers for ward's integration tests: finding the binaries and guests, skipping loudly where
//! `/dev/kvm` is missing (and recording where it isn't, so CI can insist that KVM tests ran),
//! running `ward run` (also inside a network namespace the test owns, [`NetNs`]), and reading
//! what the probe guest reports.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory of the binaries built with the same profile as this test.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// True when `/dev/kvm` can be used. Otherwise says loudly that `test` is skipped. Each KVM
/// test that does run appends its name to `$WARD_KVM_MARKER`, so `.ci/run` can fail when
/// `/dev/kvm` exists and no KVM test ran.
pub fn kvm_available(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("\n*** SKIPPED {test}: /dev/kvm is not available on this machine ***\n");
        return false;
    }
    if let Some(marker) = std::env::var_os("WARD_KVM_MARKER") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(marker)
        {
            // One write per line: O_APPEND keeps concurrent tests' lines whole.
            let _ = f.write_all(format!("{test}\n").as_bytes());
        }
    }
    true
}

/// Runs `f` while holding an exclusive lock on `path` (serializes builds across test binaries).
fn with_lock<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    let lock = File::create(path).expect("create lock file");
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let r = f();
    drop(lock);
    r
}

/// The probe guest ELF, built by `guest/probe/build.sh` if needed.
pub fn probe_elf() -> PathBuf {
    let target = repo().join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    with_lock(&target.join(".probe-build.lock"), || {
        let out = Command::new("bash")
            .arg(repo().join("guest/probe/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run guest/probe/build.sh");
        assert!(out.status.success(), "building the probe guest failed");
        let path = PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .to_string(),
        );
        assert!(path.is_file(), "probe build printed no ELF path");
        path
    })
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let base = std::env::var_os("WARD_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "ward-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (std::ptr::addr_of!(tag) as u128)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A zero-filled (sparse) image of `size` bytes.
    pub fn image(&self, name: &str, size: u64) -> PathBuf {
        let p = self.path(name);
        let f = File::create(&p).expect("create image");
        f.set_len(size).expect("size image");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The probe guest's disk pattern (see guest/probe/README.md): byte at absolute disk offset
/// `off` for `seed`.
pub fn pattern_byte(seed: u64, off: u64) -> u8 {
    (off.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .rotate_left(29) as u8
}

/// A `ward run` invocation.
pub struct WardRun {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory: String,
    pub disks: Vec<String>,
    pub seccomp: &'static str,
    pub dir: PathBuf,
    /// Serve the guest a virtio console (`--console virtio`); the serial port still goes to
    /// [`WardRun::console_log`], hvc0's log to [`WardRun::hvc_log`].
    pub virtio_console: bool,
    /// More `ward run` arguments.
    pub extra: Vec<String>,
}

impl WardRun {
    pub fn probe(dir: &TempDir, name: &str, scenarios: &str) -> Self {
        WardRun {
            name: name.to_string(),
            kernel: probe_elf(),
            initrd: None,
            cmdline: format!("console=ttyS0 probe.run={scenarios}"),
            vcpus: 1,
            memory: "128M".into(),
            disks: Vec::new(),
            seccomp: "enforce",
            dir: dir.0.clone(),
            virtio_console: false,
            extra: Vec::new(),
        }
    }

    /// Where the serial port's output goes.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join(format!("{}.console", self.name))
    }

    /// The virtio console's log (with `virtio_console`).
    pub fn hvc_log(&self) -> PathBuf {
        self.dir.join(format!("{}.hvc.log", self.name))
    }

    /// The runtime directory ward makes for this VM (`XDG_RUNTIME_DIR` is the test's dir).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("ward").join(&self.name)
    }

    /// The virtio console's attach socket.
    pub fn attach_socket(&self) -> PathBuf {
        self.runtime_dir().join("console.sock")
    }

    pub fn command(&self) -> Command {
        self.build(Command::new(bin("ward")))
    }

    /// `ip netns exec NS ward run …`: ward, its workers and the TAP devices it creates live in
    /// `ns`. `ip netns exec` execs ward, so the child's pid is ward's.
    pub fn command_in(&self, ns: &NetNs) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name]).arg(bin("ward"));
        self.build(c)
    }

    /// [`WardRun::spawn`] inside `ns`.
    pub fn spawn_in(&self, ns: &NetNs) -> Child {
        let _ = std::fs::remove_file(self.console_log());
        let _ = std::fs::remove_file(self.hvc_log());
        self.command_in(ns).spawn().expect("spawn ward")
    }

    /// [`WardRun::run`] inside `ns`.
    pub fn run_in(&self, ns: &NetNs, timeout: Duration) -> Finished {
        let child = self.spawn_in(ns);
        finish(child, self.console_log(), timeout)
    }

    /// Adds `ward run`'s arguments to `c` (the `ward` binary or a wrapper that runs it).
    fn build(&self, mut c: Command) -> Command {
        c.arg("run")
            .arg("--name")
            .arg(&self.name)
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--cmdline")
            .arg(&self.cmdline)
            .arg("--vcpus")
            .arg(self.vcpus.to_string())
            .arg("--memory")
            .arg(&self.memory)
            .arg("--seccomp")
            .arg(self.seccomp);
        if self.virtio_console {
            c.args(["--console", "virtio", "--serial-log"])
                .arg(self.console_log())
                .arg("--console-log")
                .arg(self.hvc_log());
        } else {
            c.arg("--console-log").arg(self.console_log());
        }
        c.args(&self.extra);
        if let Some(i) = &self.initrd {
            c.arg("--initrd").arg(i);
        }
        for d in &self.disks {
            c.arg("--disk").arg(d);
        }
        c.env("XDG_RUNTIME_DIR", &self.dir)
            .env(
                "WARD_LOG",
                std::env::var("WARD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Waits until the serial log holds `line`; panics with the log if it does not within
    /// `timeout`, or (given `child`, the running `ward`) if ward exits first.
    pub fn wait_serial(&self, mut child: Option<&mut Child>, line: &str, timeout: Duration) {
        let log = self.console_log();
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_for(timeout, || {
            if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "ward exited with {st} before the guest printed {line:?}:\n{}",
                    text()
                );
            }
            text().contains(line).then_some(())
        })
        .unwrap_or_else(|| panic!("the guest never printed {line:?}:\n{}", text()));
    }

    pub fn spawn(&self) -> Child {
        let _ = std::fs::remove_file(self.console_log());
        let _ = std::fs::remove_file(self.hvc_log());
        self.command().spawn().expect("spawn ward")
    }

    /// Runs to the end (or kills it after `timeout`) and collects what happened.
    pub fn run(&self, timeout: Duration) -> Finished {
        let child = self.spawn();
        finish(child, self.console_log(), timeout)
    }
}

/// A finished `ward run`.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub timed_out: bool,
    pub console: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// Lines the probe printed that start with `PROBE `.
    pub fn probe_lines(&self) -> Vec<&str> {
        self.console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with("PROBE "))
            .collect()
    }

    /// The first probe line starting with `PROBE <prefix>`.
    pub fn probe_line(&self, prefix: &str) -> Option<&str> {
        let want = format!("PROBE {prefix}");
        self.probe_lines()
            .into_iter()
            .find(|l| l.starts_with(&want))
    }

    /// Value of `key=` in the first probe line starting with `PROBE <prefix>`.
    pub fn probe_value(&self, prefix: &str, key: &str) -> Option<String> {
        let line = self.probe_line(prefix)?;
        let k = format!("{key}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&k))
            .map(str::to_string)
    }

    /// Panics with everything useful unless the guest ran to `PROBE DONE` and reset cleanly.
    pub fn assert_clean_probe_exit(&self) {
        assert!(
            !self.timed_out && self.status.success() && self.probe_line("DONE").is_some(),
            "probe run did not end cleanly: {self}"
        );
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status={} timed_out={} elapsed={:?}\n--- console ---\n{}\n--- stderr ---\n{}",
            self.status, self.timed_out, self.elapsed, self.console, self.stderr
        )
    }
}

pub fn finish(mut child: Child, console: PathBuf, timeout: Duration) -> Finished {
    let start = Instant::now();
    let mut stderr_pipe = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            // SIGTERM first: ward then ends its children in order.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stderr = reader.join().unwrap_or_default();
    let console = std::fs::read(&console)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Finished {
        status,
        timed_out,
        console,
        stderr,
        elapsed,
    }
}

/// Polls `f` until it returns `Some`, or gives up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Direct children of `pid` whose command name is `comm`.
pub fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if name == comm && ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// The processes named `comm` that ward (`pid`) started, as they do the work: a child of that
/// name, or, when the child is the parent left outside a pid namespace (it has a child of the
/// same name, the namespace's first process), that grandchild.
pub fn workers_named(pid: u32, comm: &str) -> Vec<u32> {
    children_named(pid, comm)
        .into_iter()
        .map(|c| children_named(c, comm).first().copied().unwrap_or(c))
        .collect()
}

/// Every thread of `pid`: its tid, its name and its `/proc/<pid>/task/<tid>/status`.
fn threads(pid: u32) -> Vec<(u32, String, String)> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_string_lossy().parse().unwrap_or(0);
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            Some((tid, comm.trim().to_string(), status))
        })
        .collect()
}

/// The value of `key` (e.g. `"Seccomp:"`) in a status file.
fn status_value<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// The `Seccomp:` mode of every thread of `pid`, as (tid, mode).
pub fn seccomp_modes(pid: u32) -> Vec<(u32, String)> {
    threads(pid)
        .into_iter()
        .filter_map(|(tid, _, st)| Some((tid, status_value(&st, "Seccomp:")?.to_string())))
        .collect()
}

/// Every thread of `pid` as (name, number of seccomp filters it runs under).
pub fn thread_filters(pid: u32) -> Vec<(String, u32)> {
    threads(pid)
        .into_iter()
        .map(|(_, comm, st)| {
            let n = status_value(&st, "Seccomp_filters:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            (comm, n)
        })
        .collect()
}

/// A network namespace made for one test, `ward-t-<pid>-<n>`, deleted when dropped (also while a
/// failing test unwinds). Tests address only the namespaces they made (and loopback), never the
/// host's network.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates the namespace, or says loudly why `test` is skipped (not root, no `/dev/net/tun`,
    /// no `ip`, namespaces unavailable) and returns `None`.
    pub fn create(test: &str) -> Option<NetNs> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let skip = |why: &str| {
            eprintln!("\n*** SKIPPED {test}: {why} ***\n");
            None
        };
        if !nix::unistd::geteuid().is_root() {
            return skip("needs root (network namespaces, TAP devices)");
        }
        if !Path::new("/dev/net/tun").exists() {
            return skip("/dev/net/tun is missing");
        }
        let name = format!(
            "ward-t-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Err(e) => skip(&format!("cannot run `ip`: {e}")),
            Ok(o) if !o.status.success() => skip(&format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(_) => Some(NetNs { name }),
        }
    }

    /// `ip -n NAME args…`, which must succeed; returns what it printed.
    pub fn ip(&self, args: &[&str]) -> String {
        let o = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            o.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Whether interface `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The MAC address of interface `dev`, as `ip` prints it (`aa:bb:cc:dd:ee:ff`).
    pub fn mac_of(&self, dev: &str) -> String {
        let out = self.ip(&["link", "show", "dev", dev]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC for {dev} in {out:?}"))
            .to_string()
    }

    /// Runs `f` on a thread that entered the namespace, and returns its result. Sockets made
    /// there stay in the namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open the namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

/// The payload of the probe's datagrams (guest/probe/README.md, network scenarios): `ward`, the
/// sequence number (u32, big endian), then a pattern of `seq` up to `len` bytes (at least 8).
pub fn net_payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(b"ward");
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((8..len).map(|i| net_payload_byte(seq, i)));
    p
}

/// Byte `i` (i >= 8) of the payload of datagram `seq`.
pub fn net_payload_byte(seq: u32, i: usize) -> u8 {
    ((i as u32 ^ (seq << 16)).wrapping_mul(0x9E37_79B1) >> 24) as u8
}

/// The sequence number of a payload from the probe, if it is one with an intact pattern.
pub fn net_payload_seq(p: &[u8]) -> Option<u32> {
    if p.len() < 8 || &p[..4] != b"ward" {
        return None;
    }
    let seq = u32::from_be_bytes(p[4..8].try_into().expect("4 bytes"));
    (p == net_payload(seq, p.len()).as_slice()).then_some(seq)
}

/// True if a process with this pid still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// True when the host's KVM is the PVM back end, which runs small guest code but cannot boot a
/// stock Linux guest (it crawls through emulation and stops on instructions it cannot emulate).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// ward's binaries, as the nested machine gets them.
const NESTED_BINS: [&str; 6] = [
    "ward",
    "ward-vmm",
    "ward-block",
    "ward-console",
    "ward-img",
    "ward-net",
];

/// `tests/nested/run-nested.sh` with ward's binaries and a 900 s limit; the caller adds files,
/// disks, the environment and the script.
fn nested_command() -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("tests/nested/run-nested.sh"))
        .args(["--timeout", "900"]);
    for b in NESTED_BINS {
        c.arg("--bin").arg(bin(b));
    }
    c
}

/// Runs `script` in the nested machine whatever the host (for what only a kernel the test
/// controls can show, such as SELinux), with `files` copied in (`SRC:DEST` as
/// run-nested.sh's `--file`), `env` set, `append` on the machine's kernel command line;
/// returns its output, asserting that it succeeded.
pub fn run_nested_script(script: &str, files: &[String], env: &[String], append: &str) -> String {
    let script = repo().join(script);
    let mut c = nested_command();
    for f in files {
        c.arg("--file").arg(f);
    }
    for e in env {
        c.arg("--env").arg(e);
    }
    if !append.is_empty() {
        c.arg("--append").arg(append);
    }
    c.args(["--env", "SCRATCH=/tmp"])
        .arg("--script")
        .arg(&script);
    succeeded(&script, c.output().expect("run the nested machine"))
}

/// What `script` printed, asserting that it (and the nested machine, if any) succeeded.
fn succeeded(script: &Path, out: std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({}):\n{text}",
        script.display(),
        out.status
    );
    text
}

/// The prepared Linux guest: (kernel, initramfs), prepared by `tests/guest/prepare.sh`.
pub fn linux_guest() -> (PathBuf, PathBuf) {
    let dir = repo().join("target/guest/linux");
    with_lock(&repo().join("target/.linux-guest.lock"), || {
        if !dir.join("initramfs.cpio.gz").is_file() || !dir.join("vmlinuz").is_file() {
            let st = Command::new("bash")
                .arg(repo().join("tests/guest/prepare.sh"))
                .status()
                .expect("run tests/guest/prepare.sh");
            assert!(st.success(), "preparing the Linux guest failed");
        }
    });
    (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"))
}

/// Runs a Linux-guest script (`tests/guest/*.sh`) where ward can boot Linux: directly on a host
/// whose KVM can, else inside the nested machine (`tests/nested`). Either way the script gets
/// `ward`, `ward-vmm`, `ward-block`, `ward-console`, `ward-net` and `ward-img` on its PATH,
/// `GUEST_DIR` (vmlinuz and initramfs), `SCRATCH` (a writable directory) and one variable per
/// disk: inside the nested
/// machine the disks are its /dev/vda, /dev/vdb, … in order; directly, their paths. Returns
/// what the script printed; panics if it (or the nested machine) failed.
pub fn run_linux_script(script: &str, scratch: &TempDir, disks: &[(&str, &Path)]) -> String {
    let (kernel, initrd) = linux_guest();
    let script = repo().join(script);
    let out = if host_is_pvm() {
        eprintln!("host KVM is PVM: running the Linux guest inside the nested machine");
        let mut c = nested_command();
        for f in [&kernel, &initrd] {
            c.arg("--file").arg(format!("{}:/ward/guest/", f.display()));
        }
        for (i, (var, path)) in disks.iter().enumerate() {
            let dev = format!("/dev/vd{}", (b'a' + i as u8) as char);
            c.arg("--disk")
                .arg(path)
                .arg("--env")
                .arg(format!("{var}={dev}"));
        }
        c.args(["--env", "GUEST_DIR=/ward/guest", "--env", "SCRATCH=/tmp"])
            .arg("--script")
            .arg(&script);
        c.output().expect("run the nested machine")
    } else {
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("sh");
        c.arg(&script)
            .env("PATH", path)
            .env("GUEST_DIR", kernel.parent().expect("guest dir"))
            .env("SCRATCH", &scratch.0)
            .env("XDG_RUNTIME_DIR", &scratch.0);
        for (var, path) in disks {
            c.env(var, path);
        }
        c.output().expect("run the script")
    };
    succeeded(&script, out)
}
