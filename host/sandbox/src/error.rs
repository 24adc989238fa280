use std::path::PathBuf;

/// Host-side failures. Guest misbehaviour is never an error: it becomes a
/// blocking finding in the check's report.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("facts file {path}: {reason}")]
    Facts { path: PathBuf, reason: String },
    #[error("component {component}: {reason}")]
    Component { component: String, reason: String },
    /// The selector trapped, timed out or returned an error.
    #[error("version selector {component}: {reason}")]
    Selector { component: String, reason: String },
    /// The operator's `ca_bundle` cannot be used for `net.probe`.
    #[error(transparent)]
    Tls(#[from] molt_layout::tls::TlsError),
}

impl SandboxError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SandboxError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
