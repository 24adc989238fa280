//! Deploy Binary Files: build a complete version directory beside the running one.
//!
//! Unchanged files are hard links to the current version's files (same content
//! *and* same mode, so no mode can leak between versions through a shared inode);
//! changed files are taken from the extracted package (a hard link when the
//! staged file has no other name, else a copy) and given the manifest's mode;
//! every file is checked against the manifest: a changed one by its SHA-256, an
//! unchanged link by its SHA-256 too unless its inode is provably the one the
//! current version checked (size, mode, and an mtime older than that version's
//! meta). The result is flushed to disk (one `syncfs`) before it is renamed into
//! place. Nothing of the running version is written, so files held open or
//! locked by the old agent cannot break the build.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::SystemTime;

use molt_layout::{FileMeta, Home, InstalledPackage, UpgradeDir};

use crate::error::{DeployError, io_err};
use crate::fsutil;
use crate::plan::DeployPlan;
use crate::truststore::{STOCK, TRUSTSTORE};

/// Counts of one build, for the log and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Unchanged files hard-linked from the current version.
    pub linked: usize,
    /// Changed files placed from the extracted package (or, for a new mode
    /// only, copied from the current version).
    pub copied: usize,
    pub bytes_copied: u64,
    /// Files checked against the manifest: [`BuildStats::hashed`] plus the
    /// links whose inode is unchanged since the current version checked it.
    pub verified: usize,
    /// Files whose SHA-256 was computed in this build.
    pub hashed: usize,
    pub truststore_carried: usize,
    /// The version has a truststore with a stock copy, so MigrateTrustStore ran.
    pub truststore_rebuilt: bool,
}

/// How one file of the new version is placed.
enum Place {
    /// Hard link to the current version's file (same content and mode).
    LinkCurrent,
    /// From the extracted package: a hard link when the staged file is the only
    /// name of its inode (the upgrade dir is removed after the deploy), else a copy.
    Staged(PathBuf),
    /// A copy of the current version's file (same content, new mode).
    CopyCurrent,
}

/// One file to place, decided before any is placed.
struct Job<'a> {
    kind: &'a str,
    rel: &'a str,
    meta: &'a FileMeta,
    how: Place,
}

/// What placing one file did, for [`BuildStats`].
#[derive(Default)]
struct Placed {
    linked: usize,
    copied: usize,
    bytes_copied: u64,
    hashed: usize,
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
                path: UpgradeDir(upgrade_dir).plan_file(),
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

    // Every parent directory first, so the workers only place files.
    let parents: BTreeSet<PathBuf> = items
        .iter()
        .filter_map(|it| build_dir.join(it.rel).parent().map(Path::to_path_buf))
        .collect();
    for d in &parents {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let verified_at = verified_at(&home.meta_dir_of(&plan.from_version));
    let jobs = items
        .iter()
        .map(|it| {
            let cur = cur_files.get(it.rel);
            let same_as_current =
                cur.is_some_and(|m| m.sha256 == it.meta.sha256 && m.mode == it.meta.mode);
            let how = if (it.carried || !changed.contains(it.rel)) && same_as_current {
                Place::LinkCurrent
            } else {
                let staged = DeployPlan::staged_file(upgrade_dir, it.kind, it.rel);
                if staged.is_file() {
                    Place::Staged(staged)
                } else if cur.is_some_and(|m| m.sha256 == it.meta.sha256)
                    && cur_dir.join(it.rel).is_file()
                {
                    // same content, new mode: a copy, so the old inode keeps its mode
                    Place::CopyCurrent
                } else {
                    return Err(DeployError::Plan {
                        path: UpgradeDir(upgrade_dir).plan_file(),
                        reason: format!(
                            "{} (package {}) is neither in the extracted package nor unchanged in version {}",
                            it.rel, it.kind, plan.from_version
                        ),
                    });
                }
            };
            Ok(Job {
                kind: it.kind,
                rel: it.rel,
                meta: it.meta,
                how,
            })
        })
        .collect::<Result<Vec<_>, DeployError>>()?;
    let mut stats = place_all(&jobs, upgrade_dir, &cur_dir, build_dir, verified_at)?;
    crate::crash::checkpoint("build verified");
    // MigrateTrustStore: new stock content plus the current custom certificates.
    if let Some(ts) = store {
        let staged = DeployPlan::staged_file(upgrade_dir, ts.kind, TRUSTSTORE);
        let m = crate::truststore::rebuild(
            &cur_dir,
            build_dir,
            (!ts.carried).then_some(staged.as_path()),
            ts.meta,
            &home.truststore_backup_dir(),
            &plan.from_version,
        )?;
        stats.truststore_carried = m.carried;
        stats.truststore_rebuilt = true;
        stats.verified += 1;
        stats.hashed += 1;
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

    write_meta_unsynced(build_dir, &packages)?;
    fsutil::sync_filesystem(build_dir)?;
    tracing::info!(
        linked = stats.linked,
        copied = stats.copied,
        bytes_copied = stats.bytes_copied,
        verified = stats.verified,
        hashed = stats.hashed,
        "Deploy Binary Files: version directory built"
    );
    Ok((packages, stats))
}

/// Place every file of the new version and check it against its manifest entry,
/// on all cores (linking and hashing are both per-file work). A hard link to the
/// current version is checked by its inode's size, mode and mtime when that mtime
/// is older than the current version's meta (see [`verified_at`]); every other
/// file is hashed.
fn place_all(
    jobs: &[Job],
    upgrade_dir: &Path,
    cur_dir: &Path,
    build_dir: &Path,
    verified_at: Option<SystemTime>,
) -> Result<BuildStats, DeployError> {
    let n = workers(jobs.len());
    let chunk = jobs.len().div_ceil(n).max(1);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let parts: Vec<Result<Placed, DeployError>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                let (done, stop) = (&done, &stop);
                s.spawn(move || {
                    let mut buf = vec![0u8; HASH_BUF];
                    let mut sum = Placed::default();
                    for job in part {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let r =
                            place_one(job, upgrade_dir, cur_dir, build_dir, verified_at, &mut buf);
                        match r {
                            Ok(p) => {
                                sum.linked += p.linked;
                                sum.copied += p.copied;
                                sum.bytes_copied += p.bytes_copied;
                                sum.hashed += p.hashed;
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                        let k = done.fetch_add(1, Ordering::SeqCst) + 1;
                        if k % 100 == 0 {
                            crate::crash::checkpoint(&format!("build file {k}"));
                        }
                    }
                    Ok(sum)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(worker_panicked())))
            .collect()
    });
    let mut stats = BuildStats::default();
    for p in parts {
        let p = p?;
        stats.linked += p.linked;
        stats.copied += p.copied;
        stats.bytes_copied += p.bytes_copied;
        stats.hashed += p.hashed;
    }
    stats.verified = jobs.len();
    Ok(stats)
}

/// Place one file and check it.
fn place_one(
    job: &Job,
    upgrade_dir: &Path,
    cur_dir: &Path,
    build_dir: &Path,
    verified_at: Option<SystemTime>,
    buf: &mut [u8],
) -> Result<Placed, DeployError> {
    let dest = build_dir.join(job.rel);
    let cur_src = cur_dir.join(job.rel);
    let staged: PathBuf;
    let mut placed = Placed::default();
    let copy_from = match &job.how {
        Place::LinkCurrent => match std::fs::hard_link(&cur_src, &dest) {
            Ok(()) => {
                placed.linked = 1;
                if unchanged_since(&dest, job.meta, verified_at)? {
                    return Ok(placed);
                }
                None
            }
            Err(e) => {
                tracing::warn!(file = job.rel, error = %e, "cannot hard-link from the current version; copying");
                staged = DeployPlan::staged_file(upgrade_dir, job.kind, job.rel);
                Some(if staged.is_file() {
                    staged.as_path()
                } else {
                    cur_src.as_path()
                })
            }
        },
        Place::Staged(staged) => {
            if sole_name(staged)? && std::fs::hard_link(staged, &dest).is_ok() {
                fsutil::set_mode(&dest, job.meta.mode)?;
                placed.copied = 1;
                placed.bytes_copied = job.meta.size;
                None
            } else {
                Some(staged.as_path())
            }
        }
        Place::CopyCurrent => Some(cur_src.as_path()),
    };
    if let Some(src) = copy_from {
        let n = std::fs::copy(src, &dest).map_err(io_err(&dest))?;
        fsutil::set_mode(&dest, job.meta.mode)?;
        placed.copied = 1;
        placed.bytes_copied = n;
    }
    check_file(&dest, job.meta, buf)?;
    placed.hashed = 1;
    Ok(placed)
}

/// Is `p` the only name of its inode? Only then may the new version take it
/// over by a link: a staged file sharing an inode with anything else (say, a
/// file of an installed version) must not have its mode changed under it.
fn sole_name(p: &Path) -> Result<bool, DeployError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).map_err(io_err(p))?;
    Ok(md.is_file() && md.nlink() == 1)
}

/// A linked file needs no new digest when its inode is the one the current
/// version checked: a regular file of the manifest's size and mode, last
/// modified before the current version's meta was written (a write of any
/// kind since moves its mtime past that).
fn unchanged_since(
    p: &Path,
    meta: &FileMeta,
    verified_at: Option<SystemTime>,
) -> Result<bool, DeployError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(at) = verified_at else {
        return Ok(false);
    };
    let md = std::fs::symlink_metadata(p).map_err(io_err(p))?;
    Ok(md.is_file()
        && md.len() == meta.size
        && md.permissions().mode() & 0o7777 == meta.mode & 0o7777
        && md.modified().is_ok_and(|m| m < at))
}

/// When a version dir's files were last all checked: the oldest mtime of its
/// `meta/*.meta.json`, which the build and the fresh install write only after
/// every file of the version passed its digest check. `None` (hash everything)
/// when there is no meta or its times cannot be read.
pub fn verified_at(meta_dir: &Path) -> Option<SystemTime> {
    let mut oldest: Option<SystemTime> = None;
    for e in std::fs::read_dir(meta_dir).ok()? {
        let e = e.ok()?;
        if !e.file_name().to_string_lossy().ends_with(".meta.json") {
            continue;
        }
        let m = e.metadata().ok()?.modified().ok()?;
        oldest = Some(oldest.map_or(m, |o| o.min(m)));
    }
    oldest
}

/// Read buffer of one hashing worker.
const HASH_BUF: usize = 256 * 1024;

/// Worker threads for `n` files: the cores, at most 8, at most one per file.
fn workers(n: usize) -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(n.max(1))
}

fn worker_panicked() -> DeployError {
    DeployError::Install {
        home: PathBuf::new(),
        reason: "digest worker panicked".into(),
    }
}

/// Check one file's digest and mode against its manifest entry.
fn check_file(p: &Path, m: &FileMeta, buf: &mut [u8]) -> Result<(), DeployError> {
    let actual = fsutil::sha256_file_with(p, buf)?;
    if !actual.eq_ignore_ascii_case(&m.sha256) {
        return Err(DeployError::Digest {
            path: p.to_path_buf(),
            expected: m.sha256.clone(),
            actual,
        });
    }
    let mode = fsutil::mode_of(p)?;
    if mode != m.mode & 0o7777 {
        return Err(DeployError::Mode {
            path: p.to_path_buf(),
            expected: m.mode,
            actual: mode,
        });
    }
    Ok(())
}

/// Write `meta/<kind>.meta.json` for each package into a version dir, each
/// file atomically and fsync'd.
pub fn write_meta(version_dir: &Path, packages: &[InstalledPackage]) -> Result<(), DeployError> {
    write_meta_files(version_dir, packages, true)
}

/// [`write_meta`] into a directory not yet in place, flushed by the caller's
/// `syncfs` before it is renamed in: no fsync per file. Written last, so its
/// mtime is when every file of the version had been checked ([`verified_at`]).
fn write_meta_files(
    version_dir: &Path,
    packages: &[InstalledPackage],
    durable: bool,
) -> Result<(), DeployError> {
    let meta = molt_layout::meta_dir_in(version_dir);
    std::fs::create_dir_all(&meta).map_err(io_err(&meta))?;
    for p in packages {
        let f = meta.join(format!("{}.meta.json", p.kind));
        if durable {
            molt_layout::write_json_atomic(&f, p)?;
        } else {
            let bytes = serde_json::to_vec_pretty(p).map_err(|source| DeployError::Json {
                path: f.clone(),
                source,
            })?;
            std::fs::write(&f, bytes).map_err(io_err(&f))?;
        }
    }
    Ok(())
}

/// [`write_meta`] for a build or install directory that is synced as a whole.
pub(crate) fn write_meta_unsynced(
    version_dir: &Path,
    packages: &[InstalledPackage],
) -> Result<(), DeployError> {
    write_meta_files(version_dir, packages, false)
}

/// Check digest and mode of every file, on all cores.
pub fn verify_files(files: &[(PathBuf, &FileMeta)]) -> Result<(), DeployError> {
    let chunk = files.len().div_ceil(workers(files.len())).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<(), DeployError> {
                    let mut buf = vec![0u8; HASH_BUF];
                    part.iter()
                        .try_for_each(|(p, m)| check_file(p, m, &mut buf))
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap_or_else(|_| Err(worker_panicked()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::DeployOptions;

    /// v1 of `files` (path -> bytes, mode 0o644) installed by the real fresh
    /// install, with its payload's mtimes an hour before its meta.
    fn installed(t: &Path, files: &[(&str, &[u8])]) -> (Home, InstalledPackage) {
        let home = Home::new(t.join("home"));
        let src = t.join("src");
        let mut pkg = InstalledPackage {
            kind: "core".into(),
            name: "molt-core.v1.universal.universal.zip".into(),
            version: "v1".into(),
            files: BTreeMap::new(),
        };
        for (rel, bytes) in files {
            let p = src.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            fsutil::set_mode(&p, 0o644).unwrap();
            let meta = FileMeta {
                size: bytes.len() as u64,
                sha256: fsutil::sha256_bytes(bytes),
                mode: 0o644,
            };
            pkg.files.insert(rel.to_string(), meta);
        }
        crate::install::fresh_install(&home, &[(pkg.clone(), src)]).unwrap();
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        for rel in pkg.files.keys() {
            let f = std::fs::File::options()
                .write(true)
                .open(home.version_dir("v1").join(rel))
                .unwrap();
            f.set_modified(hour_ago).unwrap();
        }
        (home, pkg)
    }

    /// A plan v1 -> v2 where `changed` get new content, staged in `up`.
    fn plan_v2(up: &Path, v1: &InstalledPackage, changed: &[(&str, &[u8])]) -> DeployPlan {
        let mut pkg = v1.clone();
        pkg.version = "v2".into();
        for (rel, bytes) in changed {
            let p = DeployPlan::staged_file(up, "core", rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            let m = pkg.files.get_mut(*rel).unwrap();
            m.sha256 = fsutil::sha256_bytes(bytes);
            m.size = bytes.len() as u64;
        }
        DeployPlan {
            attempt_id: None,
            control_plane: None,
            from_version: "v1".into(),
            to_version: "v2".into(),
            packages: vec![pkg],
            changed_files: changed.iter().map(|(r, _)| r.to_string()).collect(),
            options: DeployOptions::default(),
        }
    }

    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn unchanged_links_are_checked_by_inode_times_and_changed_files_are_hashed() {
        let t = tempfile::tempdir().unwrap();
        let (home, v1) = installed(t.path(), &[("a", b"aaa"), ("b", b"bbb"), ("c", b"ccc")]);
        let up = t.path().join("up");
        let plan = plan_v2(&up, &v1, &[("b", b"BBBB")]);
        let build = home.version_scratch_dir("v2", "build", 1);
        let (_, stats) = build_version(&home, &plan, &up, &build).unwrap();
        assert_eq!((stats.linked, stats.copied, stats.hashed), (2, 1, 1));
        assert_eq!(stats.verified, 3);
        assert_eq!(std::fs::read(build.join("b")).unwrap(), b"BBBB");
        // the changed file took over the staged inode; the others share v1's
        assert_eq!(
            inode(&build.join("b")),
            inode(&DeployPlan::staged_file(&up, "core", "b"))
        );
        assert_eq!(
            inode(&build.join("a")),
            inode(&home.version_dir("v1").join("a"))
        );
        verify_version_dir(&build).unwrap();
    }

    #[test]
    fn a_file_of_the_current_version_written_since_it_was_checked_is_hashed_and_refused() {
        let t = tempfile::tempdir().unwrap();
        let (home, v1) = installed(t.path(), &[("a", b"aaa"), ("b", b"bbb")]);
        // same size, new content, mtime now: after the meta was written
        std::fs::write(home.version_dir("v1").join("a"), b"AAA").unwrap();
        let up = t.path().join("up");
        let plan = plan_v2(&up, &v1, &[("b", b"BBBB")]);
        let build = home.version_scratch_dir("v2", "build", 2);
        let e = build_version(&home, &plan, &up, &build).unwrap_err();
        assert!(matches!(e, DeployError::Digest { .. }), "{e}");
    }

    #[test]
    fn without_a_readable_meta_time_every_linked_file_is_hashed() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(verified_at(&t.path().join("no-meta")), None);
        let (home, v1) = installed(t.path(), &[("a", b"aaa"), ("b", b"bbb")]);
        let at = verified_at(&home.meta_dir_of("v1")).unwrap();
        let a = home.version_dir("v1").join("a");
        assert!(unchanged_since(&a, &v1.files["a"], Some(at)).unwrap());
        assert!(!unchanged_since(&a, &v1.files["a"], None).unwrap());
        // a file's mtime at or after the meta's is not trusted
        let f = std::fs::File::options().write(true).open(&a).unwrap();
        f.set_modified(at).unwrap();
        assert!(!unchanged_since(&a, &v1.files["a"], Some(at)).unwrap());
    }

    #[test]
    fn a_staged_file_with_another_name_is_copied_so_that_name_keeps_its_mode() {
        let t = tempfile::tempdir().unwrap();
        let (home, v1) = installed(t.path(), &[("a", b"aaa"), ("b", b"bbb")]);
        let up = t.path().join("up");
        let mut plan = plan_v2(&up, &v1, &[("b", b"BBBB")]);
        plan.packages[0].files.get_mut("b").unwrap().mode = 0o600;
        let staged = DeployPlan::staged_file(&up, "core", "b");
        fsutil::set_mode(&staged, 0o644).unwrap();
        let other = t.path().join("other-name");
        std::fs::hard_link(&staged, &other).unwrap();
        let build = home.version_scratch_dir("v2", "build", 3);
        let (_, stats) = build_version(&home, &plan, &up, &build).unwrap();
        assert_eq!(stats.copied, 1);
        assert_ne!(inode(&build.join("b")), inode(&other));
        assert_eq!(fsutil::mode_of(&build.join("b")).unwrap(), 0o600);
        assert_eq!(fsutil::mode_of(&other).unwrap(), 0o644);
    }
}
