//! Hand-over (agent side): prepare the runner and start it detached, then wait
//! for it to say it has started. Only then may the agent stop (seeds 6.7: never
//! shut down without knowing the runner is there).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use molt_layout::{Home, UpgradeDir};
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, io_err};
use crate::fsutil;
use crate::plan::DeployPlan;
use crate::service::{Handover, ServiceKind};

/// Hand-over settings (from the agent's config).
#[derive(Debug, Clone)]
pub struct HandoverOptions {
    /// The service manager that runs the agent (config `service`, else detected).
    pub service: ServiceKind,
    /// The agent's pid (default: this process). The runner waits for it to be gone.
    pub agent_pid: Option<u32>,
    /// More PIDs the runner must see gone.
    pub extra_pids: Vec<u32>,
    /// Poll interval while waiting for the runner's start signal (seeds: 10 s).
    pub poll: Duration,
    /// How long to wait for it (seeds: 10 min).
    pub limit: Duration,
    /// Config key to skip the wait entirely.
    pub skip_wait: bool,
    /// Runner binary; default: `packages/upgrade/bin/molt` in the upgrade dir if
    /// present, else the running executable.
    pub runner: Option<PathBuf>,
}

impl Default for HandoverOptions {
    fn default() -> Self {
        Self {
            service: ServiceKind::detect(),
            agent_pid: None,
            extra_pids: Vec::new(),
            poll: Duration::from_secs(10),
            limit: Duration::from_secs(600),
            skip_wait: false,
            runner: None,
        }
    }
}

/// The upgrade marker (`conf/upgrade.marker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeMarker {
    pub from_version: String,
    pub to_version: String,
    pub upgrade_dir: PathBuf,
    pub at: chrono::DateTime<Utc>,
}

/// What the hand-over did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverOutcome {
    pub runner_pid: u32,
    pub runner_exe: PathBuf,
    pub upgrade_dir: PathBuf,
    /// How long the agent waited for the start signal (zero when skipped).
    pub waited: Duration,
}

/// Hand the deploy to a detached runner. On `Ok` the agent reports Down and stops;
/// on `Err` it stays Up (for a timeout: the issue "Unable to receive upgrade
/// process status"; the runner is killed so it cannot act later).
pub fn hand_over(
    home: &Home,
    upgrade_dir: &Path,
    opts: &HandoverOptions,
) -> Result<HandoverOutcome, DeployError> {
    let r = hand_over_inner(home, upgrade_dir, opts);
    if r.is_err() {
        // No runner acts on them now: a stale hand-over file would name pids a
        // later runner might signal after they are reused.
        let _ = fsutil::remove_file_opt(&home.handover_file());
        let _ = fsutil::remove_file_opt(&home.upgrade_marker_file());
    }
    r
}

fn hand_over_inner(
    home: &Home,
    upgrade_dir: &Path,
    opts: &HandoverOptions,
) -> Result<HandoverOutcome, DeployError> {
    let plan_path = UpgradeDir(upgrade_dir).plan_file();
    let plan = DeployPlan::load(&plan_path)?;

    // PIDs and service name for the runner.
    let mut pids = vec![opts.agent_pid.unwrap_or_else(std::process::id)];
    pids.extend(opts.extra_pids.iter().copied());
    std::fs::create_dir_all(home.conf_dir()).map_err(io_err(&home.conf_dir()))?;
    molt_layout::write_json_atomic(
        &home.handover_file(),
        &Handover::new(opts.service.clone(), pids),
    )?;

    // A stale start marker would make us believe a runner that never started.
    let marker = UpgradeDir(upgrade_dir).started_marker();
    fsutil::remove_file_opt(&marker)?;

    // The new version must be able to start at all (seeds 6.7/7.16): smoke-run it.
    smoke_run(upgrade_dir, &plan)?;

    // Changed-files list and upgrade marker.
    let list = plan.changed_files.join("\n");
    molt_layout::write_atomic(
        &UpgradeDir(upgrade_dir).changed_files_list(),
        list.as_bytes(),
    )?;
    molt_layout::write_json_atomic(
        &home.upgrade_marker_file(),
        &UpgradeMarker {
            from_version: plan.from_version.clone(),
            to_version: plan.to_version.clone(),
            upgrade_dir: upgrade_dir.to_path_buf(),
            at: Utc::now(),
        },
    )?;

    // Copy the runner into the upgrade dir: it must not run from a version dir.
    // (A companion unit runs the installed, root-owned `current/bin/molt`
    // instead: root never executes a file the service account wrote.)
    let src = match &opts.runner {
        Some(p) => p.clone(),
        None => {
            let staged = DeployPlan::staged_file(
                upgrade_dir,
                molt_bundle::BundleKind::Upgrade.as_str(),
                "bin/molt",
            );
            if staged.is_file() {
                staged
            } else {
                std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?
            }
        }
    };
    let runner_dir = UpgradeDir(upgrade_dir).runner_dir();
    std::fs::create_dir_all(&runner_dir).map_err(io_err(&runner_dir))?;
    let runner = UpgradeDir(upgrade_dir).runner_exe();
    std::fs::copy(&src, &runner).map_err(io_err(&src))?;
    fsutil::set_mode(&runner, 0o755)?;

    let log = UpgradeDir(upgrade_dir).runner_log();
    let launched = crate::launch::start_runner(
        home,
        &opts.service,
        &runner,
        &crate::launch::Job::Plan {
            plan: plan_path.clone(),
        },
        &log,
    )?;
    let pid = launched.pid().unwrap_or(0);
    tracing::info!(?launched, service = %opts.service, "upgrade runner started; waiting for its start signal");

    if opts.skip_wait {
        return Ok(HandoverOutcome {
            runner_pid: pid,
            runner_exe: runner,
            upgrade_dir: upgrade_dir.to_path_buf(),
            waited: Duration::ZERO,
        });
    }
    let start = Instant::now();
    loop {
        if marker.is_file() {
            let waited = start.elapsed();
            tracing::info!(
                ?launched,
                waited_ms = waited.as_millis() as u64,
                "upgrade runner signalled start"
            );
            return Ok(HandoverOutcome {
                runner_pid: marker_pid(&marker).unwrap_or(pid),
                runner_exe: runner,
                upgrade_dir: upgrade_dir.to_path_buf(),
                waited,
            });
        }
        if launched.ended() {
            return Err(DeployError::RunnerExited {
                status: "exited".into(),
                log,
            });
        }
        if start.elapsed() >= opts.limit {
            launched.cancel();
            tracing::error!(?launched, "Unable to receive upgrade process status");
            return Err(DeployError::HandoverTimeout {
                waited_secs: start.elapsed().as_secs(),
            });
        }
        let left = opts.limit.saturating_sub(start.elapsed());
        sleep_until_marker(&marker, opts.poll.min(left).max(Duration::from_millis(10)));
    }
}

/// The runner's pid, from its start marker.
fn marker_pid(marker: &Path) -> Option<u32> {
    std::fs::read_to_string(marker).ok()?.trim().parse().ok()
}

/// Sleep up to `d`, waking early when the marker shows up.
fn sleep_until_marker(marker: &Path, d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        if marker.is_file() {
            return;
        }
        std::thread::sleep(d.min(Duration::from_millis(50)));
    }
}

/// Run the new core's `bin/molt --version` from the staging dir with the
/// manifest's mode; it must exit 0 within 30 s.
fn smoke_run(upgrade_dir: &Path, plan: &DeployPlan) -> Result<(), DeployError> {
    let Some(core) = plan.packages.iter().find(|p| p.kind == "core") else {
        return Ok(());
    };
    let Some(meta) = core.files.get("bin/molt") else {
        return Ok(());
    };
    let staged = DeployPlan::staged_file(upgrade_dir, "core", "bin/molt");
    if !staged.is_file() {
        return Ok(()); // unchanged: it runs today
    }
    let bad = |reason: String| DeployError::NotExecutable {
        path: staged.clone(),
        reason,
    };
    if meta.mode & 0o100 == 0 {
        return Err(bad(format!(
            "manifest mode {:o} is not executable",
            meta.mode
        )));
    }
    fsutil::set_mode(&staged, meta.mode)?;
    let mut child = std::process::Command::new(&staged)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| bad(format!("cannot execute: {e}")))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(bad(format!("`--version` exited with {st}"))),
            Ok(None) if start.elapsed() > Duration::from_secs(30) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(bad("`--version` did not finish within 30 s".into()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(bad(e.to_string())),
        }
    }
}
