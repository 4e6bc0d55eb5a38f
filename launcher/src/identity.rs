//! The VM's own uid and gid, like libvirt's dynamic ownership: one per running VM, from the
//! policy's range. A uid is taken by holding an exclusive lock on `<root>/uids/<uid>` for the
//! VM's life (the lock goes with the launcher, also when it is killed), so two VMs never share
//! one. The search starts at a hash of the VM's name, so a VM tends to get the same uid again.
//!
//! The workers need no file of their own to be chowned: every path they use is opened by the
//! launcher and handed over as a descriptor.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::{Error, Result};

/// Where uids are locked: one directory for every ward on the host.
pub const LOCK_DIR: &str = "/run/ward/uids";

/// A uid (and the gid of the same number) held for one VM.
pub struct Lease {
    pub uid: u32,
    _lock: Flock<File>,
}

/// Takes a free uid from `range` (both ends included) for `vm`, locking it in `dir`.
pub fn allocate(dir: &Path, range: [u32; 2], vm: &str) -> Result<Lease> {
    let dir = dir.to_path_buf();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::RuntimeDir(dir.clone(), e))?;
    let [first, last] = range;
    let size = u64::from(last - first) + 1;
    let start = fnv(vm) % size;
    for i in 0..size {
        let uid = first + ((start + i) % size) as u32;
        let path = dir.join(uid.to_string());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::Open {
                what: "uid lock",
                path: path.clone(),
                source: e,
            })?;
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return Ok(Lease { uid, _lock: lock });
        }
    }
    Err(Error::Spec(format!(
        "every uid in {first}-{last} is taken by a running VM"
    )))
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_vms_get_distinct_uids_and_a_vm_its_own_again() {
        let root = std::env::temp_dir().join(format!("ward-uid-test-{}", std::process::id()));
        let a = allocate(&root, [5000, 5002], "a").unwrap();
        let again = a.uid;
        let b = allocate(&root, [5000, 5002], "a").unwrap();
        let c = allocate(&root, [5000, 5002], "a").unwrap();
        let mut uids = [a.uid, b.uid, c.uid];
        uids.sort_unstable();
        assert_eq!(uids, [5000, 5001, 5002]);
        let e = allocate(&root, [5000, 5002], "d")
            .err()
            .expect("range exhausted");
        assert!(e.to_string().contains("5000-5002"), "{e}");
        drop((a, b, c));
        assert_eq!(allocate(&root, [5000, 5002], "a").unwrap().uid, again);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
