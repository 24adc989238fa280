//! Fresh install: the first version of a new home (demo, tests, `molt repair`).
use std::path::{Path, PathBuf};

use molt_layout::{Home, InstalledPackage};

use crate::error::{DeployError, io_err};
use crate::fsutil;

/// Create `versions/<v>/` from extracted packages (`(manifest, dir holding its
/// payload paths)`), write meta, and point `current` at it. `<v>` is the core
/// package's version (else the first package's). Refuses to replace a version
/// that already exists.
pub fn fresh_install(
    home: &Home,
    packages: &[(InstalledPackage, PathBuf)],
) -> Result<String, DeployError> {
    let bad = |reason: String| DeployError::Install {
        home: home.root().to_path_buf(),
        reason,
    };
    let first = packages
        .first()
        .ok_or_else(|| bad("no packages to install".into()))?;
    let version = packages
        .iter()
        .find(|(p, _)| p.kind == "core")
        .unwrap_or(first)
        .0
        .version
        .clone();
    crate::plan::check_version_name(&version).map_err(|r| bad(format!("version: {r}")))?;
    for d in [
        home.versions_dir(),
        home.conf_dir(),
        home.work_dir(),
        home.logs_dir(),
    ] {
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let final_dir = home.version_dir(&version);
    if final_dir.exists() {
        return Err(bad(format!(
            "version {version} is already installed at {}",
            final_dir.display()
        )));
    }
    let build = home.version_scratch_dir(&version, "install", std::process::id().into());
    fsutil::remove_tree(&build)?;
    let mut checks = Vec::new();
    for (pkg, src) in packages {
        for (rel, meta) in &pkg.files {
            crate::plan::check_rel_path(rel)
                .map_err(|r| bad(format!("package {}: {rel}: {r}", pkg.kind)))?;
            let from = src.join(rel);
            let to = build.join(rel);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p).map_err(io_err(p))?;
            }
            std::fs::copy(&from, &to).map_err(io_err(&from))?;
            fsutil::set_mode(&to, meta.mode)?;
            checks.push((to, meta));
        }
    }
    crate::build::verify_files(&checks)?;
    let pkgs: Vec<InstalledPackage> = packages.iter().map(|(p, _)| p.clone()).collect();
    crate::build::write_meta_unsynced(&build, &pkgs)?;
    fsutil::sync_filesystem(&build)?;
    std::fs::rename(&build, &final_dir).map_err(io_err(&final_dir))?;
    fsutil::sync_dir(&home.versions_dir())?;
    fsutil::switch_symlink(&home.current_link(), &Path::new("versions").join(&version))?;
    tracing::info!(version, "fresh install complete");
    Ok(version)
}
