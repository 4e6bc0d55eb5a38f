//! The VM's private runtime directory: vhost-user sockets live here. Mode 0700, removed when
//! the VM ends.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub struct RuntimeDir {
    path: PathBuf,
}

/// `$XDG_RUNTIME_DIR/ward`, else `/run/ward`.
pub fn default_root() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("ward"))
        .unwrap_or_else(|| PathBuf::from("/run/ward"))
}

impl RuntimeDir {
    /// Creates `<root>/<name>`; fails if it exists (another VM of that name runs, or a crashed
    /// one left it: the error names it so the user can check and remove it).
    pub fn create(root: &Path, name: &str) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| Error::RuntimeDir(root.to_path_buf(), e))?;
        let path = root.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::RuntimeDir(path.clone(), e))?;
        // The umask may have taken bits away, never added them; make it exact anyway.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::RuntimeDir(path.clone(), e))?;
        let dir = RuntimeDir { path };
        // For `ward status`: which process runs this VM.
        std::fs::write(
            dir.path.join(crate::status::PID_FILE),
            std::process::id().to_string(),
        )
        .map_err(|e| Error::RuntimeDir(dir.path.clone(), e))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn private_and_cleaned_up() {
        let root = std::env::temp_dir().join(format!("ward-rt-test-{}", std::process::id()));
        let p;
        {
            let d = RuntimeDir::create(&root, "vm").unwrap();
            p = d.path().to_path_buf();
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
            assert!(
                RuntimeDir::create(&root, "vm").is_err(),
                "second VM of one name"
            );
        }
        assert!(!p.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
