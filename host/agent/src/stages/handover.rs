//! Hand-over: write the deploy plan into the upgrade directory, then start the
//! deploy runner through the agent's service manager and wait for its start
//! signal. From then on the upgrade is the runner's; this agent stops.

use molt_protocol::{FindingSeverity, Stage};
use serde_json::json;

use super::extract::Extracted;
use super::{Attempt, ControlPlane, FailedAt, Pipeline, UpgradeOutcome};
use crate::client::Finding;
use crate::deps::{self, DepError};

/// Why the hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The deploy plan could not be written (reported as an Extract failure:
    /// the upgrade directory is incomplete).
    #[error(transparent)]
    Plan(molt_deploy::DeployError),
    /// The runner did not start.
    #[error("Failed to bootstrap. {0}")]
    Bootstrap(#[source] DepError),
}

impl HandoverError {
    /// The cause, when the runner was started but never signalled or exited
    /// at once: the operator then gets an issue record.
    fn runner_not_started(&self) -> Option<&DepError> {
        match self {
            HandoverError::Bootstrap(
                cause @ DepError::Handover(
                    molt_deploy::DeployError::HandoverTimeout { .. }
                    | molt_deploy::DeployError::RunnerExited { .. },
                ),
            ) => Some(cause),
            _ => None,
        }
    }
}

impl<P: ControlPlane> Pipeline<'_, P> {
    /// Write the deploy plan and hand the upgrade to the runner.
    pub async fn hand_over(
        &self,
        attempt: &Attempt<'_, P>,
        current: String,
        target: String,
        extracted: Extracted,
    ) -> UpgradeOutcome {
        let Extracted {
            upgrade_dir,
            packages,
            changed_files,
        } = extracted;
        let plan = molt_deploy::DeployPlan {
            attempt_id: Some(attempt.id().to_string()),
            control_plane: Some(molt_deploy::ControlPlane {
                url: self.plane.base().as_str().trim_end_matches('/').to_string(),
                token: self.plane.token().to_string(),
                ca_bundle: self.cfg.ca_bundle.clone(),
                proxy: self.cfg.proxy.as_ref().map(|u| u.to_string()),
            }),
            from_version: current,
            to_version: target.clone(),
            packages,
            changed_files,
            options: self.cfg.deploy.clone(),
        };
        if let Err(e) = plan.save(&upgrade_dir.join("plan.json")) {
            let _ = std::fs::remove_dir_all(&upgrade_dir);
            return attempt
                .fail(Stage::Extract, HandoverError::Plan(e).to_string())
                .await;
        }
        if self.cfg.skip_handover {
            tracing::info!(dir = %upgrade_dir.display(), "Upgrade prepared; hand-over to deploy skipped (test_skip_handover)");
            return UpgradeOutcome::Prepared {
                to_version: target,
                upgrade_dir,
            };
        }
        tracing::info!("Stopping agent. Bootstrapping upgrade.");
        let home = self.home.clone();
        let wait = self.cfg.handover_wait_secs;
        let service = self.cfg.service.clone();
        tracing::info!(%service, "Handing over to the upgrade runner through the agent's service manager");
        let dir = upgrade_dir.clone();
        let res = tokio::task::spawn_blocking(move || deps::hand_over(&home, &dir, wait, service))
            .await
            .unwrap_or_else(|e| Err(DepError::Task(e)));
        let e = match res {
            Ok(pid) => {
                tracing::info!(runner_pid = pid, "Upgrade runner started; agent stopping");
                return UpgradeOutcome::HandedOver { to_version: target };
            }
            Err(e) => HandoverError::Bootstrap(e),
        };
        let mut msg = e.to_string();
        // The upgrade dir is removed below, but the runner's own output
        // (which the error points the operator to) must survive it.
        let runner_log = upgrade_dir.join("runner.log");
        if runner_log.is_file() {
            let name = upgrade_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kept = self.home.logs_dir().join(format!("runner-{name}.log"));
            let moved = std::fs::rename(&runner_log, &kept)
                .or_else(|_| std::fs::copy(&runner_log, &kept).map(|_| ()));
            if moved.is_ok() {
                msg = msg.replace(
                    &runner_log.display().to_string(),
                    &kept.display().to_string(),
                );
            }
        }
        tracing::error!("{msg}");
        if let Some(cause) = e.runner_not_started() {
            // The seeds' issue record: the operator sees it without reading logs.
            let finding = Finding {
                code: "upgrade.runner-not-started".into(),
                severity: FindingSeverity::Error.to_string(),
                description: format!("Unable to receive upgrade process status. {cause}"),
                remediation: "The agent stays on its version. Check that the upgrade runner can start (under systemd as an unprivileged account: the companion unit `<unit>-upgrade.path` is enabled; see docs/deploy.md), then retry the upgrade.".into(),
            };
            if let Err(err) = self
                .plane
                .report(
                    "/api/v1/agent/issues",
                    json!({"source": "Couldn't Launch Upgrade Process", "findings": [finding]}),
                )
                .await
            {
                tracing::error!(error = %err, "Cannot queue the hand-over issue");
            }
        }
        attempt.abort(&msg).await;
        let _ = std::fs::remove_dir_all(&upgrade_dir);
        UpgradeOutcome::Failed {
            stage: FailedAt::Handover,
            message: msg,
        }
    }
}
