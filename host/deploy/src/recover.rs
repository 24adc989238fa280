//! Recovery at agent start: finish or undo an unfinished deploy and clean leftovers.
use std::path::PathBuf;

use molt_layout::Home;
use molt_protocol::{AttemptResult, Stage, StageState};

use crate::error::DeployError;
use crate::fsutil::{self, FileLock};
use crate::journal::{Journal, Step};

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// No unfinished deploy. `removed` lists the leftovers cleaned.
    Clean {
        version: Option<String>,
        removed: Vec<PathBuf>,
    },
    /// A live runner holds the deploy lock: leave everything to it.
    DeployInProgress,
    /// The deploy had not switched; its leftovers were removed and the old
    /// version (the one running) stays. The agent should compare installed with
    /// assigned and upgrade again.
    RolledBack {
        version: String,
        to_version: String,
        reason: String,
    },
    /// The switch happened: a resume runner was started to health-check this
    /// agent (and roll back if it does not come Up).
    HealthCheckPending { version: String, runner_pid: u32 },
}

/// Called by the agent at start, before anything else.
pub fn recover(home: &Home) -> Result<RecoveryOutcome, DeployError> {
    recover_as(home, &crate::service::ServiceKind::detect())
}

/// [`recover`] for an agent run by `service` (a resume runner is started the
/// way a hand-over starts one: see [`crate::launch`]).
pub fn recover_as(
    home: &Home,
    service: &crate::service::ServiceKind,
) -> Result<RecoveryOutcome, DeployError> {
    recover_with(home, &crate::runner::self_exe(), service)
}

/// [`recover`] with an explicit `molt` binary for the resume runner (tests).
pub fn recover_with(
    home: &Home,
    molt_exe: &std::path::Path,
    service: &crate::service::ServiceKind,
) -> Result<RecoveryOutcome, DeployError> {
    let lock_path = Journal::lock_path(home);
    let Some(lock) = FileLock::try_acquire(&lock_path)? else {
        return Ok(RecoveryOutcome::DeployInProgress);
    };
    let current = home.current_version()?;
    let Some(mut j) = Journal::load(home)? else {
        let removed = clean_leftovers(home)?;
        drop(lock);
        let _ = crate::prune::retry_pending(home);
        return Ok(RecoveryOutcome::Clean {
            version: current,
            removed,
        });
    };
    let switched = current.as_deref() == Some(j.to_version.as_str());
    if !switched && j.step < Step::RollingBack {
        // Nothing was switched and this agent (the old version) is running: undo.
        let reason = format!("the upgrade runner was interrupted at step {:?}", j.step);
        tracing::warn!(%reason, to = %j.to_version, "Recovery: undoing an unfinished deploy");
        if let Some(b) = &j.build_dir
            && b.starts_with(home.versions_dir())
        {
            fsutil::remove_tree(b)?;
        }
        let newdir = home.version_dir(&j.to_version);
        if j.created_version_dir && newdir.exists() {
            fsutil::remove_tree(&newdir)?;
        }
        j.reason = Some(reason.clone());
        j.set(home, Step::RolledBack)?;
        let rep = crate::report::Reporter::new(
            home,
            None,
            j.attempt_id.clone(),
            std::time::Duration::from_secs(1),
        );
        rep.stage(Stage::DeployBinaryFiles, StageState::Failed, &reason);
        rep.finish(AttemptResult::RolledBack, &reason);
        crate::journal::write_last(
            home,
            &crate::journal::LastDeploy {
                attempt_id: j.attempt_id.clone(),
                from_version: j.from_version.clone(),
                to_version: j.to_version.clone(),
                result: AttemptResult::RolledBack,
                message: reason.clone(),
                running_version: current.clone().unwrap_or_default(),
                at: chrono::Utc::now(),
            },
        )?;
        Journal::remove(home)?;
        clean_leftovers(home)?;
        return Ok(RecoveryOutcome::RolledBack {
            version: current.unwrap_or_default(),
            to_version: j.to_version,
            reason,
        });
    }
    // After the switch (or mid-rollback): a resume runner health-checks and
    // finishes it, because this process cannot judge its own health.
    drop(lock);
    let log = home.deploy_resume_log();
    let launched =
        crate::launch::start_runner(home, service, molt_exe, &crate::launch::Job::Resume, &log)?;
    tracing::info!(
        ?launched,
        "Recovery: resume runner started for an unfinished deploy"
    );
    Ok(RecoveryOutcome::HealthCheckPending {
        version: current.unwrap_or_default(),
        runner_pid: launched.pid().unwrap_or(0),
    })
}

/// After a deploy has ended (no runner holds the lock, no journal): remove the
/// upgrade dirs that were handed over (`work/upgrade_temp/<n>/plan.json`),
/// with their runner copy and logs. Other dirs there (a check that is running
/// now) are left. `Ok(None)` while a runner still works.
pub fn clean_handed_over(home: &Home) -> Result<Option<Vec<PathBuf>>, DeployError> {
    let Some(_lock) = FileLock::try_acquire(&Journal::lock_path(home))? else {
        return Ok(None);
    };
    if Journal::load(home)?.is_some() {
        return Ok(None);
    }
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(home.upgrade_temp_dir()) {
        for e in rd.flatten() {
            if molt_layout::UpgradeDir(&e.path()).plan_file().is_file() {
                fsutil::remove_tree(&e.path())?;
                removed.push(e.path());
            }
        }
    }
    Ok(Some(removed))
}

/// Remove what no deploy needs any more: hidden build/trash dirs, temp symlinks,
/// upgrade temp dirs and their runners, a stale hold, the upgrade marker.
/// Only call with the deploy lock held and no journal.
pub fn clean_leftovers(home: &Home) -> Result<Vec<PathBuf>, DeployError> {
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(home.versions_dir()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                fsutil::remove_tree(&e.path())?;
                removed.push(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(home.root()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".current.new.") {
                fsutil::remove_file_opt(&e.path())?;
                removed.push(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(home.upgrade_temp_dir()) {
        for e in rd.flatten() {
            fsutil::remove_tree(&e.path())?;
            removed.push(e.path());
        }
    }
    for f in [home.hold_marker(), home.upgrade_marker_file()] {
        if f.exists() {
            fsutil::remove_file_opt(&f)?;
            removed.push(f);
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            count = removed.len(),
            "Recovery: removed leftovers of earlier deploys"
        );
    }
    Ok(removed)
}
