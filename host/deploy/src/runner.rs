//! The runner (`molt deploy`): build the new version beside the old one, wait for
//! the old agent to stop, switch `current` with one atomic rename, start, health
//! check, and roll back when anything fails. [`resume`] finishes or undoes a
//! runner that died half-way (started by the supervisor or by [`crate::recover`]).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use molt_layout::{Home, UpgradeDir};
use molt_protocol::{AgentStatus, AttemptResult, FindingSeverity, Stage, StageState};

use crate::error::{DeployError, io_err};
use crate::fsutil::{self, FileLock};
use crate::journal::{Journal, LastDeploy, Step};
use crate::plan::{DeployOptions, DeployPlan};
use crate::report::Reporter;
use crate::service::{self, Handover, Reinstall, ServiceControl};

/// How a deploy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployResult {
    /// The new version is current and Up.
    Complete { version: String },
    /// Something failed; the old version is current and Up again.
    RolledBack { version: String, reason: String },
    /// The rollback failed too: reported as such (the agent may be Down).
    Failed { reason: String },
}

impl DeployResult {
    /// The attempt's result as reported and recorded.
    pub fn result(&self) -> AttemptResult {
        match self {
            DeployResult::Complete { .. } => AttemptResult::Complete,
            DeployResult::RolledBack { .. } => AttemptResult::RolledBack,
            DeployResult::Failed { .. } => AttemptResult::Failed,
        }
    }
}

/// Unit file shipped in the core package (compared for the Reinstall Service stage).
pub const UNIT_FILE: &str = "lib/systemd/molt-agent.service";

/// The upgrade log of one deploy (`<upgrade dir>/upgrade.log`), appended to the
/// agent log between the seeds' markers when the deploy ends.
struct UpgradeLog {
    path: PathBuf,
}

impl UpgradeLog {
    fn line(&self, msg: &str) {
        tracing::info!("{msg}");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = writeln!(
                f,
                "{} {msg}",
                Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
        }
    }

    fn append_to_agent_log(&self, home: &Home) {
        let body = std::fs::read_to_string(&self.path).unwrap_or_default();
        let log = home.agent_log();
        if let Some(d) = log.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(mut f) => {
                let _ = write!(f, "<< UPGRADE LOG BEGIN >>\n{body}<< UPGRADE LOG END >>\n");
                let _ = f.sync_all();
            }
            Err(e) => {
                tracing::error!(log = %log.display(), error = %e, "cannot append the upgrade log to the agent log")
            }
        }
    }
}

/// Everything one runner needs.
struct Ctx<'a> {
    home: &'a Home,
    svc: Box<dyn ServiceControl>,
    rep: Reporter,
    log: UpgradeLog,
    opts: DeployOptions,
    /// The control plane the new version must report Up to (health check).
    cp: Option<crate::ControlPlane>,
    /// When the old agent was confirmed stopped, and the downtime until the new one was Up.
    stopped_at: std::cell::Cell<Option<std::time::Instant>>,
    downtime: std::cell::Cell<Option<Duration>>,
}

/// The `molt` binary to use for starting helpers (supervisor, resume runner):
/// our own, even if its file was removed since (`/proc/self/exe` still works).
pub fn self_exe() -> PathBuf {
    match std::env::current_exe() {
        Ok(p) if p.exists() => p,
        _ => PathBuf::from("/proc/self/exe"),
    }
}

/// Run a deploy from `plan.json` (the `molt deploy --plan` entry point).
pub fn run(home: &Home, plan_path: &Path) -> Result<DeployResult, DeployError> {
    run_with(home, plan_path, None)
}

/// The companion unit's entry point (`molt deploy --request --service ...`):
/// take `work/upgrade.request`, act as the home's owner from then on (root only
/// for systemctl on the one unit `service` names), and deploy the requested
/// plan, or finish an interrupted deploy. `Ok(None)`: nothing to do.
pub fn run_requested(
    home: &Home,
    service: &service::ServiceKind,
) -> Result<Option<DeployResult>, DeployError> {
    let job = crate::launch::take_request(home)?;
    crate::privilege::drop_to_owner(home)?;
    match job {
        Some(crate::launch::Job::Plan { plan }) => run_with(home, &plan, Some(service)).map(Some),
        Some(crate::launch::Job::Resume) | None => resume_with(home, Some(service)),
    }
}

/// [`run`], controlling the service `given` instead of the one the hand-over names.
pub fn run_with(
    home: &Home,
    plan_path: &Path,
    given: Option<&service::ServiceKind>,
) -> Result<DeployResult, DeployError> {
    let lock_path = Journal::lock_path(home);
    let Some(_lock) = FileLock::try_acquire(&lock_path)? else {
        return Err(DeployError::DeployInProgress {
            home: home.root().to_path_buf(),
            lock: lock_path,
        });
    };
    if Journal::load(home)?.is_some() {
        tracing::warn!("an earlier deploy did not finish; resolving it first");
        resume_locked(home, given)?;
    }
    let plan = DeployPlan::load(plan_path)?;
    let upgrade_dir = plan_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let current = home.current_version()?;
    if current.as_deref() != Some(plan.from_version.as_str()) {
        return Err(DeployError::Plan {
            path: plan_path.to_path_buf(),
            reason: format!(
                "plan is from version {} but current is {:?}",
                plan.from_version, current
            ),
        });
    }
    let ctx = Ctx {
        home,
        svc: service::control_for(home, &self_exe(), given)?,
        rep: Reporter::new(
            home,
            plan.control_plane.clone(),
            plan.attempt_id.clone(),
            Duration::from_secs(plan.options.report_timeout_secs),
        ),
        log: UpgradeLog {
            path: UpgradeDir(&upgrade_dir).upgrade_log(),
        },
        opts: plan.options.clone(),
        cp: plan.control_plane.clone(),
        stopped_at: Default::default(),
        downtime: Default::default(),
    };
    let mut j = Journal {
        attempt_id: plan.attempt_id.clone(),
        from_version: plan.from_version.clone(),
        to_version: plan.to_version.clone(),
        upgrade_dir: upgrade_dir.clone(),
        plan: plan_path.to_path_buf(),
        step: Step::Started,
        runner_pid: std::process::id(),
        build_dir: None,
        created_version_dir: false,
        restart_at: None,
        reason: None,
        updated: Utc::now(),
    };
    ctx.log.line(&format!(
        "Upgrade runner started (pid {}): {} -> {}",
        std::process::id(),
        plan.from_version,
        plan.to_version
    ));
    j.set(home, Step::Started)?;
    ctx.svc.hold()?;
    j.set(home, Step::Held)?;
    molt_layout::write_atomic(
        &UpgradeDir(&upgrade_dir).started_marker(),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;

    // Deploy Binary Files (and MigrateTrustStore inside the build).
    ctx.rep.stage(
        Stage::DeployBinaryFiles,
        StageState::InProgress,
        &format!("building versions/{}", plan.to_version),
    );
    let build_dir =
        home.version_scratch_dir(&plan.to_version, "build", rand::random::<u32>().into());
    j.build_dir = Some(build_dir.clone());
    j.set(home, Step::Building)?;
    let final_dir = home.version_dir(&plan.to_version);
    let build_started = std::time::Instant::now();
    let built = move_aside(home, &final_dir)
        .and_then(|_| crate::build::build_version(home, &plan, &upgrade_dir, &build_dir));
    let stats = match built {
        Ok((_, stats)) => stats,
        Err(e) => return failed_before_switch(&ctx, &mut j, Stage::DeployBinaryFiles, &e),
    };
    // Recorded before the rename: an undo must remove versions/<to> if it exists.
    j.created_version_dir = true;
    j.save(home)?;
    if let Err(e) = std::fs::rename(&build_dir, &final_dir)
        .map_err(io_err(&final_dir))
        .and_then(|_| fsutil::sync_dir(&home.versions_dir()))
    {
        return failed_before_switch(&ctx, &mut j, Stage::DeployBinaryFiles, &e);
    }
    j.build_dir = None;
    j.set(home, Step::Built)?;
    let build_ms = build_started.elapsed().as_millis();
    let msg = format!(
        "versions/{}: {} files linked, {} copied ({} bytes), {} checked ({} digests computed), build_ms={build_ms}",
        plan.to_version,
        stats.linked,
        stats.copied,
        stats.bytes_copied,
        stats.verified,
        stats.hashed
    );
    ctx.log.line(&msg);
    ctx.rep
        .stage(Stage::DeployBinaryFiles, StageState::Complete, &msg);
    if stats.truststore_rebuilt {
        ctx.rep.stage(
            Stage::MigrateTrustStore,
            StageState::Complete,
            &format!(
                "{} custom certificate(s) carried over",
                stats.truststore_carried
            ),
        );
    } else {
        ctx.rep.stage(
            Stage::MigrateTrustStore,
            StageState::Skipped,
            "no truststore with a stock copy in the runtime",
        );
    }

    // Reinstall Service.
    let new_unit = final_dir.join(UNIT_FILE);
    let old_unit = home.version_dir(&plan.from_version).join(UNIT_FILE);
    match ctx.svc.reinstall(
        new_unit.is_file().then_some(new_unit.as_path()),
        old_unit.is_file().then_some(old_unit.as_path()),
    ) {
        Ok(Reinstall::Unchanged) => ctx.rep.stage(
            Stage::ReinstallService,
            StageState::Skipped,
            "service definition unchanged",
        ),
        Ok(Reinstall::Reinstalled) => ctx.rep.stage(
            Stage::ReinstallService,
            StageState::Complete,
            "service definition reinstalled",
        ),
        Ok(Reinstall::Skipped(w)) => {
            ctx.rep
                .stage(Stage::ReinstallService, StageState::Skipped, &w);
            ctx.rep.issue(
                Stage::ReinstallService.as_str(),
                "reinstall-service-needed",
                FindingSeverity::Warning,
                &w,
                "Reinstall the service as an administrator.",
            );
        }
        Err(e) => return failed_before_switch(&ctx, &mut j, Stage::ReinstallService, &e),
    }

    // Restart: stop the old agent, switch, start the new one.
    ctx.rep
        .stage(Stage::Restart, StageState::InProgress, "stopping the agent");
    j.set(home, Step::Stopping)?;
    let stop_requested = std::time::Instant::now();
    if let Err(e) = stop_old(&ctx) {
        return failed_before_switch(&ctx, &mut j, Stage::Restart, &e);
    }
    j.set(home, Step::Stopped)?;
    ctx.stopped_at.set(Some(std::time::Instant::now()));
    ctx.log.line(&format!(
        "the agent is stopped and every recorded pid is gone (stop took {} ms)",
        stop_requested.elapsed().as_millis()
    ));
    // Re-check right before the switch: nothing may have restarted it (KB1001748).
    if let Err(e) = stop_old(&ctx) {
        return undo_before_switch(&ctx, &mut j, &format!("{} failed: {e}", Stage::Restart));
    }
    j.set(home, Step::Switching)?;
    fsutil::switch_symlink(
        &home.current_link(),
        &Path::new("versions").join(&plan.to_version),
    )?;
    j.set(home, Step::Switched)?;
    ctx.log
        .line(&format!("current -> versions/{}", plan.to_version));
    let r = start_and_check(&ctx, &mut j);
    if let (Ok(DeployResult::Complete { .. }), Some(d)) = (&r, ctx.downtime.get()) {
        println!(
            "build_ms={build_ms} downtime_ms={} (service stopped -> new version Up)",
            d.as_millis()
        );
    }
    r
}

/// Start the agent of `j.to_version` (already current) and health-check it;
/// roll back when it does not come Up.
fn start_and_check(ctx: &Ctx, j: &mut Journal) -> Result<DeployResult, DeployError> {
    let home = ctx.home;
    let _ = fsutil::remove_file_opt(&home.status_file());
    let at = Utc::now();
    j.restart_at = Some(at);
    j.set(home, Step::Starting)?;
    if let Err(e) = ctx.svc.start() {
        ctx.rep
            .stage(Stage::Restart, StageState::Failed, &e.to_string());
        return rollback(ctx, j, &format!("{} failed: {e}", Stage::Restart));
    }
    ctx.rep.stage(
        Stage::Restart,
        StageState::Complete,
        &format!("started version {}", j.to_version),
    );
    ctx.rep.stage(
        Stage::HealthCheck,
        StageState::InProgress,
        &format!(
            "waiting up to {} s for the agent to report Up",
            ctx.opts.health_timeout_secs
        ),
    );
    j.set(home, Step::HealthCheck)?;
    match crate::health::wait_healthy(home, &j.to_version, at, &ctx.opts, ctx.cp.as_ref()) {
        Ok(pid) => {
            if let Some(t) = ctx.stopped_at.get() {
                ctx.downtime.set(Some(t.elapsed()));
                ctx.log.line(&format!(
                    "downtime_ms={} (service stopped -> new version Up)",
                    t.elapsed().as_millis()
                ));
            }
            let msg = format!("version {} is Up (pid {pid})", j.to_version);
            ctx.rep
                .stage(Stage::HealthCheck, StageState::Complete, &msg);
            j.set(home, Step::Complete)?;
            let r = DeployResult::Complete {
                version: j.to_version.clone(),
            };
            finalize(ctx, j, &r, &msg)?;
            Ok(r)
        }
        Err(e) => rollback(ctx, j, &e.to_string()),
    }
}

/// Ask the agent to stop and wait until the service is stopped and every
/// recorded pid (hand-over file and service manager) is gone.
fn stop_old(ctx: &Ctx) -> Result<(), DeployError> {
    let extra = Handover::load(ctx.home)?
        .map(|h| h.live_pids())
        .unwrap_or_default();
    ctx.svc.request_stop()?;
    for p in &extra {
        if *p != std::process::id() {
            crate::proc::signal(*p, libc::SIGTERM);
        }
    }
    service::wait_stopped(
        ctx.svc.as_ref(),
        &extra,
        Duration::from_secs(ctx.opts.stop_timeout_secs),
    )
}

/// `stage` failed before the switch: report it Failed with the error, then
/// [`undo_before_switch`] with `<stage> failed: <error>` as the reason.
fn failed_before_switch(
    ctx: &Ctx,
    j: &mut Journal,
    stage: Stage,
    e: &DeployError,
) -> Result<DeployResult, DeployError> {
    ctx.rep.stage(stage, StageState::Failed, &e.to_string());
    undo_before_switch(ctx, j, &format!("{stage} failed: {e}"))
}

/// A step before the switch failed: nothing of the old version was touched.
/// Remove what was built, let the old agent run (start it if it was stopped).
fn undo_before_switch(
    ctx: &Ctx,
    j: &mut Journal,
    reason: &str,
) -> Result<DeployResult, DeployError> {
    ctx.log.line(&format!(
        "deploy failed before the switch: {reason}; keeping version {}",
        j.from_version
    ));
    j.reason = Some(reason.to_string());
    j.set(ctx.home, Step::RollingBack)?;
    continue_rollback(ctx, j)
}

/// After the switch something failed: flip `current` back, start the old version,
/// health-check it too.
fn rollback(ctx: &Ctx, j: &mut Journal, reason: &str) -> Result<DeployResult, DeployError> {
    ctx.log
        .line(&format!("{reason}; rolling back to {}", j.from_version));
    j.reason = Some(reason.to_string());
    j.set(ctx.home, Step::RollingBack)?;
    continue_rollback(ctx, j)
}

/// Make the old version current and Up again; idempotent, so a runner that dies
/// here is simply resumed here.
fn continue_rollback(ctx: &Ctx, j: &mut Journal) -> Result<DeployResult, DeployError> {
    let home = ctx.home;
    let reason = j
        .reason
        .clone()
        .unwrap_or_else(|| "interrupted deploy".into());
    let post_switch = j.restart_at.is_some()
        || home.current_version()?.as_deref() != Some(j.from_version.as_str());
    if home.current_version()?.as_deref() != Some(j.from_version.as_str()) {
        ctx.svc.hold()?;
        if let Err(e) = stop_old(ctx) {
            tracing::error!(error = %e, "the new agent does not stop; switching back anyway");
        }
        fsutil::switch_symlink(
            &home.current_link(),
            &Path::new("versions").join(&j.from_version),
        )?;
        ctx.log.line(&format!(
            "current -> versions/{} (rollback)",
            j.from_version
        ));
    }
    j.set(home, Step::RollbackSwitched)?;
    remove_new_version(home, j)?;
    // The old agent may never have been stopped (failure before the stop).
    let still_up = match (home.read_status(), ctx.svc.is_stopped()) {
        (Ok(Some(s)), Ok(false)) => {
            s.status == AgentStatus::Up && s.version == j.from_version && crate::proc::alive(s.pid)
        }
        _ => false,
    };
    let at = Utc::now();
    if !still_up {
        let _ = fsutil::remove_file_opt(&home.status_file());
        j.restart_at = Some(at);
    }
    j.set(home, Step::RollbackStarting)?;
    let after = if still_up {
        chrono::DateTime::<Utc>::MIN_UTC
    } else {
        at
    };
    let up = ctx.svc.start().and_then(|_| {
        crate::health::wait_up(
            home,
            &j.from_version,
            after,
            Duration::from_secs(ctx.opts.health_timeout_secs),
        )
    });
    let (r, msg) = match up {
        Ok(pid) => (
            DeployResult::RolledBack {
                version: j.from_version.clone(),
                reason: reason.clone(),
            },
            format!(
                "{reason}; rolled back to {}, which is Up (pid {pid})",
                j.from_version
            ),
        ),
        Err(e) => {
            let m = format!("{reason}; rollback to {} failed too: {e}", j.from_version);
            (DeployResult::Failed { reason: m.clone() }, m)
        }
    };
    if post_switch || matches!(r, DeployResult::Failed { .. }) {
        ctx.rep.stage(Stage::HealthCheck, StageState::Failed, &msg);
    }
    j.set(
        home,
        if matches!(r, DeployResult::Failed { .. }) {
            Step::Failed
        } else {
            Step::RolledBack
        },
    )?;
    finalize(ctx, j, &r, &msg)?;
    Ok(r)
}

/// Move an existing `versions/<v>` (left by an earlier failed attempt) out of the
/// way with one rename, so the build starts clean. Never the current version.
fn move_aside(home: &Home, dir: &Path) -> Result<(), DeployError> {
    if !dir.exists() {
        return Ok(());
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if home.current_version()?.as_deref() == Some(name.as_str()) {
        return Err(DeployError::Install {
            home: home.root().to_path_buf(),
            reason: format!("version {name} is the current version"),
        });
    }
    let trash = home.version_scratch_dir(&name, "trash", rand::random::<u32>().into());
    std::fs::rename(dir, &trash).map_err(io_err(dir))?;
    fsutil::remove_tree(&trash)
}

/// Remove the partial build and the new version dir (if this deploy created it
/// and it is not current).
fn remove_new_version(home: &Home, j: &Journal) -> Result<(), DeployError> {
    if let Some(b) = &j.build_dir
        && b.starts_with(home.versions_dir())
    {
        fsutil::remove_tree(b)?;
    }
    if j.created_version_dir && home.current_version()?.as_deref() != Some(j.to_version.as_str()) {
        move_aside(home, &home.version_dir(&j.to_version))?;
    }
    // Leftover hidden build dirs of this version from a runner that died before
    // it could record its build dir.
    if let Ok(rd) = std::fs::read_dir(home.versions_dir()) {
        let prefix = format!(".{}.build-", j.to_version);
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                fsutil::remove_tree(&e.path())?;
            }
        }
    }
    Ok(())
}

/// End of a deploy, whatever the result: report, append the upgrade log, record
/// the outcome, drop the journal and hand-over files, prune.
fn finalize(ctx: &Ctx, j: &mut Journal, r: &DeployResult, msg: &str) -> Result<(), DeployError> {
    let home = ctx.home;
    ctx.rep.finish(r.result(), msg);
    ctx.log.line(&format!("Upgrade {}: {msg}", r.result()));
    ctx.log.append_to_agent_log(home);
    let running = home.current_version()?.unwrap_or_default();
    crate::journal::write_last(
        home,
        &LastDeploy {
            attempt_id: j.attempt_id.clone(),
            from_version: j.from_version.clone(),
            to_version: j.to_version.clone(),
            result: r.result(),
            message: msg.into(),
            running_version: running,
            at: Utc::now(),
        },
    )?;
    Journal::remove(home)?;
    crate::crash::checkpoint("journal removed");
    fsutil::remove_file_opt(&home.upgrade_marker_file())?;
    fsutil::remove_file_opt(&home.handover_file())?;
    fsutil::remove_tree(&UpgradeDir(&j.upgrade_dir).packages_dir())?;
    if matches!(r, DeployResult::Complete { .. }) {
        molt_layout::write_atomic(
            &crate::prune::previous_file(home),
            j.from_version.as_bytes(),
        )?;
    }
    if !matches!(r, DeployResult::Failed { .. }) {
        let keep = crate::prune::keep_set(home)?;
        let p = crate::prune::prune(home, &keep)?;
        if !p.deferred.is_empty() {
            ctx.log.line(&format!("pruning deferred: {:?}", p.deferred));
        }
    }
    Ok(())
}

/// Finish or undo an unfinished deploy (`molt deploy --resume`). Takes the
/// deploy lock; `Ok(None)` when there was nothing to do.
pub fn resume(home: &Home) -> Result<Option<DeployResult>, DeployError> {
    resume_with(home, None)
}

/// [`resume`], controlling the service `given` instead of the one the hand-over names.
pub fn resume_with(
    home: &Home,
    given: Option<&service::ServiceKind>,
) -> Result<Option<DeployResult>, DeployError> {
    let lock_path = Journal::lock_path(home);
    let Some(_lock) = FileLock::try_acquire(&lock_path)? else {
        return Err(DeployError::DeployInProgress {
            home: home.root().to_path_buf(),
            lock: lock_path,
        });
    };
    resume_locked(home, given)
}

fn resume_locked(
    home: &Home,
    given: Option<&service::ServiceKind>,
) -> Result<Option<DeployResult>, DeployError> {
    let Some(mut j) = Journal::load(home)? else {
        return Ok(None);
    };
    let opts = DeployPlan::load(&j.plan)
        .map(|p| p.options)
        .unwrap_or_default();
    let (cp, attempt) = match DeployPlan::load(&j.plan) {
        Ok(p) => (p.control_plane, p.attempt_id),
        Err(_) => (None, j.attempt_id.clone()),
    };
    let cp_for_health = cp.clone();
    let ctx = Ctx {
        home,
        svc: service::control_for(home, &self_exe(), given)?,
        rep: Reporter::new(
            home,
            cp,
            attempt,
            Duration::from_secs(opts.report_timeout_secs),
        ),
        log: UpgradeLog {
            path: UpgradeDir(&j.upgrade_dir).upgrade_log(),
        },
        opts,
        cp: cp_for_health,
        stopped_at: Default::default(),
        downtime: Default::default(),
    };
    let actual = home.current_version()?;
    ctx.log.line(&format!(
        "resuming an interrupted deploy {} -> {} at step {:?} (current is {:?})",
        j.from_version, j.to_version, j.step, actual
    ));
    j.runner_pid = std::process::id();
    let r = match j.step {
        Step::Complete | Step::RolledBack | Step::Failed => {
            let r = match j.step {
                Step::Complete => DeployResult::Complete {
                    version: j.to_version.clone(),
                },
                Step::RolledBack => DeployResult::RolledBack {
                    version: j.from_version.clone(),
                    reason: j.reason.clone().unwrap_or_default(),
                },
                _ => DeployResult::Failed {
                    reason: j.reason.clone().unwrap_or_default(),
                },
            };
            let msg = format!("deploy had ended ({})", r.result());
            finalize(&ctx, &mut j, &r, &msg)?;
            r
        }
        s if s >= Step::RollingBack => continue_rollback(&ctx, &mut j)?,
        _ if actual.as_deref() == Some(j.to_version.as_str()) => {
            // The switch happened: the new version is complete. Start it and check it.
            ctx.rep.stage(
                Stage::Restart,
                StageState::InProgress,
                "resuming after the runner was interrupted",
            );
            start_and_check(&ctx, &mut j)?
        }
        s => {
            let reason = format!("the upgrade runner was interrupted at step {s:?}");
            ctx.rep
                .stage(Stage::DeployBinaryFiles, StageState::Failed, &reason);
            undo_before_switch(&ctx, &mut j, &reason)?
        }
    };
    Ok(Some(r))
}
