//! One upgrade: version check, Pre Upgrade Check, Download Upgrade Packages,
//! Extract Upgrade Packages, then the hand-over to deploy. Every stage is reported
//! to the control plane's upgrade history when it starts and when it ends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use molt_layout::InstalledPackage;
use molt_protocol::{AttemptResult, FindingSeverity, FinishReport, Stage, StageReport, StageState};
use serde_json::json;

use crate::client::{Assigned, AssignedPackage, ClientError, Finding};
use crate::deps::{self, DepError, Trust, VerifiedPackage};
use crate::download::{self, DownloadOptions, DownloadSpec, Outcome};
use crate::service::{Agent, Status};

/// Issue source of pre-upgrade findings (the seeds' UpgradeCheck).
pub const ISSUE_SOURCE: &str = "UpgradeCheck";

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
    Failed { stage: String, message: String },
    /// The control plane could not be asked.
    CheckFailed { message: String },
    /// The assigned version was rolled back on this agent and is backing off
    /// (see [`crate::backoff`]).
    HeldAfterRollback { message: String },
}

/// Errors that end an upgrade check before any stage.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("Failed to query control plane for agent buildstamp: {0}")]
    Query(ClientError),
    #[error("Not a valid package buildstamp: `{version}`: {reason}")]
    Buildstamp { version: String, reason: String },
    #[error("no installed version: {0}")]
    NotInstalled(String),
}

/// The seeds' "Current packages:" block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackagePlan {
    pub installed: Vec<String>,
    pub assigned: Vec<String>,
    pub missing: Vec<String>,
    pub downloaded: Vec<String>,
}

impl PackagePlan {
    pub fn render(&self) -> String {
        format!(
            "Current packages:\n  Installed: [{}]\n  Assigned: [{}]\n  Missing: [{}]\n  Downloaded: [{}]",
            self.installed.join(", "),
            self.assigned.join(", "),
            self.missing.join(", "),
            self.downloaded.join(", ")
        )
    }
}

/// Compare installed package names with assigned ones.
pub fn plan_packages(
    installed: &[InstalledPackage],
    assigned: &Assigned,
    incoming: &Path,
) -> PackagePlan {
    let inst: BTreeSet<&str> = installed.iter().map(|p| p.name.as_str()).collect();
    let assigned_names: Vec<String> = assigned.packages.iter().map(|p| p.name.clone()).collect();
    let missing: Vec<String> = assigned
        .packages
        .iter()
        .filter(|p| !inst.contains(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    let downloaded = assigned
        .packages
        .iter()
        .filter(|p| missing.contains(&p.name))
        .filter(|p| {
            std::fs::metadata(incoming.join(&p.name))
                .map(|m| m.len() == p.size)
                .unwrap_or(false)
        })
        .map(|p| p.name.clone())
        .collect();
    PackagePlan {
        installed: installed.iter().map(|p| p.name.clone()).collect(),
        assigned: assigned_names,
        missing,
        downloaded,
    }
}

/// Changed files: payload paths of the new packages whose digest or mode differs
/// from the installed manifest (or that are new). Everything else is hard-linked.
pub fn changed_files(installed: &[InstalledPackage], new: &[InstalledPackage]) -> Vec<String> {
    let mut old = std::collections::BTreeMap::new();
    for p in installed {
        for (f, m) in &p.files {
            old.insert(f.as_str(), m);
        }
    }
    let mut out = Vec::new();
    for p in new {
        for (f, m) in &p.files {
            match old.get(f.as_str()) {
                Some(o) if o.sha256 == m.sha256 && o.mode == m.mode && o.size == m.size => {}
                _ => out.push(f.clone()),
            }
        }
    }
    out.sort();
    out
}

/// A 13-digit random directory name in the seeds' `<random>-0` shape.
pub fn random_dir_name() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen_range(1_000_000_000_000..10_000_000_000_000);
    format!("{n}-0")
}

/// What the agent is doing this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Upgrade,
    /// The control plane's runPrecheck readiness command: checks only.
    PrecheckOnly,
}

/// One upgrade attempt on the control plane.
struct Attempt {
    id: Option<String>,
}

impl Agent {
    async fn stage(&self, attempt: &Attempt, stage: Stage, state: StageState, message: &str) {
        let Some(id) = &attempt.id else { return };
        let (stage_word, state_word) = (stage.as_str(), state.as_str());
        tracing::info!(
            stage = stage_word,
            state = state_word,
            "Upgrade History stage {stage_word}: {state_word}{}",
            if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            }
        );
        let body = StageReport::now(stage, state, message).to_value();
        if let Err(e) = self
            .reporter
            .send("POST", &format!("/api/v1/agent/attempts/{id}/stages"), body)
            .await
        {
            tracing::error!(error = %e, "Cannot queue stage report");
        }
    }

    async fn finish(&self, attempt: &Attempt, result: AttemptResult, message: &str) {
        let Some(id) = &attempt.id else { return };
        let body = FinishReport {
            result,
            message: message.to_string(),
        }
        .to_value();
        if let Err(e) = self
            .reporter
            .send("POST", &format!("/api/v1/agent/attempts/{id}/finish"), body)
            .await
        {
            tracing::error!(error = %e, "Cannot queue attempt result");
        }
    }

    async fn hold(&self, stage: Stage) {
        let stage = stage.as_str();
        let slug: String = stage
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("-");
        let file = self.home.work_dir().join(format!("hold.{slug}"));
        if !self.cfg.test_hooks || !file.exists() {
            return;
        }
        tracing::info!(stage, file = %file.display(), "Holding before stage (test hook)");
        while file.exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(stage, "Released hold (test hook)");
    }

    fn trust(&self) -> Result<Trust, DepError> {
        deps::load_trust(&self.cfg.trust_root, &self.home.state_dir())
    }

    /// Ask the control plane what is assigned and log the plan.
    /// The installed packages and what the control plane assigns to them now.
    /// With `requested`, the packages of that version (a command's argument).
    pub(crate) async fn query_assigned(
        &self,
        requested: Option<&str>,
    ) -> Result<(Vec<InstalledPackage>, Assigned), CheckError> {
        let installed = self
            .home
            .installed()
            .map_err(|e| CheckError::NotInstalled(e.to_string()))?;
        let runtime = installed
            .iter()
            .find(|p| p.kind == "runtime")
            .map(|p| p.version.clone())
            .unwrap_or_default();
        let assigned = self
            .client
            .assigned(
                host_os(),
                &host_arch(),
                &runtime,
                self.cfg.pinned_version.as_deref(),
                requested,
            )
            .await
            .map_err(CheckError::Query)?;
        Ok((installed, assigned))
    }

    async fn version_check(
        &self,
        requested: Option<&str>,
    ) -> Result<(String, Vec<InstalledPackage>, Assigned, PackagePlan), CheckError> {
        tracing::info!("Checking to see if agent needs to upgrade");
        let current = self
            .home
            .current_version()
            .map_err(|e| CheckError::NotInstalled(e.to_string()))?
            .ok_or_else(|| {
                CheckError::NotInstalled(format!(
                    "{} does not exist",
                    self.home.current_link().display()
                ))
            })?;
        let (installed, assigned) = self.query_assigned(requested).await?;
        if let Some(v) = requested
            && assigned.version != v
        {
            return Err(CheckError::Buildstamp {
                version: assigned.version.clone(),
                reason: format!("the control plane answered for another version than {v}"),
            });
        }
        // A command's version is not the assignment: autoUpgrade coalescing
        // compares against what the fleet assigns.
        if requested.is_none()
            && let Ok(mut l) = self.last_assigned.lock()
        {
            *l = Some(assigned.version.clone());
        }
        deps::validate_version(&assigned.version).map_err(|reason| CheckError::Buildstamp {
            version: assigned.version.clone(),
            reason,
        })?;
        for p in assigned
            .packages
            .iter()
            .chain(assigned.precheck.iter())
            .chain(assigned.selector.iter())
        {
            if p.name.contains('/') || p.name.starts_with('.') || !p.name.ends_with(".zip") {
                return Err(CheckError::Buildstamp {
                    version: p.name.clone(),
                    reason: "not a package file name".into(),
                });
            }
        }
        let plan = plan_packages(&installed, &assigned, &self.home.incoming_dir());
        Ok((current, installed, assigned, plan))
    }

    /// The whole upgrade check, from the version check to the hand-over.
    /// `requested` is a command's `args.version`: readiness checks that version,
    /// an upgrade goes to it (if the pin allows); `None` is the assignment.
    pub async fn check_and_upgrade(
        self: &Arc<Self>,
        mode: Mode,
        requested: Option<&str>,
    ) -> UpgradeOutcome {
        if mode == Mode::Upgrade
            && let Some(v) = requested
            && let Err(message) = pin_allows(self.cfg.pinned_version.as_deref(), v)
        {
            tracing::warn!("{message}");
            return UpgradeOutcome::Refused { message };
        }
        let (current, installed, assigned, plan) = match self.version_check(requested).await {
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
                .readiness_precheck(&current, &installed, &assigned)
                .await;
        }
        let (plan, target, family_change) =
            match self.run_selector(&installed, &assigned, &plan).await {
                Ok(Some(sel)) => {
                    for n in &sel.notes {
                        tracing::info!(selector = %n, "Version selector note");
                    }
                    // Why the runtime is (not) upgraded: a skip (32-bit host,
                    // old glibc) leaves the runtime out of Assigned/Missing, and
                    // without this line nothing said why.
                    if sel.runtime == molt_sandbox::RuntimeDecision::Skip {
                        tracing::warn!("Version selector: {}", sel.runtime_reason);
                    } else {
                        tracing::info!("Version selector: {}", sel.runtime_reason);
                    }
                    let known: BTreeSet<&str> =
                        assigned.packages.iter().map(|p| p.name.as_str()).collect();
                    let missing: Vec<String> = sel
                        .missing
                        .iter()
                        .filter(|m| known.contains(m.as_str()))
                        .cloned()
                        .collect();
                    let p = PackagePlan {
                        installed: sel.installed.clone(),
                        assigned: sel.assigned.clone(),
                        downloaded: sel.downloaded.clone(),
                        missing: if sel.action == molt_sandbox::Action::None {
                            Vec::new()
                        } else {
                            missing
                        },
                    };
                    (p, sel.target_version.clone(), sel.crosses_family)
                }
                Ok(None) => {
                    let fc =
                        deps::release_family(&current) != deps::release_family(&assigned.version);
                    (plan, assigned.version.clone(), fc)
                }
                Err(e) => {
                    tracing::error!("Version selector failed; not upgrading: {e}");
                    return UpgradeOutcome::CheckFailed { message: e };
                }
            };
        tracing::info!("{}", plan.render());
        if plan.missing.is_empty() || target == current {
            tracing::info!(version = %current, "Agent is up to date with the assigned version");
            return UpgradeOutcome::UpToDate;
        }

        let retry = self
            .retry_requested
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = crate::backoff::check(&self.home, &target, chrono::Utc::now(), retry) {
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
        self.set_status(Status::Upgrading).await;
        let attempt = match self.client.create_attempt(&current, &target).await {
            Ok(id) => Attempt {
                id: Some(
                    id.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| id.to_string()),
                ),
            },
            Err(e) => {
                tracing::error!(error = %e, "Cannot record the upgrade attempt; not upgrading");
                self.end_upgrade(Status::Up).await;
                return UpgradeOutcome::CheckFailed {
                    message: e.to_string(),
                };
            }
        };
        let fail_status = if family_change {
            Status::UpgradeFailed
        } else {
            Status::Up
        };

        // Pre Upgrade Check
        self.hold(Stage::PreUpgradeCheck).await;
        if !self.cfg.run_precheck {
            self.stage(
                &attempt,
                Stage::PreUpgradeCheck,
                StageState::Skipped,
                "run_precheck = false",
            )
            .await;
        } else {
            self.stage(&attempt, Stage::PreUpgradeCheck, StageState::InProgress, "")
                .await;
            tracing::info!("Performing pre-upgrade validation tests");
            match self.precheck(&installed, &assigned).await {
                Ok(r) if r.blocking == 0 => {
                    tracing::info!(
                        "Pre-upgrade validation tests successful. Continuing with upgrade process"
                    );
                    let msg = format!("{} finding(s), {} warning(s)", r.total, r.warnings);
                    self.stage(&attempt, Stage::PreUpgradeCheck, StageState::Complete, &msg)
                        .await;
                }
                Ok(r) => {
                    let msg = format!(
                        "Aborting agent upgrade due to pre-upgrade check failure: {} blocking finding(s): {}",
                        r.blocking, r.summary
                    );
                    tracing::error!("{msg}");
                    self.stage(&attempt, Stage::PreUpgradeCheck, StageState::Failed, &msg)
                        .await;
                    self.finish(&attempt, AttemptResult::Failed, &msg).await;
                    self.end_upgrade(fail_status).await;
                    return UpgradeOutcome::Blocked {
                        findings: r.blocking,
                        message: msg,
                    };
                }
                Err(e) => {
                    let msg =
                        format!("Aborting agent upgrade due to pre-upgrade check failure: {e}");
                    tracing::error!("{msg}");
                    self.stage(&attempt, Stage::PreUpgradeCheck, StageState::Failed, &msg)
                        .await;
                    self.finish(&attempt, AttemptResult::Failed, &msg).await;
                    self.end_upgrade(fail_status).await;
                    return UpgradeOutcome::Failed {
                        stage: Stage::PreUpgradeCheck.to_string(),
                        message: msg,
                    };
                }
            }
        }

        // Download Upgrade Packages
        self.hold(Stage::Download).await;
        self.stage(
            &attempt,
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
        let trust = match self.trust() {
            Ok(t) => t,
            Err(e) => {
                return self
                    .fail_stage(&attempt, Stage::Download, e.to_string(), fail_status)
                    .await;
            }
        };
        let trust = Arc::new(trust);
        let mut verified: Vec<(AssignedPackage, PathBuf, VerifiedPackage)> = Vec::new();
        for p in &missing {
            match self
                .download_and_verify(p, &self.home.incoming_dir(), trust.clone())
                .await
            {
                Ok((path, v)) => verified.push(((*p).clone(), path, v)),
                Err(m) => {
                    return self
                        .fail_stage(&attempt, Stage::Download, m, fail_status)
                        .await;
                }
            }
        }
        self.stage(
            &attempt,
            Stage::Download,
            StageState::Complete,
            &format!("{} package(s)", verified.len()),
        )
        .await;

        // Extract Upgrade Packages
        self.hold(Stage::Extract).await;
        self.stage(&attempt, Stage::Extract, StageState::InProgress, "")
            .await;
        tracing::info!("Upgrading agent");
        let parent = self.temp_parent();
        let upgrade_dir = parent.join(random_dir_name());
        let new_packages = match self.extract_all(&verified, &upgrade_dir).await {
            Ok(p) => p,
            Err(m) => {
                let _ = std::fs::remove_dir_all(&upgrade_dir);
                return self
                    .fail_stage(&attempt, Stage::Extract, m, fail_status)
                    .await;
            }
        };
        let changed = changed_files(&installed, &new_packages);
        tracing::info!(count = changed.len(), dir = %upgrade_dir.display(), "Changed files the new version directory must receive");
        self.stage(
            &attempt,
            Stage::Extract,
            StageState::Complete,
            &format!("{} changed file(s)", changed.len()),
        )
        .await;

        // Hand-over
        let plan = molt_deploy::DeployPlan {
            attempt_id: attempt.id.clone(),
            control_plane: Some(molt_deploy::ControlPlane {
                url: self
                    .client
                    .base()
                    .as_str()
                    .trim_end_matches('/')
                    .to_string(),
                token: self.client.token().to_string(),
                ca_bundle: self.cfg.ca_bundle.clone(),
                proxy: self.cfg.proxy.as_ref().map(|u| u.to_string()),
            }),
            from_version: current.clone(),
            to_version: target.clone(),
            packages: new_packages,
            changed_files: changed,
            options: self.cfg.deploy.clone(),
        };
        if let Err(e) = plan.save(&upgrade_dir.join("plan.json")) {
            let _ = std::fs::remove_dir_all(&upgrade_dir);
            return self
                .fail_stage(&attempt, Stage::Extract, e.to_string(), fail_status)
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
            .unwrap_or_else(|e| Err(DepError::Task(e.to_string())));
        match res {
            Ok(pid) => {
                tracing::info!(runner_pid = pid, "Upgrade runner started; agent stopping");
                UpgradeOutcome::HandedOver { to_version: target }
            }
            Err(e) => {
                let mut msg = format!("Failed to bootstrap. {e}");
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
                if matches!(
                    e,
                    DepError::Handover(
                        molt_deploy::DeployError::HandoverTimeout { .. }
                            | molt_deploy::DeployError::RunnerExited { .. }
                    )
                ) {
                    // The seeds' issue record: the operator sees it without reading logs.
                    let finding = Finding {
                        code: "upgrade.runner-not-started".into(),
                        severity: FindingSeverity::Error.to_string(),
                        description: format!("Unable to receive upgrade process status. {e}"),
                        remediation: "The agent stays on its version. Check that the upgrade runner can start (under systemd as an unprivileged account: the companion unit `<unit>-upgrade.path` is enabled; see docs/deploy.md), then retry the upgrade.".into(),
                    };
                    if let Err(err) = self
                        .reporter
                        .send(
                            "POST",
                            "/api/v1/agent/issues",
                            json!({"source": "Couldn't Launch Upgrade Process", "findings": [finding]}),
                        )
                        .await
                    {
                        tracing::error!(error = %err, "Cannot queue the hand-over issue");
                    }
                }
                self.finish(&attempt, AttemptResult::Failed, &msg).await;
                self.end_upgrade(fail_status).await;
                let _ = std::fs::remove_dir_all(&upgrade_dir);
                UpgradeOutcome::Failed {
                    stage: "Hand-over".into(),
                    message: msg,
                }
            }
        }
    }

    async fn fail_stage(
        &self,
        attempt: &Attempt,
        stage: Stage,
        message: String,
        status: Status,
    ) -> UpgradeOutcome {
        tracing::error!(stage = stage.as_str(), "{message}");
        self.stage(attempt, stage, StageState::Failed, &message)
            .await;
        self.finish(attempt, AttemptResult::Failed, &message).await;
        self.end_upgrade(status).await;
        UpgradeOutcome::Failed {
            stage: stage.to_string(),
            message,
        }
    }

    /// Give back the slot and leave Upgrading.
    async fn end_upgrade(&self, status: Status) {
        if let Err(e) = self.client.release_slot().await {
            tracing::warn!(error = %e, "Could not release the upgrade slot (the lease will expire)");
        }
        self.set_status(status).await;
    }

    async fn acquire_slot(&self, target: &str) -> Result<(), ClientError> {
        loop {
            match self.client.acquire_slot(target).await {
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
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn temp_parent(&self) -> PathBuf {
        if self.cfg.use_os_temp_folder {
            std::env::temp_dir()
        } else {
            self.home.upgrade_temp_dir()
        }
    }

    /// Download one package, then verify it against the trust root; a package that
    /// fails verification is deleted.
    async fn download_and_verify(
        &self,
        p: &AssignedPackage,
        dir: &Path,
        trust: Arc<Trust>,
    ) -> Result<(PathBuf, VerifiedPackage), String> {
        let dest = dir.join(&p.name);
        let (url, bearer) = if self.cfg.download_through_control_plane {
            (
                self.client.resolve(&format!("/packages/{}", p.name)),
                Some(self.client.token().to_string()),
            )
        } else {
            let same_host = self
                .client
                .resolve(&p.url)
                .map(|u| u.origin() == self.client.base().origin())
                .unwrap_or(false);
            (
                self.client.resolve(&p.url),
                same_host.then(|| self.client.token().to_string()),
            )
        };
        let url = url.map_err(|e| e.to_string())?;
        let spec = DownloadSpec {
            name: p.name.clone(),
            url,
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
        let outcome = download::download(self.client.download_http(), &spec, &opts)
            .await
            .map_err(|e| e.to_string())?;
        let download_ms = t0.elapsed().as_millis() as u64;
        let t1 = std::time::Instant::now();
        let d2 = dest.clone();
        let v = tokio::task::spawn_blocking(move || deps::verify_package(&trust, &d2))
            .await
            .map_err(|e| format!("verify task failed: {e}"))?;
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
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                Err(format!("Package {} refused and deleted: {e}", p.name))
            }
        }
    }

    async fn extract_all(
        &self,
        verified: &[(AssignedPackage, PathBuf, VerifiedPackage)],
        upgrade_dir: &Path,
    ) -> Result<Vec<InstalledPackage>, String> {
        std::fs::create_dir_all(upgrade_dir)
            .map_err(|e| format!("{}: {e}", upgrade_dir.display()))?;
        let mut out = Vec::new();
        for (p, _path, v) in verified {
            let dest = upgrade_dir.join("packages").join(&v.kind);
            let (v2, dest2) = (v.clone(), dest.clone());
            let t0 = std::time::Instant::now();
            let files = tokio::task::spawn_blocking(move || deps::extract_package(&v2, &dest2))
                .await
                .map_err(|e| format!("extract task failed: {e}"))?
                .map_err(|e| e.to_string())?;
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

    /// Download a side bundle (precheck, selector) into `dir` and extract it there.
    async fn fetch_side_bundle(
        &self,
        p: &AssignedPackage,
        dir: &Path,
    ) -> Result<(PathBuf, VerifiedPackage), String> {
        let trust = Arc::new(self.trust().map_err(|e| e.to_string())?);
        let (_path, v) = self.download_and_verify(p, dir, trust).await?;
        let out = dir.join("bundle");
        let (v2, o2) = (v.clone(), out.clone());
        tokio::task::spawn_blocking(move || deps::extract_package(&v2, &o2))
            .await
            .map_err(|e| format!("extract task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok((out, v))
    }

    /// Run the assigned selector component (if the control plane names one).
    async fn run_selector(
        &self,
        installed: &[InstalledPackage],
        assigned: &Assigned,
        plan: &PackagePlan,
    ) -> Result<Option<molt_sandbox::Plan>, String> {
        let Some(sel) = &assigned.selector else {
            return Ok(None);
        };
        let dir = self
            .home
            .upgrade_temp_dir()
            .join(format!("{}-selector", &random_dir_name()[..13]));
        let res = async {
            let (bundle_dir, v) = self.fetch_side_bundle(sel, &dir).await?;
            let cache = self.home.work_dir().join("wasm-cache");
            // The host's platform, probed (glibc's own answer: with None every
            // runtime was skipped as "glibc version unknown"); a configured
            // `facts_override` simulates it, as it does for the checks.
            let (mut os, mut arch, mut is_64bit, mut libc_version) = (
                host_os().to_string(),
                host_arch(),
                cfg!(target_pointer_width = "64"),
                molt_sandbox::facts::glibc_version(),
            );
            if let Some(f) = &self.cfg.facts_override {
                let sim = molt_sandbox::HostFacts::probe(self.home.root(), &self.temp_parent())
                    .and_then(|h| h.with_overrides(f))
                    .map_err(|e| format!("facts_override {}: {e}", f.display()))?;
                (os, arch, is_64bit, libc_version) =
                    (sim.os, sim.arch, sim.is_64bit, sim.libc_version);
            }
            let input = molt_sandbox::SelectorInput {
                installed: installed.iter().map(|p| p.name.clone()).collect(),
                assigned_version: assigned.version.clone(),
                assigned: assigned.packages.iter().map(|p| p.name.clone()).collect(),
                downloaded: plan.downloaded.clone(),
                pinned: self.cfg.pinned_version.clone(),
                os,
                arch,
                is_64bit,
                libc_version,
            };
            tokio::task::spawn_blocking(move || {
                deps::select_version(&bundle_dir, &cache, &v, &input)
            })
            .await
            .map_err(|e| format!("selector task failed: {e}"))?
            .map_err(|e| e.to_string())
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        res.map(Some)
    }

    /// Run the target version's precheck bundle and report its findings.
    async fn precheck(
        &self,
        _installed: &[InstalledPackage],
        assigned: &Assigned,
    ) -> Result<PrecheckResult, String> {
        let Some(pc) = &assigned.precheck else {
            return Err(format!(
                "the control plane assigned no precheck bundle for {}",
                assigned.version
            ));
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
            .reporter
            .send(
                "POST",
                "/api/v1/agent/issues",
                json!({"source": ISSUE_SOURCE, "findings": report}),
            )
            .await
        {
            tracing::error!(error = %e, "Cannot queue the pre-upgrade issues report");
        }
        let blocking: Vec<&deps::CheckFinding> = findings.iter().filter(|f| f.blocking).collect();
        Ok(PrecheckResult {
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
        })
    }

    async fn precheck_in(
        &self,
        assigned: &Assigned,
        pc: &AssignedPackage,
        dir: &Path,
        scratch_parent: &Path,
    ) -> Result<Vec<deps::CheckFinding>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::create_dir_all(scratch_parent)
            .map_err(|e| format!("{}: {e}", scratch_parent.display()))?;
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
        let base = self.client.base().to_string();
        for u in assigned
            .packages
            .iter()
            .chain(std::iter::once(pc))
            .filter_map(|p| self.client.resolve(&p.url).ok().map(|u| u.to_string()))
            .chain(std::iter::once(base))
        {
            if !net_allow.contains(&u) {
                net_allow.push(u);
            }
        }
        tokio::task::spawn_blocking(move || {
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
        .map_err(|e| format!("precheck task failed: {e}"))?
        .map_err(|e| e.to_string())
    }

    /// runPrecheck: the Pre Upgrade Check alone, without upgrading.
    async fn readiness_precheck(
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
                    stage: Stage::PreUpgradeCheck.to_string(),
                    message: e,
                }
            }
        }
    }
}

struct PrecheckResult {
    total: usize,
    blocking: usize,
    warnings: usize,
    /// Blocking finding codes.
    summary: String,
    /// Blocking findings with their descriptions (the readiness answer).
    details: String,
}

/// Bound of a command answer: the control plane keeps at most 4 KiB of it.
const MAX_ANSWER: usize = 2000;

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

/// Whether a command may move this agent to `requested`: a configured
/// `pinned_version` is the operator's word and wins over a command (the seeds'
/// `mid.pinned.version`), so only the pinned version itself is allowed.
pub fn pin_allows(pinned: Option<&str>, requested: &str) -> Result<(), String> {
    match pinned {
        Some(p) if p != requested => Err(format!(
            "Not upgrading to {requested}: this agent is pinned to {p} (`pinned_version` in config.toml); remove the pin or ask for {p}"
        )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use molt_layout::FileMeta;

    fn pkg(kind: &str, name: &str, files: &[(&str, &str, u32)]) -> InstalledPackage {
        InstalledPackage {
            kind: kind.into(),
            name: name.into(),
            version: "v".into(),
            files: files
                .iter()
                .map(|(p, s, m)| {
                    (
                        p.to_string(),
                        FileMeta {
                            size: 1,
                            sha256: s.repeat(64),
                            mode: *m,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn changed_files_are_new_or_different_in_digest_or_mode() {
        let old = [pkg(
            "core",
            "c1",
            &[
                ("bin/molt", "a", 0o755),
                ("lib/a", "b", 0o644),
                ("lib/b", "c", 0o644),
            ],
        )];
        let new = [pkg(
            "core",
            "c2",
            &[
                ("bin/molt", "d", 0o755),
                ("lib/a", "b", 0o644),
                ("lib/b", "c", 0o600),
                ("lib/n", "e", 0o644),
            ],
        )];
        assert_eq!(changed_files(&old, &new), ["bin/molt", "lib/b", "lib/n"]);
    }

    #[test]
    fn missing_is_assigned_minus_installed_and_renders_in_the_seeds_shape() {
        let d = tempfile::tempdir().unwrap();
        let installed = [pkg("core", "molt-core.v1.universal.universal.zip", &[])];
        let a = |n: &str| AssignedPackage {
            kind: "core".into(),
            name: n.into(),
            url: format!("/packages/{n}"),
            size: 3,
            sha256: "0".repeat(64),
        };
        let assigned = Assigned {
            version: "v2".into(),
            source: "fleet".into(),
            packages: vec![
                a("molt-upgrade.v2.universal.universal.zip"),
                a("molt-core.v2.universal.universal.zip"),
            ],
            precheck: None,
            selector: None,
        };
        std::fs::write(
            d.path().join("molt-core.v2.universal.universal.zip"),
            b"abc",
        )
        .unwrap();
        let p = plan_packages(&installed, &assigned, d.path());
        assert_eq!(p.missing.len(), 2);
        assert_eq!(p.downloaded, ["molt-core.v2.universal.universal.zip"]);
        let r = p.render();
        assert!(
            r.starts_with("Current packages:\n  Installed: [molt-core.v1.universal.universal.zip]"),
            "{r}"
        );
        assert!(r.contains("Missing: [molt-upgrade.v2.universal.universal.zip, molt-core.v2.universal.universal.zip]"));
    }

    #[test]
    fn a_pinned_agent_upgrades_by_command_only_to_its_pin() {
        assert_eq!(pin_allows(None, "v2"), Ok(()));
        assert_eq!(pin_allows(Some("v2"), "v2"), Ok(()));
        let e = pin_allows(Some("v1"), "v2").unwrap_err();
        assert!(e.contains("pinned to v1") && e.contains("v2"), "{e}");
    }

    #[test]
    fn answers_are_bounded_on_a_character_boundary() {
        assert_eq!(bounded("abc".into(), 3), "abc");
        assert_eq!(bounded("aé".into(), 2), "a …");
    }

    #[test]
    fn random_dir_names_have_thirteen_digits_and_dash_zero() {
        let n = random_dir_name();
        let (digits, tail) = n.split_once('-').unwrap();
        assert_eq!(digits.len(), 13);
        assert_eq!(tail, "0");
    }
}
