//! Time keeping with the TSC.
//!
//! The TSC frequency is taken from CPUID when the platform tells it (leaf 0x15
//! crystal ratio, leaf 0x16 base frequency, or the hypervisor timing leaf
//! 0x40000010); otherwise we assume 3 GHz. Timeouts are only coarse guards against
//! hanging, so a wrong guess only stretches or shrinks them.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{cpuid, rdtsc};

const FALLBACK_KHZ: u64 = 3_000_000;

static TSC_KHZ: AtomicU64 = AtomicU64::new(FALLBACK_KHZ);

/// Where the TSC frequency came from (for the INFO line).
pub fn init() -> &'static str {
    let (khz, src) = detect();
    TSC_KHZ.store(khz, Ordering::Relaxed);
    src
}

fn detect() -> (u64, &'static str) {
    let (max_leaf, ..) = cpuid(0, 0);
    if max_leaf >= 0x15 {
        let (den, num, crystal_hz, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal_hz != 0 {
            return (
                u64::from(crystal_hz) * u64::from(num) / u64::from(den) / 1000,
                "cpuid15",
            );
        }
    }
    if max_leaf >= 0x16 {
        let (base_mhz, ..) = cpuid(0x16, 0);
        if base_mhz != 0 {
            return (u64::from(base_mhz) * 1000, "cpuid16");
        }
    }
    let (hv_max, ..) = cpuid(0x4000_0000, 0);
    if (0x4000_0010..0x4000_0100).contains(&hv_max) {
        let (khz, ..) = cpuid(0x4000_0010, 0);
        if khz != 0 {
            return (u64::from(khz), "hv-leaf");
        }
    }
    (FALLBACK_KHZ, "guess")
}

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

pub fn ms_to_cycles(ms: u64) -> u64 {
    ms.saturating_mul(tsc_khz())
}

/// A point in TSC time after which an operation is considered timed out.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    pub fn after_ms(ms: u64) -> Self {
        Self(rdtsc().saturating_add(ms_to_cycles(ms)))
    }

    pub fn expired(&self) -> bool {
        rdtsc() >= self.0
    }
}

/// Busy-waits for about `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc().saturating_add(tsc_khz().saturating_mul(us) / 1000);
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}
