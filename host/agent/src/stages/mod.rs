//! One upgrade: the version check, then the Upgrade History stages the agent
//! owns (Pre Upgrade Check, Download Upgrade Packages, Extract Upgrade
//! Packages), then the hand-over to deploy. One module per stage, each with its
//! own error type:
//!
//! - [`version_check`]: what is assigned, what is missing, the selector's
//!   decision ([`VersionCheckError`], [`version_check::SelectorError`]);
//! - [`precheck`]: the target version's checks in the sandbox
//!   ([`precheck::PrecheckError`]);
//! - [`download`]: the missing packages, verified against the trust root
//!   ([`download::DownloadStageError`]);
//! - [`extract`]: the packages into a new upgrade directory
//!   ([`extract::ExtractError`]);
//! - [`handover`]: the deploy plan, then the runner
//!   ([`handover::HandoverError`]).
//!
//! [`Attempt`] records the attempt's stages and its end on the control plane's
//! Upgrade History; every control-plane call goes through [`ControlPlane`], so
//! the [`Pipeline`] runs against a recording fake in the unit tests.

pub mod attempt;
pub mod control;
pub mod download;
pub mod extract;
pub mod handover;
pub mod precheck;
pub mod version_check;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use molt_layout::Home;
use molt_protocol::Stage;

use crate::config::AgentConfig;
use crate::service::{Agent, Status};

pub use attempt::Attempt;
pub use control::ControlPlane;
pub use extract::changed_files;
pub use precheck::ISSUE_SOURCE;
pub use version_check::{PackagePlan, VersionCheckError, plan_packages};

/// Where an attempt failed: one of the agent's stages, or the hand-over
/// (which is not an Upgrade History stage of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedAt {
    Stage(Stage),
    Handover,
}

impl std::fmt::Display for FailedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailedAt::Stage(s) => f.write_str(s.as_str()),
            FailedAt::Handover => f.write_str("Hand-over"),
        }
    }
}

/// Why an upgrade check ended.
#[derive(Debug)]
pub enum UpgradeOutcome {
    /// Installed is Assigned: nothing to do.
    UpToDate,
    /// The upgrade is with the deploy runner; this agent must stop.
    HandedOver { to_version: String },
    /// Everything prepared, hand-over disabled (tests).
    Prepared {
        to_version: String,
        upgrade_dir: PathBuf,
    },
    /// Blocking pre-upgrade findings; `message` names them (the command's answer).
    Blocked { findings: usize, message: String },
    /// A readiness check (runPrecheck) passed.
    Ready { message: String },
    /// The command asked for something this agent does not do (a version
    /// against its pin); nothing was done.
    Refused { message: String },
    /// A stage failed.
    Failed { stage: FailedAt, message: String },
    /// The control plane could not be asked.
    CheckFailed { message: String },
    /// The assigned version was rolled back on this agent and is backing off
    /// (see [`crate::backoff`]).
    HeldAfterRollback { message: String },
}

/// What the agent is doing this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Upgrade,
    /// The control plane's runPrecheck readiness command: checks only.
    PrecheckOnly,
}

/// The upgrade pipeline of one agent home: its configuration, its control
/// plane, and the agent state a check reads and leaves.
pub struct Pipeline<'a, P> {
    pub home: &'a Home,
    pub cfg: &'a AgentConfig,
    pub plane: &'a P,
    /// The version the control plane assigned at the last version check.
    pub last_assigned: &'a std::sync::Mutex<Option<String>>,
    /// The next check was asked for by an operator: it ends a hold after rollback.
    pub retry_requested: &'a AtomicBool,
    /// This check answers a command: assignment queries ask for a fresh read.
    pub on_command: &'a AtomicBool,
}

impl Agent {
    /// The agent's pipeline, on its own control plane.
    pub(crate) fn pipeline(&self) -> Pipeline<'_, Agent> {
        Pipeline {
            home: &self.home,
            cfg: &self.cfg,
            plane: self,
            last_assigned: &self.last_assigned,
            retry_requested: &self.retry_requested,
            on_command: &self.on_command,
        }
    }

    /// The whole upgrade check, from the version check to the hand-over.
    /// `requested` is a command's `args.version`: readiness checks that version,
    /// an upgrade goes to it (if the pin allows); `None` is the assignment.
    pub async fn check_and_upgrade(&self, mode: Mode, requested: Option<&str>) -> UpgradeOutcome {
        self.pipeline().run(mode, requested).await
    }
}

impl<P: ControlPlane> Pipeline<'_, P> {
    /// The whole upgrade check (see [`Agent::check_and_upgrade`]).
    pub async fn run(&self, mode: Mode, requested: Option<&str>) -> UpgradeOutcome {
        if mode == Mode::Upgrade
            && let Some(v) = requested
            && let Err(e) = pin_allows(self.cfg.pinned_version.as_deref(), v)
        {
            let message = e.to_string();
            tracing::warn!("{message}");
            return UpgradeOutcome::Refused { message };
        }
        let checked = match self.version_check(requested).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("{e}");
                return UpgradeOutcome::CheckFailed {
                    message: e.to_string(),
                };
            }
        };
        if mode == Mode::PrecheckOnly {
            return self
                .readiness_precheck(&checked.current, &checked.installed, &checked.assigned)
                .await;
        }
        let decision = match self.decide(&checked).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("Version selector failed; not upgrading: {e}");
                return UpgradeOutcome::CheckFailed {
                    message: e.to_string(),
                };
            }
        };
        let version_check::Checked {
            current,
            installed,
            assigned,
            ..
        } = checked;
        let version_check::Decision {
            plan,
            target,
            family_change,
        } = decision;
        tracing::info!("{}", plan.render());
        if plan.missing.is_empty() || target == current {
            tracing::info!(version = %current, "Agent is up to date with the assigned version");
            return UpgradeOutcome::UpToDate;
        }

        let retry = self.retry_requested.swap(false, Ordering::SeqCst);
        if let Some(h) = crate::backoff::check(self.home, &target, chrono::Utc::now(), retry) {
            let message = format!(
                "Version {target} held after rollback until {} ({} rollback(s) in a row); not upgrading. Retry now with the `upgrade` command or `molt upgrade now`",
                h.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                h.rollbacks
            );
            tracing::warn!("{message}");
            return UpgradeOutcome::HeldAfterRollback { message };
        }

        // One slot per agent among the fleet's concurrent upgrades.
        if let Err(e) = self.acquire_slot(&target).await {
            tracing::error!("{e}");
            return UpgradeOutcome::CheckFailed {
                message: e.to_string(),
            };
        }
        self.plane.publish_status(Status::Upgrading).await;
        let fail_status = if family_change {
            Status::UpgradeFailed
        } else {
            Status::Up
        };
        let attempt = match self.plane.create_attempt(&current, &target).await {
            Ok(id) => Attempt::new(
                self.plane,
                id.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| id.to_string()),
                fail_status,
                self.home,
                self.cfg.test_hooks,
            ),
            Err(e) => {
                tracing::error!(error = %e, "Cannot record the upgrade attempt; not upgrading");
                attempt::end_upgrade(self.plane, Status::Up).await;
                return UpgradeOutcome::CheckFailed {
                    message: e.to_string(),
                };
            }
        };

        if let Err(outcome) = self.precheck_stage(&attempt, &installed, &assigned).await {
            return outcome;
        }
        let verified = match self.download_stage(&attempt, &plan, &assigned).await {
            Ok(v) => v,
            Err(e) => return attempt.fail(Stage::Download, e.to_string()).await,
        };
        let extracted = match self.extract_stage(&attempt, &installed, &verified).await {
            Ok(x) => x,
            Err(e) => return attempt.fail(Stage::Extract, e.to_string()).await,
        };
        self.hand_over(&attempt, current, target, extracted).await
    }

    /// Ask for an upgrade slot until one is free (a 409 is waited out).
    async fn acquire_slot(&self, target: &str) -> Result<(), crate::client::ClientError> {
        use crate::client::ClientError;
        loop {
            match self.plane.acquire_slot(target).await {
                Ok(()) => return Ok(()),
                Err(ClientError::Conflict {
                    url,
                    retry_after,
                    message,
                }) => {
                    let secs = self
                        .cfg
                        .slot_retry_secs
                        .or(retry_after)
                        .unwrap_or(20)
                        .max(1);
                    tracing::warn!(
                        "Method failed ({url}) HTTP/1.1 409 Conflict with code: 409: {message}. Retrying in {secs} s"
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Parent of the upgrade and scratch directories.
    fn temp_parent(&self) -> PathBuf {
        if self.cfg.use_os_temp_folder {
            std::env::temp_dir()
        } else {
            self.home.upgrade_temp_dir()
        }
    }
}

/// A 13-digit random directory name in the seeds' `<random>-0` shape.
pub fn random_dir_name() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen_range(1_000_000_000_000..10_000_000_000_000);
    format!("{n}-0")
}

/// Bound of a command answer: the control plane keeps at most 4 KiB of it.
pub(crate) const MAX_ANSWER: usize = 2000;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub(crate) fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" …");
    }
    s
}

/// A command asked for another version than the one this agent is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Not upgrading to {requested}: this agent is pinned to {pinned} (`pinned_version` in config.toml); remove the pin or ask for {pinned}"
)]
pub struct PinRefused {
    pub requested: String,
    pub pinned: String,
}

/// Whether a command may move this agent to `requested`: a configured
/// `pinned_version` is the operator's word and wins over a command (the seeds'
/// `mid.pinned.version`), so only the pinned version itself is allowed.
pub fn pin_allows(pinned: Option<&str>, requested: &str) -> Result<(), PinRefused> {
    match pinned {
        Some(p) if p != requested => Err(PinRefused {
            requested: requested.to_string(),
            pinned: p.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The `os` of package names.
pub fn host_os() -> &'static str {
    std::env::consts::OS
}

/// The `arch` of package names (`x86-64`, `aarch64`).
pub fn host_arch() -> String {
    std::env::consts::ARCH.replace('_', "-")
}
