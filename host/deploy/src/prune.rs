//! Pruning old version directories after a deploy. Keeps `current` and the
//! version a rollback would go back to. A version dir still in use by some
//! process (an open file, its executable, its cwd) is not removed now but
//! recorded in `work/prune.pending` and retried later by the supervisor and at
//! agent start, so a slow process or a scanner holding a file never fails an upgrade.
use std::path::PathBuf;

use molt_layout::Home;
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, io_err};
use crate::fsutil;

/// What one pruning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub removed: Vec<String>,
    /// (version dir name, why it was left for later)
    pub deferred: Vec<(String, String)>,
}

/// `work/previous-version`: the version a rollback would return to, written when
/// a deploy completes.
pub fn previous_file(home: &Home) -> PathBuf {
    home.previous_version_file()
}

pub fn pending_file(home: &Home) -> PathBuf {
    home.prune_pending_file()
}

/// The versions to keep: `current` and, after a complete deploy, the one before it.
pub fn keep_set(home: &Home) -> Result<Vec<String>, DeployError> {
    let mut keep = Vec::new();
    if let Some(cur) = home.current_version()? {
        if let Ok(prev) = std::fs::read_to_string(previous_file(home)) {
            let prev = prev.trim().to_string();
            if !prev.is_empty() && prev != cur {
                keep.push(prev);
            }
        }
        keep.push(cur);
    }
    Ok(keep)
}

/// Remove every version dir not in `keep` (and leftover hidden build/trash dirs)
/// that no process uses. Never touches `current`'s target.
pub fn prune(home: &Home, keep: &[String]) -> Result<PruneReport, DeployError> {
    let mut report = PruneReport::default();
    let vdir = home.versions_dir();
    let cur = home.current_version()?;
    let rd = match std::fs::read_dir(&vdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(io_err(&vdir)(e)),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) || cur.as_deref() == Some(name.as_str()) {
            continue;
        }
        let dir = e.path();
        let users = crate::proc::users_of(&dir);
        if !users.is_empty() {
            let why = format!("in use by pids {users:?}; will retry");
            tracing::warn!(version = %name, ?users, "prune deferred: version directory in use");
            report.deferred.push((name, why));
            continue;
        }
        match fsutil::remove_tree(&dir) {
            Ok(()) => {
                tracing::info!(version = %name, "pruned old version directory");
                report.removed.push(name);
            }
            Err(err) => {
                tracing::warn!(version = %name, error = %err, "prune deferred: cannot remove; will retry");
                report.deferred.push((name, err.to_string()));
            }
        }
    }
    if report.deferred.is_empty() {
        fsutil::remove_file_opt(&pending_file(home))?;
    } else {
        molt_layout::write_json_atomic(&pending_file(home), &report)?;
    }
    Ok(report)
}

/// Retry a pending prune if one is recorded. Returns the report if it ran.
pub fn retry_pending(home: &Home) -> Result<Option<PruneReport>, DeployError> {
    if !pending_file(home).exists() {
        return Ok(None);
    }
    // Never prune beside a running deploy (it owns the hidden build dirs).
    let Some(_lock) =
        crate::fsutil::FileLock::try_acquire(&crate::journal::Journal::lock_path(home))?
    else {
        return Ok(None);
    };
    if home.journal_file().exists() {
        return Ok(None);
    }
    let keep = keep_set(home)?;
    prune(home, &keep).map(Some)
}
