//! The KVM VM: in-kernel irqchip and PIT, guest RAM slots, and the eventfds that connect
//! devices to KVM (ioeventfds for queue notifications, irqfds for interrupts).

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use tracing::warn;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestRam;
use crate::virtio::regpage::RegisterPage;

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
    /// The next free memory slot (guest RAM takes the first ones).
    next_slot: u32,
    /// Whether KVM maps memory read-only for the guest (`KVM_CAP_READONLY_MEM`).
    readonly_mem: bool,
    /// Host memory mapped into the guest besides its RAM; declared after `fd`, so it outlives
    /// the VM's slots.
    pages: Vec<RegisterPage>,
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
        // Asked of the VM: for some VM types only its answer is accurate.
        let readonly_mem = fd.check_extension(Cap::ReadonlyMem);
        Ok(Vm {
            next_slot: ram.mem.num_regions() as u32,
            readonly_mem,
            kvm,
            fd,
            pages: Vec::new(),
        })
    }

    /// Maps `page` at guest address `gpa`, read-only for the guest: reads are served from it
    /// without an exit, writes exit as MMIO. Returns false, mapping nothing, where KVM cannot
    /// map read-only memory.
    pub fn map_readonly(&mut self, gpa: u64, page: &RegisterPage) -> bool {
        if !self.readonly_mem {
            return false;
        }
        let map = page.region();
        let region = kvm_userspace_memory_region {
            slot: self.next_slot,
            guest_phys_addr: gpa,
            memory_size: map.size() as u64,
            userspace_addr: map.as_ptr() as u64,
            flags: KVM_MEM_READONLY,
        };
        // SAFETY: the mapping is kept alive in `self.pages`, which is dropped after the VM's
        // descriptor; the slot is new and the caller places it in the MMIO hole, where no RAM
        // slot lies.
        if let Err(e) = unsafe { self.fd.set_user_memory_region(region) } {
            // The registers then exit on every access, as without the capability.
            warn!(error = %e, gpa = format_args!("{gpa:#x}"), "cannot map a register page");
            return false;
        }
        self.next_slot += 1;
        self.pages.push(page.clone());
        true
    }

    /// Raises IOAPIC pin `gsi` whenever `evt` is written.
    pub fn irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| Error::Eventfd("irqfd", e))
    }

    /// Signals `evt` when the guest writes anything at MMIO address `addr`, in the kernel.
    /// Returns false, registering nothing, where KVM cannot match a write of any length
    /// (`KVM_CAP_IOEVENTFD_NO_LENGTH`): such writes then exit.
    pub fn ioeventfd_any(&self, evt: &EventFd, addr: u64) -> Result<bool, Error> {
        if !self.fd.check_extension(Cap::IoeventfdNoLength) {
            return Ok(false);
        }
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| Error::Eventfd("ioeventfd", e))?;
        Ok(true)
    }

    /// Signals `evt` when the guest writes `value` (32 bits) at MMIO address `addr`.
    pub fn ioeventfd(&self, evt: &EventFd, addr: u64, value: u32) -> Result<(), Error> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), value)
            .map_err(|e| Error::Eventfd("ioeventfd", e))
    }
}
