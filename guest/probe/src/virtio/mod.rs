//! Virtio 1.x over MMIO: the transport registers ([`mmio`]), the split virtqueue
//! ([`queue`]), and the block ([`blk`]), console ([`console`]) and network
//! ([`net`]) drivers.

pub mod blk;
pub mod console;
pub mod mmio;
pub mod net;
pub mod queue;
