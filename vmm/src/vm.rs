//! The KVM VM: in-kernel irqchip and PIT, guest RAM slots, and the eventfds that connect
//! devices to KVM (ioeventfds for queue notifications, irqfds for interrupts).

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestRam;

/// Three pages below the LAPIC for KVM's real-mode TSS and identity map (Intel VMX needs them).
const TSS_ADDR: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    #[error("Cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("Cannot set up {0}")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    #[error("Cannot register guest memory with KVM")]
    Memory(#[source] kvm_ioctls::Error),
    #[error("Cannot register an {0} with KVM")]
    Eventfd(&'static str, #[source] kvm_ioctls::Error),
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
}

impl Vm {
    /// The VM on `kvm` (an open `/dev/kvm`), or on a `/dev/kvm` opened here.
    pub fn new(ram: &GuestRam, kvm: Option<std::fs::File>) -> Result<Self, Error> {
        let kvm = match kvm {
            // SAFETY: the descriptor is an open /dev/kvm that we own (the launcher opened it
            // and handed it over); Kvm takes ownership of it.
            Some(f) => unsafe {
                <Kvm as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(f))
            },
            None => Kvm::new().map_err(Error::OpenKvm)?,
        };
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(Error::ApiVersion(v));
        }
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::Ioeventfd, "IOEVENTFD"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::Pit2, "PIT2"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(Error::CreateVm)?;
        if kvm.check_extension(Cap::SetTssAddr) {
            fd.set_tss_address(TSS_ADDR)
                .map_err(|e| Error::Setup("the TSS address", e))?;
        }
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            fd.set_identity_map_address(IDENTITY_MAP_ADDR)
                .map_err(|e| Error::Setup("the identity map address", e))?;
        }
        fd.create_irq_chip()
            .map_err(|e| Error::Setup("the in-kernel irqchip", e))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|e| Error::Setup("the in-kernel PIT", e))?;
        for (slot, r) in ram.mem.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region maps guest RAM that lives as long as the VM (the GuestRam is
            // kept alive by the core until the process exits) and the slots do not overlap.
            unsafe { fd.set_user_memory_region(region) }.map_err(Error::Memory)?;
        }
        Ok(Vm { kvm, fd })
    }

    /// Raises IOAPIC pin `gsi` whenever `evt` is written.
    pub fn irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| Error::Eventfd("irqfd", e))
    }

    /// Signals `evt` when the guest writes `value` (32 bits) at MMIO address `addr`.
    pub fn ioeventfd(&self, evt: &EventFd, addr: u64, value: u32) -> Result<(), Error> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), value)
            .map_err(|e| Error::Eventfd("ioeventfd", e))
    }
}
