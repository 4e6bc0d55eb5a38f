//! Per-vCPU CPUID: what KVM supports, with each vCPU's APIC ID and a flat topology (one socket,
//! one thread per core, `vcpus` cores), and the hypervisor bit.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// Timing information leaf (the VMware convention that QEMU and others follow): EAX = TSC
/// frequency in kHz, EBX = local APIC timer frequency in kHz.
const LEAF_TIMING: u32 = 0x4000_0010;
/// KVM's local APIC timer runs at 1 GHz.
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (CPUID.0BH:ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` items.
fn width(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts `cpuid` (as KVM_GET_SUPPORTED_CPUID returned it) for vCPU `id` of `vcpus`, and
/// tells the guest the TSC frequency when it is known (`tsc_khz`).
pub fn patch(cpuid: &mut CpuId, id: u8, vcpus: u8, tsc_khz: Option<u32>) {
    if let Some(khz) = tsc_khz {
        let has_hv = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_HYPERVISOR);
        let has_timing = cpuid.as_slice().iter().any(|e| e.function == LEAF_TIMING);
        if has_hv && !has_timing {
            let timing = kvm_bindings::kvm_cpuid_entry2 {
                function: LEAF_TIMING,
                eax: khz,
                ebx: KVM_APIC_BUS_KHZ,
                ..Default::default()
            };
            // A full table keeps its entries; the guest then just lacks the timing leaf.
            let _ = cpuid.push(timing);
        }
    }
    let apic_id = u32::from(id);
    let n = u32::from(vcpus.max(1));
    let core_shift = width(n);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (n.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
            LEAF_CACHE if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1).min(63) << 26) | (sharing.min(0xfff) << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                let (eax, ebx, level) = match e.index {
                    0 => (0, 1, LEVEL_SMT),
                    1 => (core_shift, n, LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            LEAF_AMD_SIZE => {
                // ECX[15:12]: APIC ID bits for cores; ECX[7:0]: cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (core_shift << 12) | ((n - 1) & 0xff);
            }
            LEAF_HYPERVISOR if tsc_khz.is_some() => e.eax = e.eax.max(LEAF_TIMING),
            LEAF_AMD_TOPOLOGY => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // compute unit id = core id, one thread per core
                e.ecx = 0; // node 0, one node per package
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut c = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
        ])
        .unwrap();
        patch(&mut c, 3, 4, None);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(s[0].edx & EDX_HTT, 0);
        assert_eq!((s[1].ebx, s[1].edx, s[1].ecx >> 8), (1, 3, LEVEL_SMT));
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx >> 8), (2, 4, LEVEL_CORE));
        assert_eq!(s[3].ecx >> 8, 0);
        assert_eq!(width(1), 0);
        assert_eq!(width(2), 1);
        assert_eq!(width(3), 2);
        assert_eq!(width(255), 8);
    }

    #[test]
    fn timing_leaf_tells_the_tsc_frequency() {
        let mut c = CpuId::from_entries(&[entry(LEAF_HYPERVISOR, 0)]).unwrap();
        patch(&mut c, 0, 1, Some(2_596_138));
        let s = c.as_slice();
        assert_eq!(s[0].eax, LEAF_TIMING);
        let t = s.iter().find(|e| e.function == LEAF_TIMING).unwrap();
        assert_eq!((t.eax, t.ebx), (2_596_138, KVM_APIC_BUS_KHZ));
        // No hypervisor leaves, no timing leaf.
        let mut c = CpuId::from_entries(&[entry(LEAF_FEATURES, 0)]).unwrap();
        patch(&mut c, 0, 1, Some(1000));
        assert!(c.as_slice().iter().all(|e| e.function != LEAF_TIMING));
    }
}
