//! Admin endpoints of labels, rollouts and the blocklist
//! (`/api/v1/admin/agents/{name}/labels`, `/api/v1/admin/rollouts…`,
//! `/api/v1/admin/blocklist…`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api_admin::AgentView;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::model::{AttemptResult, Labels, RolloutRecord, RolloutState};
use crate::rollout::{GroupSpec, RolloutSpec, check_labels};
use crate::state::{AdminAuth, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsBody {
    /// Replaces the overrides: a value wins over the agent's own, an empty
    /// value removes the label.
    labels: Labels,
}

/// Sets an agent's label overrides.
pub async fn put_labels(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<LabelsBody>,
) -> Result<impl IntoResponse, ApiError> {
    let check: Labels = req
        .labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_labels("labels", &check)?;
    if let Some(k) = req.labels.keys().find(|k| !crate::rollout::label_ok(k, 63)) {
        return Err(ApiError::unprocessable(format!(
            "field `labels`: label name {k:?} is not 1 to 63 letters, digits, '-', '_' or '.'"
        )));
    }
    let n = name.clone();
    let agent = state
        .db(move |s| s.set_label_overrides(&n, &req.labels))
        .await?;
    tracing::info!(agent = %name, labels = ?agent.labels, "agent label overrides set");
    Ok(axum::Json(AgentView::of(&state, agent)))
}

/// Progress of one group.
#[derive(Serialize)]
pub struct GroupView {
    #[serde(flatten)]
    pub spec: GroupSpec,
    /// Agents whose labels put them in this group now (or admitted to it),
    /// pinned ones not admitted left out.
    pub agents: usize,
    /// Pinned (by the control plane or their own config), not in the rollout:
    /// agents the group's selector matches that it will not admit.
    pub pinned: usize,
    pub done: usize,
    pub in_flight: usize,
    pub failed: usize,
    pub waiting: usize,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One admitted agent.
#[derive(Serialize)]
pub struct AdmittedView {
    pub agent: String,
    pub group: String,
    pub admitted_at: chrono::DateTime<chrono::Utc>,
    pub command_id: Option<i64>,
    pub result: Option<AttemptResult>,
    pub done_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/v1/admin/rollouts/{id}`.
#[derive(Serialize)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: RolloutRecord,
    /// Whether the version is on the blocklist now.
    pub blocklisted: bool,
    pub group_progress: Vec<GroupView>,
    pub admitted: Vec<AdmittedView>,
    /// While Running: `waiting for maintenance window <next opening>` when the
    /// current group (the first not completed) is outside its windows, or the
    /// readiness gate's `waiting for readiness of group …` naming who blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The upgrade semaphore's limit held in the store (the current group's
    /// max in flight while the rollout is open; none: `--max-concurrent-upgrades`).
    pub semaphore_limit: Option<u32>,
}

pub(crate) async fn view(state: &AppState, r: RolloutRecord) -> Result<RolloutView, ApiError> {
    let id = r.id;
    let (agents, admitted, semaphore_limit) = state
        .db(move |s| Ok((s.list_agents()?, s.rollout_agents(id)?, s.slot_limit()?)))
        .await?;
    let spec: RolloutSpec = serde_json::from_value(r.spec.clone())
        .map_err(|e| ApiError::internal(format!("rollout {id} spec: {e}")))?;
    // Agent id to the group it was admitted to (10,000 agents: no scan per agent).
    let admitted_to: std::collections::HashMap<i64, usize> =
        admitted.iter().map(|x| (x.agent_id, x.group)).collect();
    let mut groups = Vec::new();
    for (g, gs) in spec.groups.iter().enumerate() {
        let (members, pinned): (Vec<&crate::model::Agent>, Vec<_>) = agents
            .iter()
            .filter(|a| match admitted_to.get(&a.id) {
                Some(x) => *x == g,
                None => spec.group_of(&a.labels) == Some(g),
            })
            .partition(|a| admitted_to.contains_key(&a.id) || !state.is_pinned(a));
        let adm: Vec<_> = admitted.iter().filter(|x| x.group == g).collect();
        let done = adm
            .iter()
            .filter(|x| x.result == Some(AttemptResult::Complete))
            .count();
        let failed = adm
            .iter()
            .filter(|x| x.result.is_some_and(|r| r != AttemptResult::Complete))
            .count();
        let in_flight = adm.iter().filter(|x| x.result.is_none()).count();
        let times = r.groups.iter().find(|x| x.idx == g);
        groups.push(GroupView {
            spec: gs.clone(),
            agents: members.len(),
            pinned: pinned.len(),
            done,
            in_flight,
            failed,
            waiting: members.len().saturating_sub(adm.len()),
            started_at: times.and_then(|t| t.started_at),
            completed_at: times.and_then(|t| t.completed_at),
        });
    }
    let admitted = admitted
        .into_iter()
        .map(|x| AdmittedView {
            group: spec
                .groups
                .get(x.group)
                .map(|g| g.name.clone())
                .unwrap_or_default(),
            agent: x.agent,
            admitted_at: x.admitted_at,
            command_id: x.command_id,
            result: x.result,
            done_at: x.done_at,
        })
        .collect();
    let waiting = if r.state == RolloutState::Running {
        let now = state.config.clock.now();
        groups
            .iter()
            .find(|g| g.completed_at.is_none())
            .and_then(|g| g.spec.window_wait(now))
            .or_else(|| {
                // The readiness gate's reason, as the scheduler's last step found it.
                state
                    .rollout
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .filter(|c| c.id == r.id)
                    .and_then(|c| c.waiting.clone())
            })
    } else {
        None
    };
    Ok(RolloutView {
        semaphore_limit,
        waiting,
        blocklisted: state.is_blocked(&r.version),
        rollout: r,
        group_progress: groups,
        admitted,
    })
}

/// Creates a rollout (the scheduler starts it at its next step).
pub async fn create(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(spec): ApiJson<RolloutSpec>,
) -> Result<Response, ApiError> {
    spec.check()?;
    crate::api_admin::check_servable(&state, &spec.version).await?;
    if let Some(o) = state.fleet_state().override_version {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a fleet override ({o}) pins every agent: clear it before a rollout (DELETE /api/v1/admin/fleet/override)"
            ),
        ));
    }
    let now = state.config.clock.now();
    let value = serde_json::to_value(&spec)
        .map_err(|e| ApiError::internal(format!("rollout spec: {e}")))?;
    let (version, n) = (spec.version.clone(), spec.groups.len());
    let id = state
        .db(move |s| s.create_rollout(&version, &value, n, now))
        .await?;
    crate::rollout::reload(&state).await?;
    tracing::info!(rollout = id, version = %spec.version, groups = n, "rollout created");
    let r = state
        .db(move |s| s.rollout(id))
        .await?
        .ok_or_else(|| ApiError::internal("rollout vanished"))?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, r).await?)).into_response())
}

/// The newest rollout.
pub async fn current(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    let r = state
        .db(|s| s.latest_rollout())
        .await?
        .ok_or_else(|| ApiError::not_found("no rollout has been created"))?;
    Ok(axum::Json(view(&state, r).await?))
}

pub async fn status(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let r = state
        .db(move |s| s.rollout(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("rollout {id}")))?;
    Ok(axum::Json(view(&state, r).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn transition(
    state: &AppState,
    id: i64,
    to: RolloutState,
    reason: Option<String>,
) -> Result<RolloutView, ApiError> {
    if let Some(r) = &reason {
        crate::api_agent::check_text("reason", r, 500)?;
    }
    let now = state.config.clock.now();
    let r = state
        .db(move |s| s.set_rollout_state(id, to, reason.as_deref(), now))
        .await?;
    crate::rollout::reload(state).await?;
    tracing::info!(rollout = id, state = %to, "rollout state set by an operator");
    view(state, r).await
}

pub async fn pause(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        transition(&state, id, RolloutState::Paused, None).await?,
    ))
}

pub async fn resume(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(
        transition(&state, id, RolloutState::Running, None).await?,
    ))
}

pub async fn abort(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(id): ApiPath<i64>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<ReasonBody>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .reason
    };
    Ok(axum::Json(
        transition(&state, id, RolloutState::Aborted, reason).await?,
    ))
}

pub async fn blocklist(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(state.db(|s| s.blocklist()).await?))
}

pub async fn clear_blocked(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiPath(version): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let v = version.clone();
    state.db(move |s| s.clear_blocked(&v)).await?;
    crate::rollout::reload(&state).await?;
    tracing::info!(version = %version, "version cleared from the blocklist");
    Ok(axum::Json(json!({ "ok": true, "cleared": version })))
}

#[derive(Deserialize)]
pub struct AgentsQuery {
    /// `k=v,k2=v2`: effective labels the agents must all carry.
    label: Option<String>,
    status: Option<String>,
    version: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

/// One page of agents, filtered in the store (`GET /api/v1/admin/fleet/agents`).
pub async fn agents_page(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<AgentsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let mut labels = Labels::new();
    for kv in q
        .label
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!("query parameter `label`: `{kv}` is not NAME=VALUE"))
        })?;
        labels.insert(k.to_string(), v.to_string());
    }
    check_labels("label", &labels)?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(crate::model::AgentStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter `status`: unknown agent status {s:?}"
            ))
        })?),
    };
    let page = q.page.unwrap_or(1).max(1);
    let per_page = q.per_page.unwrap_or(50).clamp(1, 1000);
    let query = crate::store::AgentQuery {
        labels,
        status,
        version: q.version.filter(|v| !v.is_empty()),
        seen_after: state.config.clock.now()
            - crate::clock::chrono_dur(state.config.agent_down_after),
        page,
        per_page,
    };
    let (agents, total) = state.db(move |s| s.agents_page(&query)).await?;
    Ok(axum::Json(json!({
        "agents": agents.into_iter().map(|a| AgentView::of(&state, a)).collect::<Vec<_>>(),
        "total": total,
        "page": page,
        "per_page": per_page,
    })))
}
