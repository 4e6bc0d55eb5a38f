//! The virtio-console device as `vhost-user-backend` sees it: features, configuration space,
//! and the event handler that runs in the library's vring thread.
//!
//! Everything that touches guest data or a client runs in that one thread, in
//! [`ConsoleBackend::handle_event`]: queue kicks, the attach listener, the handshake timer and
//! the client sockets are all events of its epoll loop. The frontend's request thread only
//! reads the features and the configuration space and swaps guest memory.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use ward_worker::vring::{self, lock};

use crate::clients::Clients;
use crate::log::Log;
use crate::metrics::{should_log, Metrics};
use crate::queue::{Ctx, Input, INPUT_MAX};
use crate::registry::{
    NoRegistry, Registry, ATTACH, FIRST_CLIENT, NUM_QUEUES, RX_QUEUE, TIMER, TX_QUEUE,
};
use crate::GuestMem;

/// virtio device ID of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Largest queue the driver may configure.
pub const QUEUE_SIZE: usize = 256;
/// `struct virtio_console_config`: cols (le16), rows (le16), max_nr_ports (le32), emerg_wr
/// (le32).
pub const CONFIG_SIZE: usize = 12;
/// Offset of `max_nr_ports` in the configuration space.
const MAX_NR_PORTS_OFFSET: usize = 4;

/// What the vring thread works on, under one lock.
struct Console {
    log: Log,
    clients: Clients,
    input: Input,
    /// Output taken from the transmitq, before it goes to the log and the clients.
    scratch: Vec<u8>,
}

/// One virtio-console device with one port (the guest's hvc0).
pub struct ConsoleBackend {
    features: u64,
    config: [u8; CONFIG_SIZE],
    event_idx: AtomicBool,
    acked_features: AtomicU64,
    mem: Mutex<GuestMemoryAtomic<GuestMem>>,
    metrics: Arc<Metrics>,
    /// The vring thread's epoll loop, once the daemon exists.
    registry: OnceLock<Box<dyn Registry + Send + Sync>>,
    state: Mutex<Console>,
    /// The device's span, entered by the library's threads when they call into us.
    span: tracing::Span,
}

impl ConsoleBackend {
    pub fn new(
        log: Log,
        clients: Clients,
        mem: GuestMemoryAtomic<GuestMem>,
        metrics: Arc<Metrics>,
        span: tracing::Span,
    ) -> Self {
        let features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        ConsoleBackend {
            features,
            config: config_space(),
            event_idx: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            mem: Mutex::new(mem),
            metrics,
            registry: OnceLock::new(),
            state: Mutex::new(Console {
                log,
                clients,
                input: Input::new(INPUT_MAX),
                scratch: Vec::new(),
            }),
            span,
        }
    }

    /// Tells the backend where to register its descriptors (the vring thread's epoll handler).
    /// Only the first call counts.
    pub fn set_registry(&self, registry: Box<dyn Registry + Send + Sync>) {
        let _ = self.registry.set(registry);
    }

    /// Starts accepting clients: registers the attach listener and the handshake timer.
    pub fn start_clients(&self) -> io::Result<()> {
        self.state().clients.register(self.registry())
    }

    fn registry(&self) -> &dyn Registry {
        match self.registry.get() {
            Some(r) => r.as_ref(),
            None => &NoRegistry,
        }
    }

    fn state(&self) -> MutexGuard<'_, Console> {
        lock(&self.state)
    }

    fn memory(&self) -> GuestMemoryAtomic<GuestMem> {
        lock(&self.mem).clone()
    }

    /// Handles one event of the vring thread's loop: a queue kick (or a queue coming up), the
    /// attach listener, the handshake timer, or a client. Pending input is offered to the guest
    /// after each, and the interactive client is read only while there is room for its input.
    pub fn dispatch(&self, token: u16, events: EventSet, vrings: &[VringRwLock]) {
        let reg = self.registry();
        let mem = self.memory();
        let ctx = Ctx {
            mem: &mem,
            event_idx: self.event_idx.load(Ordering::Relaxed),
            metrics: &self.metrics,
        };
        let mut guard = self.state();
        let Console {
            log,
            clients,
            input,
            scratch,
        } = &mut *guard;
        match token {
            // Input is offered below, after every event.
            RX_QUEUE => {}
            TX_QUEUE => {
                if let Some(tx) = vrings.get(usize::from(TX_QUEUE)) {
                    ctx.drain_output(tx, scratch, &mut |bytes| {
                        write_log(log, bytes, &self.metrics);
                        clients.broadcast(reg, bytes);
                    });
                }
            }
            ATTACH => clients.accept(reg),
            TIMER => clients.tick(reg),
            t if t >= FIRST_CLIENT => clients.on_event(reg, t, events, input),
            other => warn!(token = other, "event for an unknown token"),
        }
        if let Some(rx) = vrings.get(usize::from(RX_QUEUE)) {
            ctx.fill_input(rx, input);
        }
        clients.set_reading(reg, input.room() > 0);
    }
}

/// Appends guest output to the log, counting what happened.
fn write_log(log: &mut Log, bytes: &[u8], metrics: &Metrics) {
    let (written, error) = match log.write(bytes) {
        Ok(w) => (w, None),
        Err((w, e)) => (w, Some(e)),
    };
    Metrics::add(&metrics.log_bytes, written.bytes);
    Metrics::add(&metrics.log_rotations, written.rotations);
    if let Some(e) = error {
        let n = Metrics::bump(&metrics.log_errors);
        if should_log(n) {
            let cause = std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default();
            warn!(error = %cause, count = n, "{e}");
        }
    }
}

/// `struct virtio_console_config`, little endian: no size (no VIRTIO_CONSOLE_F_SIZE), one
/// port (no VIRTIO_CONSOLE_F_MULTIPORT, so the field is informative only), no emergency write.
fn config_space() -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[MAX_NR_PORTS_OFFSET..MAX_NR_PORTS_OFFSET + 4].copy_from_slice(&1u32.to_le_bytes());
    c
}

impl VhostUserBackend for ConsoleBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        let _g = self.span.enter();
        debug!(features = format_args!("{features:#x}"), "driver features");
        self.acked_features.store(features, Ordering::Relaxed);
    }

    /// CONFIG for the configuration space; MQ so the frontend asks how many queues there are
    /// (two; without MQ it would assume one).
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// Any window of the configuration space; the part of it beyond the end is left out, so an
    /// out-of-range request gets a short (possibly empty) answer, which the library turns into
    /// an error reply.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        vring::config_window(&self.config, offset, size)
    }

    /// Only `emerg_wr` is writable, and only with VIRTIO_CONSOLE_F_EMERG_WRITE, which we do
    /// not offer.
    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the virtio-console configuration space is read-only",
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

    /// Never fails: an error would end the vring thread, and with it the device.
    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        ward_worker::queue_thread::enter();
        let _g = self.span.enter();
        self.dispatch(device_event, evset, vrings);
        Ok(())
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
