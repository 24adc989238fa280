//! Download Upgrade Packages: fetch the missing packages into
//! `package/incoming` and verify each against the trust root (a package that
//! fails is deleted). Side bundles (precheck, selector) are fetched the same
//! way into their own scratch directory and extracted there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use molt_protocol::{Stage, StageState};

use super::version_check::PackagePlan;
use super::{Attempt, ControlPlane, Pipeline};
use crate::client::{Assigned, AssignedPackage, ClientError};
use crate::deps::{self, DepError, Trust, VerifiedPackage};
use crate::download::{DownloadError, DownloadOptions, DownloadSpec, Outcome};

/// Why a package could not be downloaded and verified.
#[derive(Debug, thiserror::Error)]
pub enum DownloadStageError {
    /// The trust root could not be loaded.
    #[error(transparent)]
    Trust(DepError),
    /// The package's URL is not one.
    #[error(transparent)]
    Url(#[from] ClientError),
    #[error(transparent)]
    Fetch(#[from] DownloadError),
    #[error("verify task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("Package {name} refused and deleted: {source}")]
    Refused {
        name: String,
        #[source]
        source: DepError,
    },
}

/// Why a side bundle (precheck, selector) could not be fetched and extracted.
#[derive(Debug, thiserror::Error)]
pub enum SideBundleError {
    #[error(transparent)]
    Download(#[from] DownloadStageError),
    #[error("extract task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Extract(DepError),
}

/// A downloaded, verified package.
pub struct Verified {
    pub package: AssignedPackage,
    pub path: PathBuf,
    pub verified: VerifiedPackage,
}

impl<P: ControlPlane> Pipeline<'_, P> {
    fn trust(&self) -> Result<Trust, DownloadStageError> {
        deps::load_trust(&self.cfg.trust_root, &self.home.state_dir())
            .map_err(DownloadStageError::Trust)
    }

    /// Download Upgrade Packages: every missing package of `plan`.
    pub async fn download_stage(
        &self,
        attempt: &Attempt<'_, P>,
        plan: &PackagePlan,
        assigned: &Assigned,
    ) -> Result<Vec<Verified>, DownloadStageError> {
        attempt.hold(Stage::Download).await;
        attempt
            .stage(
                Stage::Download,
                StageState::InProgress,
                &plan.missing.join(", "),
            )
            .await;
        let missing: Vec<&AssignedPackage> = assigned
            .packages
            .iter()
            .filter(|p| plan.missing.contains(&p.name))
            .collect();
        let trust = Arc::new(self.trust()?);
        let mut verified = Vec::new();
        for p in missing {
            let (path, v) = self
                .download_and_verify(p, &self.home.incoming_dir(), trust.clone())
                .await?;
            verified.push(Verified {
                package: p.clone(),
                path,
                verified: v,
            });
        }
        attempt
            .stage(
                Stage::Download,
                StageState::Complete,
                &format!("{} package(s)", verified.len()),
            )
            .await;
        Ok(verified)
    }

    /// Download one package, then verify it against the trust root; a package that
    /// fails verification is deleted.
    pub async fn download_and_verify(
        &self,
        p: &AssignedPackage,
        dir: &Path,
        trust: Arc<Trust>,
    ) -> Result<(PathBuf, VerifiedPackage), DownloadStageError> {
        let dest = dir.join(&p.name);
        let (url, bearer) = if self.cfg.download_through_control_plane {
            (
                self.plane.resolve(&format!("/packages/{}", p.name)),
                Some(self.plane.token().to_string()),
            )
        } else {
            let same_host = self
                .plane
                .resolve(&p.url)
                .map(|u| u.origin() == self.plane.base().origin())
                .unwrap_or(false);
            (
                self.plane.resolve(&p.url),
                same_host.then(|| self.plane.token().to_string()),
            )
        };
        let spec = DownloadSpec {
            name: p.name.clone(),
            url: url?,
            bearer,
            dest: dest.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
        };
        let opts = DownloadOptions {
            backoff: Duration::from_millis(self.cfg.download_backoff_ms),
            ..DownloadOptions::default()
        };
        let t0 = std::time::Instant::now();
        let outcome = self.plane.download(&spec, &opts).await?;
        let download_ms = t0.elapsed().as_millis() as u64;
        let t1 = std::time::Instant::now();
        let d2 = dest.clone();
        let v = tokio::task::spawn_blocking(move || deps::verify_package(&trust, &d2))
            .await
            .map_err(DownloadStageError::Task)?;
        match v {
            Ok(v) => {
                match outcome {
                    Outcome::AlreadyPresent => {
                        tracing::info!(package = %p.name, "Package already downloaded and verified")
                    }
                    Outcome::Downloaded { resumed, attempts } => {
                        tracing::info!(package = %p.name, bytes = p.size, resumed, attempts, download_ms,
                            verify_ms = t1.elapsed().as_millis() as u64, "Package was successfully downloaded")
                    }
                }
                Ok((dest, v))
            }
            Err(source) => {
                let _ = std::fs::remove_file(&dest);
                Err(DownloadStageError::Refused {
                    name: p.name.clone(),
                    source,
                })
            }
        }
    }

    /// Download a side bundle (precheck, selector) into `dir` and extract it there.
    pub async fn fetch_side_bundle(
        &self,
        p: &AssignedPackage,
        dir: &Path,
    ) -> Result<(PathBuf, VerifiedPackage), SideBundleError> {
        let trust = Arc::new(self.trust()?);
        let (_path, v) = self.download_and_verify(p, dir, trust).await?;
        let out = dir.join("bundle");
        let (v2, o2) = (v.clone(), out.clone());
        tokio::task::spawn_blocking(move || deps::extract_package(&v2, &o2))
            .await
            .map_err(SideBundleError::Task)?
            .map_err(SideBundleError::Extract)?;
        Ok((out, v))
    }
}
