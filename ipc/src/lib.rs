//! Messages between ward's processes.
//!
//! Every process pair gets its own channel and its own message enums (one socket per peer and
//! capability). A [`channel::Channel`] carries one JSON document per `SOCK_SEQPACKET` datagram,
//! with file descriptors beside it as `SCM_RIGHTS`; messages name those descriptors by their
//! index in the datagram's descriptor list ([`FdIndex`]), never by number.
//!
//! The protocol between the launcher and the core ([`core`]):
//!
//! 1. the launcher creates a socketpair and starts `ward-vmm --control-fd N`;
//! 2. it sends [`core::LauncherToCore::Start`] with the VM's configuration and the descriptors it
//!    names: kernel, initrd, serial output, and one connected vhost-user socket per device;
//! 3. the core answers [`core::CoreToLauncher::Started`] once its vCPUs run, or
//!    [`core::CoreToLauncher::Exited`] with the reason when the VM ends (guest reset, error, or a
//!    worker that went away), and then exits.
//!
//! Workers (block today) take their configuration on the command line, with their descriptors
//! inherited: they need nothing else from the launcher.

pub mod channel;
pub mod core;
pub mod log;

use serde::{Deserialize, Serialize};

/// Position of a descriptor in the list that travels with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdIndex(pub usize);
