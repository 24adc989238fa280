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
    if let Some(cur) = cur.as_deref() {
        prune_package_cache(home, cur, keep);
    }
    if report.deferred.is_empty() {
        fsutil::remove_file_opt(&pending_file(home))?;
    } else {
        molt_layout::write_json_atomic(&pending_file(home), &report)?;
    }
    Ok(report)
}

/// Remove from `package/incoming` the downloaded packages (and leftover
/// `.part` / `.delta` staging) of versions older than `current` and not kept:
/// without this the cache grows by a release's packages at every upgrade until
/// the disk is full. The kept versions' packages stay, as delta sources and as
/// the "Downloaded" state, and so does anything newer than `current` (the
/// agent may be downloading it right now). Only names that parse as a package
/// buildstamp (optionally with `.part` or `.delta`) are touched. Best effort:
/// a file that cannot be removed is logged and retried at the next prune.
fn prune_package_cache(home: &Home, current: &str, keep: &[String]) {
    let Ok(current_v) = current.parse::<molt_bundle::Version>() else {
        return;
    };
    let dir = home.incoming_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let package = name
            .strip_suffix(".part")
            .or_else(|| name.strip_suffix(".delta"))
            .unwrap_or(&name);
        let Ok(b) = package.parse::<molt_bundle::Buildstamp>() else {
            continue;
        };
        if b.version >= current_v || keep.contains(&b.version.to_string()) {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() {
            fsutil::remove_tree(&path).map_err(|e| e.to_string())
        } else {
            std::fs::remove_file(&path).map_err(|e| e.to_string())
        };
        match removed {
            Ok(()) => {
                tracing::info!(package = %name, "pruned cached package of a version no longer kept")
            }
            Err(err) => {
                tracing::warn!(package = %name, error = %err, "cannot prune cached package; will retry at the next prune")
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const V0: &str = "utah-06-01-2022__patch0-06-01-2022_06-02-2022_0815";
    const V1: &str = "vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815";
    const V2: &str = "washingtondc-12-20-2023__patch1-02-01-2024_02-05-2024_1122";
    const V3: &str = "xanadu-07-02-2024__patch0-07-02-2024_07-09-2024_1200";

    #[test]
    fn prune_drops_cached_packages_of_older_versions_no_longer_kept() {
        let t = tempfile::tempdir().expect("tempdir");
        let home = Home::new(t.path());
        let inc = home.incoming_dir();
        std::fs::create_dir_all(&inc).expect("incoming");
        for v in [V1, V2] {
            std::fs::create_dir_all(home.versions_dir().join(v)).expect("version dir");
        }
        std::os::unix::fs::symlink(home.versions_dir().join(V2), home.current_link())
            .expect("current");
        let pkg = |kind: &str, v: &str| format!("molt-{kind}.{v}.universal.universal.zip");
        let files = [
            pkg("core", V0),
            format!("{}.part", pkg("upgrade", V0)),
            pkg("core", V1),
            pkg("core", V2),
            pkg("upgrade", V2),
            // Newer than current: the agent may be downloading it now.
            pkg("core", V3),
            format!("{}.part", pkg("upgrade", V3)),
            "notes.txt".to_string(),
            "molt-core.not-a-buildstamp.zip".to_string(),
        ];
        for f in &files {
            std::fs::write(inc.join(f), b"x").expect("write");
        }
        std::fs::create_dir_all(inc.join(format!("{}.delta", pkg("core", V0)))).expect("delta");
        // V1 is the rollback version: kept with its packages; V0 is gone.
        let r = prune(&home, &[V1.to_string(), V2.to_string()]).expect("prune");
        assert!(r.removed.is_empty(), "{r:?}");
        let mut left: Vec<String> = std::fs::read_dir(&inc)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // Everything but V0's package, `.part` and `.delta`.
        let mut want: Vec<String> = files.iter().filter(|f| !f.contains(V0)).cloned().collect();
        want.sort();
        assert_eq!(left, want);
        // Once V1 is no longer kept, its package goes too.
        prune(&home, &[V2.to_string()]).expect("prune");
        assert!(!inc.join(pkg("core", V1)).exists());
        assert!(inc.join(pkg("core", V2)).exists());
    }
}
