//! The little the operator tools ask the control plane, with a short timeout:
//! an unreachable control plane is an answer ("showing local state"), not an error.
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::OpsError;

/// The keys of `config.toml` the operator tools need (the agent owns the full
/// schema and validates it; unknown keys are fine here).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigView {
    pub control_plane_url: Option<String>,
    pub agent_name: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<std::path::PathBuf>,
    pub pinned_version: Option<String>,
    pub trust_root: Option<std::path::PathBuf>,
}

impl ConfigView {
    /// Read `<home>/config.toml`; `Err` names the file and the reason.
    pub fn load(home: &Path) -> Result<ConfigView, OpsError> {
        let path = molt_layout::Home::new(home).config_file();
        let text = std::fs::read_to_string(&path).map_err(molt_layout::io_err(&path))?;
        toml::from_str(&text).map_err(|source| OpsError::Config { path, source })
    }

    /// The agent token (inline or from `token_file`, relative to `home`).
    pub fn token(&self, home: &Path) -> Option<String> {
        if let Some(t) = &self.token {
            return Some(t.clone());
        }
        let f = self.token_file.as_ref()?;
        let f = if f.is_absolute() {
            f.clone()
        } else {
            home.join(f)
        };
        std::fs::read_to_string(f)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The trusted root path (`trust_root`, default `<home>/state/root.json`).
    pub fn trust_root(&self, home: &Path) -> std::path::PathBuf {
        match &self.trust_root {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => home.join(p),
            None => molt_layout::Home::new(home).trusted_root_file(),
        }
    }
}

/// GET `base + path` with a bearer token; the JSON answer or why not.
pub fn get_json(
    base: &str,
    path: &str,
    token: &str,
    timeout: Duration,
) -> Result<serde_json::Value, OpsError> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    match agent
        .get(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r
            .into_json::<serde_json::Value>()
            .map_err(|source| OpsError::Answer { url, source }),
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            Err(OpsError::Http {
                url,
                code,
                message: msg,
            })
        }
        Err(ureq::Error::Transport(t)) => Err(OpsError::Unreachable {
            url,
            source: Box::new(t),
        }),
    }
}

/// `os` and `arch` as they appear in package names (same rule as the agent).
pub fn host_os() -> &'static str {
    std::env::consts::OS
}

pub fn host_arch() -> String {
    std::env::consts::ARCH.replace('_', "-")
}
