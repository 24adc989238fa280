//! File-system primitives the deploy relies on: digests, links, the atomic
//! symlink switch, fsync and advisory locks.
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{DeployError, io_err};

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, DeployError> {
    sha256_file_with(path, &mut vec![0u8; 256 * 1024])
}

/// [`sha256_file`] reading through `buf`, so a worker hashing thousands of
/// files allocates (and zeroes) its buffer once.
pub fn sha256_file_with(path: &Path, buf: &mut [u8]) -> Result<String, DeployError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    loop {
        let n = f.read(buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// Permission bits of a file (no file type bits).
pub fn mode_of(path: &Path) -> Result<u32, DeployError> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    Ok(md.permissions().mode() & 0o7777)
}

/// Set permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), DeployError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err(path))
}

/// fsync a directory so renames and links inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), DeployError> {
    let f = File::open(dir).map_err(io_err(dir))?;
    f.sync_all().map_err(io_err(dir))
}

/// Flush everything on the file system holding `path` (one `syncfs` on Linux,
/// far cheaper than an fsync per file for thousands of small files).
pub fn sync_filesystem(path: &Path) -> Result<(), DeployError> {
    let f = File::open(path).map_err(io_err(path))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs takes a valid open file descriptor we own for the call.
        let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
        if rc != 0 {
            return Err(io_err(path)(std::io::Error::last_os_error()));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        f.sync_all().map_err(io_err(path))
    }
}

/// Point the symlink `link` at `target` with one atomic `rename(2)`:
/// a reader sees either the old target or the new one, never nothing.
pub fn switch_symlink(link: &Path, target: &Path) -> Result<(), DeployError> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.new.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, link).map_err(io_err(link))?;
    sync_dir(dir)
}

/// Exclusive, non-blocking advisory lock on a file. The kernel drops it when the
/// holder dies (even by SIGKILL), which is how a stale deploy is recognised.
pub struct FileLock {
    _file: File,
    pub path: PathBuf,
}

impl FileLock {
    /// `Ok(None)` when another process holds the lock.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>, DeployError> {
        Ok(molt_layout::lock_file(path, false)?.map(|file| FileLock {
            _file: file,
            path: path.to_path_buf(),
        }))
    }

    /// Is the lock currently held by some process?
    pub fn is_held(path: &Path) -> Result<bool, DeployError> {
        Ok(Self::try_acquire(path)?.is_none())
    }
}

/// Remove a directory tree if present; absent is fine.
pub fn remove_tree(p: &Path) -> Result<(), DeployError> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(p)(e)),
    }
}

/// Remove a file if present; absent is fine.
pub fn remove_file_opt(p: &Path) -> Result<(), DeployError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(p)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_replaces_the_link_target_in_one_rename() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("versions/a")).unwrap();
        std::fs::create_dir_all(t.path().join("versions/b")).unwrap();
        let link = t.path().join("current");
        switch_symlink(&link, Path::new("versions/a")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("versions/a"));
        switch_symlink(&link, Path::new("versions/b")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("versions/b"));
        let leftovers: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_until_the_first_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.lock");
        let a = FileLock::try_acquire(&p).unwrap();
        assert!(a.is_some());
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
        drop(a);
        assert!(FileLock::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn sha256_of_a_file_matches_sha256_of_its_bytes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_bytes(b"hello"));
        assert_eq!(
            sha256_bytes(b"hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
