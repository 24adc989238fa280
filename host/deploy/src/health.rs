//! Health check: the agent writes `work/agent.status.json` when it is Up; the
//! runner waits for that file to say Up, for the expected version, from a live
//! process, written after the restart.
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use molt_layout::Home;

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
                if s.status == "Up"
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
