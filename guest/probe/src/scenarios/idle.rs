//! `idle:MS`: keep the VM alive for MS milliseconds (by the probe's TSC estimate) without
//! touching any device, so a test can look at or act on the VMM's processes while the guest
//! runs. `idle:0` idles forever.

use crate::scenarios::Scen;
use crate::time::Deadline;

pub fn run(sc: &Scen) {
    let Some(ms) = sc.num(1) else {
        sc.fail("usage idle:MS");
        return;
    };
    sc.out().s("started ms=").d(ms).end();
    let deadline = Deadline::after_ms(ms);
    while ms == 0 || !deadline.expired() {
        core::hint::spin_loop();
    }
    sc.out().s("OK").end();
}
