//! Extraction of a verified bundle: streaming, every entry re-checked (size,
//! CRC-32, SHA-256) while it is written, never outside `dest`, never following
//! a symlink, and on any error everything written is removed again.
use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::container::{Limits, check_entry_path};
use crate::error::BundleError;
use crate::verify::{VerifiedBundle, stream_entry};

/// What was written.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtractReport {
    /// Relative paths of the files written, in bundle order.
    pub files: Vec<String>,
    pub bytes: u64,
}

fn ex_err(dest: &Path, entry: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Extract {
        dest: dest.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// Extract `verified` (from `bundle_path`) into `dest_dir` (created if absent).
/// Modes come from the manifest, without setuid/setgid/sticky and always with
/// owner read/write.
pub fn extract(
    verified: &VerifiedBundle,
    bundle_path: &Path,
    dest_dir: &Path,
    limits: &Limits,
) -> Result<ExtractReport, BundleError> {
    extract_with(verified, bundle_path, dest_dir, limits, true)
}

/// [`extract`] without an fsync per file, for a scratch directory that is
/// discarded after use (a precheck or selector bundle run once) or whose files
/// are digest-checked again before anything depends on them. A crash may leave
/// such a directory torn; its user never trusts it across a restart.
pub fn extract_scratch(
    verified: &VerifiedBundle,
    bundle_path: &Path,
    dest_dir: &Path,
    limits: &Limits,
) -> Result<ExtractReport, BundleError> {
    extract_with(verified, bundle_path, dest_dir, limits, false)
}

fn extract_with(
    verified: &VerifiedBundle,
    bundle_path: &Path,
    dest_dir: &Path,
    limits: &Limits,
    durable: bool,
) -> Result<ExtractReport, BundleError> {
    let total: u64 = verified.entries.iter().map(|e| e.size).sum();
    if total > limits.max_total_size {
        return Err(BundleError::TotalTooLarge {
            bundle: bundle_path.to_path_buf(),
            total,
            limit: limits.max_total_size,
        });
    }
    let file = crate::container::open(bundle_path)?;
    let len = file
        .metadata()
        .map_err(|e| BundleError::io(bundle_path, e))?
        .len();
    if len != verified.file_len {
        return Err(BundleError::Container {
            bundle: bundle_path.to_path_buf(),
            reason: format!(
                "file is {len} bytes, but {} bytes were verified",
                verified.file_len
            ),
        });
    }
    let mut created_dirs: Vec<PathBuf> = Vec::new();
    let mut created_files: Vec<PathBuf> = Vec::new();
    let res = extract_inner(
        verified,
        &file,
        bundle_path,
        dest_dir,
        durable,
        &mut created_dirs,
        &mut created_files,
    );
    if res.is_err() {
        for f in created_files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
        for d in created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
    res
}

/// Create `dir` and missing parents under `root`, refusing symlinks on the way.
fn ensure_dir(
    root: &Path,
    rel_dir: &[&str],
    dest: &Path,
    entry: &str,
    created: &mut Vec<PathBuf>,
) -> Result<(), BundleError> {
    let mut cur = root.to_path_buf();
    for comp in rel_dir {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => {
                return Err(ex_err(
                    dest,
                    entry,
                    format!("{} is a symlink; refusing to follow it", cur.display()),
                ));
            }
            Ok(_) => {
                return Err(ex_err(
                    dest,
                    entry,
                    format!("{} exists and is not a directory", cur.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(|e| {
                    ex_err(dest, entry, format!("cannot create {}: {e}", cur.display()))
                })?;
                created.push(cur.clone());
            }
            Err(e) => return Err(ex_err(dest, entry, format!("{}: {e}", cur.display()))),
        }
    }
    Ok(())
}

fn extract_inner(
    v: &VerifiedBundle,
    file: &File,
    bundle_path: &Path,
    dest: &Path,
    durable: bool,
    created_dirs: &mut Vec<PathBuf>,
    created_files: &mut Vec<PathBuf>,
) -> Result<ExtractReport, BundleError> {
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.file_type().is_dir() => {}
        Ok(_) => {
            return Err(ex_err(
                dest,
                "",
                "destination exists and is not a directory",
            ));
        }
        Err(_) => {
            if let Some(parent) = dest.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
            }
            std::fs::create_dir(dest).map_err(|e| BundleError::io(dest, e))?;
            created_dirs.push(dest.to_path_buf());
        }
    }
    let mut report = ExtractReport::default();
    for loc in &v.entries {
        check_entry_path(&loc.path).map_err(|r| ex_err(dest, &loc.path, r.to_string()))?;
        let comps: Vec<&str> = loc.path.split('/').collect();
        ensure_dir(
            dest,
            &comps[..comps.len() - 1],
            dest,
            &loc.path,
            created_dirs,
        )?;
        let target = dest.join(&loc.path);
        let mode = (loc.mode & 0o777) | 0o600;
        // create_new (O_EXCL) never follows a symlink at the final component.
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| {
                ex_err(
                    dest,
                    &loc.path,
                    format!("cannot create {}: {e}", target.display()),
                )
            })?;
        created_files.push(target.clone());
        let mut w = BufWriter::with_capacity(256 << 10, f);
        stream_entry(file, bundle_path, loc, &mut w)?;
        let f = w
            .into_inner()
            .map_err(|e| ex_err(dest, &loc.path, format!("write failed: {}", e.error())))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| ex_err(dest, &loc.path, format!("cannot set mode {mode:#o}: {e}")))?;
        if durable {
            f.sync_all()
                .map_err(|e| ex_err(dest, &loc.path, format!("fsync failed: {e}")))?;
        }
        report.files.push(loc.path.clone());
        report.bytes += loc.size;
    }
    tracing::info!(bundle = %bundle_path.display(), dest = %dest.display(), files = report.files.len(), "Bundle extracted");
    Ok(report)
}
