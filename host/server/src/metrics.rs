//! `GET /metrics` in the Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::model::{AgentStatus, IssueState};
use crate::state::AppState;

/// Request counters by (method, route, status).
///
/// Counted on every request: the common case takes a shared read lock and one
/// atomic add (no allocation); only the first request of a new key writes.
#[derive(Default)]
pub struct Metrics {
    requests: RwLock<HashMap<RequestKey, AtomicU64>>,
}

/// Method, route template and status of a request.
type RequestKey = (Method, Arc<str>, u16);

impl Metrics {
    fn record(&self, method: &Method, route: &str, status: u16) {
        {
            let m = self.requests.read().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = m
                .iter()
                .find(|((me, r, s), _)| me == method && &**r == route && *s == status)
                .map(|(_, v)| v)
            {
                v.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut m = self.requests.write().unwrap_or_else(|p| p.into_inner());
        m.entry((method.clone(), route.into(), status))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Middleware counting every request by its route template.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let resp = next.run(req).await;
    state.metrics.record(
        &method,
        route.as_ref().map_or("unmatched", |r| r.as_str()),
        resp.status().as_u16(),
    );
    resp
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = state.config.clock.now();
    let down_after = crate::clock::chrono_dur(state.config.agent_down_after);
    let lease = crate::clock::chrono_dur(state.config.lease_timeout);
    let agents = state.db(|s| s.list_agents()).await?;
    let holders = state.db(move |s| s.slot_holders(now, lease)).await?;
    let issues = state.open_issues().await?;
    let mut out = String::new();
    out.push_str("# HELP molt_http_requests_total HTTP requests by method, route and status.\n# TYPE molt_http_requests_total counter\n");
    {
        let m = state
            .metrics
            .requests
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = m
            .iter()
            .map(|((me, r, s), n)| ((me.as_str(), &**r, *s), n.load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((method, route, status), n) in rows {
            let _ = writeln!(
                out,
                "molt_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                esc(method),
                esc(route)
            );
        }
    }
    out.push_str("# HELP molt_agents Agents by status (Down when not seen within the liveness window).\n# TYPE molt_agents gauge\n");
    for st in AgentStatus::ALL {
        let n = agents
            .iter()
            .filter(|a| a.effective_status(now, down_after) == *st)
            .count();
        let _ = writeln!(out, "molt_agents{{status=\"{st}\"}} {n}");
    }
    let dup = agents.iter().filter(|a| a.duplicate).count();
    out.push_str("# HELP molt_agents_duplicate_name Agents whose name two live processes report under.\n# TYPE molt_agents_duplicate_name gauge\n");
    let _ = writeln!(out, "molt_agents_duplicate_name {dup}");
    out.push_str("# HELP molt_upgrade_slots_held Upgrade semaphore holders.\n# TYPE molt_upgrade_slots_held gauge\n");
    let _ = writeln!(out, "molt_upgrade_slots_held {}", holders.len());
    out.push_str("# HELP molt_upgrade_slots_max Upgrade semaphore size.\n# TYPE molt_upgrade_slots_max gauge\n");
    let _ = writeln!(
        out,
        "molt_upgrade_slots_max {}",
        state.config.max_concurrent_upgrades
    );
    out.push_str("# HELP molt_issues_open Open issues by state.\n# TYPE molt_issues_open gauge\n");
    for st in [IssueState::New, IssueState::Acknowledged] {
        let n = issues.iter().filter(|i| i.state == st).count();
        let _ = writeln!(out, "molt_issues_open{{state=\"{st}\"}} {n}");
    }
    out.push_str("# HELP molt_packages Package files in the packages directory.\n# TYPE molt_packages gauge\n");
    let _ = writeln!(
        out,
        "molt_packages {}",
        state.packages.current().0.files.len()
    );
    if let Some(r) = state.db(|s| s.latest_rollout()).await? {
        let v = crate::api_rollout::view(&state, r).await?;
        let id = v.rollout.id;
        let version = esc(&v.rollout.version);
        out.push_str("# HELP molt_rollout_state The newest rollout: 1 for its state.\n# TYPE molt_rollout_state gauge\n");
        for st in molt_protocol::RolloutState::ALL {
            let _ = writeln!(
                out,
                "molt_rollout_state{{rollout=\"{id}\",version=\"{version}\",state=\"{st}\"}} {}",
                u8::from(*st == v.rollout.state)
            );
        }
        out.push_str("# HELP molt_rollout_agents Agents of the newest rollout by group and phase.\n# TYPE molt_rollout_agents gauge\n");
        for g in &v.group_progress {
            for (phase, n) in [
                ("done", g.done),
                ("in_flight", g.in_flight),
                ("failed", g.failed),
                ("waiting", g.waiting),
                ("pinned", g.pinned),
            ] {
                let _ = writeln!(
                    out,
                    "molt_rollout_agents{{rollout=\"{id}\",group=\"{}\",phase=\"{phase}\"}} {n}",
                    esc(&g.spec.name)
                );
            }
        }
    }
    let blocked = state
        .blocked
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    out.push_str("# HELP molt_blocklisted_versions Versions on the blocklist (halted or aborted rollouts).\n# TYPE molt_blocklisted_versions gauge\n");
    let _ = writeln!(out, "molt_blocklisted_versions {blocked}");
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
