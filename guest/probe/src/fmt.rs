//! Tiny line formatter (no core::fmt: it is large and pulls in code we cannot
//! vouch for on a no-SSE build).
//!
//! Usage: `line().s("PROBE READY mem=").d(mem).end();`. A [`Line`] collects up to
//! `CAP` bytes and `end` appends "\n" and sends the whole line to the serial port
//! in one go. Overlong lines are truncated, never split. Only printable ASCII is
//! emitted; other bytes from untrusted sources are replaced by '?'.

use core::mem::MaybeUninit;

use crate::serial;

const CAP: usize = 1024;

pub struct Line {
    buf: [MaybeUninit<u8>; CAP],
    len: usize,
}

/// A new, empty line. The buffer is left uninitialised: there is no need to
/// zero 1 KiB per line, which is slow when the guest runs in KVM's instruction
/// emulator (PVM).
pub fn line() -> Line {
    Line {
        buf: [MaybeUninit::uninit(); CAP],
        len: 0,
    }
}

impl Line {
    fn push(&mut self, b: u8) {
        // Keep one byte for the trailing newline.
        if self.len < CAP - 1 {
            self.buf[self.len] = MaybeUninit::new(b);
            self.len += 1;
        }
    }

    /// Appends a string literal.
    pub fn s(&mut self, s: &str) -> &mut Self {
        self.b(s.as_bytes())
    }

    /// Appends bytes, replacing anything but printable ASCII with '?'.
    pub fn b(&mut self, bytes: &[u8]) -> &mut Self {
        for &c in bytes {
            self.push(if (0x20..0x7f).contains(&c) { c } else { b'?' });
        }
        self
    }

    /// Appends an unsigned decimal number.
    pub fn d(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &c in &tmp[i..] {
            self.push(c);
        }
        self
    }

    /// Appends a lowercase hexadecimal number without prefix or padding.
    pub fn x(&mut self, v: u64) -> &mut Self {
        let mut started = false;
        for shift in (0..16).rev() {
            let nib = ((v >> (shift * 4)) & 0xf) as u8;
            if nib != 0 || started || shift == 0 {
                started = true;
                self.push(if nib < 10 {
                    b'0' + nib
                } else {
                    b'a' + nib - 10
                });
            }
        }
        self
    }

    /// Appends "0x" and a hex number.
    pub fn hx(&mut self, v: u64) -> &mut Self {
        self.s("0x").x(v)
    }

    /// Terminates the line with "\n" and writes it out.
    pub fn end(&mut self) {
        self.buf[self.len] = MaybeUninit::new(b'\n');
        // SAFETY: bytes 0..=len were all written by `push` or just above.
        let bytes =
            unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.len + 1) };
        serial::write(bytes);
        self.len = 0;
    }
}
