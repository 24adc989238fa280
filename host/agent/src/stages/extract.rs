//! Extract Upgrade Packages: the verified packages into a new `<random>-0`
//! upgrade directory, and the list of files the new version changes.

use std::path::{Path, PathBuf};

use molt_layout::InstalledPackage;
use molt_protocol::{Stage, StageState};

use super::download::{Content, Verified};
use super::{Attempt, ControlPlane, Pipeline, random_dir_name};
use crate::deps::{self, DepError};

/// Why the packages could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("extract task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Package(#[from] DepError),
    #[error(transparent)]
    Delta(#[from] crate::delta::DeltaError),
}

/// The extracted upgrade: its directory, the new version's packages and the
/// files that differ from the installed version.
pub struct Extracted {
    pub upgrade_dir: PathBuf,
    pub packages: Vec<InstalledPackage>,
    pub changed_files: Vec<String>,
}

/// Changed files: payload paths of the new packages whose digest, mode or size
/// differs from the installed manifest (or that are new). Everything else is
/// hard-linked. The one diff of the agent: a delta download stages exactly these.
pub fn changed_files(installed: &[InstalledPackage], new: &[InstalledPackage]) -> Vec<String> {
    fn files(ps: &[InstalledPackage]) -> Vec<(&str, (&str, u32, u64))> {
        ps.iter()
            .flat_map(|p| p.files.iter())
            .map(|(f, m)| (f.as_str(), (m.sha256.as_str(), m.mode, m.size)))
            .collect()
    }
    let d = molt_bundle::ManifestDiff::between(files(installed), files(new));
    let mut out = d.added;
    out.extend(d.changed);
    out.sort();
    out
}

impl<P: ControlPlane> Pipeline<'_, P> {
    /// Extract Upgrade Packages. On failure the upgrade directory is removed.
    pub async fn extract_stage(
        &self,
        attempt: &Attempt<'_, P>,
        installed: &[InstalledPackage],
        verified: &[Verified],
    ) -> Result<Extracted, ExtractError> {
        attempt.hold(Stage::Extract).await;
        attempt
            .stage(Stage::Extract, StageState::InProgress, "")
            .await;
        tracing::info!("Upgrading agent");
        let upgrade_dir = self.temp_parent().join(random_dir_name());
        let packages = match extract_all(verified, &upgrade_dir).await {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&upgrade_dir);
                return Err(e);
            }
        };
        let changed = changed_files(installed, &packages);
        tracing::info!(count = changed.len(), dir = %upgrade_dir.display(), "Changed files the new version directory must receive");
        attempt
            .stage(
                Stage::Extract,
                StageState::Complete,
                &format!("{} changed file(s)", changed.len()),
            )
            .await;
        Ok(Extracted {
            upgrade_dir,
            packages,
            changed_files: changed,
        })
    }
}

/// Extract every package under `upgrade_dir/packages/<kind>`; the new
/// version's packages (the runner package is not one of them).
async fn extract_all(
    verified: &[Verified],
    upgrade_dir: &Path,
) -> Result<Vec<InstalledPackage>, ExtractError> {
    std::fs::create_dir_all(upgrade_dir).map_err(|source| ExtractError::Io {
        path: upgrade_dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for Verified {
        package: p,
        content,
    } in verified
    {
        let v = match content {
            Content::Full { verified: v, .. } => v,
            Content::Delta(s) => {
                // Only the files the deploy must receive; it links the rest.
                let dest = upgrade_dir.join("packages").join(&s.package.kind);
                let (from, to) = (s.dir.clone(), dest.clone());
                tokio::task::spawn_blocking(move || crate::delta::move_staged(&from, &to))
                    .await
                    .map_err(ExtractError::Task)??;
                tracing::info!(package = %p.name, files = s.staged.len(), "Package extracted (delta: the changed files only)");
                if s.package.kind != molt_bundle::BundleKind::Upgrade.as_str() {
                    out.push(s.package.clone());
                }
                continue;
            }
        };
        let dest = upgrade_dir.join("packages").join(&v.kind);
        let (v2, dest2) = (v.clone(), dest.clone());
        let t0 = std::time::Instant::now();
        let files = tokio::task::spawn_blocking(move || deps::extract_package(&v2, &dest2))
            .await
            .map_err(ExtractError::Task)??;
        for f in &files {
            tracing::info!("Extracting: {}", dest.join(f).display());
        }
        tracing::info!(package = %p.name, files = files.len(), extract_ms = t0.elapsed().as_millis() as u64, "Package extracted");
        // The runner package runs the deploy; it is not part of the new version dir.
        if v.kind != molt_bundle::BundleKind::Upgrade.as_str() {
            out.push(v.installed(&p.name));
        }
    }
    Ok(out)
}
