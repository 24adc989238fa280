//! The control-plane client: the agent half of the HTTP API in docs/architecture.md.

use std::time::Duration;

use molt_protocol::{AgentStatus, Heartbeat};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::AgentConfig;

/// Errors talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection refused, reset, timed out: the request may be retried later.
    #[error("control plane unreachable at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// 409 from the upgrade slot: the fleet's concurrent-upgrade limit is reached.
    #[error("Method failed ({url}) HTTP/1.1 409 Conflict with code: 409 ({message})")]
    Conflict {
        url: String,
        retry_after: Option<u64>,
        message: String,
    },
    #[error("{method} {url}: HTTP {status}: {message}")]
    Http {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: unexpected answer: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// True when the control plane could not be reached at all (worth queueing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// One assigned package (`packages[]`, `precheck`, `selector` in `/assigned`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedPackage {
    #[serde(default)]
    pub kind: String,
    pub name: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

/// The answer of `GET /api/v1/agent/assigned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    pub version: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub packages: Vec<AssignedPackage>,
    #[serde(default)]
    pub precheck: Option<AssignedPackage>,
    #[serde(default)]
    pub selector: Option<AssignedPackage>,
}

/// A command queued for this agent, as received: `kind` stays a string so that
/// an unknown kind can be refused by name (see `molt_protocol::AgentCommand`).
pub type Command = molt_protocol::CommandMessage<Value, String>;

/// A finding reported to `/issues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: String,
    pub severity: String,
    pub description: String,
    pub remediation: String,
}

/// HTTP client bound to one control plane and one agent token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Downloads get no overall timeout (only connect/read idle timeouts).
    download_http: reqwest::Client,
    base: reqwest::Url,
    token: String,
    /// Sent with every heartbeat (config.toml `labels`).
    labels: molt_protocol::Labels,
}

impl Client {
    pub fn new(cfg: &AgentConfig) -> Result<Self, ClientError> {
        let build = |overall: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .user_agent(concat!("molt-agent/", env!("CARGO_PKG_VERSION")));
            if let Some(t) = overall {
                b = b.timeout(t);
            }
            if let Some(ca) = &cfg.ca_bundle {
                // The same trust as the runner and the sandbox's probes.
                let tls =
                    molt_layout::tls::client_config(Some(ca)).map_err(|e| ClientError::Decode {
                        url: ca.display().to_string(),
                        message: e.to_string(),
                    })?;
                b = b.use_preconfigured_tls((*tls).clone());
            }
            if let Some(p) = &cfg.proxy {
                let proxy = reqwest::Proxy::all(p.as_str()).map_err(|e| ClientError::Decode {
                    url: p.to_string(),
                    message: format!("invalid proxy: {e}"),
                })?;
                b = b.proxy(proxy);
            } else {
                b = b.no_proxy();
            }
            b.build().map_err(|e| ClientError::Decode {
                url: cfg.control_plane_url.to_string(),
                message: e.to_string(),
            })
        };
        Ok(Self {
            http: build(Some(Duration::from_secs(90)))?,
            download_http: build(None)?,
            base: cfg.control_plane_url.clone(),
            token: cfg.token.clone(),
            labels: cfg.labels.clone(),
        })
    }

    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The client used for package downloads (no overall timeout).
    pub fn download_http(&self) -> &reqwest::Client {
        &self.download_http
    }

    /// Resolve a path or URL from the control plane against its base URL.
    pub fn resolve(&self, path_or_url: &str) -> Result<reqwest::Url, ClientError> {
        self.base
            .join(path_or_url)
            .map_err(|e| ClientError::Decode {
                url: path_or_url.to_string(),
                message: format!("not a valid URL or path: {e}"),
            })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.resolve(path)?;
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            message: error_chain(&e),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        if status.as_u16() == 409 {
            return Err(ClientError::Conflict {
                url: url.to_string(),
                retry_after,
                message,
            });
        }
        // A 502/503/504 from a proxy in front of the control plane means it is not reachable.
        if matches!(status.as_u16(), 502..=504) {
            return Err(ClientError::Unreachable {
                url: url.to_string(),
                message: format!("HTTP {status}: {message}"),
            });
        }
        Err(ClientError::Http {
            method: method.to_string(),
            url: url.to_string(),
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: for<'de> Deserialize<'de>>(resp: reqwest::Response) -> Result<T, ClientError> {
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            message: error_chain(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }

    /// Send any JSON request and ignore the answer body (used by the report queue).
    pub async fn call(&self, method: &str, path: &str, body: &Value) -> Result<(), ClientError> {
        let m =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Decode {
                url: path.to_string(),
                message: format!("bad method {method}: {e}"),
            })?;
        let body = if body.is_null() { None } else { Some(body) };
        self.send(m, path, body, None).await.map(|_| ())
    }

    pub async fn heartbeat(
        &self,
        host: &str,
        version: &str,
        status: AgentStatus,
        pid: u32,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_value(Heartbeat {
            host: host.to_string(),
            version: version.to_string(),
            status,
            pid: i64::from(pid),
            labels: self.labels.clone(),
        })
        .unwrap_or_default();
        self.send(
            reqwest::Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&body),
            None,
        )
        .await
        .map(|_| ())
    }

    /// What the control plane assigns; with `version`, the packages of that
    /// version instead (a command's argument: readiness, `upgrade {version}`).
    pub async fn assigned(
        &self,
        os: &str,
        arch: &str,
        runtime: &str,
        pinned: Option<&str>,
        version: Option<&str>,
        fresh: bool,
    ) -> Result<Assigned, ClientError> {
        let mut url = self.resolve("/api/v1/agent/assigned")?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("os", os)
                .append_pair("arch", arch)
                .append_pair("runtime", runtime);
            if let Some(p) = pinned {
                q.append_pair("pinned", p);
            }
            if let Some(v) = version {
                q.append_pair("version", v);
            }
            if fresh {
                q.append_pair("fresh", "1");
            }
        }
        let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let resp = self.send(reqwest::Method::GET, &path, None, None).await?;
        Self::json(resp).await
    }

    /// Ask for an upgrade slot; `Conflict` carries the server's Retry-After.
    pub async fn acquire_slot(&self, to_version: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({"to_version": to_version});
        self.send(
            reqwest::Method::POST,
            "/api/v1/agent/upgrade-slot",
            Some(&body),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn release_slot(&self) -> Result<(), ClientError> {
        self.send(
            reqwest::Method::DELETE,
            "/api/v1/agent/upgrade-slot",
            None,
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn create_attempt(&self, from: &str, to: &str) -> Result<Value, ClientError> {
        let body = serde_json::json!({"from_version": from, "to_version": to});
        let resp = self
            .send(
                reqwest::Method::POST,
                "/api/v1/agent/attempts",
                Some(&body),
                None,
            )
            .await?;
        let v: Value = Self::json(resp).await?;
        v.get("attempt_id")
            .cloned()
            .filter(|id| !id.is_null())
            .ok_or_else(|| ClientError::Decode {
                url: "/api/v1/agent/attempts".into(),
                message: "no attempt_id in the answer".into(),
            })
    }

    /// Long-poll for commands.
    pub async fn commands(&self, wait_secs: u64) -> Result<Vec<Command>, ClientError> {
        let path = format!("/api/v1/agent/commands?wait={wait_secs}");
        let resp = self
            .send(
                reqwest::Method::GET,
                &path,
                None,
                Some(Duration::from_secs(wait_secs + 30)),
            )
            .await?;
        Self::json(resp).await
    }

    pub async fn post_logs(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        let url = self.resolve("/api/v1/agent/logs")?;
        let resp = self
            .http
            .post(url.clone())
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.to_string(),
                message: error_chain(&e),
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ClientError::Http {
                method: "POST".into(),
                url: url.to_string(),
                status: resp.status().as_u16(),
                message: resp.text().await.unwrap_or_default(),
            })
        }
    }
}

/// The error and its causes on one line (reqwest hides the useful part in sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
