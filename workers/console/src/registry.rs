//! Event tokens, and registering descriptors with the epoll loop that serves them.
//!
//! The worker has no event loop of its own: the attach listener, the handshake timer and the
//! client sockets are extra listeners on the vring thread's `VringEpollHandler`, which calls
//! the backend's `handle_event` with their token. Tokens `0..=NUM_QUEUES` belong to the
//! library (the queues, then its exit and vring-enable events), so ours start above.
//!
//! The handler can only add and delete; changing what a descriptor waits for is a delete and
//! an add. Unit tests register with a plain epoll instead (the same calls, without a daemon).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Weak;

use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// receiveq: input for the guest (host → guest).
pub const RX_QUEUE: u16 = 0;
/// transmitq: the guest's output (guest → host).
pub const TX_QUEUE: u16 = 1;
/// Queues the device has.
pub const NUM_QUEUES: usize = 2;
/// The attach listener.
pub const ATTACH: u16 = NUM_QUEUES as u16 + 1;
/// The timer that ends handshakes nobody finishes.
pub const TIMER: u16 = NUM_QUEUES as u16 + 2;
/// Clients get tokens from here up (the library hands tokens back as `u16`).
pub const FIRST_CLIENT: u16 = NUM_QUEUES as u16 + 3;

// 0..NUM_QUEUES are the queues, NUM_QUEUES the library's exit and vring-enable event.
const _: () = assert!(
    RX_QUEUE == 0
        && TX_QUEUE == 1
        && ATTACH as usize > NUM_QUEUES
        && TIMER > ATTACH
        && FIRST_CLIENT > TIMER
);

/// Somewhere to watch descriptors for events, reported by token.
pub trait Registry {
    fn add(&self, fd: RawFd, events: EventSet, token: u16) -> io::Result<()>;
    fn remove(&self, fd: RawFd, token: u16) -> io::Result<()>;
}

/// The vring thread's epoll handler, held weakly: the handler owns the backend, which must
/// not own the handler back.
pub struct HandlerRegistry<T: VhostUserBackend>(pub Weak<VringEpollHandler<T>>);

impl<T: VhostUserBackend> HandlerRegistry<T> {
    fn handler(&self) -> io::Result<std::sync::Arc<VringEpollHandler<T>>> {
        self.0
            .upgrade()
            .ok_or_else(|| io::Error::other("the vring thread's epoll handler is gone"))
    }
}

impl<T: VhostUserBackend> Registry for HandlerRegistry<T> {
    fn add(&self, fd: RawFd, events: EventSet, token: u16) -> io::Result<()> {
        self.handler()?
            .register_listener(fd, events, u64::from(token))
    }

    fn remove(&self, fd: RawFd, token: u16) -> io::Result<()> {
        self.handler()?
            .unregister_listener(fd, EventSet::empty(), u64::from(token))
    }
}

/// A plain epoll instance (tests drive it by hand).
impl Registry for Epoll {
    fn add(&self, fd: RawFd, events: EventSet, token: u16) -> io::Result<()> {
        self.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, u64::from(token)),
        )
    }

    fn remove(&self, fd: RawFd, token: u16) -> io::Result<()> {
        self.ctl(
            ControlOperation::Delete,
            fd,
            EpollEvent::new(EventSet::empty(), u64::from(token)),
        )
    }
}

/// What the backend uses before the daemon's handler is known: nothing can be registered.
pub struct NoRegistry;

impl Registry for NoRegistry {
    fn add(&self, _fd: RawFd, _events: EventSet, _token: u16) -> io::Result<()> {
        Err(io::Error::other("no event loop yet"))
    }

    fn remove(&self, _fd: RawFd, _token: u16) -> io::Result<()> {
        Err(io::Error::other("no event loop yet"))
    }
}

/// Shorthand for registering something that has a descriptor.
pub fn add(reg: &dyn Registry, fd: &impl AsRawFd, events: EventSet, token: u16) -> io::Result<()> {
    reg.add(fd.as_raw_fd(), events, token)
}
