//! A size-limited tmpfs, mounted (as root) for a test or a fault that fills
//! a disk, and unmounted when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `24m`, `2g`) at `dir`
    /// (created), its root owned by `owner` (a uid) when given. The reason
    /// as `Err` where mounting is not allowed (not root, no `mount`).
    pub fn mount(dir: &Path, size: &str, owner: Option<u32>) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut options = format!("size={size}");
        if let Some(uid) = owner {
            options.push_str(&format!(",mode=0700,uid={uid},gid={uid}"));
        }
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !mounted.status.success() {
            return Err(String::from_utf8_lossy(&mounted.stderr).trim().to_string());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes zeros to the file `name` until the filesystem is full;
    /// returns its path (remove it to free the space).
    pub fn fill(&self, name: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.join(name);
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..1024]).is_ok() {}
        let _ = file.sync_all();
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
