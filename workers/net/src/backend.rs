//! The virtio-net device as `vhost-user-backend` sees it: features, configuration space, the
//! TUNSETOFFLOAD that follows the driver's features, and the event handler that runs both
//! queues and the tap in the library's one vring thread.
//!
//! # Events
//!
//! The vring thread's epoll watches the two kick eventfds (tokens 0 and 1, registered by the
//! library) and the tap (token [`TAP_TOKEN`], registered here through [`TapWatch`]). What the
//! tap is watched for follows what the data path can do:
//!
//! - EPOLLIN while the guest has (or may have) receive buffers. When it has none, input is no
//!   longer watched until it kicks the receive queue, so neither a busy loop nor a frame the
//!   guest cannot take happens on our side: the kernel queues what arrives, up to its limit.
//! - EPOLLOUT while a transmit chain waits because the tap was full (EAGAIN), and also when a
//!   queue stopped at its budget with work left: the tap is nearly always writable, so this
//!   resumes the work on the next pass of the loop, after the other events had their turn.
//! - Nothing before the guest kicks the receive queue for the first time.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tracing::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use ward_worker::vring::{self, lock};

use crate::metrics::{should_log, Metrics};
use crate::ring::{self, Ctx};
use crate::rx::{self, RxState};
use crate::tap::{self, TapIo};
use crate::tx::{self, TxState};
use crate::GuestMem;

/// Queues: one receive/transmit pair.
pub const NUM_QUEUES: usize = 2;
/// The receive queue (tap → guest).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (guest → tap).
pub const TX_QUEUE: u16 = 1;
/// Largest queue the driver may configure.
pub const QUEUE_SIZE: usize = 256;
/// The tap's token in the vring thread's epoll: tokens up to [`NUM_QUEUES`] are the library's
/// (queues, then its exit and vring-enable events).
pub const TAP_TOKEN: u16 = NUM_QUEUES as u16 + 1;
/// Size of the configuration space we serve: `struct virtio_net_config` as virtio-bindings
/// defines it (24 bytes), which is what the core asks for.
pub const CONFIG_SIZE: usize = std::mem::size_of::<virtio_net_config>();

/// The features the device offers.
pub const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_MTU)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_MRG_RXBUF);

/// Sets what the vring thread's epoll watches the tap for (empty: not at all).
pub trait TapWatch: Send + Sync {
    fn watch(&self, events: EventSet) -> io::Result<()>;
}

/// [`TapWatch`] on the library's vring thread, through its listener registration (a weak
/// reference: the handler owns the backend, not the other way round).
pub struct EpollWatch<B: VhostUserBackend> {
    handler: Weak<VringEpollHandler<B>>,
    fd: std::os::fd::RawFd,
    current: Mutex<EventSet>,
}

impl<B: VhostUserBackend> EpollWatch<B> {
    /// `fd` is the tap's descriptor, which the backend keeps open for as long as it lives.
    pub fn new(handler: Weak<VringEpollHandler<B>>, fd: std::os::fd::RawFd) -> Self {
        EpollWatch {
            handler,
            fd,
            current: Mutex::new(EventSet::empty()),
        }
    }
}

impl<B> TapWatch for EpollWatch<B>
where
    B: VhostUserBackend,
    VringEpollHandler<B>: Send + Sync,
{
    fn watch(&self, events: EventSet) -> io::Result<()> {
        let Some(handler) = self.handler.upgrade() else {
            return Ok(());
        };
        let mut current = lock(&self.current);
        let token = u64::from(TAP_TOKEN);
        if !current.is_empty() {
            match handler.unregister_listener(self.fd, *current, token) {
                // Not registered (any more): nothing to undo.
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => *current = EventSet::empty(),
            }
        }
        if !events.is_empty() {
            handler.register_listener(self.fd, events, token)?;
            *current = events;
        }
        Ok(())
    }
}

/// The data path's state, used by the vring thread (and by the frontend's thread when a queue
/// stops or the device resets).
struct Io {
    rx: RxState,
    tx: TxState,
    /// Read the tap when it is readable: the guest may have receive buffers.
    rx_want_in: bool,
    /// The receive side stopped at its budget with work left.
    rx_resume: bool,
    /// The transmit side waits for the tap (EAGAIN) or stopped at its budget.
    tx_wait: bool,
    /// What the tap is watched for now.
    watching: EventSet,
}

impl Default for Io {
    fn default() -> Self {
        Io {
            rx: RxState::default(),
            tx: TxState::default(),
            rx_want_in: false,
            rx_resume: false,
            tx_wait: false,
            watching: EventSet::empty(),
        }
    }
}

/// One vhost-user-net device over one tap.
pub struct NetBackend<T: TapIo> {
    tap: T,
    config: [u8; CONFIG_SIZE],
    event_idx: AtomicBool,
    acked_features: AtomicU64,
    mem: Mutex<GuestMemoryAtomic<GuestMem>>,
    io: Mutex<Io>,
    watch: OnceLock<Box<dyn TapWatch>>,
    /// The receive queue's vring (the library's, shared), kept from the first event so that
    /// stopping the queue can give back the chains the device holds.
    rx_vring: OnceLock<VringRwLock>,
    metrics: Arc<Metrics>,
    /// The device's span, entered by the library's threads when they call into us.
    span: tracing::Span,
}

/// `struct virtio_net_config`, little endian: the MAC, link up, one queue pair, the MTU; the
/// rest (speed, duplex, RSS) is zero, as its features are not offered.
pub fn config_space(mac: [u8; 6], mtu: u16) -> [u8; CONFIG_SIZE] {
    use std::mem::offset_of;
    let mut c = [0u8; CONFIG_SIZE];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(virtio_net_config, mac), &mac);
    put(
        offset_of!(virtio_net_config, status),
        &(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes(),
    );
    put(
        offset_of!(virtio_net_config, max_virtqueue_pairs),
        &1u16.to_le_bytes(),
    );
    put(offset_of!(virtio_net_config, mtu), &mtu.to_le_bytes());
    c
}

impl<T: TapIo> NetBackend<T> {
    pub fn new(
        tap: T,
        mac: [u8; 6],
        mtu: u16,
        mem: GuestMemoryAtomic<GuestMem>,
        metrics: Arc<Metrics>,
        span: tracing::Span,
    ) -> Self {
        NetBackend {
            tap,
            config: config_space(mac, mtu),
            event_idx: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            mem: Mutex::new(mem),
            io: Mutex::new(Io::default()),
            watch: OnceLock::new(),
            rx_vring: OnceLock::new(),
            metrics,
            span,
        }
    }

    /// Gives the backend the means to change what the vring thread watches the tap for. Set
    /// once, before the frontend connects; a second call is ignored.
    pub fn set_watch(&self, watch: Box<dyn TapWatch>) {
        let _ = self.watch.set(watch);
    }

    fn memory(&self) -> GuestMemoryAtomic<GuestMem> {
        lock(&self.mem).clone()
    }

    fn acked(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }

    /// Handles one event of the vring thread: a kick of either queue, or the tap (whatever it
    /// reports: see below).
    pub fn handle(&self, device_event: u16, vrings: &[VringRwLock]) {
        let _g = self.span.enter();
        let (Some(rxq), Some(txq)) = (
            vrings.get(usize::from(RX_QUEUE)),
            vrings.get(usize::from(TX_QUEUE)),
        ) else {
            warn!(queues = vrings.len(), "wrong number of queues");
            return;
        };
        if self.rx_vring.get().is_none() {
            let _ = self.rx_vring.set(rxq.clone());
        }
        let mut io = lock(&self.io);
        match device_event {
            RX_QUEUE => {
                io.rx_want_in = true;
                self.run_rx(&mut io, rxq);
            }
            TX_QUEUE => self.run_tx(&mut io, txq),
            // Whatever the tap reports (readable, writable, an error), each side that waits
            // for it has a go: a side that cannot progress stops waiting, so a tap stuck in an
            // error state cannot make this loop spin.
            TAP_TOKEN => {
                if io.rx_want_in || io.rx_resume {
                    self.run_rx(&mut io, rxq);
                }
                if io.tx_wait {
                    self.run_tx(&mut io, txq);
                }
            }
            other => warn!(device_event = other, "event for an unknown source"),
        }
        self.update_watch(&mut io);
    }

    fn run_rx(&self, io: &mut Io, vring: &VringRwLock) {
        io.rx_resume = false;
        if !ring::live(vring) {
            io.rx_want_in = false;
            return;
        }
        let atomic = self.memory();
        let mem = atomic.memory();
        let acked = self.acked();
        let ctx = Ctx {
            mem: &mem,
            tap: &self.tap,
            metrics: &self.metrics,
            acked,
            event_idx: self.event_idx.load(Ordering::Relaxed),
        };
        let mrg = acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        match rx::process(&ctx, vring, &mut io.rx, mrg) {
            rx::Outcome::NoBuffers => {
                Metrics::bump(&self.metrics.rx_no_buffers);
                io.rx_want_in = false;
            }
            rx::Outcome::TapEmpty => io.rx_want_in = true,
            rx::Outcome::Budget => {
                io.rx_want_in = true;
                io.rx_resume = true;
            }
            rx::Outcome::TapError => io.rx_want_in = false,
        }
    }

    fn run_tx(&self, io: &mut Io, vring: &VringRwLock) {
        if !ring::live(vring) {
            io.tx_wait = false;
            return;
        }
        let atomic = self.memory();
        let mem = atomic.memory();
        let ctx = Ctx {
            mem: &mem,
            tap: &self.tap,
            metrics: &self.metrics,
            acked: self.acked(),
            event_idx: self.event_idx.load(Ordering::Relaxed),
        };
        io.tx_wait = tx::process(&ctx, vring, &mut io.tx) != tx::Outcome::Drained;
    }

    /// Makes the tap's watch match what the data path wants.
    fn update_watch(&self, io: &mut Io) {
        let mut want = EventSet::empty();
        if io.rx_want_in {
            want |= EventSet::IN;
        }
        if io.tx_wait || io.rx_resume {
            want |= EventSet::OUT;
        }
        if want == io.watching {
            return;
        }
        let Some(watch) = self.watch.get() else {
            return;
        };
        match watch.watch(want) {
            Ok(()) => io.watching = want,
            Err(e) => {
                let n = Metrics::bump(&self.metrics.watch_errors);
                if should_log(n) {
                    warn!(error = %e, count = n, ?want, "cannot change what the tap is watched for");
                }
            }
        }
    }

    /// What the tap is watched for now (for tests and diagnostics).
    pub fn watching(&self) -> EventSet {
        lock(&self.io).watching
    }

    /// Whether a received frame waits for the guest's buffers.
    pub fn rx_pending(&self) -> bool {
        lock(&self.io).rx.has_pending()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn tap(&self) -> &T {
        &self.tap
    }

    fn set_offload(&self, flags: u32) {
        match self.tap.set_offload(flags) {
            Ok(()) => debug!(flags = format_args!("{flags:#x}"), "tap offloads set"),
            Err(e) => {
                let n = Metrics::bump(&self.metrics.offload_errors);
                if should_log(n) {
                    warn!(error = %e, flags = format_args!("{flags:#x}"), "TUNSETOFFLOAD failed");
                }
            }
        }
    }
}

impl<T: TapIo> VhostUserBackend for NetBackend<T> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// SET_FEATURES, on the frontend's thread once the driver is ready: the tap may now hand
    /// us what the guest accepts, and nothing more.
    fn acked_features(&self, features: u64) {
        let _g = self.span.enter();
        info!(features = format_args!("{features:#x}"), "driver features");
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            // virtio-mmio version 2 requires VERSION_1; the 12-byte header assumes it.
            warn!("the driver did not accept VIRTIO_F_VERSION_1");
        }
        self.acked_features.store(features, Ordering::Relaxed);
        self.set_offload(tap::offload_flags(features));
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// The driver reset the device: forget its rings and features.
    fn reset_device(&self) {
        let _g = self.span.enter();
        self.acked_features.store(0, Ordering::Relaxed);
        self.set_offload(0);
        let mut io = lock(&self.io);
        io.rx.clear();
        io.rx_want_in = false;
        io.rx_resume = false;
        io.tx_wait = false;
        self.update_watch(&mut io);
    }

    /// GET_VRING_BASE: the queue stops. Receive chains held for frames to come go back to the
    /// ring first (the library reads its base after this); a frame waiting for receive buffers,
    /// and the chains taken for it, belong to the ring that is going away: they are dropped.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let _g = self.span.enter();
        let mut io = lock(&self.io);
        match queue_index {
            0 => {
                if let Some(v) = self.rx_vring.get() {
                    io.rx.give_back(v);
                }
                io.rx.clear();
                io.rx_want_in = false;
                io.rx_resume = false;
            }
            1 => io.tx_wait = false,
            _ => {}
        }
        self.update_watch(&mut io);
        Ok(())
    }

    /// Any window of the configuration space; the part of it beyond the end is left out, so an
    /// out-of-range request gets a short (possibly empty) answer, which the library turns into
    /// an error reply. The core reads all [`CONFIG_SIZE`] bytes at offset 0.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        vring::config_window(&self.config, offset, size)
    }

    /// No field is writable (no VIRTIO_NET_F_CTRL_MAC_ADDR; the MAC is the launcher's).
    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the virtio-net configuration space is read-only",
        ))
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        *lock(&self.mem) = mem;
        Ok(())
    }

    /// See [`vring::exit_event`].
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        vring::exit_event(&self.span)
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        ward_worker::queue_thread::enter();
        self.handle(device_event, vrings);
        Ok(())
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
