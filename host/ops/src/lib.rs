//! Operator tools: `molt status`, `molt diagnose`, `molt repair`, `molt import`
//! and the words behind `molt bundle verify --explain`.
//!
//! Everything here works from the install's local state (logs, journal, status
//! file, trust state) so it answers when the control plane is unreachable; the
//! control plane is only asked, with a short timeout, for what it alone knows.

pub mod cp;
pub mod demo;
pub mod diagnose;
pub mod explain;
pub mod import;
pub mod inputs;
pub mod install;
pub mod repair;
pub mod signatures;
pub mod status;
pub mod views;

use std::path::PathBuf;

/// Errors of the operator tools; each names the thing and the reason.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Also every io error of the tools ([`io_err`]: the layout's, naming the path).
    #[error(transparent)]
    Layout(#[from] molt_layout::LayoutError),
    #[error(transparent)]
    Deploy(#[from] molt_deploy::DeployError),
    #[error(transparent)]
    Bundle(#[from] molt_bundle::BundleError),
    #[error("signature table: {0}")]
    Table(String),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("package {path}: {reason}")]
    Package { path: PathBuf, reason: String },
    #[error("repair of {home}: {reason}")]
    Repair { home: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The control plane answered with an error status (its `error` text).
    #[error("{url}: HTTP {code}: {message}")]
    Http {
        url: String,
        code: u16,
        message: String,
    },
    #[error("{url}: unexpected answer: {source}")]
    Answer {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control plane unreachable at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<ureq::Transport>,
    },
}

/// Map an io error to the layout's error naming the path: the tools and the
/// layout have one io error.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OpsError + '_ {
    move |e| molt_layout::io_err(path)(e).into()
}

#[cfg(test)]
pub(crate) mod testkit;
