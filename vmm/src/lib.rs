//! ward's core: one process per VM that owns the KVM VM and its vCPUs, loads the guest, emulates
//! the few devices that must be in the core (serial, i8042 reset, ACPI sleep register) and the
//! virtio-mmio transport, and connects each virtio device to its worker over vhost-user. It never
//! opens a disk image or any other file: everything arrives as a descriptor from the launcher.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod layout;
pub mod memory;
pub mod ratelimit;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, Mutex};

use tracing::{info, info_span};
use vm_memory::GuestAddress;
use ward_ipc::core::{CoreConfig, ExitReason};
use ward_policy::seccomp::{self, Profile};

use crate::devices::{legacy, serial, Bus};
use crate::exit::ExitSignal;
use crate::virtio::mmio::VirtioMmio;
use crate::virtio::regpage::RegisterPage;
use crate::virtio::vhost_user::VhostUserDevice;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid configuration: {0}")]
    Config(String),
    #[error("Guest memory")]
    Memory(#[from] memory::Error),
    #[error("KVM")]
    Vm(#[from] vm::Error),
    #[error("vCPU")]
    Vcpu(#[from] vcpu::Error),
    #[error("ACPI tables")]
    Acpi(#[from] acpi::Error),
    #[error("Loading the guest")]
    Boot(#[from] boot::Error),
    #[error("Device {0}")]
    Device(String, #[source] virtio::vhost_user::Error),
    #[error("Cannot map a register page: {0}")]
    Page(String),
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("Seccomp")]
    Seccomp(#[from] seccomp::Error),
    #[error("Cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error("Event loop")]
    EventLoop(#[source] std::io::Error),
}

/// The descriptors a [`CoreConfig`] names, taken out of the start message.
pub struct CoreFds {
    /// `/dev/kvm`, opened by the launcher (a confined core cannot open it); `None`: open it.
    pub kvm: Option<File>,
    pub kernel: File,
    pub initrd: Option<File>,
    pub serial_out: File,
    pub serial_in: Option<File>,
    /// One connected vhost-user socket per device, in `config.devices` order.
    pub devices: Vec<OwnedFd>,
}

/// The kernel command line the guest gets: the user's, then the virtio-mmio devices in the
/// form Linux's `virtio_mmio.device=` and the probe guest read (ACPI announces them too).
pub fn guest_cmdline(user: &str, devices: usize) -> Result<String, Error> {
    let mut s = user.trim().to_string();
    for i in 0..devices {
        let (base, irq) = layout::virtio_slot(i)
            .ok_or_else(|| Error::Config(format!("too many devices ({devices})")))?;
        s.push_str(&format!(
            " virtio_mmio.device={}K@{base:#x}:{irq}",
            layout::VIRTIO_MMIO_SIZE >> 10
        ));
    }
    Ok(s)
}

/// Builds the VM and runs it to its end. The caller reports the reason to the launcher.
pub fn run(
    cfg: &CoreConfig,
    mut fds: CoreFds,
    on_started: impl FnOnce(),
    control: Option<&ward_ipc::channel::Channel>,
) -> Result<ExitReason, Error> {
    let span = info_span!("vm", name = %cfg.name);
    let _g = span.enter();
    if cfg.vcpus == 0 {
        return Err(Error::Config("at least one vCPU is needed".into()));
    }
    if fds.devices.len() != cfg.devices.len() {
        return Err(Error::Config("device sockets missing".into()));
    }

    let ram = Arc::new(memory::GuestRam::new(cfg.memory_mib)?);
    let mut vm = vm::Vm::new(&ram, fds.kvm.take())?;
    let exit = Arc::new(ExitSignal::new().map_err(Error::EventFd)?);

    // Every exchange with a worker runs against a deadline (see virtio::watchdog).
    let watchdog = Arc::new(virtio::watchdog::Watchdog::default());
    let mode = cfg.seccomp;
    let wd_exit = exit.clone();
    watchdog
        .spawn(move || {
            if let Err(e) = seccomp::apply_to_thread(Profile::CoreMain, mode) {
                wd_exit.signal(ExitReason::Error(format!("watchdog seccomp: {e}")));
            }
        })
        .map_err(Error::Thread)?;

    // Devices: connect to each worker, then wire its queues and interrupt into KVM.
    let mut virtio = Vec::new();
    let mut watch = Vec::new();
    // InterruptACK's ioeventfds: written by KVM, read by nobody.
    let mut acks = Vec::new();
    for (i, (dev, sock)) in cfg.devices.iter().zip(fds.devices.drain(..)).enumerate() {
        let (base, irq) = layout::virtio_slot(i)
            .ok_or_else(|| Error::Config(format!("too many devices ({})", cfg.devices.len())))?;
        let stream = UnixStream::from(sock);
        let hup = stream
            .try_clone()
            .map_err(|e| Error::Config(format!("device {}: {e}", dev.name)))?;
        let backend =
            VhostUserDevice::connect(stream, virtio::config_size(dev.kind), watchdog.clone())
                .map_err(|e| Error::Device(dev.name.clone(), e))?;
        for (q, kick) in backend.kicks.iter().enumerate() {
            vm.ioeventfd(kick, base + virtio::mmio::QUEUE_NOTIFY_OFFSET, q as u32)?;
        }
        vm.irqfd(&backend.call, irq)?;
        let queues = backend.queue_num;
        let mut mmio =
            VirtioMmio::new(dev.name.clone(), dev.kind.virtio_id(), backend, ram.clone());
        // The registers as a read-only page, and InterruptACK ending in the kernel (see
        // virtio::regpage); where KVM cannot map the page, every access exits instead.
        let page = RegisterPage::new().map_err(|e| Error::Page(e.to_string()))?;
        let mapped = vm.map_readonly(base, &page);
        let registers = if mapped {
            "read-only page"
        } else {
            "exit on every access"
        };
        info!(device = %dev.name, base = format_args!("{base:#x}"), irq, queues, registers, "device connected");
        if mapped {
            // The device keeps the page too: vCPU threads, which hold the devices, may outlive
            // the Vm for the moment the process takes to exit.
            mmio.attach_page(page);
            let ack = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
            if vm.ioeventfd_any(&ack, base + virtio::mmio::INTERRUPT_ACK_OFFSET)? {
                acks.push(ack);
            }
        }
        virtio.push(Arc::new(Mutex::new(mmio)));
        watch.push((dev.name.clone(), hup));
    }

    let serial_irq =
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.irqfd(&serial_irq, layout::SERIAL_IRQ)?;

    let cmdline = guest_cmdline(&cfg.cmdline, cfg.devices.len())?;
    let mmio: Vec<acpi::MmioDevice> = (0..cfg.devices.len())
        .filter_map(layout::virtio_slot)
        .map(|(base, irq)| acpi::MmioDevice {
            base,
            size: layout::VIRTIO_MMIO_SIZE,
            irq,
        })
        .collect();
    let rsdp = acpi::write_acpi_tables(
        &ram.mem,
        GuestAddress(layout::ACPI_START),
        layout::ACPI_MAX,
        &acpi::AcpiConfig {
            vcpus: cfg.vcpus,
            virtio_mmio: &mmio,
        },
    )?;
    let entry = boot::load(
        &ram.mem,
        boot::BootInputs {
            kernel: &mut fds.kernel,
            initrd: fds.initrd.as_mut(),
            cmdline: &cmdline,
            rsdp: Some(rsdp),
        },
    )?;
    info!(?entry, cmdline = %cmdline, "guest loaded");

    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        vcpus.push(vcpu::Vcpu::new(&vm.kvm, &vm.fd, id, cfg.vcpus)?);
    }
    vcpus[0].set_boot_regs(&ram.mem, entry)?;

    let bus = Arc::new(Bus {
        serial: Mutex::new(serial::Serial::new(serial_irq, fds.serial_out)),
        i8042: Mutex::new(legacy::I8042::new(exit.clone())),
        sleep: legacy::SleepControl(exit.clone()),
        virtio,
        exit: exit.clone(),
        virtio_exits: Default::default(),
    });

    // Each vCPU thread confines itself, then waits until all are confined and the main
    // thread is too, before the guest runs a single instruction.
    let start = Arc::new(Barrier::new(vcpus.len() + 1));
    let mut threads = Vec::new();
    for v in vcpus {
        let bus = bus.clone();
        let start = start.clone();
        let exit = exit.clone();
        let mode = cfg.seccomp;
        let name = cfg.name.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{}", v.id))
            .spawn(move || {
                let confined = seccomp::apply_to_thread(Profile::CoreVcpu, mode);
                start.wait();
                match confined {
                    Ok(()) => v.run(bus, &name),
                    Err(e) => exit.signal(ExitReason::Error(format!("vCPU seccomp: {e}"))),
                }
            })
            .map_err(Error::Thread)?;
        threads.push(t);
    }
    let confined = seccomp::apply_to_thread(Profile::CoreMain, cfg.seccomp);
    start.wait();
    confined?;
    on_started();
    info!(vcpus = cfg.vcpus, memory_mib = cfg.memory_mib, "VM running");

    let reason = event_loop::run(event_loop::Inputs {
        exit: &exit,
        bus: &bus,
        serial_in: fds.serial_in.as_ref(),
        watch: &watch,
        control,
    })
    .map_err(Error::EventLoop)?;
    info!(
        reads = bus.virtio_exits.reads.load(Ordering::Relaxed),
        writes = bus.virtio_exits.writes.load(Ordering::Relaxed),
        "virtio register accesses that exited to the core"
    );
    // vCPU threads are not joined: the process exits next, which stops them wherever they are.
    drop(threads);
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_lists_devices() {
        assert_eq!(
            guest_cmdline(" console=ttyS0 ", 2).unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert!(guest_cmdline("", 40).is_err());
    }
}
