//! sVirt labels: the SELinux contexts of one VM.
//!
//! Every process of a VM runs as `system_u:system_r:<domain>:s0:cA,cB`, where the category
//! pair `cA,cB` is the VM's own: the launcher derives it from the VM's uid (itself unique among
//! running VMs, see `identity.uid_range`), so two VMs that run at once never share one. The
//! VM's writable images are labelled `system_u:object_r:<image_type>:s0:cA,cB` while it runs;
//! read-only images and backing files, which several VMs may share, `<content_type>:s0`. The
//! policy's MCS constraints (`policy/selinux/`) then let a process reach only objects whose
//! categories its own dominate: its VM's images and shared content, never another VM's image,
//! and it cannot signal or trace another VM's processes.

use crate::vm::Selinux;

/// Categories `c0` to `c1023`, as in every MCS policy.
pub const CATEGORIES: u32 = 1024;
/// The SELinux user and roles of ward's labels (those of system services in reference-policy
/// based policies).
pub const USER: &str = "system_u";
pub const PROCESS_ROLE: &str = "system_r";
pub const OBJECT_ROLE: &str = "object_r";
/// The sensitivity every label carries (MCS policies have one).
pub const SENSITIVITY: &str = "s0";

/// The `index`-th category pair `(a, b)`, `a < b < 1024`, in the order (0,1), (0,2), (1,2),
/// (0,3), …: distinct indexes give distinct pairs. `None` past the last of the 523,776 pairs.
pub fn category_pair(index: u32) -> Option<(u16, u16)> {
    let mut b: u32 = 1;
    let mut first = 0u32; // index of (0, b)
    while b < CATEGORIES {
        if index < first + b {
            let a = index - first;
            // Both are below 1024.
            return Some((a as u16, b as u16));
        }
        first += b;
        b += 1;
    }
    None
}

/// The contexts of one VM's processes and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLabels {
    pub pair: (u16, u16),
    /// The exec context of every process of the VM.
    pub process: String,
    /// The VM's writable images.
    pub image: String,
    /// Read-only images and backing files (any VM may read them).
    pub shared: String,
}

impl VmLabels {
    /// The labels of the VM whose uid is the `index`-th of its range; `None` when the range is
    /// longer than there are category pairs.
    pub fn new(policy: &Selinux, index: u32) -> Option<VmLabels> {
        let pair = category_pair(index)?;
        let level = format!("{SENSITIVITY}:c{},c{}", pair.0, pair.1);
        Some(VmLabels {
            pair,
            process: format!("{USER}:{PROCESS_ROLE}:{}:{level}", policy.domain),
            image: format!("{USER}:{OBJECT_ROLE}:{}:{level}", policy.image_type),
            shared: format!("{USER}:{OBJECT_ROLE}:{}:{SENSITIVITY}", policy.content_type),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn pairs_are_distinct_ordered_and_in_range() {
        assert_eq!(category_pair(0), Some((0, 1)));
        assert_eq!(category_pair(1), Some((0, 2)));
        assert_eq!(category_pair(2), Some((1, 2)));
        assert_eq!(category_pair(3), Some((0, 3)));
        let last = CATEGORIES * (CATEGORIES - 1) / 2 - 1;
        assert_eq!(category_pair(last), Some((1022, 1023)));
        assert_eq!(category_pair(last + 1), None);
        // Every uid of the default range gets its own pair.
        let mut seen = HashSet::new();
        for i in 0..65_536 {
            let (a, b) = category_pair(i).unwrap();
            assert!(a < b && u32::from(b) < CATEGORIES);
            assert!(seen.insert((a, b)), "pair {a},{b} twice");
        }
    }

    #[test]
    fn labels_carry_the_pair_and_the_policy_types() {
        let l = VmLabels::new(&Selinux::default(), 2).unwrap();
        assert_eq!(l.process, "system_u:system_r:ward_t:s0:c1,c2");
        assert_eq!(l.image, "system_u:object_r:ward_image_t:s0:c1,c2");
        assert_eq!(l.shared, "system_u:object_r:ward_content_t:s0");
    }
}
