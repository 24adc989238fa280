//! Deploy Binary Files: build a complete version directory beside the running one.
//!
//! Unchanged files are hard links to the current version's files (same content
//! *and* same mode, so no mode can leak between versions through a shared inode);
//! changed files are copied from the extracted package and given the manifest's
//! mode; every file is digest-checked against the manifest; the result is flushed
//! to disk before it is renamed into place. Nothing of the running version is
//! written, so files held open or locked by the old agent cannot break the build.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use molt_layout::{FileMeta, Home, InstalledPackage};

use crate::error::{DeployError, io_err};
use crate::fsutil;
use crate::plan::DeployPlan;
use crate::truststore::{STOCK, TRUSTSTORE};

/// Counts of one build, for the log and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub linked: usize,
    pub copied: usize,
    pub bytes_copied: u64,
    pub verified: usize,
    pub truststore_carried: usize,
    /// The version has a truststore with a stock copy, so MigrateTrustStore ran.
    pub truststore_rebuilt: bool,
}

/// One file to place in the new version.
struct Item<'a> {
    kind: &'a str,
    rel: &'a str,
    meta: &'a FileMeta,
    carried: bool,
}

/// Build `build_dir` (a fresh directory next to the versions) for `plan.to_version`.
/// Returns the packages as they are installed (meta written under `build_dir/meta`).
pub fn build_version(
    home: &Home,
    plan: &DeployPlan,
    upgrade_dir: &Path,
    build_dir: &Path,
) -> Result<(Vec<InstalledPackage>, BuildStats), DeployError> {
    let cur_dir = home.version_dir(&plan.from_version);
    let cur_pkgs = molt_layout::read_meta_dir(&home.meta_dir_of(&plan.from_version))?;
    let mut cur_files: BTreeMap<&str, &FileMeta> = BTreeMap::new();
    for p in &cur_pkgs {
        for (f, m) in &p.files {
            cur_files.insert(f.as_str(), m);
        }
    }
    let plan_kinds: BTreeSet<&str> = plan.packages.iter().map(|p| p.kind.as_str()).collect();
    let mut packages: Vec<InstalledPackage> = plan.packages.clone();
    for p in &cur_pkgs {
        if !plan_kinds.contains(p.kind.as_str()) {
            tracing::info!(kind = %p.kind, version = %p.version, "carrying over unchanged package");
            packages.push(p.clone());
        }
    }
    let changed = plan.changed_set();

    fsutil::remove_tree(build_dir)?;
    std::fs::create_dir_all(build_dir).map_err(io_err(build_dir))?;

    let mut items = Vec::new();
    // The operator-editable truststore is rebuilt after the loop, not linked.
    let mut store: Option<Item> = None;
    for p in &packages {
        let carried = !plan_kinds.contains(p.kind.as_str());
        for (rel, meta) in &p.files {
            crate::plan::check_rel_path(rel).map_err(|reason| DeployError::Plan {
                path: upgrade_dir.join("plan.json"),
                reason: format!("{rel}: {reason}"),
            })?;
            if rel == TRUSTSTORE && p.files.contains_key(STOCK) {
                store = Some(Item {
                    kind: &p.kind,
                    rel,
                    meta,
                    carried,
                });
                continue;
            }
            items.push(Item {
                kind: &p.kind,
                rel,
                meta,
                carried,
            });
        }
    }

    let mut stats = BuildStats::default();
    let mut made_dirs: HashSet<PathBuf> = HashSet::new();
    for (i, it) in items.iter().enumerate() {
        let dest = build_dir.join(it.rel);
        if let Some(parent) = dest.parent()
            && !made_dirs.contains(parent)
        {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            made_dirs.insert(parent.to_path_buf());
        }
        let cur_src = cur_dir.join(it.rel);
        let same_as_current = cur_files
            .get(it.rel)
            .is_some_and(|m| m.sha256 == it.meta.sha256 && m.mode == it.meta.mode);
        let link = (it.carried || !changed.contains(it.rel)) && same_as_current;
        let mut linked = false;
        if link {
            match std::fs::hard_link(&cur_src, &dest) {
                Ok(()) => linked = true,
                Err(e) => {
                    tracing::warn!(file = it.rel, error = %e, "cannot hard-link from the current version; copying")
                }
            }
        }
        if linked {
            stats.linked += 1;
        } else {
            let staged = DeployPlan::staged_file(upgrade_dir, it.kind, it.rel);
            let src = if staged.is_file() {
                staged
            } else if cur_files
                .get(it.rel)
                .is_some_and(|m| m.sha256 == it.meta.sha256)
                && cur_src.is_file()
            {
                cur_src // same content, new mode: a copy, so the old inode keeps its mode
            } else {
                return Err(DeployError::Plan {
                    path: upgrade_dir.join("plan.json"),
                    reason: format!(
                        "{} (package {}) is neither in the extracted package nor unchanged in version {}",
                        it.rel, it.kind, plan.from_version
                    ),
                });
            };
            let n = std::fs::copy(&src, &dest).map_err(io_err(&dest))?;
            fsutil::set_mode(&dest, it.meta.mode)?;
            stats.copied += 1;
            stats.bytes_copied += n;
        }
        if (i + 1) % 100 == 0 {
            crate::crash::checkpoint(&format!("build file {}", i + 1));
        }
    }

    let to_check: Vec<(PathBuf, &FileMeta)> = items
        .iter()
        .map(|it| (build_dir.join(it.rel), it.meta))
        .collect();
    verify_files(&to_check)?;
    stats.verified = to_check.len();
    crate::crash::checkpoint("build verified");

    // MigrateTrustStore: new stock content plus the current custom certificates.
    if let Some(ts) = store {
        let staged = DeployPlan::staged_file(upgrade_dir, ts.kind, TRUSTSTORE);
        let m = crate::truststore::rebuild(
            &cur_dir,
            build_dir,
            (!ts.carried).then_some(staged.as_path()),
            ts.meta,
            &home.backup_dir().join("truststore"),
            &plan.from_version,
        )?;
        stats.truststore_carried = m.carried;
        stats.truststore_rebuilt = true;
        stats.verified += 1;
        let kind = ts.kind.to_string();
        let p = build_dir.join(TRUSTSTORE);
        let sha = fsutil::sha256_file(&p)?;
        let size = std::fs::metadata(&p).map_err(io_err(&p))?.len();
        for pkg in packages.iter_mut().filter(|p| p.kind == kind) {
            if let Some(f) = pkg.files.get_mut(TRUSTSTORE) {
                f.sha256 = sha.clone();
                f.size = size;
            }
        }
    }

    write_meta(build_dir, &packages)?;
    fsutil::sync_filesystem(build_dir)?;
    tracing::info!(
        linked = stats.linked,
        copied = stats.copied,
        bytes_copied = stats.bytes_copied,
        verified = stats.verified,
        "Deploy Binary Files: version directory built"
    );
    Ok((packages, stats))
}

/// Write `meta/<kind>.meta.json` for each package into a version dir.
pub fn write_meta(version_dir: &Path, packages: &[InstalledPackage]) -> Result<(), DeployError> {
    let meta = molt_layout::meta_dir_in(version_dir);
    std::fs::create_dir_all(&meta).map_err(io_err(&meta))?;
    for p in packages {
        molt_layout::write_json_atomic(&meta.join(format!("{}.meta.json", p.kind)), p)?;
    }
    Ok(())
}

/// Check digest and mode of every file, on all cores.
pub fn verify_files(files: &[(PathBuf, &FileMeta)]) -> Result<(), DeployError> {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = files.len().div_ceil(n).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<(), DeployError> {
                    for (p, m) in part {
                        let actual = fsutil::sha256_file(p)?;
                        if !actual.eq_ignore_ascii_case(&m.sha256) {
                            return Err(DeployError::Digest {
                                path: p.clone(),
                                expected: m.sha256.clone(),
                                actual,
                            });
                        }
                        let mode = fsutil::mode_of(p)?;
                        if mode != m.mode & 0o7777 {
                            return Err(DeployError::Mode {
                                path: p.clone(),
                                expected: m.mode,
                                actual: mode,
                            });
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(DeployError::Install {
                        home: PathBuf::new(),
                        reason: "digest worker panicked".into(),
                    });
                }
            }
        }
        Ok(())
    })
}

/// Verify an installed version dir completely against its own meta: every file's
/// digest and mode, and no file that the meta does not list. Used by tests,
/// `molt repair` and recovery.
pub fn verify_version_dir(dir: &Path) -> Result<Vec<InstalledPackage>, DeployError> {
    let pkgs = molt_layout::read_meta_dir(&molt_layout::meta_dir_in(dir))?;
    if pkgs.is_empty() {
        return Err(DeployError::Install {
            home: dir.to_path_buf(),
            reason: "no meta/*.meta.json".into(),
        });
    }
    let mut expected: BTreeMap<String, &FileMeta> = BTreeMap::new();
    for p in &pkgs {
        for (f, m) in &p.files {
            expected.insert(f.clone(), m);
        }
    }
    let list: Vec<(PathBuf, &FileMeta)> = expected.iter().map(|(f, m)| (dir.join(f), *m)).collect();
    verify_files(&list)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let e = e.map_err(io_err(&d))?;
            let p = e.path();
            let ft = e.file_type().map_err(io_err(&p))?;
            let rel = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if ft.is_dir() {
                if rel != molt_layout::META_DIR {
                    stack.push(p);
                }
            } else if !expected.contains_key(&rel) {
                return Err(DeployError::Install {
                    home: dir.to_path_buf(),
                    reason: format!("unexpected file {rel}"),
                });
            }
        }
    }
    Ok(pkgs)
}
