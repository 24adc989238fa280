//! `<home>/config.toml`: the agent's settings (the seeds' config.xml).
//!
//! Unknown keys are refused and every validation error names its key, so a typo
//! stops the agent at start instead of silently changing behaviour.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors loading or validating `config.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the agent configuration: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid agent configuration: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// The agent configuration as written in `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub control_plane_url: Option<String>,
    pub agent_name: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub pinned_version: Option<String>,
    #[serde(default = "yes")]
    pub run_precheck: bool,
    #[serde(default)]
    pub download_through_control_plane: bool,
    /// Fetch only the changed entries of a package with HTTP Range (on by default;
    /// off forces full downloads, e.g. to compare the two).
    #[serde(default = "yes")]
    pub delta_downloads: bool,
    #[serde(default)]
    pub use_os_temp_folder: bool,
    #[serde(default)]
    pub proxy: Option<String>,
    /// PEM bundle of a private CA trusted besides the web PKI, for the control
    /// plane, the package site and the pre-upgrade probes (self-hosted TLS).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    #[serde(default)]
    pub handover_wait_secs: Option<u64>,
    /// `supervisor` or `systemd:<unit>`; default: detected from this process's cgroup.
    #[serde(default)]
    pub service: Option<String>,
    /// Seconds the old agent has to stop gracefully at an upgrade before it is killed (default 120).
    #[serde(default)]
    pub stop_timeout_secs: Option<u64>,
    /// Seconds a new (or rolled-back) version has to report Up before it is
    /// judged unhealthy (default 300).
    #[serde(default)]
    pub health_timeout_secs: Option<u64>,
    /// Seconds a new version must stay up without crashing to count as healthy
    /// when neither it nor the runner reaches the control plane (default 600).
    #[serde(default)]
    pub health_grace_secs: Option<u64>,
    /// Tests and simulations only: a facts.toml whose values replace probed host facts.
    #[serde(default)]
    pub facts_override: Option<PathBuf>,
    /// Trusted root.json; default `<home>/state/root.json`.
    #[serde(default)]
    pub trust_root: Option<PathBuf>,
    /// Seconds between heartbeats (default 30).
    #[serde(default)]
    pub heartbeat_secs: Option<u64>,
    /// Seconds between upgrade-slot retries after the control plane answers
    /// 409 (no slot free in the rollout); default: its Retry-After, else 20.
    /// (`test_slot_retry_secs` is the old name.)
    #[serde(default, alias = "test_slot_retry_secs")]
    pub slot_retry_secs: Option<u64>,
    /// Base delay of the download retries' backoff (doubling, at most 30 s), in
    /// milliseconds (default 1000). (`test_download_backoff_ms` is the old name.)
    #[serde(default, alias = "test_download_backoff_ms")]
    pub download_backoff_ms: Option<u64>,
    /// Test hook (debug builds, or release with the `test-hooks` feature): hold files
    /// `<home>/work/hold.<stage>` pause the agent before a stage while they exist.
    #[serde(default)]
    pub test_hooks: bool,
    /// Test hook (debug builds, or release with the `test-hooks` feature):
    /// prepare everything but do not hand over to deploy.
    #[serde(default)]
    pub test_skip_handover: bool,
    /// Labels sent with each heartbeat, for a rollout's groups
    /// (`labels = { site = "lon", tier = "canary" }`).
    #[serde(default)]
    pub labels: molt_protocol::Labels,
}

/// A label name or value: what the control plane accepts.
fn label_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn yes() -> bool {
    true
}

/// A TOML error on one line (`line N (`<that line>`): reason`): its default
/// rendering spans several lines, and a log line reader (`molt diagnose`, grep)
/// would see only "TOML parse error at line N, column M" without the key.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let reason = e.message().trim().replace('\n', "; ");
    let line_no = e
        .span()
        .and_then(|s| text.get(..s.start))
        .map(|before| before.matches('\n').count() + 1);
    match line_no {
        Some(n) => {
            let line = text.lines().nth(n - 1).unwrap_or("").trim();
            format!("line {n} (`{line}`): {reason}")
        }
        None => reason,
    }
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub control_plane_url: reqwest::Url,
    pub agent_name: String,
    pub token: String,
    pub pinned_version: Option<String>,
    pub run_precheck: bool,
    pub download_through_control_plane: bool,
    pub delta_downloads: bool,
    pub use_os_temp_folder: bool,
    pub proxy: Option<reqwest::Url>,
    /// `ca_bundle`, resolved and checked to hold certificates.
    pub ca_bundle: Option<PathBuf>,
    pub handover_wait_secs: u64,
    /// The service manager that runs this agent; the runner stops and starts it through it.
    pub service: molt_deploy::service::ServiceKind,
    /// Time limits handed to the runner (`stop_timeout_secs`, `health_timeout_secs`).
    pub deploy: molt_deploy::DeployOptions,
    pub facts_override: Option<PathBuf>,
    pub trust_root: PathBuf,
    pub heartbeat_secs: u64,
    pub slot_retry_secs: Option<u64>,
    pub download_backoff_ms: u64,
    pub test_hooks: bool,
    pub skip_handover: bool,
    pub labels: molt_protocol::Labels,
}

impl AgentConfig {
    /// Load `<home>/config.toml` (relative paths in it are relative to `<home>`).
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = molt_layout::Home::new(home).config_file();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, home, &path)
    }

    /// Parse and validate config text; `path` is only used in error messages.
    pub fn parse(text: &str, home: &Path, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&e, text),
        })?;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let url_text = raw
            .control_plane_url
            .ok_or_else(|| invalid("control_plane_url", "missing (required)".into()))?;
        let control_plane_url = reqwest::Url::parse(&url_text).map_err(|e| {
            invalid(
                "control_plane_url",
                format!("`{url_text}` is not a URL: {e}"),
            )
        })?;
        if !matches!(control_plane_url.scheme(), "http" | "https") {
            return Err(invalid(
                "control_plane_url",
                format!("`{url_text}`: scheme must be http or https"),
            ));
        }
        let agent_name = raw
            .agent_name
            .ok_or_else(|| invalid("agent_name", "missing (required)".into()))?;
        if agent_name.trim().is_empty() {
            return Err(invalid("agent_name", "must not be empty".into()));
        }
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { home.join(p) };
        let token = match (raw.token, raw.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "token",
                    "set either `token` or `token_file`, not both".into(),
                ));
            }
            (Some(t), None) => t,
            (None, Some(f)) => {
                let f = resolve(f);
                std::fs::read_to_string(&f)
                    .map_err(|e| invalid("token_file", format!("{}: {e}", f.display())))?
                    .trim()
                    .to_string()
            }
            (None, None) => {
                return Err(invalid(
                    "token",
                    "missing (set `token` or `token_file`)".into(),
                ));
            }
        };
        if token.is_empty() {
            return Err(invalid("token", "must not be empty".into()));
        }
        if let Some(pin) = &raw.pinned_version
            && let Err(reason) = crate::deps::validate_version(pin)
        {
            return Err(invalid(
                "pinned_version",
                format!("`{pin}` is not a valid package buildstamp: {reason}"),
            ));
        }
        let proxy = match raw.proxy.as_deref() {
            None | Some("") => None,
            Some(p) => Some(
                reqwest::Url::parse(p)
                    .map_err(|e| invalid("proxy", format!("`{p}` is not a URL: {e}")))?,
            ),
        };
        let ca_bundle = raw.ca_bundle.map(resolve);
        if let Some(ca) = &ca_bundle {
            molt_layout::tls::client_config(Some(ca))
                .map_err(|e| invalid("ca_bundle", e.to_string()))?;
        }
        let heartbeat_secs = raw.heartbeat_secs.unwrap_or(30);
        if heartbeat_secs == 0 {
            return Err(invalid("heartbeat_secs", "must be at least 1".into()));
        }
        let handover_wait_secs = raw.handover_wait_secs.unwrap_or(600);
        if handover_wait_secs == 0 {
            return Err(invalid("handover_wait_secs", "must be at least 1".into()));
        }
        let service = match raw.service.as_deref() {
            None | Some("") => molt_deploy::service::ServiceKind::detect(),
            Some(s) => molt_deploy::service::ServiceKind::parse(s)
                .map_err(|e| invalid("service", e.to_string()))?,
        };
        let mut deploy = molt_deploy::DeployOptions::default();
        for (key, given, slot) in [
            (
                "stop_timeout_secs",
                raw.stop_timeout_secs,
                &mut deploy.stop_timeout_secs,
            ),
            (
                "health_timeout_secs",
                raw.health_timeout_secs,
                &mut deploy.health_timeout_secs,
            ),
            (
                "health_grace_secs",
                raw.health_grace_secs,
                &mut deploy.grace_secs,
            ),
        ] {
            match given {
                Some(0) => return Err(invalid(key, "must be at least 1".into())),
                Some(v) => *slot = v,
                None => {}
            }
        }
        for (k, v) in &raw.labels {
            if !label_ok(k, 63) || !label_ok(v, 200) {
                return Err(invalid(
                    "labels",
                    format!(
                        "`{k} = {v:?}`: names and values are 1 to 63 (values 200) letters, digits, '-', '_' or '.'"
                    ),
                ));
            }
        }
        // A shipped build has no test hooks: refuse a config asking for one
        // rather than run without it.
        for (key, on) in [
            ("test_hooks", raw.test_hooks),
            ("test_skip_handover", raw.test_skip_handover),
        ] {
            if on && !cfg!(any(debug_assertions, feature = "test-hooks")) {
                return Err(invalid(
                    key,
                    "a test hook, absent from a release build without the `test-hooks` cargo feature"
                        .into(),
                ));
            }
        }
        let facts_override = raw.facts_override.map(resolve);
        if let Some(f) = &facts_override
            && !f.is_file()
        {
            return Err(invalid(
                "facts_override",
                format!("{}: no such file", f.display()),
            ));
        }
        Ok(Self {
            control_plane_url,
            agent_name,
            token,
            pinned_version: raw.pinned_version,
            run_precheck: raw.run_precheck,
            download_through_control_plane: raw.download_through_control_plane,
            delta_downloads: raw.delta_downloads,
            use_os_temp_folder: raw.use_os_temp_folder,
            proxy,
            ca_bundle,
            handover_wait_secs,
            service,
            deploy,
            facts_override,
            trust_root: raw
                .trust_root
                .map(resolve)
                .unwrap_or_else(|| molt_layout::Home::new(home).trusted_root_file()),
            heartbeat_secs,
            slot_retry_secs: raw.slot_retry_secs,
            download_backoff_ms: raw.download_backoff_ms.unwrap_or(1000),
            test_hooks: raw.test_hooks,
            skip_handover: raw.test_skip_handover,
            labels: raw.labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("/h"), Path::new("/h/config.toml"))
    }

    const OK: &str =
        "control_plane_url = \"http://127.0.0.1:1\"\nagent_name = \"a1\"\ntoken = \"t\"\n";

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = parse(OK).unwrap();
        assert!(c.run_precheck);
        assert!(!c.download_through_control_plane);
        assert!(!c.use_os_temp_folder);
        assert_eq!(c.trust_root, Path::new("/h/state/root.json"));
        assert_eq!(c.heartbeat_secs, 30);
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let e = parse(&format!("{OK}run_prechek = false\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run_prechek"), "{e}");
        assert!(!e.contains('\n'), "one line, for log readers: {e}");
    }

    #[test]
    fn the_service_kind_is_read_and_an_unknown_one_is_refused_by_name() {
        let c = parse(&format!("{OK}service = \"systemd:molt-agent\"\n")).unwrap();
        assert_eq!(
            c.service,
            molt_deploy::service::ServiceKind::Systemd("molt-agent.service".into())
        );
        let c = parse(&format!("{OK}service = \"supervisor\"\n")).unwrap();
        assert_eq!(c.service, molt_deploy::service::ServiceKind::Supervisor);
        let e = parse(&format!("{OK}service = \"upstart\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`service`") && e.contains("upstart"), "{e}");
    }

    #[test]
    fn a_missing_url_names_the_key() {
        let e = parse("agent_name = \"a\"\ntoken = \"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`control_plane_url`") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_url_names_the_key_and_value() {
        let e = parse("control_plane_url = \"not a url\"\nagent_name = \"a\"\ntoken = \"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`control_plane_url`") && e.contains("not a url"),
            "{e}"
        );
    }

    #[test]
    fn token_and_token_file_together_are_refused() {
        let e = parse(&format!("{OK}token_file = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`token`"), "{e}");
    }

    #[test]
    fn a_wrong_type_is_reported_with_the_key() {
        let e = parse(&format!("{OK}run_precheck = \"no\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run_precheck"), "{e}");
    }

    #[test]
    fn a_missing_facts_override_file_is_refused() {
        let e = parse(&format!(
            "{OK}facts_override = \"/nonexistent/facts.toml\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`facts_override`"), "{e}");
    }
}
