//! What this host offers the policy: whether SELinux is enabled and whether a cgroup v2
//! hierarchy is mounted, so that `ward policy show` (and later the supervisor's status) can say
//! plainly what a `preferred` setting will and will not get here.

use std::path::Path;

/// The host's support for the parts of a policy that depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    /// SELinux is enabled (selinuxfs is mounted), and whether it enforces.
    pub selinux: Option<bool>,
    /// A cgroup v2 hierarchy is mounted at /sys/fs/cgroup (not v1 or hybrid only).
    pub cgroup2: bool,
}

/// Looks at `/sys/fs/selinux` and `/sys/fs/cgroup`.
pub fn support() -> Support {
    support_at(Path::new("/sys/fs"))
}

fn support_at(sys_fs: &Path) -> Support {
    let selinux = std::fs::read_to_string(sys_fs.join("selinux/enforce"))
        .ok()
        .map(|s| s.trim() == "1");
    let cgroup2 = sys_fs.join("cgroup/cgroup.controllers").is_file();
    Support { selinux, cgroup2 }
}

impl Support {
    /// One line on SELinux for people.
    pub fn selinux_line(&self) -> &'static str {
        match self.selinux {
            Some(true) => "this host: SELinux is enabled and enforcing",
            Some(false) => "this host: SELinux is enabled, permissive",
            None => {
                "this host: SELinux is off (not enabled in this kernel or not mounted); \
                     no SELinux labels are applied here"
            }
        }
    }

    /// One line on cgroup v2 for people.
    pub fn cgroup_line(&self) -> &'static str {
        if self.cgroup2 {
            "this host: cgroup v2 is mounted"
        } else {
            "this host: no cgroup v2 hierarchy (cgroup v1 only); no per-VM cgroup here"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_sysfs_says() {
        let d = std::env::temp_dir().join(format!("ward-host-{}", std::process::id()));
        std::fs::create_dir_all(d.join("selinux")).unwrap();
        std::fs::create_dir_all(d.join("cgroup")).unwrap();
        assert_eq!(
            support_at(&d),
            Support {
                selinux: None,
                cgroup2: false
            }
        );
        std::fs::write(d.join("selinux/enforce"), "0\n").unwrap();
        std::fs::write(d.join("cgroup/cgroup.controllers"), "cpu memory pids\n").unwrap();
        let s = support_at(&d);
        assert_eq!(s.selinux, Some(false));
        assert!(s.cgroup2);
        assert!(s.selinux_line().contains("permissive"));
        std::fs::remove_dir_all(&d).unwrap();
        // This host: whatever it is, the lines say it in words.
        let here = support();
        assert!(here.selinux_line().starts_with("this host: SELinux is"));
        assert!(here.cgroup_line().starts_with("this host:"));
    }
}
