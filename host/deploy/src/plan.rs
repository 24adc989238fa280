//! `plan.json`: what the agent hands to the runner (`work/upgrade_temp/<n>-0/plan.json`).
//!
//! The packages named here were downloaded, signature-checked and extracted by the
//! agent into `<upgrade dir>/packages/<kind>/<payload path>`. The runner trusts
//! nothing it has not re-checked: every file of the new version is digest-checked
//! against these manifests.
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use molt_layout::InstalledPackage;
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, io_err};

/// Where the runner reports stages (docs/architecture.md, control-plane API v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlane {
    /// Base URL, e.g. `http://127.0.0.1:8440`.
    pub url: String,
    /// The agent's bearer token.
    pub token: String,
    /// The agent's `ca_bundle`: a private CA the runner trusts too, so its
    /// health check reaches a self-hosted control plane the agent reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// The agent's `proxy`, for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

impl ControlPlane {
    /// An HTTP client that reaches the control plane the way the agent does
    /// (its CA bundle, its proxy), with an overall timeout per request.
    pub fn http(&self, timeout: std::time::Duration) -> Result<ureq::Agent, ClientError> {
        let tls = molt_layout::tls::client_config(self.ca_bundle.as_deref())?;
        let mut b = ureq::AgentBuilder::new().timeout(timeout).tls_config(tls);
        if let Some(p) = &self.proxy {
            let proxy = ureq::Proxy::new(p).map_err(|source| ClientError::Proxy {
                proxy: p.clone(),
                source: Box::new(source),
            })?;
            b = b.proxy(proxy);
        }
        Ok(b.build())
    }
}

/// Why the control plane's HTTP client cannot be set up: the agent's own
/// settings (CA bundle, proxy) are wrong, so no request was tried.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] molt_layout::tls::TlsError),
    #[error("proxy {proxy}: {source}")]
    Proxy {
        proxy: String,
        #[source]
        source: Box<ureq::Error>,
    },
}

/// Time limits of one deploy. Defaults suit a real service; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployOptions {
    /// How long the old agent may take to stop gracefully before it is killed.
    pub stop_timeout_secs: u64,
    /// How long the new (or, on rollback, the old) agent has to report Up.
    pub health_timeout_secs: u64,
    /// Timeout of one stage report to the control plane before it is queued.
    pub report_timeout_secs: u64,
    /// When neither the new version nor the runner reaches the control plane:
    /// how long the new version must stay up without crashing to count as healthy
    /// (Elastic Agent's upgrade watcher uses 10 minutes).
    pub grace_secs: u64,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            stop_timeout_secs: 120,
            health_timeout_secs: 300,
            report_timeout_secs: 5,
            grace_secs: 600,
        }
    }
}

/// The hand-over plan (`plan.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// Upgrade attempt on the control plane (`POST /api/v1/agent/attempts`), if any.
    #[serde(default)]
    pub attempt_id: Option<String>,
    /// Where to report stages; `None` = log only.
    #[serde(default)]
    pub control_plane: Option<ControlPlane>,
    /// The version `current` points at when the agent hands over.
    pub from_version: String,
    /// The version to deploy (becomes `versions/<to_version>`).
    pub to_version: String,
    /// Full manifests of the new packages. Kinds of the current version that are
    /// not listed here (e.g. an unchanged runtime) are carried over as they are.
    pub packages: Vec<InstalledPackage>,
    /// Paths (relative to the version dir) whose content or mode differs from the
    /// current version. Every other file is hard-linked from the current version
    /// (and still digest-checked).
    #[serde(default)]
    pub changed_files: Vec<String>,
    #[serde(default)]
    pub options: DeployOptions,
}

impl DeployPlan {
    /// Read and validate `plan.json`.
    pub fn load(path: &Path) -> Result<Self, DeployError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let plan: DeployPlan =
            serde_json::from_slice(&bytes).map_err(|source| DeployError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        plan.validate(path)?;
        Ok(plan)
    }

    /// Write `plan.json` atomically.
    pub fn save(&self, path: &Path) -> Result<(), DeployError> {
        molt_layout::write_json_atomic(path, self)?;
        Ok(())
    }

    /// The set of changed paths.
    pub fn changed_set(&self) -> BTreeSet<&str> {
        self.changed_files.iter().map(String::as_str).collect()
    }

    /// Reject plans that could write outside the version dir or are ambiguous.
    pub fn validate(&self, path: &Path) -> Result<(), DeployError> {
        let bad = |reason: String| DeployError::Plan {
            path: path.to_path_buf(),
            reason,
        };
        check_version_name(&self.from_version).map_err(|r| bad(format!("from_version: {r}")))?;
        check_version_name(&self.to_version).map_err(|r| bad(format!("to_version: {r}")))?;
        if self.from_version == self.to_version {
            return Err(bad(format!(
                "from_version and to_version are both {}",
                self.to_version
            )));
        }
        if self.packages.is_empty() {
            return Err(bad("no packages".into()));
        }
        let mut kinds = BTreeSet::new();
        let mut all = BTreeSet::new();
        for p in &self.packages {
            if p.kind.is_empty()
                || !p
                    .kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad(format!(
                    "package kind {:?} is not a plain name",
                    p.kind
                )));
            }
            if !kinds.insert(p.kind.as_str()) {
                return Err(bad(format!("package kind {} listed twice", p.kind)));
            }
            for (f, meta) in &p.files {
                check_rel_path(f)
                    .map_err(|r| bad(format!("package {}: file {f:?}: {r}", p.kind)))?;
                if f == "meta" || f.starts_with("meta/") {
                    return Err(bad(format!(
                        "package {}: file {f:?} collides with meta/",
                        p.kind
                    )));
                }
                if meta.sha256.len() != 64 || !meta.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad(format!(
                        "package {}: file {f:?}: sha256 is not 64 hex digits",
                        p.kind
                    )));
                }
                if !all.insert(f.as_str()) {
                    return Err(bad(format!("file {f:?} is in two packages")));
                }
            }
        }
        for f in &self.changed_files {
            if !all.contains(f.as_str()) {
                return Err(bad(format!(
                    "changed file {f:?} is in no package of the plan"
                )));
            }
        }
        Ok(())
    }

    /// Where the extracted payload file of a package lives in the upgrade dir.
    pub fn staged_file(upgrade_dir: &Path, kind: &str, rel: &str) -> PathBuf {
        molt_layout::UpgradeDir(upgrade_dir).staged_file(kind, rel)
    }
}

/// A version name must be one plain path component (it becomes a directory name).
pub fn check_version_name(v: &str) -> Result<(), VersionNameError> {
    if v.is_empty() || v.len() > 200 {
        return Err(VersionNameError::Length);
    }
    if v.starts_with('.') || v.contains('/') || v.contains('\\') || v.contains('\0') {
        return Err(VersionNameError::NotPlain(v.to_string()));
    }
    Ok(())
}

/// Why a version name cannot be a directory name (callers say which field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionNameError {
    #[error("empty or longer than 200 characters")]
    Length,
    #[error("{0:?} is not a plain directory name")]
    NotPlain(String),
}

/// A payload path must be relative, normal components only.
pub fn check_rel_path(p: &str) -> Result<(), RelPathError> {
    if p.is_empty() || p.contains('\0') || p.contains('\\') {
        return Err(RelPathError::Unusable);
    }
    if Path::new(p)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(RelPathError::NotRelative);
    }
    Ok(())
}

/// Why a payload path cannot be placed inside a version dir (callers name the path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    #[error("empty or contains NUL or backslash")]
    Unusable,
    #[error("must be relative without `.`, `..` or a root")]
    NotRelative,
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_layout::FileMeta;

    fn plan() -> DeployPlan {
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            "bin/molt".into(),
            FileMeta {
                size: 1,
                sha256: "a".repeat(64),
                mode: 0o755,
            },
        );
        DeployPlan {
            attempt_id: Some("7".into()),
            control_plane: None,
            from_version: "v1".into(),
            to_version: "v2".into(),
            packages: vec![InstalledPackage {
                kind: "core".into(),
                name: "molt-core.v2.universal.universal.zip".into(),
                version: "v2".into(),
                files,
            }],
            changed_files: vec!["bin/molt".into()],
            options: DeployOptions::default(),
        }
    }

    #[test]
    fn a_plan_round_trips_through_json() {
        let p = plan();
        let s = serde_json::to_string(&p).unwrap();
        let back: DeployPlan = serde_json::from_str(&s).unwrap();
        assert_eq!(back, p);
        back.validate(Path::new("plan.json")).unwrap();
    }

    #[test]
    fn it_rejects_a_path_that_escapes_the_version_dir() {
        let mut p = plan();
        let f = p.packages[0].files.remove("bin/molt").unwrap();
        p.packages[0].files.insert("../evil".into(), f);
        p.changed_files.clear();
        let e = p.validate(Path::new("plan.json")).unwrap_err().to_string();
        assert!(e.contains("../evil"), "{e}");
    }

    #[test]
    fn it_rejects_a_changed_file_that_no_package_has() {
        let mut p = plan();
        p.changed_files.push("lib/x".into());
        assert!(
            p.validate(Path::new("plan.json"))
                .unwrap_err()
                .to_string()
                .contains("lib/x")
        );
    }

    #[test]
    fn a_payload_path_is_refused_with_its_reason() {
        assert_eq!(check_rel_path("lib/a.so"), Ok(()));
        for p in ["", "a\\b", "a\0b"] {
            assert_eq!(check_rel_path(p), Err(RelPathError::Unusable), "{p:?}");
        }
        for p in ["/etc/x", "../x", "a/../b", "./a"] {
            assert_eq!(check_rel_path(p), Err(RelPathError::NotRelative), "{p:?}");
        }
    }

    #[test]
    fn it_rejects_a_version_name_with_a_slash() {
        let mut p = plan();
        p.to_version = "../v2".into();
        assert!(p.validate(Path::new("plan.json")).is_err());
    }
}
