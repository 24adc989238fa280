//! Health check: the agent writes `work/agent.status.json` when it is Up; the
//! runner waits for that file to say Up, for the expected version, from a live
//! process, written after the restart.
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use molt_layout::Home;
use molt_protocol::AgentStatus;

use crate::error::DeployError;
use crate::proc;

/// Wait until the agent of `version` reports Up (since `after`), or fail with the
/// last thing seen.
pub fn wait_up(
    home: &Home,
    version: &str,
    after: DateTime<Utc>,
    limit: Duration,
) -> Result<u32, DeployError> {
    let start = Instant::now();
    let mut last = String::from("no status file written");
    loop {
        match home.read_status() {
            Ok(Some(s)) => {
                if s.status == AgentStatus::Up
                    && s.version == version
                    && s.since >= after
                    && proc::alive(s.pid)
                {
                    tracing::info!(version, pid = s.pid, "Health Check: agent is Up");
                    return Ok(s.pid);
                }
                last = format!(
                    "status {} of version {} (pid {}, {}) since {}",
                    s.status,
                    s.version,
                    s.pid,
                    if proc::alive(s.pid) { "alive" } else { "gone" },
                    s.since
                );
            }
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() >= limit {
            return Err(DeployError::HealthCheck {
                version: version.to_string(),
                reason: format!("not Up within {} s; last seen: {last}", limit.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the control plane says about this agent (`GET /api/v1/agent/self`).
#[derive(Debug, serde::Deserialize)]
struct CpRecord {
    status: String,
    version: Option<String>,
    last_seen: Option<DateTime<Utc>>,
    /// The process that reported (absent from older control planes).
    #[serde(default)]
    pid: Option<i64>,
}

/// Why the runner's question to the control plane got no answer (the text is
/// the `last` reason of a failed or grace-period health check).
#[derive(Debug, thiserror::Error)]
enum AskError {
    /// The HTTP client could not be set up (CA bundle, proxy).
    #[error(transparent)]
    Client(#[from] crate::plan::ClientError),
    #[error("unreadable answer from {url}: {source}")]
    Unreadable {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} answered HTTP {code}")]
    Status { url: String, code: u16 },
    #[error("{url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
}

/// One question to the control plane. `Ok(None)`: it answered but has no such
/// endpoint (an older control plane: nothing to confirm with); `Err`: it could
/// not be reached.
fn ask_cp(cp: &crate::ControlPlane, timeout: Duration) -> Result<Option<CpRecord>, AskError> {
    let url = format!("{}/api/v1/agent/self", cp.url.trim_end_matches('/'));
    let agent = cp.http(timeout).map_err(AskError::Client)?;
    match agent
        .get(&url)
        .set("Authorization", &format!("Bearer {}", cp.token))
        .call()
    {
        Ok(r) => r
            .into_json::<CpRecord>()
            .map(Some)
            .map_err(|source| AskError::Unreadable { url, source }),
        Err(ureq::Error::Status(404, _)) => Ok(None),
        Err(ureq::Error::Status(code, _)) => Err(AskError::Status { url, code }),
        Err(e) => Err(AskError::Unreachable {
            url,
            source: Box::new(e),
        }),
    }
}

/// The health check of a new version: it must report Up here (the status file,
/// [`wait_up`]) and to its control plane, within the deadline. The runner asks
/// the control plane itself, so it can tell "the new version cannot reach the
/// control plane" (the runner can: roll back) from "nobody can" (a network
/// outage is not the new version's fault: healthy once it has stayed up through
/// the grace period, rolled back if it exits `CRASHES` times in it).
pub fn wait_healthy(
    home: &Home,
    version: &str,
    after: DateTime<Utc>,
    opts: &crate::DeployOptions,
    cp: Option<&crate::ControlPlane>,
) -> Result<u32, DeployError> {
    let start = Instant::now();
    let deadline = Duration::from_secs(opts.health_timeout_secs);
    let pid = wait_up(home, version, after, deadline)?;
    let Some(cp) = cp else {
        return Ok(pid);
    };
    let ask_timeout = Duration::from_secs(opts.report_timeout_secs.max(1));
    let mut reached = false;
    let mut last;
    loop {
        match ask_cp(cp, ask_timeout) {
            Ok(None) => {
                tracing::warn!(
                    "the control plane has no /api/v1/agent/self; health confirmed locally only"
                );
                return Ok(pid);
            }
            Ok(Some(r)) => {
                reached = true;
                // Reported by the new process: its pid (clock-free), or a report
                // after the start by this host's clock. The pid comes first: a
                // host whose clock runs ahead of the control plane's would
                // otherwise never see a fresh enough `last_seen` and roll back
                // a healthy version.
                if r.status == AgentStatus::Up
                    && r.version.as_deref() == Some(version)
                    && (r.pid == Some(i64::from(pid)) || r.last_seen.is_some_and(|t| t >= after))
                {
                    tracing::info!(
                        version,
                        pid,
                        "Health Check: the control plane shows the agent Up"
                    );
                    return Ok(pid);
                }
                last = format!(
                    "the control plane shows {} on version {}",
                    r.status,
                    r.version.as_deref().unwrap_or("none")
                );
            }
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if reached {
        return Err(DeployError::HealthCheck {
            version: version.to_string(),
            reason: format!(
                "it did not report Up to its control plane within {} s, though the runner reaches the control plane ({last})",
                deadline.as_secs()
            ),
        });
    }
    tracing::warn!(reason = %last, grace_secs = opts.grace_secs,
        "the control plane cannot be reached from here either; the new version is healthy if it stays up through the grace period");
    watch_grace(
        home,
        version,
        pid,
        Duration::from_secs(opts.grace_secs),
        deadline,
    )
}

/// Exits within the grace period that count as a crash loop.
pub const CRASHES: u32 = 3;

/// Healthy when the agent of `version` stays up through `grace`; an exit is a
/// status file naming a new pid or a recorded pid that is gone; `CRASHES` exits
/// fail it, and so does no live Up agent for `down_limit` in a row.
fn watch_grace(
    home: &Home,
    version: &str,
    first_pid: u32,
    grace: Duration,
    down_limit: Duration,
) -> Result<u32, DeployError> {
    let start = Instant::now();
    let mut pid = first_pid;
    let mut exits = 0u32;
    let mut gone_since: Option<Instant> = None;
    let fail = |reason: String| DeployError::HealthCheck {
        version: version.to_string(),
        reason,
    };
    while start.elapsed() < grace {
        let live = home
            .read_status()
            .ok()
            .flatten()
            .filter(|s| s.status == AgentStatus::Up && s.version == version && proc::alive(s.pid))
            .map(|s| s.pid);
        let alive_now = proc::alive(pid);
        if !alive_now && gone_since.is_none() {
            exits += 1;
            gone_since = Some(Instant::now());
            tracing::warn!(pid, exits, "the new version exited during the grace period");
            if exits >= CRASHES {
                return Err(fail(format!(
                    "it exited {exits} times within the {} s grace period (crash loop)",
                    grace.as_secs()
                )));
            }
        }
        if let Some(p) = live
            && p != pid
        {
            pid = p;
            gone_since = None;
        }
        if let Some(g) = gone_since
            && g.elapsed() >= down_limit
        {
            return Err(fail(format!(
                "it exited and was not Up again within {} s",
                down_limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !proc::alive(pid) {
        return Err(fail(
            "it was not running at the end of the grace period".into(),
        ));
    }
    tracing::info!(
        version,
        pid,
        secs = grace.as_secs(),
        "Health Check: the new version stayed up through the grace period"
    );
    Ok(pid)
}
