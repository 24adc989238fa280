//! The install layout on disk. Every path an agent, runner or operator tool uses
//! comes from [`Home`], so the layout is written down in exactly one place
//! (docs/architecture.md describes it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod queue;
pub mod systemd;
pub mod tls;

/// Errors reading or writing layout state.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Map an io error to [`LayoutError::Io`] naming the path (also the operator tools' io error).
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An agent install directory (`<home>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `<home>/versions`: one immutable directory per installed core version.
    pub fn versions_dir(&self) -> PathBuf {
        self.root.join("versions")
    }
    /// `<home>/versions/<version>`.
    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.versions_dir().join(version)
    }
    /// `<home>/current`: symlink to the active version, switched by one atomic rename.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }
    /// `<home>/config.toml`: never touched by an upgrade.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `<home>/conf`: overrides and hand-over files; never touched by an upgrade.
    pub fn conf_dir(&self) -> PathBuf {
        self.root.join("conf")
    }
    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join("package").join("incoming")
    }
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }
    /// `<home>/work/upgrade_temp`: parent of the per-upgrade `<random>-0` directories.
    pub fn upgrade_temp_dir(&self) -> PathBuf {
        self.work_dir().join("upgrade_temp")
    }
    pub fn journal_file(&self) -> PathBuf {
        self.work_dir().join("deploy.journal")
    }
    pub fn status_file(&self) -> PathBuf {
        self.work_dir().join("agent.status.json")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.logs_dir().join("agent.log")
    }
    /// `<home>/state`: trusted root and accepted bundle sequences.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    /// `<home>/state/root.json`: the trusted root (the trust store's file).
    pub fn trusted_root_file(&self) -> PathBuf {
        self.state_dir().join(molt_bundle::store::ROOT_FILE)
    }
    /// `<home>/state/held-after-rollback.json`: the agent's back-off record
    /// ([`HeldRecord`]), written by the agent, read by `molt status`.
    pub fn held_after_rollback_file(&self) -> PathBuf {
        self.state_dir().join("held-after-rollback.json")
    }
    /// `<home>/work/report-queue.jsonl`: control-plane requests the runner could not
    /// send (one `{"method","path","body"}` per line); the agent flushes it in order.
    pub fn report_queue_file(&self) -> PathBuf {
        self.work_dir().join("report-queue.jsonl")
    }
    /// `<home>/work/previous-version`: the version a rollback would return to,
    /// written by the deploy runner when a deploy completes.
    pub fn previous_version_file(&self) -> PathBuf {
        self.work_dir().join("previous-version")
    }
    /// `<home>/work/prune.pending`: versions whose removal was deferred
    /// (a process still held their files open).
    pub fn prune_pending_file(&self) -> PathBuf {
        self.work_dir().join("prune.pending")
    }
    /// `<home>/backup`: backups made by an upgrade (e.g. the old truststore).
    pub fn backup_dir(&self) -> PathBuf {
        self.root.join("backup")
    }
    /// `<home>/backup/truststore`: `<version>.cacerts.pem`, the truststore a
    /// MigrateTrustStore replaced (read by `molt diagnose` and `molt repair`).
    pub fn truststore_backup_dir(&self) -> PathBuf {
        self.backup_dir().join("truststore")
    }
    /// `<home>/conf/agent.pid`: the agent's pid, owned by the supervisor (`molt run`).
    pub fn agent_pid_file(&self) -> PathBuf {
        self.conf_dir().join("agent.pid")
    }
    /// `<home>/work/upgrade.request`: written by an agent that may not start the
    /// runner itself (an unprivileged account under systemd); the companion path
    /// unit sees it and starts the runner as root (docs/deploy.md).
    pub fn upgrade_request_file(&self) -> PathBuf {
        self.work_dir().join("upgrade.request")
    }
    /// `<home>/conf/handover.json`: PIDs and service name written by the agent at hand-over.
    pub fn handover_file(&self) -> PathBuf {
        self.conf_dir().join("handover.json")
    }
    /// `<home>/conf/deploy.hold`: while present the supervisor does not (re)start the agent.
    pub fn hold_marker(&self) -> PathBuf {
        self.conf_dir().join("deploy.hold")
    }
    /// `<home>/work/precheck-staging`: the checks' read-write `/staging` preopen.
    pub fn precheck_staging_dir(&self) -> PathBuf {
        self.work_dir().join("precheck-staging")
    }
    /// `<home>/current/runtime/VERSION`: the active runtime's version (a file of
    /// the runtime package; the checks' `runtime_version` fact).
    pub fn current_runtime_version_file(&self) -> PathBuf {
        self.current_link().join("runtime").join("VERSION")
    }
    /// The meta directory of a version: `<home>/versions/<v>/meta`.
    pub fn meta_dir_of(&self, version: &str) -> PathBuf {
        meta_dir_in(&self.version_dir(version))
    }
    /// `<home>/conf/upgrade.marker`: an upgrade is handed over (written by the
    /// hand-over, removed when the deploy ends).
    pub fn upgrade_marker_file(&self) -> PathBuf {
        self.conf_dir().join("upgrade.marker")
    }
    /// `<home>/work/deploy.lock`: held by the live deploy runner; free with a
    /// journal present means the runner died.
    pub fn deploy_lock_file(&self) -> PathBuf {
        self.work_dir().join("deploy.lock")
    }
    /// `<home>/work/last-deploy.json`: the outcome of the last finished deploy.
    pub fn last_deploy_file(&self) -> PathBuf {
        self.work_dir().join("last-deploy.json")
    }
    /// `<home>/logs/deploy-resume.log`: output of a runner started to resume.
    pub fn deploy_resume_log(&self) -> PathBuf {
        self.logs_dir().join("deploy-resume.log")
    }
    /// `<home>/conf/supervisor.lock`: one supervisor (`molt run`) per install.
    pub fn supervisor_lock_file(&self) -> PathBuf {
        self.conf_dir().join("supervisor.lock")
    }
    /// `<home>/conf/supervisor.pid`: the supervisor's pid.
    pub fn supervisor_pid_file(&self) -> PathBuf {
        self.conf_dir().join("supervisor.pid")
    }
    /// `<home>/logs/supervisor.log`: a supervisor started detached logs here.
    pub fn supervisor_log(&self) -> PathBuf {
        self.logs_dir().join("supervisor.log")
    }
    /// `<home>/logs/agent.console.log`: the agent's stderr under the supervisor.
    pub fn agent_console_log(&self) -> PathBuf {
        self.logs_dir().join("agent.console.log")
    }
    /// `<home>/current/bin/molt`: the active version's executable.
    pub fn current_exe(&self) -> PathBuf {
        self.current_link().join("bin").join("molt")
    }
    /// `<home>/versions/.<v>.<what>-<n>`: a directory being built beside the
    /// versions (same file system, so one rename puts it in place; the leading
    /// dot keeps it out of the installed versions).
    pub fn version_scratch_dir(&self, version: &str, what: &str, n: u64) -> PathBuf {
        self.versions_dir().join(format!(".{version}.{what}-{n}"))
    }

    /// The version `current` points at, if any.
    pub fn current_version(&self) -> Result<Option<String>, LayoutError> {
        let link = self.current_link();
        match std::fs::read_link(&link) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&link)(e)),
        }
    }

    /// Installed packages of the active version (`current/meta/*.meta.json`).
    pub fn installed(&self) -> Result<Vec<InstalledPackage>, LayoutError> {
        match self.current_version()? {
            Some(v) => read_meta_dir(&self.meta_dir_of(&v)),
            None => Ok(Vec::new()),
        }
    }

    /// Read the agent status file, if the agent wrote one.
    pub fn read_status(&self) -> Result<Option<AgentStatus>, LayoutError> {
        read_json_opt(&self.status_file())
    }

    /// Write the agent status file atomically (temp file + rename).
    pub fn write_status(&self, status: &AgentStatus) -> Result<(), LayoutError> {
        write_json_atomic(&self.status_file(), status)
    }
}

/// An exclusive `flock` on `path` (created, with its parent, if missing), held
/// as long as the returned file is open; the kernel drops it when the holder
/// dies, even by SIGKILL, which is how a stale holder is recognised. `Ok(None)`
/// when `wait` is false and another process holds it. The deploy lock and the
/// report queue's lock both take it here.
pub fn lock_file(path: &Path, wait: bool) -> Result<Option<std::fs::File>, LayoutError> {
    use std::os::fd::AsRawFd;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a descriptor we own for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
            _ => return Err(io_err(path)(e)),
        }
    }
}

/// The name of a version directory's meta folder (never part of a payload).
pub const META_DIR: &str = "meta";

/// `<version_dir>/meta`, for a version directory that is not (yet) under a
/// home: the deploy's build directory, a repair's new install.
pub fn meta_dir_in(version_dir: &Path) -> PathBuf {
    version_dir.join(META_DIR)
}

/// One upgrade's directory (`<home>/work/upgrade_temp/<n>-0`): what the agent
/// extracted and planned for the runner, and what the runner writes while it
/// acts on it. Its paths are written down here only.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeDir<'a>(pub &'a Path);

impl UpgradeDir<'_> {
    /// `plan.json`: the hand-over plan.
    pub fn plan_file(self) -> PathBuf {
        self.0.join("plan.json")
    }
    /// `packages/`: the extracted packages, one directory per kind.
    pub fn packages_dir(self) -> PathBuf {
        self.0.join("packages")
    }
    /// `packages/<kind>/<rel>`: one extracted payload file.
    pub fn staged_file(self, kind: &str, rel: &str) -> PathBuf {
        self.packages_dir().join(kind).join(rel)
    }
    /// `upgrade.log`: the runner's log of this upgrade.
    pub fn upgrade_log(self) -> PathBuf {
        self.0.join("upgrade.log")
    }
    /// `runner/`: the runner binary's copy.
    pub fn runner_dir(self) -> PathBuf {
        self.0.join("runner")
    }
    /// `runner/molt`: the runner binary the hand-over starts.
    pub fn runner_exe(self) -> PathBuf {
        self.runner_dir().join("molt")
    }
    /// `runner.log`: the detached runner's stdout and stderr.
    pub fn runner_log(self) -> PathBuf {
        self.0.join("runner.log")
    }
    /// `runner.started`: the runner's start signal to the agent.
    pub fn started_marker(self) -> PathBuf {
        self.0.join("runner.started")
    }
    /// `changed_files.txt`: the changed paths, one a line, for operators.
    pub fn changed_files_list(self) -> PathBuf {
        self.0.join("changed_files.txt")
    }
}

/// One installed package, as recorded in `meta/<kind>.meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    /// Package kind: `core`, `runtime`, `upgrade`.
    pub kind: String,
    /// Full package file name, e.g. `molt-core.<version>.universal.universal.zip`.
    pub name: String,
    /// The version part of the buildstamp.
    pub version: String,
    /// Payload entries of the package: path relative to the version dir -> sha256 hex.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, FileMeta>,
}

/// A payload file of an installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    pub sha256: String,
    pub mode: u32,
}

impl FileMeta {
    /// The installed-meta record of each entry of a verified manifest, by path.
    pub fn of_manifest(
        m: &molt_bundle::schema::Manifest,
    ) -> std::collections::BTreeMap<String, FileMeta> {
        m.entries
            .iter()
            .map(|e| {
                let meta = FileMeta {
                    size: e.size,
                    sha256: e.sha256.clone(),
                    mode: e.mode,
                };
                (e.path.clone(), meta)
            })
            .collect()
    }
}

/// What the running agent says about itself (`work/agent.status.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    /// Up, Upgrading, Paused, Down, Upgrade Failed (the seeds' words).
    pub status: molt_protocol::AgentStatus,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Read every `*.meta.json` in a directory, sorted by kind.
pub fn read_meta_dir(dir: &Path) -> Result<Vec<InstalledPackage>, LayoutError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for ent in rd {
        let ent = ent.map_err(io_err(dir))?;
        let p = ent.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".meta.json"))
            && let Some(m) = read_json_opt::<InstalledPackage>(&p)?
        {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.kind.cmp(&b.kind));
    Ok(out)
}

/// Read a JSON file; `None` if it does not exist.
pub fn read_json_opt<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, LayoutError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| LayoutError::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Write JSON to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), LayoutError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| LayoutError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// Write bytes to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The systemd unit this process runs in, when systemd is the host's service
/// manager. Shared by the deploy runner and the host facts, so "the agent's own
/// unit" means the same in both and is never counted as another service.
pub fn own_systemd_unit() -> Option<String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    unit_of_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)
}

/// The `.service` unit named by a `/proc/<pid>/cgroup` text (the cgroup v2 `0::`
/// line, else v1's named `systemd` hierarchy). A process in a login session or
/// a scope (`session-3.scope`) has none.
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| !p.trim().is_empty() && p.trim() != "/")
        .or_else(|| {
            text.lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|x| x.1))
        })?;
    let last = path.trim().rsplit('/').next()?;
    (last.ends_with(".service") && last.len() > ".service".len()).then(|| last.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unit_of_a_cgroup_is_its_last_service_component() {
        use super::unit_of_cgroup;
        assert_eq!(
            unit_of_cgroup("0::/system.slice/molt-agent.service\n").as_deref(),
            Some("molt-agent.service")
        );
        // v1 hybrid: the unified line is "/", the named hierarchy holds the unit.
        assert_eq!(
            unit_of_cgroup("1:name=systemd:/system.slice/molt-agent.service\n0::/\n").as_deref(),
            Some("molt-agent.service")
        );
        assert_eq!(
            unit_of_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(unit_of_cgroup("0::/\n"), None);
        assert_eq!(unit_of_cgroup("0::/system.slice/.service\n"), None);
        assert_eq!(unit_of_cgroup(""), None);
    }

    use super::*;

    #[test]
    fn current_version_follows_the_symlink() {
        let t = std::env::temp_dir().join(format!("molt-layout-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let home = Home::new(&t);
        std::fs::create_dir_all(home.version_dir("v1")).unwrap();
        assert_eq!(home.current_version().unwrap(), None);
        std::os::unix::fs::symlink("versions/v1", home.current_link()).unwrap();
        assert_eq!(home.current_version().unwrap().as_deref(), Some("v1"));
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let t = std::env::temp_dir().join(format!("molt-layout-aw-{}", std::process::id()));
        let p = t.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let _ = std::fs::remove_dir_all(&t);
    }
}

/// A version the agent rolled back and does not attempt again before `until`
/// (the agent's back-off; docs/agent.md "Held after rollback").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub version: String,
    /// Rollbacks of this version in a row.
    pub rollbacks: u32,
    /// When the last one was recorded (the runner's `at`).
    pub last_at: chrono::DateTime<chrono::Utc>,
    /// Not attempted again before this.
    pub until: chrono::DateTime<chrono::Utc>,
}

/// `state/held-after-rollback.json`: the last deploy the agent has folded in,
/// and the hold. One definition for the agent that writes it and the
/// operator tools that read it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRecord {
    pub seen: Option<chrono::DateTime<chrono::Utc>>,
    pub held: Option<Held>,
}
