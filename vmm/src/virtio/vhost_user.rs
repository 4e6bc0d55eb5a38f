//! The vhost-user frontend for one device: the connection to its worker, feature negotiation,
//! and handing over guest memory, vrings, kick and call eventfds when the driver is ready.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use super::watchdog::{Watchdog, EXCHANGE_TIMEOUT};
use crate::memory::GuestRam;

/// Bit 30 of the feature word: the backend speaks vhost-user protocol features.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Most queues the core offers per device.
pub const MAX_QUEUES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vhost-user request {0} failed")]
    Request(&'static str, #[source] vhost::Error),
    #[error("Backend lacks vhost-user protocol features")]
    NoProtocolFeatures,
    #[error("Backend lacks the CONFIG protocol feature")]
    NoConfig,
    #[error("Backend offers no queues")]
    NoQueues,
    #[error("Backend returned {got} bytes of configuration space instead of {want}")]
    ConfigSize { got: usize, want: usize },
    #[error("Vring at guest address {0:#x} ({1} bytes) is not inside guest RAM")]
    RingOutsideRam(u64, u64),
    #[error("Cannot create an eventfd or socket handle")]
    EventFd(#[source] std::io::Error),
}

/// One queue as the driver configured it.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSetup {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

pub struct VhostUserDevice {
    frontend: Frontend,
    watchdog: Arc<Watchdog>,
    watch_id: usize,
    /// Features the backend offers, as the driver may see them.
    pub device_features: u64,
    pub queue_num: usize,
    pub config: Vec<u8>,
    /// One eventfd per queue: KVM signals it when the guest writes QueueNotify.
    pub kicks: Vec<EventFd>,
    /// Signalled by the worker; an irqfd on the device's IRQ line.
    pub call: EventFd,
    protocol_features: bool,
    /// Queues handed to the backend, to stop on reset.
    started: Vec<usize>,
}

/// The core's address of `len` bytes of guest RAM at `gpa`, which must be contiguous in one
/// region.
fn host_addr(ram: &GuestRam, gpa: u64, len: u64) -> Result<u64, Error> {
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let bad = || Error::RingOutsideRam(gpa, len);
    let slice = ram
        .mem
        .get_slice(GuestAddress(gpa), usize::try_from(len).map_err(|_| bad())?)
        .map_err(|_| bad())?;
    Ok(slice.ptr_guard().as_ptr() as u64)
}

fn req<T>(name: &'static str, r: vhost::Result<T>) -> Result<T, Error> {
    r.map_err(|e| Error::Request(name, e))
}

impl VhostUserDevice {
    /// Performs the connection-time handshake and caches the configuration space.
    pub fn connect(
        stream: UnixStream,
        config_size: u32,
        watchdog: Arc<Watchdog>,
    ) -> Result<Self, Error> {
        let watch_id = watchdog.register(stream.try_clone().map_err(Error::EventFd)?);
        let armed = watchdog.arm(watch_id, EXCHANGE_TIMEOUT);
        let mut frontend = Frontend::from_stream(stream, MAX_QUEUES as u64);
        req("SET_OWNER", frontend.set_owner())?;
        let features = req("GET_FEATURES", frontend.get_features())?;
        if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(Error::NoProtocolFeatures);
        }
        let offered = req("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
        if !offered.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::NoConfig);
        }
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        let acked = offered & wanted;
        req(
            "SET_PROTOCOL_FEATURES",
            frontend.set_protocol_features(acked),
        )?;
        let queue_num = if acked.contains(VhostUserProtocolFeatures::MQ) {
            let n = req("GET_QUEUE_NUM", frontend.get_queue_num())?;
            usize::try_from(n).unwrap_or(MAX_QUEUES).min(MAX_QUEUES)
        } else {
            1
        };
        if queue_num == 0 {
            return Err(Error::NoQueues);
        }
        let zeros = vec![0u8; config_size as usize];
        let (_, config) = req(
            "GET_CONFIG",
            frontend.get_config(0, config_size, VhostUserConfigFlags::WRITABLE, &zeros),
        )?;
        if config.len() != zeros.len() {
            return Err(Error::ConfigSize {
                got: config.len(),
                want: zeros.len(),
            });
        }
        let kicks = (0..queue_num)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let call = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        drop(armed);
        Ok(VhostUserDevice {
            frontend,
            watchdog,
            watch_id,
            device_features: features & !VHOST_USER_F_PROTOCOL_FEATURES,
            queue_num,
            config,
            kicks,
            call,
            protocol_features: true,
            started: Vec::new(),
        })
    }

    /// Hands guest memory and the ready queues to the backend and starts them.
    pub fn activate(
        &mut self,
        ram: &GuestRam,
        driver_features: u64,
        queues: &[Option<QueueSetup>],
    ) -> Result<(), Error> {
        let _armed = self.watchdog.arm(self.watch_id, EXCHANGE_TIMEOUT);
        let mut features = driver_features;
        if self.protocol_features {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        req("SET_FEATURES", self.frontend.set_features(features))?;
        req(
            "SET_MEM_TABLE",
            self.frontend.set_mem_table(&ram.vhost_regions()),
        )?;
        for (i, q) in queues.iter().enumerate() {
            let Some(q) = q else { continue };
            // vhost-user speaks of vrings by the frontend's own virtual addresses, which the
            // backend translates through the memory table. The guest chose these addresses:
            // each ring must lie entirely inside guest RAM.
            let size = u64::from(q.size);
            let addrs = VringConfigData {
                queue_max_size: q.size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: host_addr(ram, q.desc, 16 * size)?,
                used_ring_addr: host_addr(ram, q.used, 6 + 8 * size)?,
                avail_ring_addr: host_addr(ram, q.avail, 6 + 2 * size)?,
                log_addr: None,
            };
            req("SET_VRING_NUM", self.frontend.set_vring_num(i, q.size))?;
            req("SET_VRING_ADDR", self.frontend.set_vring_addr(i, &addrs))?;
            req("SET_VRING_BASE", self.frontend.set_vring_base(i, 0))?;
            req(
                "SET_VRING_CALL",
                self.frontend.set_vring_call(i, &self.call),
            )?;
            req(
                "SET_VRING_KICK",
                self.frontend.set_vring_kick(i, &self.kicks[i]),
            )?;
            req("SET_VRING_ENABLE", self.frontend.set_vring_enable(i, true))?;
            self.started.push(i);
        }
        Ok(())
    }

    /// Stops every started queue (the driver reset the device).
    pub fn reset(&mut self) -> Result<(), Error> {
        let _armed = self.watchdog.arm(self.watch_id, EXCHANGE_TIMEOUT);
        for i in std::mem::take(&mut self.started) {
            req("SET_VRING_ENABLE", self.frontend.set_vring_enable(i, false))?;
            req("GET_VRING_BASE", self.frontend.get_vring_base(i))?;
        }
        Ok(())
    }
}
