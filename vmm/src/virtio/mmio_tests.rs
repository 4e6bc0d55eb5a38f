//! The virtio-mmio register state machine against a fake backend: what a driver, or a hostile
//! guest poking registers in any order, can make of it.

use std::sync::{Arc, Mutex};

use super::*;
use crate::virtio::regpage::RegisterPage;
use crate::virtio::VIRTIO_F_VERSION_1;

#[derive(Default)]
struct Calls {
    activated: Vec<(u64, Vec<Option<QueueSetup>>)>,
    resets: usize,
    kicks: Vec<usize>,
    /// InterruptStatus as the register page had it while the backend was starting.
    isr_while_starting: Vec<u32>,
}

struct Fake {
    features: u64,
    config: Vec<u8>,
    calls: Arc<Mutex<Calls>>,
    fail: bool,
    /// The page other vCPUs read, looked at from inside `activate`.
    page: Option<RegisterPage>,
}

impl Backend for Fake {
    fn device_features(&self) -> u64 {
        self.features
    }
    fn queue_num(&self) -> usize {
        2
    }
    fn config(&self) -> &[u8] {
        &self.config
    }
    fn kick(&self, index: usize) {
        self.calls.lock().unwrap().kicks.push(index);
    }
    fn activate(
        &mut self,
        _ram: &GuestRam,
        driver_features: u64,
        queues: &[Option<QueueSetup>],
    ) -> Result<(), crate::virtio::vhost_user::Error> {
        if let Some(p) = &self.page {
            let isr = p.load(reg::INTERRUPT_STATUS as usize);
            self.calls.lock().unwrap().isr_while_starting.push(isr);
        }
        if self.fail {
            return Err(crate::virtio::vhost_user::Error::NoQueues);
        }
        self.calls
            .lock()
            .unwrap()
            .activated
            .push((driver_features, queues.to_vec()));
        Ok(())
    }
    fn reset(&mut self) -> Result<(), crate::virtio::vhost_user::Error> {
        self.calls.lock().unwrap().resets += 1;
        Ok(())
    }
}

const FEATURES: u64 = VIRTIO_F_VERSION_1 | (1 << 9);

fn device(fail: bool) -> (VirtioMmio<Fake>, Arc<Mutex<Calls>>) {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let ram = Arc::new(GuestRam::new(16).unwrap());
    let fake = Fake {
        features: FEATURES,
        config: (1..=8).collect(),
        calls: calls.clone(),
        fail,
        page: None,
    };
    (VirtioMmio::new("vdt".into(), 2, fake, ram), calls)
}

fn r(d: &VirtioMmio<Fake>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(d: &mut VirtioMmio<Fake>, off: u64, v: u32) {
    d.write(off, &v.to_le_bytes());
}

/// The driver's side of initialisation, up to (not including) DRIVER_OK.
fn negotiate(d: &mut VirtioMmio<Fake>, features: u64) {
    w(d, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(d, reg::DRIVER_FEATURES_SEL, 0);
    w(d, reg::DRIVER_FEATURES, features as u32);
    w(d, reg::DRIVER_FEATURES_SEL, 1);
    w(d, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(
        d,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(d: &mut VirtioMmio<Fake>, q: u32, size: u32) {
    w(d, reg::QUEUE_SEL, q);
    w(d, reg::QUEUE_NUM, size);
    w(d, reg::QUEUE_DESC_LOW, 0x1000);
    w(d, reg::QUEUE_DRIVER_LOW, 0x2000);
    w(d, reg::QUEUE_DEVICE_LOW, 0x3000);
    w(d, reg::QUEUE_DEVICE_HIGH, 0);
    w(d, reg::QUEUE_READY, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_registers() {
    let (d, _) = device(false);
    assert_eq!(r(&d, reg::MAGIC), MAGIC);
    assert_eq!(r(&d, reg::VERSION), 2);
    assert_eq!(r(&d, reg::DEVICE_ID), 2);
    assert_eq!(r(&d, reg::QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
    assert_eq!(
        r(&d, reg::INTERRUPT_STATUS),
        0,
        "no interrupts before the device is live"
    );
}

#[test]
fn a_driver_brings_the_device_up() {
    let (mut d, calls) = device(false);
    w(&mut d, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&d, reg::DEVICE_FEATURES), (FEATURES >> 32) as u32);
    negotiate(&mut d, FEATURES);
    assert_ne!(r(&d, reg::STATUS) & status::FEATURES_OK, 0);
    setup_queue(&mut d, 0, 128);
    w(&mut d, reg::STATUS, ALL_OK);
    assert_eq!(r(&d, reg::STATUS), ALL_OK);
    assert_eq!(r(&d, reg::INTERRUPT_STATUS), INT_VRING);
    let c = calls.lock().unwrap();
    assert_eq!(c.activated.len(), 1);
    let (features, queues) = &c.activated[0];
    assert_eq!(*features, FEATURES);
    let q0 = queues[0].expect("queue 0 ready");
    assert_eq!(
        (q0.size, q0.desc, q0.avail, q0.used),
        (128, 0x1000, 0x2000, 0x3000)
    );
    assert!(queues[1].is_none(), "queue 1 was never made ready");
}

#[test]
fn features_the_device_lacks_or_no_version_1_are_refused() {
    for bad in [FEATURES | (1 << 40), 1 << 9] {
        let (mut d, calls) = device(false);
        negotiate(&mut d, bad);
        assert_eq!(r(&d, reg::STATUS) & status::FEATURES_OK, 0, "{bad:#x}");
        setup_queue(&mut d, 0, 64);
        w(&mut d, reg::STATUS, ALL_OK);
        assert_eq!(r(&d, reg::STATUS) & status::DRIVER_OK, 0);
        assert!(calls.lock().unwrap().activated.is_empty());
    }
}

#[test]
fn queues_cannot_change_once_live_and_bad_sizes_are_dropped() {
    let (mut d, calls) = device(false);
    negotiate(&mut d, FEATURES);
    setup_queue(&mut d, 0, 100); // not a power of two
    setup_queue(&mut d, 1, 512); // above QueueNumMax
    w(&mut d, reg::STATUS, ALL_OK);
    {
        let c = calls.lock().unwrap();
        assert!(
            c.activated[0].1.iter().all(Option::is_none),
            "bad sizes must not start queues"
        );
    }
    // Live now: queue writes are ignored (QueueReady keeps what it had).
    w(&mut d, reg::QUEUE_SEL, 0);
    assert_eq!(r(&d, reg::QUEUE_READY), 1);
    w(&mut d, reg::QUEUE_NUM, 64);
    w(&mut d, reg::QUEUE_READY, 0);
    assert_eq!(r(&d, reg::QUEUE_READY), 1);
}

#[test]
fn a_failing_backend_asks_for_a_reset() {
    let (mut d, _) = device(true);
    negotiate(&mut d, FEATURES);
    setup_queue(&mut d, 0, 64);
    w(&mut d, reg::STATUS, ALL_OK);
    assert_ne!(r(&d, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(r(&d, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn reset_stops_the_backend_and_clears_state() {
    let (mut d, calls) = device(false);
    negotiate(&mut d, FEATURES);
    setup_queue(&mut d, 0, 64);
    w(&mut d, reg::STATUS, ALL_OK);
    w(&mut d, reg::STATUS, 0);
    assert_eq!(r(&d, reg::STATUS), 0);
    assert_eq!(r(&d, reg::QUEUE_READY), 0);
    assert_eq!(calls.lock().unwrap().resets, 1);
    // And it comes up again.
    negotiate(&mut d, FEATURES);
    setup_queue(&mut d, 0, 64);
    w(&mut d, reg::STATUS, ALL_OK);
    assert_eq!(calls.lock().unwrap().activated.len(), 2);
}

#[test]
fn hostile_accesses_are_harmless() {
    let (mut d, calls) = device(false);
    // Config space: in range, partly out of range, far out of range, at the very top.
    let mut b = [0u8; 4];
    d.read(reg::CONFIG + 6, &mut b);
    assert_eq!(b, [7, 8, 0, 0]);
    d.read(u64::MAX - 1, &mut b);
    assert_eq!(b, [0; 4]);
    let mut big = [0xffu8; 8];
    d.read(reg::CONFIG, &mut big);
    assert_eq!(big, [1, 2, 3, 4, 5, 6, 7, 8]);
    // Odd access sizes and unknown registers.
    let mut one = [0xffu8; 1];
    d.read(reg::STATUS, &mut one);
    assert_eq!(one, [0]);
    d.write(reg::STATUS, &[0xff]);
    d.write(0x0f0, &7u32.to_le_bytes());
    d.write(reg::CONFIG + 1_000_000, &[1, 2, 3]);
    // Selecting a queue that does not exist.
    w(&mut d, reg::QUEUE_SEL, 0xffff_ffff);
    assert_eq!(r(&d, reg::QUEUE_NUM_MAX), 0);
    w(&mut d, reg::QUEUE_NUM, 64);
    w(&mut d, reg::QUEUE_READY, 1);
    // A notify that no ioeventfd caught, for a queue that doesn't exist.
    w(&mut d, reg::QUEUE_NOTIFY, 7);
    assert_eq!(calls.lock().unwrap().kicks, vec![7]);
    // DRIVER_OK without FEATURES_OK does nothing.
    w(&mut d, reg::STATUS, status::DRIVER_OK);
    assert!(calls.lock().unwrap().activated.is_empty());
}

/// Every register as the page has it equals what a read that exited would return.
fn assert_page_mirrors(d: &VirtioMmio<Fake>, page: &RegisterPage, when: &str) {
    for off in (0..reg::CONFIG).step_by(4) {
        assert_eq!(
            page.load(off as usize),
            r(d, off),
            "register {off:#x} {when}"
        );
    }
    for i in 0..16u64 {
        let mut b = [0u8];
        d.read(reg::CONFIG + i, &mut b);
        assert_eq!(
            page.byte((reg::CONFIG + i) as usize),
            b[0],
            "config byte {i} {when}"
        );
    }
}

#[test]
fn the_register_page_follows_every_write() {
    let (mut d, calls) = device(false);
    let page = RegisterPage::new().unwrap();
    d.attach_page(page.clone());
    assert_page_mirrors(&d, &page, "when attached");
    assert_eq!(page.load(reg::MAGIC as usize), MAGIC);
    assert_eq!(
        page.byte(reg::CONFIG as usize + 7),
        8,
        "the configuration space"
    );

    // Selectors change what other registers say: the page follows each.
    w(&mut d, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        page.load(reg::DEVICE_FEATURES as usize),
        (FEATURES >> 32) as u32
    );
    w(&mut d, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(page.load(reg::DEVICE_FEATURES as usize), FEATURES as u32);
    w(&mut d, reg::QUEUE_SEL, 7);
    assert_eq!(page.load(reg::QUEUE_NUM_MAX as usize), 0, "no queue 7");
    assert_page_mirrors(&d, &page, "with queue 7 selected");

    negotiate(&mut d, FEATURES);
    assert_page_mirrors(&d, &page, "after negotiation");
    setup_queue(&mut d, 0, 64);
    assert_eq!(page.load(reg::QUEUE_READY as usize), 1);
    setup_queue(&mut d, 1, 64);
    assert_eq!(page.load(reg::INTERRUPT_STATUS as usize), 0, "not live yet");
    w(&mut d, reg::STATUS, ALL_OK);
    assert_eq!(calls.lock().unwrap().activated.len(), 1);
    assert_eq!(page.load(reg::STATUS as usize), ALL_OK);
    assert_eq!(page.load(reg::INTERRUPT_STATUS as usize), INT_VRING);
    assert_page_mirrors(&d, &page, "once live");

    // A reset clears what the driver set, in the page too.
    w(&mut d, reg::STATUS, 0);
    assert_eq!(page.load(reg::STATUS as usize), 0);
    assert_eq!(page.load(reg::INTERRUPT_STATUS as usize), 0);
    assert_eq!(page.load(reg::QUEUE_READY as usize), 0);
    assert_page_mirrors(&d, &page, "after a reset");

    // Writes a hostile guest may make (odd sizes, unknown registers, the configuration
    // space) leave the page as a read would see the registers.
    d.write(reg::STATUS, &[0xff]);
    w(&mut d, 0x0f8, 0xdead_beef);
    w(&mut d, reg::CONFIG, 0xdead_beef);
    assert_page_mirrors(&d, &page, "after odd writes");
}

#[test]
fn while_the_backend_starts_the_page_already_says_used_buffer() {
    // Another vCPU may take the worker's first interrupt while the core is still starting the
    // other queues: it must read "used buffer" then. A start that fails takes it back.
    for fail in [false, true] {
        let (mut d, calls) = device(fail);
        let page = RegisterPage::new().unwrap();
        d.backend.page = Some(page.clone());
        d.attach_page(page.clone());
        negotiate(&mut d, FEATURES);
        setup_queue(&mut d, 0, 64);
        w(&mut d, reg::STATUS, ALL_OK);
        assert_eq!(calls.lock().unwrap().isr_while_starting, [INT_VRING]);
        let after = if fail { 0 } else { INT_VRING };
        assert_eq!(
            page.load(reg::INTERRUPT_STATUS as usize),
            after,
            "fail={fail}"
        );
        assert_page_mirrors(&d, &page, "after the start");
    }
}
