//! The deploy journal (`work/deploy.journal`): every step of a deploy that is not
//! one atomic rename is written here *before* it is taken, so a crash at any
//! point can be finished or undone.
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use molt_layout::Home;
use serde::{Deserialize, Serialize};

use crate::error::DeployError;

/// Steps in order. Before [`Step::Switching`] the old version is untouched and
/// current; from [`Step::Switched`] the new version is complete and current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Step {
    Started,
    Held,
    Building,
    Built,
    Stopping,
    Stopped,
    Switching,
    Switched,
    Starting,
    HealthCheck,
    RollingBack,
    RollbackSwitched,
    RollbackStarting,
    Complete,
    RolledBack,
    Failed,
}

/// One deploy in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub attempt_id: Option<String>,
    pub from_version: String,
    pub to_version: String,
    /// The hand-over directory (`work/upgrade_temp/<n>-0`).
    pub upgrade_dir: PathBuf,
    pub plan: PathBuf,
    pub step: Step,
    pub runner_pid: u32,
    /// Temporary build dir (`versions/.<v>.build-<n>`), renamed into place when complete.
    pub build_dir: Option<PathBuf>,
    /// `versions/<to>` was created by this deploy (so undo may remove it).
    pub created_version_dir: bool,
    /// When the service was (re)started; the health check wants a status newer than this.
    pub restart_at: Option<DateTime<Utc>>,
    /// Why a rollback started.
    pub reason: Option<String>,
    pub updated: DateTime<Utc>,
}

impl Journal {
    pub fn load(home: &Home) -> Result<Option<Journal>, DeployError> {
        Ok(molt_layout::read_json_opt(&home.journal_file())?)
    }

    /// Record `step` durably (atomic write + fsync), then pass the crash checkpoint.
    pub fn set(&mut self, home: &Home, step: Step) -> Result<(), DeployError> {
        self.step = step;
        self.save(home)?;
        tracing::info!(step = ?step, to = %self.to_version, "deploy journal step");
        crate::crash::checkpoint(&format!("journal {step:?}"));
        Ok(())
    }

    pub fn save(&mut self, home: &Home) -> Result<(), DeployError> {
        self.updated = Utc::now();
        molt_layout::write_json_atomic(&home.journal_file(), self)?;
        Ok(())
    }

    pub fn remove(home: &Home) -> Result<(), DeployError> {
        crate::fsutil::remove_file_opt(&home.journal_file())
    }

    pub fn lock_path(home: &Home) -> PathBuf {
        home.deploy_lock_file()
    }
}

/// The outcome of the last deploy, kept for `molt status` and `molt diagnose`
/// (`work/last-deploy.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDeploy {
    pub attempt_id: Option<String>,
    pub from_version: String,
    pub to_version: String,
    pub result: molt_protocol::AttemptResult,
    pub message: String,
    /// The version `current` points at afterwards.
    pub running_version: String,
    pub at: DateTime<Utc>,
}

pub fn last_deploy_file(home: &Home) -> PathBuf {
    home.last_deploy_file()
}

pub fn write_last(home: &Home, last: &LastDeploy) -> Result<(), DeployError> {
    molt_layout::write_json_atomic(&last_deploy_file(home), last)?;
    Ok(())
}

pub fn read_last(home: &Home) -> Result<Option<LastDeploy>, DeployError> {
    Ok(molt_layout::read_json_opt(&last_deploy_file(home))?)
}

/// Is the journal path under the home's work dir (sanity for paths read back)?
pub fn inside(home: &Home, p: &Path) -> bool {
    p.starts_with(home.root())
}
