//! Starting the runner so that it outlives the agent and the stop of the
//! agent's service: how depends on the service manager and the account.
//!
//! - `molt run` (the built-in supervisor): a detached process (`setsid`).
//! - systemd, agent as root: a transient unit (`systemd-run`), so the runner is
//!   in a cgroup of its own and `systemctl stop` of the agent cannot touch it.
//! - systemd, agent as an unprivileged account: the agent may not start units,
//!   so it writes `work/upgrade.request`; the companion path unit installed by
//!   `molt install` sees it and starts the runner as root (docs/deploy.md).
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::Utc;
use molt_layout::Home;
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, io_err};
use crate::service::ServiceKind;

/// What the runner is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "lowercase")]
pub enum Job {
    /// Deploy `plan.json` (under `work/upgrade_temp/`).
    Plan { plan: PathBuf },
    /// Finish or undo the deploy recorded in `work/deploy.journal`.
    Resume,
}

/// `work/upgrade.request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(flatten)]
    pub job: Job,
    pub at: chrono::DateTime<Utc>,
}

/// How the runner was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launched {
    /// A detached process.
    Process(u32),
    /// A transient systemd unit of that name.
    TransientUnit(String),
    /// A request file for the companion unit.
    Requested(PathBuf),
}

impl Launched {
    /// Is the runner known to have ended already (so waiting is pointless)?
    pub fn ended(&self) -> bool {
        match self {
            Launched::Process(pid) => !crate::proc::alive(*pid),
            Launched::TransientUnit(unit) => Command::new("systemctl")
                .args(["is-active", "--quiet", unit])
                .status()
                .map(|s| !s.success())
                .unwrap_or(false),
            // The companion may not have seen the file yet.
            Launched::Requested(_) => false,
        }
    }

    /// Stop a runner that did not signal its start in time, so it cannot act later.
    pub fn cancel(&self) {
        match self {
            Launched::Process(pid) => crate::proc::signal(*pid, libc::SIGKILL),
            Launched::TransientUnit(unit) => {
                let _ = Command::new("systemctl")
                    .args(["kill", "--signal=SIGKILL", unit])
                    .status();
            }
            Launched::Requested(path) => {
                let _ = crate::fsutil::remove_file_opt(path);
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Launched::Process(p) => Some(*p),
            _ => None,
        }
    }
}

/// Start the runner `exe` for `job` on `home`, as fits `service` and this
/// process's account. Its output goes to `log` (process and transient unit).
pub fn start_runner(
    home: &Home,
    service: &ServiceKind,
    exe: &Path,
    job: &Job,
    log: &Path,
) -> Result<Launched, DeployError> {
    let home_s = home.root().to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["deploy".into(), "--home".into(), home_s];
    match job {
        Job::Plan { plan } => {
            args.push("--plan".into());
            args.push(plan.to_string_lossy().into_owned());
        }
        Job::Resume => args.push("--resume".into()),
    }
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    match service {
        ServiceKind::Supervisor => {
            crate::service::spawn_detached(exe, &args_ref, log).map(Launched::Process)
        }
        ServiceKind::Systemd(unit) if crate::privilege::is_root() => {
            let name = format!(
                "{}-upgrade-{:08x}.service",
                unit.trim_end_matches(".service"),
                rand::random::<u32>()
            );
            if let Some(d) = log.parent() {
                std::fs::create_dir_all(d).map_err(io_err(d))?;
            }
            let out = Command::new("systemd-run")
                .arg(format!("--unit={name}"))
                .args(["--collect", "--quiet", "--no-block"])
                .arg(format!(
                    "--property=StandardOutput=append:{}",
                    log.display()
                ))
                .arg(format!("--property=StandardError=append:{}", log.display()))
                .arg("--")
                .arg(exe)
                .args(&args_ref)
                .output()
                .map_err(|source| DeployError::Spawn {
                    what: format!("systemd-run {}", exe.display()),
                    source,
                })?;
            if !out.status.success() {
                return Err(DeployError::Service {
                    service: service.to_string(),
                    reason: format!(
                        "systemd-run could not start the runner ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            Ok(Launched::TransientUnit(name))
        }
        ServiceKind::Systemd(unit) => {
            molt_layout::systemd::companion_enabled(unit, home.root()).map_err(|reason| {
                DeployError::Service {
                    service: service.to_string(),
                    reason: format!(
                        "this account may not start units and the companion unit that runs the upgrade is missing: {reason}"
                    ),
                }
            })?;
            let path = home.upgrade_request_file();
            molt_layout::write_json_atomic(
                &path,
                &Request {
                    job: job.clone(),
                    at: Utc::now(),
                },
            )?;
            tracing::info!(request = %path.display(), companion = %molt_layout::systemd::companion_service(unit),
                "upgrade requested from the companion unit");
            Ok(Launched::Requested(path))
        }
    }
}

/// Take the request file (read it and remove it, so the path unit does not start
/// the runner again). `None` when there is none. The plan must be a
/// `plan.json` inside this home's `work/upgrade_temp/`: the file was written by
/// the service account, and the runner reads nothing else it names.
pub fn take_request(home: &Home) -> Result<Option<Job>, DeployError> {
    let path = home.upgrade_request_file();
    let req: Option<Request> = molt_layout::read_json_opt(&path)?;
    crate::fsutil::remove_file_opt(&path)?;
    let Some(req) = req else {
        return Ok(None);
    };
    if let Job::Plan { plan } = &req.job {
        let bad = |reason: String| DeployError::Plan {
            path: plan.clone(),
            reason,
        };
        let base = home.upgrade_temp_dir();
        let base = base.canonicalize().map_err(io_err(&base))?;
        let real = plan.canonicalize().map_err(io_err(plan))?;
        if !real.starts_with(&base) || real.file_name().is_none_or(|n| n != "plan.json") {
            return Err(bad(format!(
                "the request names a plan outside {} (refused)",
                base.display()
            )));
        }
        return Ok(Some(Job::Plan { plan: real }));
    }
    Ok(Some(req.job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_once_and_only_for_a_plan_inside_upgrade_temp() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::new(t.path());
        let dir = home.upgrade_temp_dir().join("123-0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plan.json"), "{}").unwrap();
        let write = |job: Job| {
            molt_layout::write_json_atomic(
                &home.upgrade_request_file(),
                &Request {
                    job,
                    at: Utc::now(),
                },
            )
            .unwrap()
        };
        write(Job::Plan {
            plan: dir.join("plan.json"),
        });
        assert!(matches!(
            take_request(&home).unwrap(),
            Some(Job::Plan { .. })
        ));
        assert_eq!(take_request(&home).unwrap(), None, "taken once");
        write(Job::Resume);
        assert_eq!(take_request(&home).unwrap(), Some(Job::Resume));
        // A plan elsewhere (or reached through ..) is refused, and the request is gone.
        let outside = t.path().join("plan.json");
        std::fs::write(&outside, "{}").unwrap();
        std::fs::write(home.work_dir().join("plan.json"), "{}").unwrap();
        for p in [outside, dir.join("../../plan.json")] {
            write(Job::Plan { plan: p });
            let e = take_request(&home).unwrap_err().to_string();
            assert!(e.contains("outside"), "{e}");
            assert!(!home.upgrade_request_file().exists());
        }
    }
}
