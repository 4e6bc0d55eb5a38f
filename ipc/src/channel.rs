//! A message channel over a `SOCK_SEQPACKET` Unix socket: one JSON message per datagram, with
//! descriptors as `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest message a channel accepts: configuration is small; bulk data goes through fds.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot create socketpair")]
    Socketpair(#[source] nix::Error),
    #[error("Cannot send message")]
    Send(#[source] nix::Error),
    #[error("Cannot receive message")]
    Recv(#[source] nix::Error),
    #[error("Cannot encode message")]
    Encode(#[source] serde_json::Error),
    #[error("Malformed message")]
    Decode(#[source] serde_json::Error),
    #[error("Message of {0} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("Message carries {0} descriptors, more than {MAX_FDS}")]
    TooManyFds(usize),
    #[error("Message was truncated")]
    Truncated,
    #[error("Peer closed the channel")]
    Closed,
    #[error("Message names descriptor {0}, but only {1} arrived")]
    MissingFd(usize, usize),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One end of a channel.
#[derive(Debug)]
pub struct Channel {
    sock: OwnedFd,
}

/// A received message and the descriptors that came with it.
#[derive(Debug)]
pub struct Received<T> {
    pub msg: T,
    pub fds: Vec<Option<OwnedFd>>,
}

impl<T> Received<T> {
    /// Takes the descriptor at `index` out of the message; each can be taken once.
    pub fn take_fd(&mut self, index: crate::FdIndex) -> Result<OwnedFd> {
        let n = self.fds.len();
        self.fds
            .get_mut(index.0)
            .and_then(Option::take)
            .ok_or(Error::MissingFd(index.0, n))
    }
}

impl Channel {
    /// A connected pair of channel ends (close-on-exec; clear it for the end a child inherits).
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(Error::Socketpair)?;
        Ok((Channel { sock: a }, Channel { sock: b }))
    }

    /// Wraps a descriptor that is one end of a `SOCK_SEQPACKET` socketpair.
    pub fn from_fd(sock: OwnedFd) -> Self {
        Channel { sock }
    }

    /// Takes ownership of an inherited descriptor number.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in the process owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller guarantees exclusive ownership of an open descriptor.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Channel { sock }
    }

    pub fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(Error::Encode)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::TooLarge(bytes.len()));
        }
        if fds.len() > MAX_FDS {
            return Err(Error::TooManyFds(fds.len()));
        }
        let iov = [IoSlice::new(&bytes)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(Error::Send)?;
        Ok(())
    }

    /// Receives one message. Descriptors that arrive are owned (and closed) by the result,
    /// even if the message itself fails to decode.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Received<T>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = loop {
                match recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg_space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other.map_err(Error::Recv)?,
                }
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(Error::Recv)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: SCM_RIGHTS hands us fresh descriptors that nothing else owns.
                        fds.push(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
            }
            let truncated = msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
            (msg.bytes, fds, truncated)
        };
        if truncated {
            return Err(Error::Truncated);
        }
        if len == 0 {
            return Err(Error::Closed);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(Error::Decode)?;
        Ok(Received { msg, fds })
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};

    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Msg {
        name: String,
        fd: crate::FdIndex,
    }

    #[test]
    fn message_and_fd_cross() {
        let (a, b) = Channel::pair().unwrap();
        let mut f = tempfile();
        f.write_all(b"hello").unwrap();
        let m = Msg {
            name: "x".into(),
            fd: crate::FdIndex(0),
        };
        a.send(&m, &[f.as_raw_fd()]).unwrap();
        let mut r: Received<Msg> = b.recv().unwrap();
        assert_eq!(r.msg, m);
        let fd = r.take_fd(r.msg.fd).unwrap();
        let mut g = std::fs::File::from(fd);
        g.rewind().unwrap();
        let mut s = String::new();
        g.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        assert!(matches!(
            r.take_fd(crate::FdIndex(0)),
            Err(Error::MissingFd(0, 1))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (a, b) = Channel::pair().unwrap();
        nix::sys::socket::send(a.as_raw_fd(), b"\xff{not json", MsgFlags::empty()).unwrap();
        assert!(matches!(b.recv::<Msg>(), Err(Error::Decode(_))));
        drop(a);
        assert!(matches!(b.recv::<Msg>(), Err(Error::Closed)));
    }

    fn tempfile() -> std::fs::File {
        let fd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
        std::fs::File::from(fd)
    }
}
