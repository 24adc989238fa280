//! The agent-facing API (docs/architecture.md, "Control-plane HTTP API").

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use molt_bundle::text::{MAX_LABEL, sanitize};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::model::{Finding, Heartbeat, SlotOutcome};
use crate::packages::{PackageFile, name_char};
use crate::state::{AgentAuth, AppState};

/// Seconds a refused agent should wait before asking for a slot again.
pub const RETRY_AFTER_SECS: u32 = 20;

/// Source name of issues raised by the control plane's own agent registry.
pub const AGENT_REGISTRY: &str = "AgentRegistry";

fn ok() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "ok": true }))
}

/// Bound for a stage, attempt or command message an agent sends.
const MAX_REPORT_MESSAGE: usize = 4096;

/// Text an agent sent, made safe (control characters escaped, length bounded)
/// before it reaches a log, the store or the dashboard: the same rule the
/// sandbox applies to guest text, so a forged line cannot pass through either.
fn clean(v: &mut String, max: usize) {
    if v.len() > max || !molt_bundle::text::is_clean(v) {
        *v = sanitize(v, max);
    }
}

pub(crate) fn check_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::unprocessable(format!(
            "field `{field}` must not be empty"
        )));
    }
    if v.len() > max {
        return Err(ApiError::unprocessable(format!(
            "field `{field}` is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// A buildstamp (`quebec-12-09-2020__patch1-…_1225`), parsed by `molt_bundle`.
pub(crate) fn check_version(field: &str, v: &str) -> Result<(), ApiError> {
    check_name(field, v)?;
    v.parse::<molt_bundle::Version>()
        .map(|_| ())
        .map_err(|e| ApiError::unprocessable(format!("field `{field}`: {e}")))
}

/// A version or os/arch: the characters of a package-name field.
pub(crate) fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    check_text(field, v, 200)?;
    if !v.chars().all(name_char) {
        return Err(ApiError::unprocessable(format!(
            "field `{field}` may contain only letters, digits, '-', '_' and '.' (got {v:?})"
        )));
    }
    Ok(())
}

/// The calling agent's own record, as the control plane sees it: the deploy
/// runner's health check asks it whether the new version has reported Up here
/// (an agent sees only its own record).
pub async fn get_self(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
) -> Result<impl IntoResponse, ApiError> {
    let name = agent.name.to_string();
    let a = state
        .db(move |s| s.agent_by_name(&name))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {} not found", agent.name)))?;
    Ok(axum::Json(crate::api_admin::AgentView::of(&state, a)))
}

pub async fn heartbeat(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiJson(mut hb): ApiJson<Heartbeat>,
) -> Result<impl IntoResponse, ApiError> {
    check_text("host", &hb.host, 255)?;
    check_text("version", &hb.version, 200)?;
    crate::rollout::check_labels("labels", &hb.labels)?;
    clean(&mut hb.host, MAX_LABEL);
    clean(&mut hb.version, MAX_LABEL);
    let now = state.config.clock.now();
    let window = crate::clock::chrono_dur(state.config.agent_down_after);
    let id = agent.id;
    let name = agent.name.clone();
    let host = hb.host.clone();
    let outcome = state
        .db(move |s| s.record_heartbeat(id, &hb, now, window))
        .await?;
    if outcome.duplicate {
        if !outcome.was_duplicate {
            tracing::warn!(agent = %name, host = %host, "two live agents report with one name");
        }
        let finding = Finding {
            code: "DuplicateAgentName".into(),
            severity: molt_protocol::FindingSeverity::Error,
            description: format!(
                "Two live agents report as {name:?}: heartbeats alternate between processes"
            ),
            remediation: Some("Stop the second process or give it its own name and token".into()),
        };
        state
            .db(move |s| s.report_issues(id, AGENT_REGISTRY, &[finding], now))
            .await?;
    } else if outcome.was_duplicate {
        tracing::info!(agent = %name, "duplicate agent name no longer seen");
        state
            .db(move |s| s.report_issues(id, AGENT_REGISTRY, &[], now))
            .await?;
    }
    Ok(ok())
}

#[derive(Deserialize)]
pub struct AssignedQuery {
    os: Option<String>,
    arch: Option<String>,
    runtime: Option<String>,
    pinned: Option<String>,
    /// A command's version (readiness of the next version, `upgrade {version}`):
    /// answered for that version instead of the agent's assignment, if the
    /// packages directory serves it.
    version: Option<String>,
    /// `1` when the agent asks because of a command: on a shared database the
    /// replica reads the assignment from the store first, since the change
    /// behind the command may not have reached its cache yet (a load balancer
    /// may send the question to another replica than the one that queued it).
    fresh: Option<String>,
}

/// One package of an assignment.
#[derive(Serialize)]
pub struct PackageRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    name: String,
    url: String,
    size: u64,
    sha256: String,
}

/// The answer of `GET /api/v1/agent/assigned`.
#[derive(Serialize)]
pub struct AssignedAnswer {
    version: String,
    source: &'static str,
    packages: Vec<PackageRef>,
    precheck: Option<PackageRef>,
    selector: Option<PackageRef>,
}

/// Base URL (no trailing slash) for package downloads.
fn package_base(state: &AppState, host: Option<&axum::http::HeaderValue>) -> String {
    if let Some(b) = &state.config.package_base_url {
        return b.trim_end_matches('/').to_string();
    }
    format!("{}/packages", public_base_of(state, host))
}

/// How the caller reached this server.
fn public_base_of(state: &AppState, host: Option<&axum::http::HeaderValue>) -> String {
    if let Some(b) = &state.config.public_base_url {
        return b.trim_end_matches('/').to_string();
    }
    let scheme = if state.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.config.listen.to_string());
    format!("{scheme}://{host}")
}

fn pref(base: &str, f: &PackageFile, with_kind: bool) -> PackageRef {
    PackageRef {
        kind: with_kind.then_some(f.kind.as_str()),
        name: f.name.clone(),
        url: format!("{base}/{}", f.name),
        size: f.size,
        sha256: f.sha256.clone(),
    }
}

/// Which version an agent runs: its own pin (the host operator's word), else
/// the control plane's pin, else the fleet override, else the fleet buildstamp.
pub fn choose_version(
    fleet: &crate::model::FleetState,
    pinned: Option<&str>,
    cp_pin: Option<&str>,
) -> Option<(String, &'static str)> {
    if let Some(p) = pinned {
        return Some((p.to_string(), "pin"));
    }
    if let Some(p) = cp_pin {
        return Some((p.to_string(), "cp-pin"));
    }
    if let Some(o) = &fleet.override_version {
        return Some((o.clone(), "override"));
    }
    fleet.version.clone().map(|v| (v, "fleet"))
}

/// [`choose_version`] with a rollout: an agent a rollout admitted runs its
/// version (not blocklisted) unless pinned (either pin) or under a fleet override.
pub fn choose_version_for(
    fleet: &crate::model::FleetState,
    pinned: Option<&str>,
    cp_pin: Option<&str>,
    rollout: Option<String>,
) -> Option<(String, &'static str)> {
    if pinned.is_none()
        && cp_pin.is_none()
        && fleet.override_version.is_none()
        && let Some(v) = rollout
    {
        return Some((v, "rollout"));
    }
    choose_version(fleet, pinned, cp_pin)
}

/// The request's `Host` header alone (the `HeaderMap` extractor would copy
/// every header of every poll).
pub struct HostHeader(pub Option<axum::http::HeaderValue>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for HostHeader {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(HostHeader(parts.headers.get(header::HOST).cloned()))
    }
}

/// `GET /api/v1/agent/assigned`: the version this agent should run and its
/// packages. The hot path of a large fleet (every agent polls it): the answer
/// is encoded once per inputs and packages snapshot ([`crate::state::AnswerCache`]).
pub async fn assigned(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    HostHeader(host): HostHeader,
    ApiQuery(q): ApiQuery<AssignedQuery>,
) -> Result<Response, ApiError> {
    let os =
        q.os.ok_or_else(|| ApiError::bad_request("missing query parameter `os`"))?;
    let arch = q
        .arch
        .ok_or_else(|| ApiError::bad_request("missing query parameter `arch`"))?;
    check_name("os", &os)?;
    check_name("arch", &arch)?;
    let runtime = q.runtime.filter(|r| !r.is_empty());
    let pinned = q.pinned.filter(|p| !p.is_empty());
    if let Some(r) = &runtime {
        check_name("runtime", r)?;
    }
    if let Some(p) = &pinned {
        check_version("pinned", p)?;
    }
    state.note_own_pin(agent.id, pinned.as_deref());
    if q.fresh.as_deref() == Some("1") && state.config.db_is_url() {
        state.reload_remote().await;
    }
    let requested = q.version.filter(|v| !v.is_empty());
    if let Some(v) = &requested {
        check_version("version", v)?;
    }
    let (version, source) = match requested {
        Some(v) => (v, "requested"),
        None => {
            let rollout = state.rollout_version_for(agent.id);
            let cp_pin = state.pin_for(agent.id, crate::state::PinSource::ControlPlane);
            let fleet = state.fleet.read().unwrap_or_else(|p| p.into_inner());
            choose_version_for(&fleet, pinned.as_deref(), cp_pin.as_deref(), rollout)
        }
        .ok_or_else(|| {
            ApiError::not_found(
                "no fleet version is set: PUT /api/v1/admin/fleet {\"version\": ...}",
            )
        })?,
    };

    let (mut snap, stale) = state.packages.current();
    if stale && state.packages.begin_refresh() {
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = st.packages.rescan() {
                tracing::error!(dir = %st.packages.dir().display(), error = %e, "packages directory rescan failed");
            }
        });
    }
    // Everything the answer depends on besides the snapshot.
    let host_text = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let key = [
        version.as_str(),
        source,
        &os,
        &arch,
        runtime.as_deref().unwrap_or(""),
        host_text,
    ]
    .join("\n");
    let cached = state
        .answers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&snap, &key);
    let body = match cached {
        Some(b) => b,
        None => {
            if snap
                .assigned(&version, &os, &arch, runtime.as_deref())
                .is_err()
            {
                // Perhaps it was just copied in: look again before refusing.
                let st = state.clone();
                snap = tokio::task::spawn_blocking(move || st.packages.rescan())
                    .await
                    .map_err(|e| ApiError::internal(format!("rescan task failed: {e}")))?
                    .map_err(|e| {
                        ApiError::internal(format!("cannot read packages directory: {e}"))
                    })?;
            }
            let a = snap.assigned(&version, &os, &arch, runtime.as_deref()).map_err(|e| {
                tracing::warn!(agent = %agent.name, version = %version, error = %e, "assigned version has no packages");
                ApiError::not_found(format!("assigned version {version} ({source}): {e}"))
            })?;
            let base = package_base(&state, host.as_ref());
            let mut packages = vec![pref(&base, a.upgrade, true), pref(&base, a.core, true)];
            if let Some(r) = a.runtime {
                packages.push(pref(&base, r, true));
            }
            let answer = AssignedAnswer {
                version,
                source,
                packages,
                precheck: a.precheck.map(|p| pref(&base, p, false)),
                selector: a.selector.map(|p| pref(&base, p, false)),
            };
            let body =
                axum::body::Bytes::from(serde_json::to_vec(&answer).map_err(|e| {
                    ApiError::internal(format!("cannot encode the assignment: {e}"))
                })?);
            state
                .answers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .put(&snap, key, body.clone());
            body
        }
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRequest {
    to_version: String,
}

pub async fn acquire_slot(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiJson(req): ApiJson<SlotRequest>,
) -> Result<Response, ApiError> {
    check_name("to_version", &req.to_version)?;
    let now = state.config.clock.now();
    // An agent a rollout admitted: the semaphore is its group's max in flight.
    let max = state
        .rollout_slot_limit(agent.id, &req.to_version)
        .map_or(state.config.max_concurrent_upgrades, |l| {
            l.max(state.config.max_concurrent_upgrades)
        });
    let lease = state.config.lease_timeout;
    let id = agent.id;
    let to = req.to_version.clone();
    let outcome = state
        .db(move |s| s.acquire_slot(id, &to, now, max, crate::clock::chrono_dur(lease)))
        .await?;
    match outcome {
        SlotOutcome::Granted => {
            tracing::info!(agent = %agent.name, to_version = %req.to_version, "upgrade slot granted");
            Ok(axum::Json(json!({ "lease_seconds": lease.as_secs() })).into_response())
        }
        SlotOutcome::Busy { holders } => {
            tracing::info!(agent = %agent.name, holders = ?holders, "upgrade slot refused: all slots held");
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "all {max} upgrade slots are held (by {}); retry after {RETRY_AFTER_SECS} s",
                    holders.join(", ")
                ),
            );
            e.retry_after = Some(RETRY_AFTER_SECS);
            Err(e)
        }
    }
}

pub async fn release_slot(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
) -> Result<impl IntoResponse, ApiError> {
    let id = agent.id;
    let released = state.db(move |s| s.release_slot(id)).await?;
    if released {
        tracing::info!(agent = %agent.name, "upgrade slot released");
    }
    Ok(axum::Json(json!({ "ok": true, "released": released })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptRequest {
    from_version: String,
    to_version: String,
}

pub async fn create_attempt(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiJson(mut req): ApiJson<AttemptRequest>,
) -> Result<impl IntoResponse, ApiError> {
    check_text("from_version", &req.from_version, 200)?;
    check_text("to_version", &req.to_version, 200)?;
    clean(&mut req.from_version, MAX_LABEL);
    clean(&mut req.to_version, MAX_LABEL);
    let now = state.config.clock.now();
    let id = agent.id;
    let attempt_id = state
        .db(move |s| s.create_attempt(id, &req.from_version, &req.to_version, now))
        .await?;
    tracing::info!(agent = %agent.name, attempt_id, "upgrade attempt started");
    Ok(axum::Json(json!({ "attempt_id": attempt_id })))
}

/// The body of a stage report.
pub type StageRequest = molt_protocol::StageReport;

pub async fn record_stage(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiPath(attempt_id): ApiPath<i64>,
    ApiJson(mut req): ApiJson<StageRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if req.message.len() > 64 * 1024 {
        return Err(ApiError::unprocessable(
            "field `message` is longer than 65536 bytes",
        ));
    }
    clean(&mut req.message, MAX_REPORT_MESSAGE);
    let at = req.at.unwrap_or_else(|| state.config.clock.now());
    let id = agent.id;
    tracing::info!(agent = %agent.name, attempt_id, stage = %req.stage, state = %req.state, "upgrade history stage");
    state
        .db(move |s| s.record_stage(id, attempt_id, req.stage, req.state, &req.message, at))
        .await?;
    Ok(ok())
}

/// The body of an attempt's finish.
pub type FinishRequest = molt_protocol::FinishReport;

pub async fn finish_attempt(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiPath(attempt_id): ApiPath<i64>,
    ApiJson(mut req): ApiJson<FinishRequest>,
) -> Result<impl IntoResponse, ApiError> {
    clean(&mut req.message, MAX_REPORT_MESSAGE);
    let now = state.config.clock.now();
    let id = agent.id;
    tracing::info!(agent = %agent.name, attempt_id, result = %req.result, "upgrade attempt finished");
    state
        .db(move |s| s.finish_attempt(id, attempt_id, req.result, &req.message, now))
        .await?;
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuesReport {
    source: String,
    findings: Vec<Finding>,
}

pub async fn report_issues(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiJson(mut req): ApiJson<IssuesReport>,
) -> Result<impl IntoResponse, ApiError> {
    check_text("source", &req.source, 100)?;
    if req.source == AGENT_REGISTRY {
        return Err(ApiError::unprocessable(format!(
            "source `{AGENT_REGISTRY}` is reserved for the control plane"
        )));
    }
    if req.findings.len() > 1000 {
        return Err(ApiError::unprocessable(
            "field `findings` has more than 1000 entries",
        ));
    }
    for (i, f) in req.findings.iter().enumerate() {
        check_text(&format!("findings[{i}].code"), &f.code, 100)?;
        check_text(&format!("findings[{i}].description"), &f.description, 4000)?;
    }
    clean(&mut req.source, MAX_LABEL);
    for f in &mut req.findings {
        // The bounds the API already enforces (above): only escaping can lengthen.
        clean(&mut f.code, 100);
        clean(&mut f.description, 4000);
        if let Some(r) = &mut f.remediation {
            clean(r, 4000);
        }
    }
    let now = state.config.clock.now();
    let id = agent.id;
    let source = req.source.clone();
    let out = state
        .db(move |s| s.report_issues(id, &req.source, &req.findings, now))
        .await?;
    tracing::info!(agent = %agent.name, source = %source, created = out.created, incremented = out.incremented,
        auto_resolved = out.auto_resolved, "issues reported");
    Ok(axum::Json(
        json!({ "ok": true, "created": out.created, "incremented": out.incremented, "auto_resolved": out.auto_resolved }),
    ))
}

#[derive(Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    wait: Option<u64>,
}

/// One command as the agent receives it.
pub type CommandOut = molt_protocol::CommandMessage;

pub async fn poll_commands(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> Result<axum::Json<Vec<CommandOut>>, ApiError> {
    let wait = Duration::from_secs(q.wait.unwrap_or(0)).min(state.config.max_poll_wait);
    let deadline = tokio::time::Instant::now() + wait;
    let notify = state.notify_for(agent.id);
    loop {
        // Register interest before looking, so a command queued in between wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let id = agent.id;
        let now = state.config.clock.now();
        let cmds = state.db(move |s| s.take_commands(id, now)).await?;
        if !cmds.is_empty() {
            for c in &cmds {
                tracing::info!(agent = %agent.name, command_id = c.id, kind = %c.kind, "command delivered");
            }
            return Ok(axum::Json(
                cmds.into_iter()
                    .map(|c| CommandOut {
                        id: c.id,
                        kind: c.kind,
                        args: c.args,
                    })
                    .collect(),
            ));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(axum::Json(Vec::new()));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneRequest {
    ok: bool,
    #[serde(default)]
    message: String,
}

pub async fn command_done(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiPath(command_id): ApiPath<i64>,
    ApiJson(mut req): ApiJson<DoneRequest>,
) -> Result<impl IntoResponse, ApiError> {
    clean(&mut req.message, MAX_REPORT_MESSAGE);
    let now = state.config.clock.now();
    let id = agent.id;
    tracing::info!(agent = %agent.name, command_id, ok = req.ok, "command done");
    state
        .db(move |s| s.complete_command(id, command_id, req.ok, &req.message, now))
        .await?;
    Ok(ok())
}

pub async fn upload_logs(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body?;
    let now = state.config.clock.now();
    let dir = state.config.effective_logs_dir().join(&*agent.name);
    let file = dir.join(format!("{}.log", now.format("%Y%m%dT%H%M%S%.3fZ")));
    let size = body.len() as i64;
    let path_text = file.display().to_string();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
    tokio::fs::write(&file, &body)
        .await
        .map_err(|e| ApiError::internal(format!("cannot write {path_text}: {e}")))?;
    let id = agent.id;
    let p = path_text.clone();
    let upload_id = state
        .db(move |s| s.record_log_upload(id, &p, size, now))
        .await?;
    tracing::info!(agent = %agent.name, bytes = size, path = %path_text, "agent logs uploaded");
    Ok(axum::Json(json!({ "ok": true, "upload_id": upload_id })))
}

#[cfg(test)]
mod pin_tests {
    use super::choose_version_for;
    use crate::model::FleetState;

    /// The agent's own pin > the control plane's pin > the fleet override >
    /// a rollout's admission > the fleet version.
    #[test]
    fn assignment_precedence() {
        let mut fleet = FleetState {
            version: Some("fleet".into()),
            override_version: None,
        };
        let pick = |f: &FleetState, own: Option<&str>, cp: Option<&str>, r: Option<&str>| {
            choose_version_for(f, own, cp, r.map(str::to_string)).map(|(v, s)| (v, s.to_string()))
        };
        let want = |v: &str, s: &str| Some((v.to_string(), s.to_string()));
        assert_eq!(pick(&fleet, None, None, None), want("fleet", "fleet"));
        assert_eq!(pick(&fleet, None, None, Some("r")), want("r", "rollout"));
        fleet.override_version = Some("o".into());
        assert_eq!(pick(&fleet, None, None, Some("r")), want("o", "override"));
        assert_eq!(
            pick(&fleet, None, Some("cp"), Some("r")),
            want("cp", "cp-pin")
        );
        assert_eq!(
            pick(&fleet, Some("own"), Some("cp"), Some("r")),
            want("own", "pin")
        );
        fleet.override_version = None;
        assert_eq!(
            pick(&fleet, None, Some("cp"), Some("r")),
            want("cp", "cp-pin")
        );
    }
}
