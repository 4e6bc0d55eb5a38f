//! Polled output on the 8250/16550 UART at I/O port 0x3f8 (COM1).
//!
//! Registers (offset from the base port): 0 THR (transmit holding, write) /
//! divisor latch low when LCR.DLAB=1, 1 IER / divisor high, 2 FCR, 3 LCR, 4 MCR,
//! 5 LSR. We only transmit, never enable UART interrupts, and wait for LSR.THRE
//! (transmit holding register empty, bit 5) before each byte. Emulated UARTs set
//! THRE immediately; the wait is bounded so a missing UART (reads 0xff) cannot hang.

use crate::cpu::{inb, outb};
use crate::sync::SpinLock;

const COM1: u16 = 0x3f8;
const THR: u16 = 0;
const IER: u16 = 1;
const DLL: u16 = 0;
const DLM: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THRE: u8 = 1 << 5;

/// Whole lines are written under this lock so that APs and the BSP never
/// interleave characters.
static LOCK: SpinLock = SpinLock::new();

pub fn init() {
    outb(COM1 + IER, 0x00); // no UART interrupts
    outb(COM1 + LCR, 0x80); // DLAB=1: access the divisor latch
    outb(COM1 + DLL, 0x01); // divisor 1 = 115200 baud
    outb(COM1 + DLM, 0x00);
    outb(COM1 + LCR, 0x03); // 8 data bits, no parity, 1 stop bit, DLAB=0
    outb(COM1 + FCR, 0xc7); // enable and clear FIFOs
    outb(COM1 + MCR, 0x03); // DTR | RTS, OUT2 clear (no IRQ line)
}

fn put(b: u8) {
    for _ in 0..100_000 {
        if inb(COM1 + LSR) & LSR_THRE != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1 + THR, b);
}

/// Writes bytes atomically with respect to other CPUs.
pub fn write(bytes: &[u8]) {
    let _guard = LOCK.lock(50_000_000);
    for &b in bytes {
        put(b);
    }
}

const RBR: u16 = 0;
const LSR_DR: u8 = 1 << 0;

/// One received byte, if the UART has one (LSR.DR, "data ready").
pub fn try_get() -> Option<u8> {
    if inb(COM1 + LSR) & LSR_DR != 0 {
        Some(inb(COM1 + RBR))
    } else {
        None
    }
}
