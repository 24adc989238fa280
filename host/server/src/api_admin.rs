//! Admin endpoints (`/api/v1/admin/...`): agents and tokens, fleet versions,
//! commands, issues, upgrade history, readiness and maintenance.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api_agent::{check_text, check_version};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::model::{Agent, AgentStatus, CommandKind, CommandState, IssueState};
use crate::state::{AdminAuth, AgentRef, AppState, hash_token, new_token};
use crate::store::IssueFilter;

/// An agent as admin views show it (status already accounts for Down).
#[derive(Serialize)]
pub struct AgentView {
    pub name: String,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub version: Option<String>,
    pub status: AgentStatus,
    pub reported_status: AgentStatus,
    pub last_seen: Option<chrono::DateTime<chrono::Utc>>,
    pub duplicate: bool,
    /// Effective labels (reported, with the admin's overrides).
    pub labels: crate::model::Labels,
    pub label_overrides: crate::model::Labels,
    /// The control plane's pin (`PUT /api/v1/admin/agents/{name}/pin`).
    pub pin: Option<String>,
    /// The agent's own pin (`pinned_version` in its config.toml; wins over
    /// `pin`) as its last assignment request to this replica said.
    pub own_pin: Option<String>,
}

impl AgentView {
    /// The pin that decides the agent's version and its source (its own wins).
    pub fn effective_pin(&self) -> Option<(&str, crate::state::PinSource)> {
        use crate::state::PinSource;
        self.own_pin
            .as_deref()
            .map(|v| (v, PinSource::AgentConfig))
            .or_else(|| self.pin.as_deref().map(|v| (v, PinSource::ControlPlane)))
    }

    pub fn of(state: &AppState, a: Agent) -> Self {
        let now = state.config.clock.now();
        let status =
            a.effective_status(now, crate::clock::chrono_dur(state.config.agent_down_after));
        Self {
            status,
            reported_status: a.status,
            name: a.name,
            host: a.host,
            pid: a.pid,
            version: a.version,
            last_seen: a.last_seen,
            duplicate: a.duplicate,
            labels: a.labels,
            label_overrides: a.label_overrides,
            own_pin: state.pin_for(a.id, crate::state::PinSource::AgentConfig),
            pin: a.cp_pin,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// A buildstamp, or null to clear the pin.
    version: Option<String>,
}

/// `PUT /api/v1/admin/agents/{name}/pin`: the control plane pins an agent to a
/// version (above the fleet override and rollouts, below the agent's own
/// config pin), or clears it.
pub async fn put_pin(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PinBody>,
) -> Result<Response, ApiError> {
    if let Some(v) = &req.version {
        check_version("version", v).map_err(|e| ApiError::bad_request(e.message))?;
    }
    let (n, v) = (name.clone(), req.version.clone());
    let agent = state.db(move |s| s.set_agent_pin(&n, v.as_deref())).await?;
    {
        let pins = &mut state.pins.write().unwrap_or_else(|p| p.into_inner()).cp;
        match &req.version {
            Some(v) => pins.insert(agent.id, v.clone()),
            None => pins.remove(&agent.id),
        };
    }
    state.publish(crate::store::StoreEvent::AgentsChanged);
    tracing::info!(agent = %name, version = ?req.version, "agent pin set");
    // The agent re-reads its assignment only at start, on a command or at its
    // periodic check: without a command a pin (or its clearing) would wait
    // for that check, up to an hour.
    let view = AgentView::of(&state, agent);
    queue_command(&state, &name, CommandKind::AutoUpgrade, json!({})).await?;
    Ok(axum::Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    name: String,
    #[serde(default)]
    token: Option<String>,
}

/// Registers an agent; the token is returned once and only its hash is stored.
pub async fn create_agent(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<NewAgent>,
) -> Result<Response, ApiError> {
    check_agent_name(&req.name)?;
    let token = match req.token {
        Some(t) => {
            if t.len() < 16 || t.len() > 256 || !t.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ApiError::unprocessable(
                    "field `token` must be 16 to 256 printable ASCII characters",
                ));
            }
            t
        }
        None => new_token(),
    };
    let hash = hash_token(&token);
    if state.db(move |s| s.agent_by_token(&hash)).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "that token is already in use by another agent",
        ));
    }
    let now = state.config.clock.now();
    let name = req.name.clone();
    let id = state.db(move |s| s.create_agent(&name, &hash, now)).await?;
    state
        .tokens
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            hash,
            AgentRef {
                id,
                name: req.name.as_str().into(),
            },
        );
    tracing::info!(agent = %req.name, "agent registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "name": req.name, "token": token })),
    )
        .into_response())
}

pub(crate) fn check_agent_name(name: &str) -> Result<(), ApiError> {
    check_text("name", name, 100)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(ApiError::unprocessable(format!(
            "field `name` may contain only letters, digits, '-', '_' and '.', and must not start with '.' (got {name:?})"
        )));
    }
    Ok(())
}

pub async fn list_agents(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    let agents = state.db(|s| s.list_agents()).await?;
    Ok(axum::Json(
        agents
            .into_iter()
            .map(|a| AgentView::of(&state, a))
            .collect::<Vec<_>>(),
    ))
}

pub async fn delete_agent(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let n = name.clone();
    state.db(move |s| s.delete_agent(&n)).await?;
    state
        .tokens
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, a| *a.name != *name);
    // Every replica forgets the agent's token.
    state.publish(crate::store::StoreEvent::AgentsChanged);
    tracing::info!(agent = %name, "agent removed");
    Ok(axum::Json(json!({ "ok": true })))
}

pub async fn get_fleet(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    let f = state.fleet_state();
    Ok(axum::Json(
        json!({ "version": f.version, "override": f.override_version }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionBody {
    version: String,
}

/// Refuses a version the packages directory cannot serve.
pub(crate) async fn check_servable(state: &AppState, version: &str) -> Result<(), ApiError> {
    check_version("version", version)?;
    let st = state.clone();
    let snap = tokio::task::spawn_blocking(move || st.packages.rescan())
        .await
        .map_err(|e| ApiError::internal(format!("rescan task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read packages directory: {e}")))?;
    snap.assigned(version, "universal", "universal", None)
        .map_err(|e| {
            ApiError::unprocessable(format!("version {version} cannot be assigned: {e}"))
        })?;
    Ok(())
}

/// Refuses a fleet-wide version change while a rollout is open (one rule), and
/// a blocklisted version.
fn check_no_rollout(state: &AppState, version: &str) -> Result<(), ApiError> {
    if state.is_blocked(version) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "version {version} is blocklisted: clear it first (DELETE /api/v1/admin/blocklist/{version})"
            ),
        ));
    }
    let r = state.rollout.read().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = r.as_ref().filter(|r| r.state.is_some_and(|s| s.is_open())) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "rollout {} of {} is open: pause and abort it, or let it complete, before changing the fleet version",
                r.id, r.version
            ),
        ));
    }
    Ok(())
}

/// Sets the fleet buildstamp (shared by the admin API, the dashboard and start-up).
pub async fn apply_fleet_version(state: &AppState, version: &str) -> Result<usize, ApiError> {
    check_servable(state, version).await?;
    check_no_rollout(state, version)?;
    let now = state.config.clock.now();
    let v = version.to_string();
    let woken = state.db(move |s| s.set_fleet_version(&v, now)).await?;
    let fleet = state.db(|s| s.fleet()).await?;
    state.set_fleet_cache(fleet);
    if !woken.is_empty() {
        tracing::info!(version = %version, agents = woken.len(), "fleet buildstamp changed: autoUpgrade queued for every agent");
    }
    state.wake(&woken);
    Ok(woken.len())
}

pub async fn put_fleet(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<VersionBody>,
) -> Result<impl IntoResponse, ApiError> {
    let n = apply_fleet_version(&state, &req.version).await?;
    Ok(axum::Json(
        json!({ "ok": true, "version": req.version, "auto_upgrade_queued": n }),
    ))
}

pub async fn put_override(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<VersionBody>,
) -> Result<impl IntoResponse, ApiError> {
    check_servable(&state, &req.version).await?;
    check_no_rollout(&state, &req.version)?;
    let v = req.version.clone();
    state.db(move |s| s.set_fleet_override(Some(&v))).await?;
    state.set_fleet_cache(state.db(|s| s.fleet()).await?);
    tracing::info!(version = %req.version, "fleet version override set");
    Ok(axum::Json(json!({ "ok": true, "override": req.version })))
}

pub async fn delete_override(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    state.db(|s| s.set_fleet_override(None)).await?;
    state.set_fleet_cache(state.db(|s| s.fleet()).await?);
    tracing::info!("fleet version override cleared");
    Ok(axum::Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCommand {
    kind: CommandKind,
    #[serde(default)]
    args: Option<serde_json::Value>,
}

/// Queues a command for one agent and wakes its long-poll.
pub async fn queue_command(
    state: &AppState,
    agent: &str,
    kind: CommandKind,
    args: serde_json::Value,
) -> Result<i64, ApiError> {
    let a = state
        .agent_by_name(agent)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {agent:?} not found")))?;
    if !args.is_object() {
        return Err(ApiError::unprocessable(
            "field `args` must be a JSON object",
        ));
    }
    if matches!(kind, CommandKind::Upgrade | CommandKind::RunPrecheck) {
        if let Some(v) = args.get("version") {
            let v = v
                .as_str()
                .ok_or_else(|| ApiError::unprocessable("field `args.version` must be a string"))?;
            check_version("args.version", v)?;
        } else if kind == CommandKind::RunPrecheck {
            return Err(ApiError::unprocessable(
                "runPrecheck needs `args.version`: the version whose checks to run",
            ));
        }
    }
    let now = state.config.clock.now();
    let id = a.id;
    let cid = state
        .db(move |s| s.queue_command(id, kind, &args, now))
        .await?;
    tracing::info!(agent = %agent, command_id = cid, kind = %kind, "command queued");
    state.wake(&[a.id]);
    Ok(cid)
}

pub async fn post_command(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<NewCommand>,
) -> Result<Response, ApiError> {
    let args = req.args.unwrap_or_else(|| json!({}));
    let id = queue_command(&state, &name, req.kind, args).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "command_id": id }))).into_response())
}

#[derive(Deserialize)]
pub struct AgentFilter {
    agent: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn list_commands(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<AgentFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    let cmds = state
        .db(move |s| s.list_commands(q.agent.as_deref(), limit))
        .await?;
    Ok(axum::Json(cmds))
}

#[derive(Deserialize)]
pub struct IssueQuery {
    agent: Option<String>,
    state: Option<String>,
    #[serde(default)]
    open: Option<bool>,
}

pub async fn list_issues(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<IssueQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let st = match q.state.as_deref() {
        None => None,
        Some(s) => Some(IssueState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter `state` must be New, Acknowledged or Resolved (got {s:?})"
            ))
        })?),
    };
    let filter = IssueFilter {
        agent: q.agent,
        open_only: q.open.unwrap_or(false),
        state: st,
    };
    Ok(axum::Json(state.db(move |s| s.list_issues(&filter)).await?))
}

pub async fn set_issue(
    state: &AppState,
    id: i64,
    to: IssueState,
) -> Result<crate::model::Issue, ApiError> {
    let now = state.config.clock.now();
    let issue = state.db(move |s| s.set_issue_state(id, to, now)).await?;
    tracing::info!(issue_id = id, state = %to, code = %issue.code, agent = %issue.agent, "issue state changed");
    Ok(issue)
}

pub async fn acknowledge_issue(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        set_issue(&state, id, IssueState::Acknowledged).await?,
    ))
}

pub async fn resolve_issue(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        set_issue(&state, id, IssueState::Resolved).await?,
    ))
}

pub async fn list_attempts(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        state.db(move |s| s.list_attempts(&name, 100)).await?,
    ))
}

pub async fn list_logs(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        state.db(move |s| s.list_log_uploads(&name)).await?,
    ))
}

/// The text of one uploaded log (also used by the dashboard).
pub async fn log_text(state: &AppState, id: i64) -> Result<Response, ApiError> {
    let up = state
        .db(move |s| s.log_upload(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("log upload {id}")))?;
    let bytes = tokio::fs::read(&up.path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", up.path)))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

pub async fn get_log(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    log_text(&state, id).await
}

pub async fn upgrade_slots(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    let now = state.config.clock.now();
    let lease = crate::clock::chrono_dur(state.config.lease_timeout);
    let holders = state.db(move |s| s.slot_holders(now, lease)).await?;
    Ok(axum::Json(
        json!({ "max": state.config.max_concurrent_upgrades, "holders": holders }),
    ))
}

/// One agent's readiness for a version (from its latest runPrecheck).
#[derive(Serialize, Clone)]
pub struct Readiness {
    pub agent: String,
    pub readiness: molt_protocol::Readiness,
    pub message: Option<String>,
    pub command_id: Option<i64>,
}

pub async fn readiness_for(state: &AppState, version: &str) -> Result<Vec<Readiness>, ApiError> {
    let agents = state.db(|s| s.list_agents()).await?;
    let cmds = state.db(|s| s.list_commands(None, 100_000)).await?;
    Ok(agents
        .into_iter()
        .map(|a| {
            // Commands are newest first: the first match is the latest run.
            let latest = cmds.iter().find(|c| {
                c.agent == a.name
                    && c.kind == CommandKind::RunPrecheck
                    && c.args.get("version").and_then(|v| v.as_str()) == Some(version)
            });
            let (readiness, message, command_id) = match latest {
                None => (molt_protocol::Readiness::NotChecked, None, None),
                Some(c) => (
                    match c.state {
                        CommandState::Queued | CommandState::Delivered => {
                            molt_protocol::Readiness::Pending
                        }
                        CommandState::Done => molt_protocol::Readiness::Ready,
                        CommandState::Failed => molt_protocol::Readiness::NotReady,
                    },
                    c.message.clone(),
                    Some(c.id),
                ),
            };
            Readiness {
                agent: a.name,
                readiness,
                message,
                command_id,
            }
        })
        .collect())
}

/// Queues runPrecheck of `version` for every agent (Down ones get it when back Up).
pub async fn start_readiness(state: &AppState, version: &str) -> Result<usize, ApiError> {
    check_version("version", version)?;
    let agents = state.db(|s| s.list_agents()).await?;
    for a in &agents {
        queue_command(
            state,
            &a.name,
            CommandKind::RunPrecheck,
            json!({ "version": version }),
        )
        .await?;
    }
    tracing::info!(version = %version, agents = agents.len(), "fleet readiness check queued (runPrecheck)");
    Ok(agents.len())
}

pub async fn post_readiness(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<VersionBody>,
) -> Result<Response, ApiError> {
    let n = start_readiness(&state, &req.version).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "ok": true, "queued": n })),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct ReadinessQuery {
    version: String,
}

pub async fn get_readiness(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<ReadinessQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(readiness_for(&state, &q.version).await?))
}

/// Deletes issues not detected for the retention (30 days by default),
/// whatever their state, as the seeds do.
pub async fn purge_now(state: &AppState) -> Result<usize, ApiError> {
    let cutoff = state.config.clock.now() - crate::clock::chrono_dur(state.config.issue_retention);
    let n = state.db(move |s| s.purge_stale_issues(cutoff)).await?;
    if n > 0 {
        tracing::info!(
            purged = n,
            "issues not detected within the retention purged"
        );
    }
    Ok(n)
}

pub async fn post_purge(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        json!({ "ok": true, "purged": purge_now(&state).await? }),
    ))
}

pub async fn list_packages(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    let st = state.clone();
    let snap = tokio::task::spawn_blocking(move || st.packages.rescan())
        .await
        .map_err(|e| ApiError::internal(format!("rescan task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read packages directory: {e}")))?;
    Ok(axum::Json(snap.files.clone()))
}
