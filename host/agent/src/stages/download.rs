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
use crate::delta;
use crate::deps::{self, DepError, Trust, VerifiedPackage};
use crate::download::{Check, DownloadError, DownloadOptions, DownloadSpec, Outcome};

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
    pub content: Content,
}

/// What the download left for the extract stage.
pub enum Content {
    /// The whole package file, verified.
    Full {
        path: PathBuf,
        verified: Box<VerifiedPackage>,
    },
    /// Only the files the deploy must receive, checked entry by entry against
    /// the verified manifest (a delta download).
    Delta(delta::Staged),
}

/// Bytes fetched for one package and how.
struct Fetched {
    bytes: u64,
    delta: bool,
    /// Why a full download was used although a delta was possible to try.
    fallback: Option<String>,
}

/// The Download stage's message: `fetched X of Y bytes (delta|full)`, with the
/// reason of every fallback to the full download.
fn fetched_message(all: &[(&AssignedPackage, Fetched)]) -> String {
    let x: u64 = all.iter().map(|(_, f)| f.bytes).sum();
    let y: u64 = all.iter().map(|(p, _)| p.size).sum();
    let mode = match (
        all.iter().any(|(_, f)| f.delta),
        all.iter().any(|(_, f)| !f.delta),
    ) {
        (true, false) => "delta",
        (true, true) => "delta+full",
        _ => "full",
    };
    let mut m = format!("fetched {x} of {y} bytes ({mode})");
    for (p, f) in all {
        if let Some(r) = &f.fallback {
            m.push_str(&format!("; full download of {}: {r}", p.name));
        }
    }
    m
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
        // A delta needs an installed version to build on.
        let installed = self.home.installed().unwrap_or_default();
        let delta_on = self.cfg.delta_downloads && self.plane.ranged_http().is_some();
        let mut local = if delta_on && !installed.is_empty() {
            let (home, trust) = (self.home.clone(), trust.clone());
            tokio::task::spawn_blocking(move || delta::local_contents(&home, &trust))
                .await
                .map_err(DownloadStageError::Task)?
        } else {
            Default::default()
        };
        let mut verified = Vec::new();
        let mut fetched = Vec::new();
        for p in missing {
            let mut fallback = None;
            // A small package is fetched whole: reading its metadata would cost
            // about as much as the file. One already in the cache is used as it is.
            let cached_whole = plan.downloaded.contains(&p.name);
            if !local.is_empty() && p.size >= delta::MIN_SIZE && !cached_whole {
                let t0 = std::time::Instant::now();
                match self.try_delta(p, &trust, &installed, &local).await {
                    Ok(staged) => {
                        fetched.push((
                            p,
                            Fetched {
                                bytes: staged.fetched,
                                delta: true,
                                fallback: None,
                            },
                        ));
                        verified.push(Verified {
                            package: p.clone(),
                            content: Content::Delta(staged),
                        });
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(package = %p.name, reason = %e, delta_ms = t0.elapsed().as_millis() as u64,
                            "Delta download not used; downloading the full package");
                        fallback = Some(e.to_string());
                    }
                }
            }
            let (path, v, bytes) = self
                .fetch_and_verify(p, &self.home.incoming_dir(), trust.clone())
                .await?;
            if !local.is_empty() {
                // Its entries are a source for the next packages' deltas (the
                // runner package and the core package share files).
                let (mut l, at, t) = (std::mem::take(&mut local), path.clone(), trust.clone());
                local = tokio::task::spawn_blocking(move || {
                    l.add_source(&at, &t);
                    l
                })
                .await
                .map_err(DownloadStageError::Task)?;
            }
            fetched.push((
                p,
                Fetched {
                    bytes,
                    delta: false,
                    fallback,
                },
            ));
            verified.push(Verified {
                package: p.clone(),
                content: Content::Full {
                    path,
                    verified: Box::new(v),
                },
            });
        }
        attempt
            .stage(
                Stage::Download,
                StageState::Complete,
                &fetched_message(&fetched),
            )
            .await;
        Ok(verified)
    }

    /// The package's URL and the bearer token it gets (only the control plane's own host).
    fn package_url(
        &self,
        p: &AssignedPackage,
    ) -> Result<(reqwest::Url, Option<String>), DownloadStageError> {
        if self.cfg.download_through_control_plane {
            return Ok((
                self.plane.resolve(&format!("/packages/{}", p.name))?,
                Some(self.plane.token().to_string()),
            ));
        }
        let url = self.plane.resolve(&p.url)?;
        let same_host = url.origin() == self.plane.base().origin();
        Ok((url, same_host.then(|| self.plane.token().to_string())))
    }

    /// Fetch `p` by delta into `package/incoming/<name>.delta`.
    async fn try_delta(
        &self,
        p: &AssignedPackage,
        trust: &Arc<Trust>,
        installed: &[molt_layout::InstalledPackage],
        local: &delta::LocalContents,
    ) -> Result<delta::Staged, delta::DeltaError> {
        let Some(http) = self.plane.ranged_http() else {
            return Err(delta::DeltaError::Metadata("no ranged HTTP client".into()));
        };
        let (url, bearer) = self
            .package_url(p)
            .map_err(|e| delta::DeltaError::Metadata(e.to_string()))?;
        let src = delta::DeltaSource {
            http,
            url: &url,
            bearer: bearer.as_deref(),
            name: &p.name,
            size: p.size,
        };
        let staging = self.home.incoming_dir().join(format!("{}.delta", p.name));
        let t0 = std::time::Instant::now();
        let s = delta::fetch(&src, trust, installed, local, &staging).await?;
        tracing::info!(package = %p.name, mode = "delta", fetched = s.fetched, bytes = p.size,
            staged = s.staged.len(), reused = s.reused, cached = s.cached, requests = s.requests,
            download_ms = t0.elapsed().as_millis() as u64, "Package was successfully downloaded");
        Ok(s)
    }

    /// Download one package, then verify it against the trust root; a package that
    /// fails verification is deleted. The download does not hash the file: the
    /// signature check reads every byte anyway. Only when that fails is the file
    /// hashed: a digest other than the control plane's means a damaged transfer,
    /// fetched once more (hashed while streaming) and verified again.
    pub async fn download_and_verify(
        &self,
        p: &AssignedPackage,
        dir: &Path,
        trust: Arc<Trust>,
    ) -> Result<(PathBuf, VerifiedPackage), DownloadStageError> {
        self.fetch_and_verify(p, dir, trust)
            .await
            .map(|(path, v, _)| (path, v))
    }

    /// [`Self::download_and_verify`], also giving the bytes fetched.
    async fn fetch_and_verify(
        &self,
        p: &AssignedPackage,
        dir: &Path,
        trust: Arc<Trust>,
    ) -> Result<(PathBuf, VerifiedPackage, u64), DownloadStageError> {
        let dest = dir.join(&p.name);
        let (url, bearer) = self.package_url(p)?;
        let spec = DownloadSpec {
            name: p.name.clone(),
            url,
            bearer,
            dest: dest.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
            check: Check::Deferred,
        };
        let opts = DownloadOptions {
            backoff: Duration::from_millis(self.cfg.download_backoff_ms),
            ..DownloadOptions::default()
        };
        let t0 = std::time::Instant::now();
        let mut outcome = self.plane.download(&spec, &opts).await?;
        let download_ms = t0.elapsed().as_millis() as u64;
        let t1 = std::time::Instant::now();
        let mut v = verify(&trust, &dest).await?;
        if v.is_err() && transfer_damaged(&dest, &p.sha256).await? {
            tracing::warn!(package = %p.name, "Downloaded file is corrupt (sha256 mismatch); deleting it and fetching again");
            let _ = std::fs::remove_file(&dest);
            let again = DownloadSpec {
                check: Check::Streaming,
                ..spec
            };
            outcome = self.plane.download(&again, &opts).await?;
            v = verify(&trust, &dest).await?;
        }
        match v {
            Ok(v) => {
                match outcome {
                    Outcome::AlreadyPresent => {
                        tracing::info!(package = %p.name, "Package already downloaded and verified")
                    }
                    Outcome::Downloaded { resumed, attempts } => {
                        tracing::info!(package = %p.name, mode = "full", bytes = p.size, resumed, attempts, download_ms,
                            verify_ms = t1.elapsed().as_millis() as u64, "Package was successfully downloaded")
                    }
                }
                let fetched = match outcome {
                    Outcome::AlreadyPresent => 0,
                    Outcome::Downloaded { .. } => p.size,
                };
                Ok((dest, v, fetched))
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

/// Verify `path` against the trust root on the blocking pool.
async fn verify(
    trust: &Arc<Trust>,
    path: &Path,
) -> Result<Result<VerifiedPackage, DepError>, DownloadStageError> {
    let (t, p) = (trust.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || deps::verify_package(&t, &p))
        .await
        .map_err(DownloadStageError::Task)
}

/// True when `path` exists and its SHA-256 is not the control plane's `want`.
async fn transfer_damaged(path: &Path, want: &str) -> Result<bool, DownloadStageError> {
    let p = path.to_path_buf();
    let got = tokio::task::spawn_blocking(move || crate::download::file_sha256(&p))
        .await
        .map_err(DownloadStageError::Task)?;
    Ok(match got {
        Ok((sha, _)) => !sha.eq_ignore_ascii_case(want),
        Err(_) => false,
    })
}
