//! Virtio 1.x over MMIO: the transport registers ([`mmio`]), the split virtqueue
//! ([`queue`]) and the block device driver ([`blk`]).

pub mod blk;
pub mod mmio;
pub mod queue;
