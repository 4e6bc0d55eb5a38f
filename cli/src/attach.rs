//! Attaching a terminal to a VM's virtio console, like `virsh console`: the console worker's
//! attach socket carries one handshake line each way, then raw bytes. On a terminal, input is
//! put in raw mode (so Ctrl-C reaches the guest) and `^]` detaches, leaving the VM running.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

/// The escape byte: Ctrl-].
pub const ESCAPE: u8 = 0x1d;

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Interactive; refused while another interactive client is attached.
    Attach,
    /// Interactive, taking over from the client attached now.
    Force,
    /// Output only.
    Watch,
}

impl Mode {
    fn request(self) -> &'static [u8] {
        match self {
            Mode::Attach => b"attach\n",
            Mode::Force => b"attach force\n",
            Mode::Watch => b"watch\n",
        }
    }
}

/// How an attachment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The user typed the escape character.
    Detached,
    /// The console went away: the VM ended, or another client took over.
    Closed,
}

/// Restores the terminal's settings when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Connects to the attach socket at `path` and does the handshake.
pub fn connect(path: &Path, mode: Mode) -> anyhow::Result<UnixStream> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the console at {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(mode.request())?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.len() < 64 {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => reply.push(byte[0]),
            Err(e) => return Err(e).context("the console did not answer"),
        }
    }
    s.set_read_timeout(None)?;
    match reply.as_slice() {
        b"ok" => Ok(s),
        b"busy" if mode == Mode::Watch => bail!("console busy: too many clients watch it"),
        b"busy" => {
            bail!("console busy: another client is attached (`ward console --force` takes over)")
        }
        other => bail!(
            "the console refused the attachment ({:?})",
            String::from_utf8_lossy(other)
        ),
    }
}

/// Pumps the terminal and the console until the user detaches or the console closes.
pub fn pump(mut sock: UnixStream, mode: Mode, banner: &str) -> anyhow::Result<End> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let _raw = if tty { RawMode::enter() } else { None };
    let mut err = std::io::stderr();
    if tty {
        let _ = write!(err, "{banner}; escape character is ^]\r\n");
    }
    let mut stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    let mut buf = [0u8; 16 << 10];
    loop {
        let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let stdin_fd = std::io::stdin();
        if stdin_open {
            fds.push(PollFd::new(stdin_fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (sock_ready, in_ready) = (ready(0), ready(1));
        drop(fds);
        if sock_ready {
            let n = match sock.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                if tty {
                    let _ = write!(err, "\r\n[console closed]\r\n");
                }
                return Ok(End::Closed);
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
        if in_ready {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                // End of input: output keeps flowing until the console closes.
                stdin_open = false;
                continue;
            }
            let input = &buf[..n];
            let (send, detach) = match input.iter().position(|&b| b == ESCAPE) {
                Some(i) => (&input[..i], true),
                None => (input, false),
            };
            if mode != Mode::Watch && !send.is_empty() && sock.write_all(send).is_err() {
                return Ok(End::Closed);
            }
            if detach {
                let _ = write!(err, "\r\n[detached; the VM keeps running]\r\n");
                return Ok(End::Detached);
            }
        }
    }
}
