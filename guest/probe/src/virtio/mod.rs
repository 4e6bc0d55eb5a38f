//! Virtio 1.x over MMIO: the transport registers ([`mmio`]), the split virtqueue
//! ([`queue`]), and the block ([`blk`]) and console ([`console`]) drivers.

pub mod blk;
pub mod console;
pub mod mmio;
pub mod queue;
