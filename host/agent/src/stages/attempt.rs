//! One upgrade attempt on the control plane's Upgrade History: the recorder of
//! its stages (logged and reported), its end, and the test hook that holds the
//! pipeline before a stage.

use std::time::Duration;

use molt_layout::Home;
use molt_protocol::{AttemptResult, FinishReport, Stage, StageReport, StageState};

use super::{ControlPlane, FailedAt, UpgradeOutcome};
use crate::service::Status;

/// An open attempt: what it reports goes to `attempts/{id}`.
pub struct Attempt<'a, P> {
    plane: &'a P,
    id: String,
    /// The agent's status when the attempt fails.
    fail_status: Status,
    home: &'a Home,
    test_hooks: bool,
}

impl<'a, P: ControlPlane> Attempt<'a, P> {
    pub fn new(
        plane: &'a P,
        id: String,
        fail_status: Status,
        home: &'a Home,
        test_hooks: bool,
    ) -> Self {
        Self {
            plane,
            id,
            fail_status,
            home,
            test_hooks,
        }
    }

    /// The control plane's attempt id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The control plane this attempt reports to.
    pub fn plane(&self) -> &'a P {
        self.plane
    }

    /// Log and report one stage event.
    pub async fn stage(&self, stage: Stage, state: StageState, message: &str) {
        let (stage_word, state_word) = (stage.as_str(), state.as_str());
        let line = molt_protocol::stage_line(stage, state, message);
        tracing::info!(stage = stage_word, state = state_word, "{line}");
        let body = StageReport::now(stage, state, message).to_value();
        if let Err(e) = self
            .plane
            .report(&format!("/api/v1/agent/attempts/{}/stages", self.id), body)
            .await
        {
            tracing::error!(error = %e, "Cannot queue stage report");
        }
    }

    /// Report how the attempt ended.
    pub async fn finish(&self, result: AttemptResult, message: &str) {
        let body = FinishReport {
            result,
            message: message.to_string(),
        }
        .to_value();
        if let Err(e) = self
            .plane
            .report(&format!("/api/v1/agent/attempts/{}/finish", self.id), body)
            .await
        {
            tracing::error!(error = %e, "Cannot queue attempt result");
        }
    }

    /// `stage` failed: record it, end the attempt as Failed and leave Upgrading.
    pub async fn failed(&self, stage: Stage, message: &str) {
        self.stage(stage, StageState::Failed, message).await;
        self.abort(message).await;
    }

    /// The attempt failed outside a stage: end it as Failed and leave Upgrading.
    pub async fn abort(&self, message: &str) {
        self.finish(AttemptResult::Failed, message).await;
        end_upgrade(self.plane, self.fail_status).await;
    }

    /// `stage` failed with `message`: logged, recorded, the attempt ended.
    pub async fn fail(&self, stage: Stage, message: String) -> UpgradeOutcome {
        tracing::error!(stage = stage.as_str(), "{message}");
        self.failed(stage, &message).await;
        UpgradeOutcome::Failed {
            stage: FailedAt::Stage(stage),
            message,
        }
    }

    /// Test hook (`test_hooks = true`): wait before `stage` while
    /// `work/hold.<stage-slug>` exists.
    pub async fn hold(&self, stage: Stage) {
        let stage = stage.as_str();
        let slug: String = stage
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("-");
        let file = self.home.work_dir().join(format!("hold.{slug}"));
        if !self.test_hooks || !file.exists() {
            return;
        }
        tracing::info!(stage, file = %file.display(), "Holding before stage (test hook)");
        while file.exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(stage, "Released hold (test hook)");
    }
}

/// Give back the slot and leave Upgrading.
pub async fn end_upgrade<P: ControlPlane>(plane: &P, status: Status) {
    if let Err(e) = plane.release_slot().await {
        tracing::warn!(error = %e, "Could not release the upgrade slot (the lease will expire)");
    }
    plane.publish_status(status).await;
}
