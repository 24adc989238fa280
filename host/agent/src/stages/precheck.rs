//! Pre Upgrade Check: the target version's precheck bundle, fetched and run in
//! the sandbox against this host; its findings are reported as issues, and a
//! blocking one ends the attempt. The readiness command (runPrecheck) runs this
//! stage alone.

use std::path::{Path, PathBuf};

use molt_layout::InstalledPackage;
use molt_protocol::{Stage, StageState};
use serde_json::json;

use super::download::SideBundleError;
use super::{
    Attempt, ControlPlane, FailedAt, MAX_ANSWER, Pipeline, UpgradeOutcome, bounded, random_dir_name,
};
use crate::client::{Assigned, AssignedPackage, Finding};
use crate::deps::{self, DepError};

/// Issue source of pre-upgrade findings (the seeds' UpgradeCheck).
pub const ISSUE_SOURCE: &str = "UpgradeCheck";

/// Why the checks could not run.
#[derive(Debug, thiserror::Error)]
pub enum PrecheckError {
    #[error("the control plane assigned no precheck bundle for {version}")]
    NoBundle { version: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] SideBundleError),
    #[error("precheck task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Run(#[from] DepError),
}

/// What the checks found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrecheckResult {
    pub total: usize,
    pub blocking: usize,
    pub warnings: usize,
    /// Blocking finding codes.
    pub summary: String,
    /// Blocking findings with their descriptions (the readiness answer).
    pub details: String,
}

impl<P: ControlPlane> Pipeline<'_, P> {
    /// The Pre Upgrade Check stage of an upgrade (skipped when `run_precheck
    /// = false`). `Err` is how the attempt ended.
    pub async fn precheck_stage(
        &self,
        attempt: &Attempt<'_, P>,
        installed: &[InstalledPackage],
        assigned: &Assigned,
    ) -> Result<(), UpgradeOutcome> {
        attempt.hold(Stage::PreUpgradeCheck).await;
        if !self.cfg.run_precheck {
            attempt
                .stage(
                    Stage::PreUpgradeCheck,
                    StageState::Skipped,
                    "run_precheck = false",
                )
                .await;
            return Ok(());
        }
        attempt
            .stage(Stage::PreUpgradeCheck, StageState::InProgress, "")
            .await;
        tracing::info!("Performing pre-upgrade validation tests");
        let result = self.precheck(installed, assigned).await;
        conclude(attempt, result).await
    }

    /// Run the target version's precheck bundle and report its findings.
    pub async fn precheck(
        &self,
        _installed: &[InstalledPackage],
        assigned: &Assigned,
    ) -> Result<PrecheckResult, PrecheckError> {
        let Some(pc) = &assigned.precheck else {
            return Err(PrecheckError::NoBundle {
                version: assigned.version.clone(),
            });
        };
        let scratch_parent = self.temp_parent();
        let dir = self
            .home
            .upgrade_temp_dir()
            .join(format!("{}-precheck", &random_dir_name()[..13]));
        let result = self.precheck_in(assigned, pc, &dir, &scratch_parent).await;
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "Could not delete pre-upgrade check temp files");
        }
        let findings = result?;
        let report: Vec<Finding> = findings.iter().map(|f| f.finding.clone()).collect();
        for f in &findings {
            if f.blocking {
                tracing::error!(check = %f.check, code = %f.finding.code, "Pre-upgrade check error: {}", f.finding.description);
            } else {
                tracing::warn!(check = %f.check, code = %f.finding.code, "Pre-upgrade check warning: {}", f.finding.description);
            }
        }
        if let Err(e) = self
            .plane
            .report(
                "/api/v1/agent/issues",
                json!({"source": ISSUE_SOURCE, "findings": report}),
            )
            .await
        {
            tracing::error!(error = %e, "Cannot queue the pre-upgrade issues report");
        }
        Ok(summarize(&findings))
    }

    async fn precheck_in(
        &self,
        assigned: &Assigned,
        pc: &AssignedPackage,
        dir: &Path,
        scratch_parent: &Path,
    ) -> Result<Vec<deps::CheckFinding>, PrecheckError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PrecheckError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::create_dir_all(scratch_parent).map_err(io(scratch_parent))?;
        let (bundle_dir, v) = self.fetch_side_bundle(pc, dir).await?;
        let install_dir = self.home.root().to_path_buf();
        let cache = self.home.work_dir().join("wasm-cache");
        let facts = self.cfg.facts_override.clone();
        let ca_bundle = self.cfg.ca_bundle.clone();
        let scratch = scratch_parent.to_path_buf();
        // The checks may probe the packages' URLs and the control plane. The
        // package URLs come first: `download-access` probes the first allowed
        // URL, and the packages may come from a CDN or mirror
        // (`--package-base-url`), not from the control plane.
        let mut net_allow: Vec<String> = Vec::new();
        let base = self.plane.base().to_string();
        for u in assigned
            .packages
            .iter()
            .chain(std::iter::once(pc))
            .filter_map(|p| self.plane.resolve(&p.url).ok().map(|u| u.to_string()))
            .chain(std::iter::once(base))
        {
            if !net_allow.contains(&u) {
                net_allow.push(u);
            }
        }
        let findings = tokio::task::spawn_blocking(move || {
            deps::run_precheck(
                &deps::PrecheckRun {
                    bundle_dir: &bundle_dir,
                    install_dir: &install_dir,
                    scratch_parent: &scratch,
                    cache_dir: &cache,
                    facts_override: facts.as_deref(),
                    net_allow,
                    ca_bundle: ca_bundle.as_deref(),
                },
                &v,
            )
        })
        .await
        .map_err(PrecheckError::Task)??;
        Ok(findings)
    }

    /// runPrecheck: the Pre Upgrade Check alone, without upgrading.
    pub async fn readiness_precheck(
        &self,
        current: &str,
        installed: &[InstalledPackage],
        assigned: &Assigned,
    ) -> UpgradeOutcome {
        let precheck = assigned
            .precheck
            .as_ref()
            .map(|p| p.name.as_str())
            .unwrap_or("(none)");
        tracing::info!(from = %current, to = %assigned.version, precheck, "Performing pre-upgrade validation tests (readiness check, no upgrade): {} for {}", precheck, assigned.version);
        let v = &assigned.version;
        match self.precheck(installed, assigned).await {
            Ok(r) if r.blocking == 0 => {
                tracing::info!("Pre-upgrade validation tests successful");
                UpgradeOutcome::Ready {
                    message: format!(
                        "Ready for {v}: checks passed ({} finding(s), {} warning(s))",
                        r.total, r.warnings
                    ),
                }
            }
            Ok(r) => {
                tracing::warn!(
                    blocking = r.blocking,
                    "Pre-upgrade validation tests found blocking issues: {}",
                    r.summary
                );
                UpgradeOutcome::Blocked {
                    findings: r.blocking,
                    message: bounded(
                        format!(
                            "Not Ready for {v}: {} blocking finding(s): {}",
                            r.blocking, r.details
                        ),
                        MAX_ANSWER,
                    ),
                }
            }
            Err(e) => {
                tracing::error!("Pre-upgrade validation tests could not run: {e}");
                UpgradeOutcome::Failed {
                    stage: FailedAt::Stage(Stage::PreUpgradeCheck),
                    message: e.to_string(),
                }
            }
        }
    }
}

/// Counts and the blocking findings of a check run.
pub fn summarize(findings: &[deps::CheckFinding]) -> PrecheckResult {
    let blocking: Vec<&deps::CheckFinding> = findings.iter().filter(|f| f.blocking).collect();
    PrecheckResult {
        total: findings.len(),
        blocking: blocking.len(),
        warnings: findings.len() - blocking.len(),
        summary: blocking
            .iter()
            .map(|f| f.finding.code.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        details: blocking
            .iter()
            .map(|f| format!("{}: {}", f.finding.code, f.finding.description))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The end of the Pre Upgrade Check of an attempt: Complete when nothing
/// blocks; else the stage Failed, the attempt ended, and `Err` its outcome.
pub async fn conclude<P: ControlPlane>(
    attempt: &Attempt<'_, P>,
    result: Result<PrecheckResult, PrecheckError>,
) -> Result<(), UpgradeOutcome> {
    let (msg, outcome) = match result {
        Ok(r) if r.blocking == 0 => {
            tracing::info!(
                "Pre-upgrade validation tests successful. Continuing with upgrade process"
            );
            let msg = format!("{} finding(s), {} warning(s)", r.total, r.warnings);
            attempt
                .stage(Stage::PreUpgradeCheck, StageState::Complete, &msg)
                .await;
            return Ok(());
        }
        Ok(r) => {
            let msg = format!(
                "Aborting agent upgrade due to pre-upgrade check failure: {} blocking finding(s): {}",
                r.blocking, r.summary
            );
            let outcome = UpgradeOutcome::Blocked {
                findings: r.blocking,
                message: msg.clone(),
            };
            (msg, outcome)
        }
        Err(e) => {
            let msg = format!("Aborting agent upgrade due to pre-upgrade check failure: {e}");
            let outcome = UpgradeOutcome::Failed {
                stage: FailedAt::Stage(Stage::PreUpgradeCheck),
                message: msg.clone(),
            };
            (msg, outcome)
        }
    };
    tracing::error!("{msg}");
    attempt.failed(Stage::PreUpgradeCheck, &msg).await;
    Err(outcome)
}
