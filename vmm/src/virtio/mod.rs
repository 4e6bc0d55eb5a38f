//! Virtio devices as the core sees them: a virtio-mmio transport in front of a vhost-user
//! backend that lives in a worker process.

pub mod mmio;
pub mod regpage;
pub mod vhost_user;
pub mod watchdog;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Size of each device kind's configuration space that the core caches.
pub fn config_size(kind: ward_ipc::core::DeviceKind) -> u32 {
    match kind {
        ward_ipc::core::DeviceKind::Block => {
            std::mem::size_of::<virtio_bindings::virtio_blk::virtio_blk_config>() as u32
        }
        // struct virtio_console_config: cols, rows (u16), max_nr_ports, emerg_wr (u32).
        ward_ipc::core::DeviceKind::Console => 12,
        ward_ipc::core::DeviceKind::Net => {
            std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_config>() as u32
        }
    }
}
