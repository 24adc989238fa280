//! One error enum for the deploy crate; every variant names the thing and the reason.
use std::path::PathBuf;

/// What went wrong during hand-over, deploy, rollback, recovery or service control.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Layout(#[from] molt_layout::LayoutError),
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("deploy plan {path}: {reason}")]
    Plan { path: PathBuf, reason: String },
    #[error("{path}: digest mismatch: manifest says {expected}, file has {actual}")]
    Digest {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: mode mismatch: manifest says {expected:o}, file has {actual:o}")]
    Mode {
        path: PathBuf,
        expected: u32,
        actual: u32,
    },
    #[error("{path}: the new version cannot be executed: {reason}")]
    NotExecutable { path: PathBuf, reason: String },
    /// The seeds' wording, so operators and `molt diagnose` recognise it.
    #[error(
        "Unable to receive upgrade process status: the runner did not signal start within {waited_secs} s"
    )]
    HandoverTimeout { waited_secs: u64 },
    #[error("the runner exited before signalling start ({status}); see {log}")]
    RunnerExited { status: String, log: PathBuf },
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("service {service}: {reason}")]
    Service { service: String, reason: String },
    #[error("the agent did not stop within {secs} s (pids still alive: {pids:?})")]
    StopTimeout { secs: u64, pids: Vec<u32> },
    #[error("Health Check of version {version} failed: {reason}")]
    HealthCheck { version: String, reason: String },
    #[error("another deploy is in progress on {home} (lock {lock} is held)")]
    DeployInProgress { home: PathBuf, lock: PathBuf },
    #[error("two services on one install: {0}")]
    DuplicateService(String),
    #[error("install {home}: {reason}")]
    Install { home: PathBuf, reason: String },
}

/// Map an io error to [`DeployError::Io`] naming the path.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DeployError + '_ {
    move |source| DeployError::Io {
        path: path.to_path_buf(),
        source,
    }
}
