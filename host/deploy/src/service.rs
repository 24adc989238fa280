//! Service control behind one trait: the built-in supervisor (`molt run`) and
//! systemd. The runner only ever talks to [`ServiceControl`].
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use molt_layout::Home;
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, io_err};
use crate::fsutil::FileLock;
use crate::proc;

/// Which service manager keeps the agent running. Known, never assumed: the
/// runner must stop and start the agent through the manager that really runs it
/// (a supervisor started under a systemd unit is refused as a second service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ServiceKind {
    /// The built-in `molt run`.
    Supervisor,
    /// A systemd unit, always with its `.service` suffix.
    Systemd(String),
}

impl ServiceKind {
    /// `supervisor` or `systemd:<unit>`; anything else is refused (no fallback).
    pub fn parse(text: &str) -> Result<ServiceKind, DeployError> {
        let bad = |reason: &str| DeployError::Service {
            service: text.to_string(),
            reason: format!(
                "{reason}; expected `supervisor` or `systemd:<unit>` (e.g. systemd:molt-agent.service)"
            ),
        };
        if text == "supervisor" {
            return Ok(ServiceKind::Supervisor);
        }
        let Some(unit) = text.strip_prefix("systemd:") else {
            return Err(bad("unknown service kind"));
        };
        let base = unit.strip_suffix(".service").unwrap_or(unit);
        if base.is_empty()
            || !base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
        {
            return Err(bad("not a systemd unit name"));
        }
        Ok(ServiceKind::Systemd(format!("{base}.service")))
    }

    /// The service this process runs under: the systemd unit of its own cgroup
    /// when systemd is the host's service manager, else the supervisor.
    pub fn detect() -> ServiceKind {
        molt_layout::own_systemd_unit()
            .map(ServiceKind::Systemd)
            .unwrap_or(ServiceKind::Supervisor)
    }

    /// The systemd unit, if any.
    pub fn unit(&self) -> Option<&str> {
        match self {
            ServiceKind::Supervisor => None,
            ServiceKind::Systemd(u) => Some(u),
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceKind::Supervisor => f.write_str("supervisor"),
            ServiceKind::Systemd(u) => write!(f, "systemd:{u}"),
        }
    }
}

impl From<ServiceKind> for String {
    fn from(k: ServiceKind) -> String {
        k.to_string()
    }
}

impl TryFrom<String> for ServiceKind {
    type Error = DeployError;
    fn try_from(s: String) -> Result<Self, DeployError> {
        ServiceKind::parse(&s)
    }
}

/// What the agent writes under `conf/` before it stops (`conf/handover.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The service manager that runs the agent; the runner controls it through it.
    pub service: ServiceKind,
    /// Processes that must be gone before the switch.
    pub pids: Vec<u32>,
    /// Start time (clock ticks since boot) of each pid when it was recorded, so
    /// the runner never signals or waits for a process that reused the pid.
    #[serde(default)]
    pub start_ticks: std::collections::BTreeMap<u32, u64>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Handover {
    pub fn load(home: &Home) -> Result<Option<Handover>, DeployError> {
        Ok(molt_layout::read_json_opt(&home.handover_file())?)
    }

    /// Record `pids` with their start times.
    pub fn new(service: ServiceKind, pids: Vec<u32>) -> Handover {
        let start_ticks = pids
            .iter()
            .filter_map(|p| crate::proc::start_ticks(*p).map(|t| (*p, t)))
            .collect();
        Handover {
            service,
            pids,
            start_ticks,
            at: chrono::Utc::now(),
        }
    }

    /// The recorded pids that still name the process recorded (a pid reused
    /// by another process since is left alone).
    pub fn live_pids(&self) -> Vec<u32> {
        self.pids
            .iter()
            .copied()
            .filter(|p| {
                let same = crate::proc::same_process(*p, self.start_ticks.get(p).copied());
                if !same && crate::proc::alive(*p) {
                    tracing::warn!(
                        pid = p,
                        "recorded pid now names another process; not signalled"
                    );
                }
                same
            })
            .collect()
    }
}

/// Result of the Reinstall Service stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reinstall {
    /// The unit did not change.
    Unchanged,
    /// The new unit was installed.
    Reinstalled,
    /// Not privileged (or not applicable): the seeds' warning, reported as an issue.
    Skipped(String),
}

/// Start, stop and hold the agent service.
pub trait ServiceControl {
    /// `supervisor` or `systemd:<unit>`.
    fn name(&self) -> String;
    /// PIDs the service manager says belong to the running agent.
    fn pids(&self) -> Result<Vec<u32>, DeployError>;
    /// Does the service manager consider the agent stopped?
    fn is_stopped(&self) -> Result<bool, DeployError> {
        Ok(self.pids()?.iter().all(|p| !proc::alive(*p)))
    }
    /// Keep the agent from being (re)started behind the runner's back.
    fn hold(&self) -> Result<(), DeployError>;
    /// Ask the agent to stop (it finishes in-flight work within its own limit).
    fn request_stop(&self) -> Result<(), DeployError>;
    /// Release the hold and start the agent from `current`.
    fn start(&self) -> Result<(), DeployError>;
    /// Install the unit file of the new version if it changed.
    fn reinstall(
        &self,
        _new_unit: Option<&Path>,
        _old_unit: Option<&Path>,
    ) -> Result<Reinstall, DeployError> {
        Ok(Reinstall::Unchanged)
    }
}

/// Pick the service control named in `conf/handover.json`. Without a hand-over
/// file (a runner resumed by hand) the service this process runs under is used;
/// an unreadable or unknown kind is an error, never a silent supervisor.
pub fn for_home(home: &Home, runner_exe: &Path) -> Result<Box<dyn ServiceControl>, DeployError> {
    control_for(home, runner_exe, None)
}

/// [`for_home`], or the service `given` on the runner's command line (the
/// companion unit names the one unit it may control; a hand-over file that
/// names another is refused, since the account that wrote it is not trusted
/// with root's choice of unit).
pub fn control_for(
    home: &Home,
    runner_exe: &Path,
    given: Option<&ServiceKind>,
) -> Result<Box<dyn ServiceControl>, DeployError> {
    let recorded = Handover::load(home)?.map(|h| h.service);
    let kind = match (given, recorded) {
        (Some(g), Some(r)) if *g != r => {
            return Err(DeployError::Service {
                service: g.to_string(),
                reason: format!(
                    "the hand-over file {} names {r}, but this runner controls only {g}",
                    home.handover_file().display()
                ),
            });
        }
        (Some(g), _) => g.clone(),
        (None, Some(r)) => r,
        (None, None) => ServiceKind::detect(),
    };
    Ok(match kind {
        ServiceKind::Systemd(unit) => Box::new(Systemd {
            unit,
            home: home.clone(),
        }),
        ServiceKind::Supervisor => Box::new(Supervisor {
            home: home.clone(),
            exe: runner_exe.to_path_buf(),
        }),
    })
}

/// The built-in supervisor: `molt run --home H` keeps `<home>/current/bin/molt agent`
/// alive, owns `conf/agent.pid`, and does not start the agent while
/// `conf/deploy.hold` exists.
pub struct Supervisor {
    pub home: Home,
    /// The `molt` binary used to start `molt run` if no supervisor is running.
    pub exe: PathBuf,
}

/// `conf/supervisor.lock`, held by the running supervisor.
pub fn supervisor_lock(home: &Home) -> PathBuf {
    home.supervisor_lock_file()
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

impl ServiceControl for Supervisor {
    fn name(&self) -> String {
        "supervisor".into()
    }
    fn pids(&self) -> Result<Vec<u32>, DeployError> {
        Ok(read_pid(&self.home.agent_pid_file()).into_iter().collect())
    }
    fn hold(&self) -> Result<(), DeployError> {
        molt_layout::write_atomic(
            &self.home.hold_marker(),
            format!("{}\n", std::process::id()).as_bytes(),
        )?;
        Ok(())
    }
    fn request_stop(&self) -> Result<(), DeployError> {
        self.hold()?;
        for p in self.pids()? {
            proc::signal(p, libc::SIGTERM);
        }
        Ok(())
    }
    fn start(&self) -> Result<(), DeployError> {
        crate::fsutil::remove_file_opt(&self.home.hold_marker())?;
        if FileLock::is_held(&supervisor_lock(&self.home))? {
            return Ok(()); // the running supervisor starts the agent on its next tick
        }
        tracing::info!(exe = %self.exe.display(), "no supervisor running; starting molt run");
        spawn_detached(
            &self.exe,
            &["run", "--home", &self.home.root().to_string_lossy()],
            &self.home.supervisor_log(),
        )?;
        Ok(())
    }
}

/// systemd through `systemctl`. State is read with `systemctl show -p … --value`,
/// whose values are identifiers, not localized text.
pub struct Systemd {
    pub unit: String,
    pub home: Home,
}

impl Systemd {
    fn ctl(&self, args: &[&str]) -> Result<String, DeployError> {
        let _root = crate::privilege::Elevated::new();
        let out = Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|source| DeployError::Spawn {
                what: format!("systemctl {}", args.join(" ")),
                source,
            })?;
        if !out.status.success() {
            return Err(DeployError::Service {
                service: self.name(),
                reason: format!(
                    "systemctl {} failed ({}): {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Systemd {
    /// `/run/systemd/system/<unit>.d/50-molt-deploy-hold.conf`.
    fn hold_dropin(&self) -> PathBuf {
        Path::new("/run/systemd/system")
            .join(format!("{}.d", self.unit))
            .join("50-molt-deploy-hold.conf")
    }
}

impl ServiceControl for Systemd {
    fn name(&self) -> String {
        format!("systemd:{}", self.unit)
    }
    fn pids(&self) -> Result<Vec<u32>, DeployError> {
        let pid: u32 = self
            .ctl(&["show", "-p", "MainPID", "--value", &self.unit])?
            .parse()
            .unwrap_or(0);
        Ok(if pid == 0 { Vec::new() } else { vec![pid] })
    }
    fn is_stopped(&self) -> Result<bool, DeployError> {
        let state = self.ctl(&["show", "-p", "ActiveState", "--value", &self.unit])?;
        Ok(matches!(state.as_str(), "inactive" | "failed") && self.pids()?.is_empty())
    }
    fn hold(&self) -> Result<(), DeployError> {
        // A runtime drop-in whose condition fails while the hold marker exists:
        // neither Restart= nor anyone's `systemctl start` starts the unit until
        // start() removes it. (A runtime mask would not do: it does not shadow a
        // unit installed under /etc/systemd/system.)
        molt_layout::write_atomic(
            &self.home.hold_marker(),
            format!("{}\n", std::process::id()).as_bytes(),
        )?;
        let dropin = self.hold_dropin();
        {
            let _root = crate::privilege::Elevated::new();
            molt_layout::write_atomic(
                &dropin,
                format!(
                    "# Written by the Molt deploy runner while it replaces the agent's version;\n\
                     # removed when it starts the agent again.\n[Unit]\nConditionPathExists=!{}\n",
                    self.home.hold_marker().display()
                )
                .as_bytes(),
            )?;
        }
        self.ctl(&["daemon-reload"]).map(|_| ())
    }
    fn request_stop(&self) -> Result<(), DeployError> {
        self.ctl(&["stop", "--no-block", &self.unit]).map(|_| ())
    }
    fn start(&self) -> Result<(), DeployError> {
        crate::fsutil::remove_file_opt(&self.home.hold_marker())?;
        let dropin = self.hold_dropin();
        if dropin.exists() {
            {
                let _root = crate::privilege::Elevated::new();
                crate::fsutil::remove_file_opt(&dropin)?;
            }
            self.ctl(&["daemon-reload"])?;
        }
        // A unit that hit its start limit (a crash loop) refuses `start` until reset.
        self.ctl(&["reset-failed", &self.unit])?;
        self.ctl(&["start", &self.unit]).map(|_| ())
    }
    fn reinstall(
        &self,
        new_unit: Option<&Path>,
        old_unit: Option<&Path>,
    ) -> Result<Reinstall, DeployError> {
        let Some(new_unit) = new_unit else {
            return Ok(Reinstall::Unchanged);
        };
        let new = std::fs::read(new_unit).map_err(io_err(new_unit))?;
        let old = old_unit.and_then(|p| std::fs::read(p).ok());
        if old.as_deref() == Some(new.as_slice()) {
            return Ok(Reinstall::Unchanged);
        }
        // A runner acting for an unprivileged account (or not root at all) may
        // not change what root's service manager runs.
        if !crate::privilege::is_root() {
            return Ok(Reinstall::Skipped(REINSTALL_WARNING.into()));
        }
        // The installed unit keeps its home and its account: the package's
        // unit is written for /opt/molt and the `molt` account.
        let dest = Path::new("/etc/systemd/system").join(&self.unit);
        let user = std::fs::read_to_string(&dest)
            .ok()
            .and_then(|t| unit_user(&t));
        let text = String::from_utf8_lossy(&new);
        molt_layout::write_atomic(
            &dest,
            render_unit(&text, self.home.root(), user.as_deref()).as_bytes(),
        )?;
        self.ctl(&["daemon-reload"])?;
        Ok(Reinstall::Reinstalled)
    }
}

/// The seeds' Reinstall Service warning, reported as an issue when not privileged.
pub const REINSTALL_WARNING: &str = "The service definition changed in this version but the agent is not running with the privileges needed to reinstall the service; the upgrade continues with the old service definition. Reinstall the service as an administrator.";

/// Start a program detached from us: new session, stdin from /dev/null, stdout and
/// stderr appended to `log`. Returns its pid.
pub fn spawn_detached(exe: &Path, args: &[&str], log: &Path) -> Result<u32, DeployError> {
    spawn_detached_as(exe, args, log, None)
}

/// [`spawn_detached`] as the account `ids` (uid, gid) when given (root only).
pub fn spawn_detached_as(
    exe: &Path,
    args: &[&str],
    log: &Path,
    ids: Option<(u32, u32)>,
) -> Result<u32, DeployError> {
    use std::os::unix::process::CommandExt;
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(log))?;
    let err = out.try_clone().map_err(io_err(log))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: setsid is async-signal-safe; it detaches the child from our session
    // so it survives our exit and our signals.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| DeployError::Spawn {
        what: format!("{} {}", exe.display(), args.join(" ")),
        source,
    })?;
    let pid = child.id();
    // Reap it in the background if it exits while we are still alive.
    std::thread::spawn(move || {
        let mut c = child;
        let _ = c.wait();
    });
    Ok(pid)
}

/// Services serving one install dir. More than one is the seeds' 7.3 failure.
/// The unit this process runs under is the agent's own service, not another.
pub fn detect_services(home: &Home) -> Result<Vec<String>, DeployError> {
    let own = ServiceKind::detect();
    detect_services_except(home, own.unit())
}

/// [`detect_services`] leaving out the unit file named `own` (e.g. the unit
/// recorded in the hand-over, when the runner itself runs outside it).
pub fn detect_services_except(home: &Home, own: Option<&str>) -> Result<Vec<String>, DeployError> {
    let mut found = Vec::new();
    if FileLock::is_held(&supervisor_lock(home))? {
        found.push(format!(
            "supervisor (pid {})",
            read_pid(&home.supervisor_pid_file()).unwrap_or(0)
        ));
    }
    found.extend(
        molt_layout::systemd::units_serving(home.root(), own)
            .into_iter()
            .map(|u| format!("systemd unit {u}")),
    );
    Ok(found)
}

/// A unit file shipped for `/opt/molt` and the `molt` account, for the
/// install at `home` run by `user` (`None`: root, no `User=`/`Group=` lines).
pub fn render_unit(template: &str, home: &Path, user: Option<&str>) -> String {
    template
        .replace("/opt/molt", &home.to_string_lossy())
        .lines()
        .filter_map(|l| match (l.split_once('='), user) {
            (Some(("User", _)), Some(u)) => Some(format!("User={u}")),
            (Some(("Group", _)), Some(u)) => Some(format!("Group={u}")),
            (Some(("User" | "Group", _)), None) => None,
            _ => Some(l.to_string()),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The `User=` of an installed unit file (`None`: it runs as root).
pub fn unit_user(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("User="))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty() && u != "root")
}

/// Refuse to run when another service already serves this install.
pub fn refuse_duplicate(home: &Home) -> Result<(), DeployError> {
    let s = detect_services(home)?;
    if !s.is_empty() {
        return Err(DeployError::DuplicateService(format!(
            "{} already serves {}: {}",
            if s.len() == 1 {
                "a service"
            } else {
                "services"
            },
            home.root().display(),
            s.join(", ")
        )));
    }
    Ok(())
}

/// Wait until the service is stopped and every pid is gone; SIGKILL what is left
/// after `limit` (a hung shutdown, seeds 6.2/6.3), then wait up to 10 s more.
pub fn wait_stopped(
    svc: &dyn ServiceControl,
    extra_pids: &[u32],
    limit: Duration,
) -> Result<(), DeployError> {
    let start = std::time::Instant::now();
    let mut deadline = limit;
    let mut killed = false;
    loop {
        let mut pids: Vec<u32> = svc.pids()?;
        pids.extend_from_slice(extra_pids);
        pids.retain(|p| *p != std::process::id() && proc::alive(*p));
        if pids.is_empty() && svc.is_stopped()? {
            return Ok(());
        }
        if start.elapsed() >= deadline {
            if killed {
                return Err(DeployError::StopTimeout {
                    secs: start.elapsed().as_secs(),
                    pids,
                });
            }
            tracing::warn!(
                ?pids,
                secs = limit.as_secs(),
                "graceful stop timed out; killing the old agent"
            );
            for p in &pids {
                proc::signal(*p, libc::SIGKILL);
            }
            killed = true;
            deadline = limit + Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_kinds_parse_and_round_trip_and_unknown_ones_are_refused() {
        assert_eq!(
            ServiceKind::parse("supervisor").unwrap(),
            ServiceKind::Supervisor
        );
        let k = ServiceKind::parse("systemd:molt-agent").unwrap();
        assert_eq!(k, ServiceKind::Systemd("molt-agent.service".into()));
        assert_eq!(k.to_string(), "systemd:molt-agent.service");
        assert_eq!(ServiceKind::parse(&k.to_string()).unwrap(), k);
        for bad in [
            "",
            "systemd",
            "systemd:",
            "systemd:.service",
            "launchd",
            "systemd:a b",
        ] {
            let e = ServiceKind::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected `supervisor` or `systemd:<unit>`"),
                "{bad}: {e}"
            );
        }
        // The hand-over file carries the same text, and an unknown kind in it
        // is an error when read, not a silent supervisor.
        let h: Handover = serde_json::from_str(
            r#"{"service":"systemd:molt-agent.service","pids":[1],"at":"2026-12-02T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(h.service.unit(), Some("molt-agent.service"));
        assert!(
            serde_json::from_str::<Handover>(
                r#"{"service":"upstart","pids":[1],"at":"2026-12-02T00:00:00Z"}"#
            )
            .is_err()
        );
    }
}
