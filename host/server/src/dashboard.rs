//! The operator dashboard: small server-rendered pages (no front-end build),
//! every piece of stored or user-supplied text escaped with [`esc`].

use std::fmt::Write as _;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::api_admin::{self, AgentView, Readiness};
use crate::error::{ApiError, ApiPath};
use crate::model::{Attempt, CommandKind, IssueState, StageState};
use crate::state::{AppState, SESSION_COOKIE, bearer, hash_token};
use crate::store::IssueFilter;

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else { return "never".into() };
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

const CSS: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:16px 20px;max-width:1300px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin-bottom:16px}
h2{font-size:15px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{font-size:12px;color:#5a6472;text-transform:uppercase}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e4e7eb}
.s-Up,.s-Complete,.s-Ready{background:#d3f2dc;color:#17642f}
.s-Upgrading,.s-InProgress,.s-Pending{background:#dbe8ff;color:#1d4ea8}
.s-Paused,.s-Skipped,.s-Acknowledged,.s-NotChecked{background:#eee;color:#555}
.s-Pinned{background:#fff1c2;color:#7a5200}
.s-Down,.s-UpgradeFailed,.s-Failed,.s-NotReady,.s-New,.s-RolledBack{background:#fde0e0;color:#9b1c1c}
.dup{color:#9b1c1c;font-weight:600}
form.inline{display:inline}
button{font:inherit;padding:2px 10px;border:1px solid #9aa5b1;border-radius:4px;background:#fff;cursor:pointer}
button:hover{background:#eef1f4}
.flash{background:#fff7d6;border:1px solid #e8d27a;padding:8px 12px;border-radius:6px;margin-bottom:12px}
.timeline{display:flex;gap:6px;flex-wrap:wrap;margin:6px 0 2px}
.stage{border:1px solid #dde1e6;border-radius:5px;padding:5px 8px;min-width:130px;font-size:12px}
.stage b{display:block;font-size:12px}
.muted{color:#6b7480;font-size:12px}
"#;

fn page(title: &str, flash: Option<&str>, body: &str) -> Html<String> {
    let flash = flash
        .filter(|f| !f.is_empty())
        .map(|f| format!("<div class=\"flash\" id=\"flash\">{}</div>", esc(f)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Molt control plane</title>\
         <style>{CSS}</style></head><body><header><a href=\"/dashboard\">Molt control plane</a><span>{t}</span>\
         <form class=\"inline\" method=\"post\" action=\"/logout\" style=\"margin-left:auto\"><button>Log out</button></form>\
         </header><main>{flash}{body}</main></body></html>",
        t = esc(title)
    ))
}

fn badge(text: &str) -> String {
    let class: String = text.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("<span class=\"badge s-{class}\">{}</span>", esc(text))
}

/// The agents table's pin cell: the pin that decides the version and who set it.
fn pin_badge(a: &AgentView) -> String {
    let Some((v, source)) = a.effective_pin() else {
        return String::new();
    };
    format!(
        "<span class=\"badge s-Pinned\" title=\"{v}\">pinned · {}</span><div class=\"muted\">{v}</div>",
        source.title(),
        v = esc(v)
    )
}

/// The agent page's pin line: the deciding pin, and the control plane's when
/// the agent's own config overrides it.
fn pin_line(a: &AgentView) -> String {
    let Some((v, source)) = a.effective_pin() else {
        return String::new();
    };
    let overridden = match (&a.own_pin, &a.pin) {
        (Some(_), Some(cp)) => format!(
            " <span class=\"muted\">(over the control plane's pin to {})</span>",
            esc(cp)
        ),
        _ => String::new(),
    };
    format!(
        "<p id=\"agent-pin\">Pinned to <b>{}</b> (source: {}): not in rollouts{overridden}</p>",
        esc(v),
        source.title()
    )
}

/// Dashboard access: the session cookie (or an admin bearer token); otherwise
/// a redirect to the login form.
pub struct DashAuth;

impl FromRequestParts<AppState> for DashAuth {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if state.has_session(parts) {
            return Ok(DashAuth);
        }
        if let Ok(Some(t)) = bearer(parts)
            && hash_token(t) == state.admin_hash
        {
            return Ok(DashAuth);
        }
        Err(Redirect::to("/login").into_response())
    }
}

fn login_page(error: Option<&str>) -> Html<String> {
    let err = error
        .map(|e| format!("<p class=\"dup\" id=\"login-error\">{}</p>", esc(e)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · Molt control plane</title><style>{CSS}</style></head>\
         <body><header><span>Molt control plane</span></header><main><section style=\"max-width:420px\"><h2>Log in</h2>{err}\
         <form method=\"post\" action=\"/login\"><p><label>Admin token<br><input type=\"password\" name=\"token\" id=\"token\" size=\"44\" autofocus></label></p>\
         <p><button type=\"submit\" id=\"login\">Log in</button></p></form>\
         <p class=\"muted\">The admin token is given with --admin-token, MOLT_ADMIN_TOKEN, or written next to the database at first start.</p></section></main></body></html>"
    ))
}

pub async fn get_login() -> Html<String> {
    login_page(None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn post_login(
    State(state): State<AppState>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            login_page(Some("The form was not understood: enter the admin token.")),
        )
            .into_response();
    };
    if hash_token(f.token.trim()) != state.admin_hash {
        tracing::warn!("dashboard login refused: wrong admin token");
        return (
            StatusCode::UNAUTHORIZED,
            login_page(Some("That is not the admin token.")),
        )
            .into_response();
    }
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        state.session
    );
    let mut r = Redirect::to("/dashboard").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn post_logout() -> Response {
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("molt_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

#[derive(Deserialize, Default)]
pub struct DashQuery {
    msg: Option<String>,
    readiness: Option<String>,
    /// Agents table: page (1-based), sort column, `desc=1`, filters.
    page: Option<usize>,
    sort: Option<String>,
    desc: Option<String>,
    label: Option<String>,
    status: Option<String>,
    version: Option<String>,
}

/// Rows of the agents table per page: with 10,000 agents the page stays small.
const AGENTS_PER_PAGE: usize = 50;
/// Rows of the readiness and issues tables shown (the counts say the rest).
const ROWS_SHOWN: usize = 50;

/// The agents table's query string (page, sort and filters) with changes.
fn agents_href(q: &DashQuery, page: usize, sort: &str, desc: bool) -> String {
    let mut parts = vec![format!("page={page}"), format!("sort={}", enc(sort))];
    if desc {
        parts.push("desc=1".into());
    }
    for (k, v) in [
        ("label", &q.label),
        ("status", &q.status),
        ("version", &q.version),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{k}={}", enc(v)));
        }
    }
    format!("/dashboard?{}#agents", parts.join("&"))
}

fn back(to: &str, msg: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}msg={}", enc(msg))).into_response()
}

fn fail(to: &str, e: ApiError) -> Response {
    back(to, &format!("Failed: {}", e.message))
}

pub async fn index(
    State(state): State<AppState>,
    _: DashAuth,
    Query(q): Query<DashQuery>,
) -> Result<Html<String>, ApiError> {
    let now = state.config.clock.now();
    let fleet = state.fleet_state();
    // One page of agents, filtered and sorted in the store (never the whole list).
    let sort =
        crate::store::AgentSort::parse(q.sort.as_deref().unwrap_or("name")).unwrap_or_default();
    let desc = q.desc.as_deref().is_some_and(|d| d == "1");
    let mut labels = crate::model::Labels::new();
    for kv in q
        .label
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|s| !s.is_empty())
    {
        if let Some((k, v)) = kv.split_once('=') {
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    let query = crate::store::AgentQuery {
        labels,
        status: q
            .status
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(crate::model::AgentStatus::parse),
        version: q.version.clone().filter(|v| !v.is_empty()),
        seen_after: now - crate::clock::chrono_dur(state.config.agent_down_after),
        page: q.page.unwrap_or(1).max(1),
        per_page: AGENTS_PER_PAGE,
    };
    let page_no = query.page;
    let (agents, total) = state
        .db(move |s| s.agents_sorted_page(&query, sort, desc))
        .await?;
    let agents: Vec<AgentView> = agents
        .into_iter()
        .map(|a| AgentView::of(&state, a))
        .collect();
    let versions = state.db(|s| s.version_counts()).await?;
    let issues = state.open_issues().await?;
    let lease = crate::clock::chrono_dur(state.config.lease_timeout);
    let holders = state.db(move |s| s.slot_holders(now, lease)).await?;
    let recent = state.db(|s| s.list_commands(None, 500)).await?;
    let next = q.readiness.clone().filter(|v| !v.is_empty()).or_else(|| {
        recent
            .iter()
            .find(|c| c.kind == CommandKind::RunPrecheck)
            .and_then(|c| c.args.get("version"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    });
    let readiness: Vec<Readiness> = match &next {
        Some(v) => api_admin::readiness_for(&state, v).await?,
        None => Vec::new(),
    };

    let mut b = String::new();
    let target = fleet
        .override_version
        .clone()
        .or(fleet.version.clone())
        .unwrap_or_default();
    let _ = write!(
        b,
        "<section id=\"fleet\"><h2>Fleet</h2><p>Fleet buildstamp: <b id=\"fleet-version\">{}</b> · Override: <b>{}</b> · \
         Upgrade slots: <b id=\"slots\">{} of {}</b> held{}</p>\
         <form class=\"inline\" method=\"post\" action=\"/dashboard/fleet\"><input name=\"version\" size=\"60\" placeholder=\"new fleet buildstamp\"> <button>Set fleet version</button></form></section>",
        esc(fleet.version.as_deref().unwrap_or("(not set)")),
        esc(fleet.override_version.as_deref().unwrap_or("none")),
        holders.len(),
        state.config.max_concurrent_upgrades,
        if holders.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                esc(&holders
                    .iter()
                    .map(|h| h.agent.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
            )
        }
    );

    if let Some(r) = state.db(|s| s.latest_rollout()).await? {
        let v = crate::api_rollout::view(&state, r).await?;
        rollout_section(&mut b, &v);
    }

    version_chart(&mut b, &versions);
    let pages = total.div_ceil(AGENTS_PER_PAGE).max(1);
    let th = |col: &str, title: &str| {
        let next_desc = sort.as_str() == col && !desc;
        let mark = match (sort.as_str() == col, desc) {
            (true, false) => " ▲",
            (true, true) => " ▼",
            _ => "",
        };
        format!(
            "<th><a class=\"sort\" id=\"sort-{col}\" href=\"{}\">{title}{mark}</a></th>",
            esc(&agents_href(&q, 1, col, next_desc))
        )
    };
    let _ = write!(
        b,
        "<section id=\"agents\"><h2>Agents (<span id=\"agents-total\">{total}</span>)</h2>\
         <form class=\"inline\" id=\"agents-filter\" method=\"get\" action=\"/dashboard#agents\">\
         <input type=\"hidden\" name=\"sort\" value=\"{}\">{}\
         <input name=\"label\" placeholder=\"label k=v,k2=v2\" value=\"{}\"> \
         <input name=\"status\" placeholder=\"status\" size=\"10\" value=\"{}\"> \
         <input name=\"version\" placeholder=\"version\" size=\"40\" value=\"{}\"> <button id=\"filter-agents\">Filter</button></form>\
         <p class=\"muted\" id=\"agents-page\">Page {page_no} of {pages}{}{}</p>\
         <table><tr>{}<th>Host</th>{}{}{}<th>Pin</th><th>Actions</th></tr>",
        sort.as_str(),
        if desc {
            "<input type=\"hidden\" name=\"desc\" value=\"1\">"
        } else {
            ""
        },
        esc(q.label.as_deref().unwrap_or("")),
        esc(q.status.as_deref().unwrap_or("")),
        esc(q.version.as_deref().unwrap_or("")),
        if page_no > 1 {
            format!(
                " · <a id=\"agents-prev\" href=\"{}\">previous</a>",
                esc(&agents_href(&q, page_no - 1, sort.as_str(), desc))
            )
        } else {
            String::new()
        },
        if page_no < pages {
            format!(
                " · <a id=\"agents-next\" href=\"{}\">next</a>",
                esc(&agents_href(&q, page_no + 1, sort.as_str(), desc))
            )
        } else {
            String::new()
        },
        th("name", "Name"),
        th("version", "Version"),
        th("status", "Status"),
        th("last_seen", "Last seen"),
    );
    for a in &agents {
        let dup = if a.duplicate {
            " <span class=\"dup\" title=\"two live agents report with this name\">duplicate name</span>"
        } else {
            ""
        };
        let _ = write!(
            b,
            "<tr id=\"agent-{n}\"><td><a href=\"/dashboard/agents/{u}\">{n}</a>{dup}</td><td>{h}</td><td>{v}</td><td>{s}</td><td>{seen}</td><td class=\"pin\">{pin}</td><td>\
             <form class=\"inline\" method=\"post\" action=\"/dashboard/agents/{u}/upgrade\"><input type=\"hidden\" name=\"version\" value=\"{t}\"><button class=\"upgrade\">Upgrade</button></form> \
             <form class=\"inline\" method=\"post\" action=\"/dashboard/agents/{u}/grab-logs\"><button class=\"grab-logs\">Grab logs</button></form></td></tr>",
            n = esc(&a.name),
            u = enc(&a.name),
            h = esc(a.host.as_deref().unwrap_or("")),
            v = esc(a.version.as_deref().unwrap_or("")),
            s = badge(a.status.as_str()),
            seen = ago(a.last_seen, now),
            pin = pin_badge(a),
            t = esc(&target),
        );
    }
    b.push_str("</table></section>");

    let _ = write!(
        b,
        "<section id=\"readiness\"><h2>Fleet readiness{}</h2>\
         <form class=\"inline\" method=\"post\" action=\"/dashboard/readiness\"><input name=\"version\" size=\"60\" placeholder=\"next version\" value=\"{}\"> <button id=\"run-readiness\">Run precheck on every agent</button></form>",
        next.as_deref()
            .map(|v| format!(" for {}", esc(v)))
            .unwrap_or_default(),
        esc(next.as_deref().unwrap_or(""))
    );
    if !readiness.is_empty() {
        let ready = readiness
            .iter()
            .filter(|r| r.readiness == molt_protocol::Readiness::Ready)
            .count();
        let _ = write!(
            b,
            "<p>{ready} of {} agents ready.</p><table><tr><th>Agent</th><th>Readiness</th><th>Message</th></tr>",
            readiness.len()
        );
        // Not Ready first, then Pending / Not Checked; Ready rows only while room is left.
        let mut shown: Vec<&Readiness> = readiness
            .iter()
            .filter(|r| r.readiness != molt_protocol::Readiness::Ready)
            .collect();
        shown.sort_by_key(|r| r.readiness != molt_protocol::Readiness::NotReady);
        shown.extend(
            readiness
                .iter()
                .filter(|r| r.readiness == molt_protocol::Readiness::Ready),
        );
        if readiness.len() > ROWS_SHOWN {
            let _ = write!(
                b,
                "<p class=\"muted\">Showing {ROWS_SHOWN} of {} (not ready first; `molt fleet readiness` lists all).</p>",
                readiness.len()
            );
        }
        for r in shown.into_iter().take(ROWS_SHOWN) {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.agent),
                badge(r.readiness.as_str()),
                esc(r.message.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</section>");

    let _ = write!(
        b,
        "<section id=\"issues\"><h2>Open issues ({})</h2>",
        issues.len()
    );
    if issues.len() > ROWS_SHOWN {
        let _ = write!(
            b,
            "<p class=\"muted\">Showing {ROWS_SHOWN} of {} (`molt fleet issues list --open` lists all).</p>",
            issues.len()
        );
    }
    issues_table(&mut b, &issues[..issues.len().min(ROWS_SHOWN)]);
    b.push_str("</section>");
    Ok(page("Dashboard", q.msg.as_deref(), &b))
}

fn issues_table(b: &mut String, issues: &[crate::model::Issue]) {
    if issues.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
        return;
    }
    b.push_str("<table><tr><th>Agent</th><th>Source</th><th>Code</th><th>Severity</th><th>Description</th><th>State</th><th>Count</th><th>First / last detected</th><th>Actions</th></tr>");
    for i in issues {
        let actions = if i.state == IssueState::Resolved {
            String::new()
        } else {
            let ack = if i.state == IssueState::New {
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"/dashboard/issues/{}/acknowledge\"><button class=\"ack\">Acknowledge</button></form> ",
                    i.id
                )
            } else {
                String::new()
            };
            format!(
                "{ack}<form class=\"inline\" method=\"post\" action=\"/dashboard/issues/{}/resolve\"><button class=\"resolve\">Resolve</button></form>",
                i.id
            )
        };
        let _ = write!(
            b,
            "<tr id=\"issue-{id}\"><td><a href=\"/dashboard/agents/{u}\">{a}</a></td><td>{src}</td><td>{code}</td><td>{sev}</td><td>{d}{rem}</td><td>{st}</td><td>{n}</td><td>{f}<br>{l}</td><td>{actions}</td></tr>",
            id = i.id,
            u = enc(&i.agent),
            a = esc(&i.agent),
            src = esc(&i.source),
            code = esc(&i.code),
            sev = esc(i.severity.as_str()),
            d = esc(&i.description),
            rem = i
                .remediation
                .as_deref()
                .map(|r| format!("<div class=\"muted\">{}</div>", esc(r)))
                .unwrap_or_default(),
            st = badge(i.state.as_str()),
            n = i.count,
            f = ts(Some(i.first_detected)),
            l = ts(Some(i.last_detected)),
        );
    }
    b.push_str("</table>");
}

fn timeline(b: &mut String, a: &Attempt) {
    let result = a
        .result
        .map(|r| badge(r.as_str()))
        .unwrap_or_else(|| badge(StageState::InProgress.as_str()));
    let _ = write!(
        b,
        "<div class=\"attempt\" id=\"attempt-{}\"><p><b>Attempt {}</b>: {} → {} {result} <span class=\"muted\">started {} {}</span></p>",
        a.id,
        a.id,
        esc(&a.from_version),
        esc(&a.to_version),
        ts(Some(a.started_at)),
        a.finished_at
            .map(|f| format!("· finished {}", ts(Some(f))))
            .unwrap_or_default(),
    );
    if let Some(m) = a.message.as_deref().filter(|m| !m.is_empty()) {
        let _ = write!(b, "<p class=\"muted\">{}</p>", esc(m));
    }
    b.push_str("<div class=\"timeline\">");
    for s in &a.stages {
        let _ = write!(
            b,
            "<div class=\"stage\"><b>{}</b>{}<div class=\"muted\">{}{}</div><div>{}</div></div>",
            esc(s.stage.as_str()),
            badge(s.state.as_str()),
            ts(s.started_at),
            if s.state == StageState::InProgress {
                String::new()
            } else {
                format!(" – {}", ts(s.finished_at))
            },
            esc(&s.message),
        );
    }
    b.push_str("</div></div>");
}

pub async fn agent_page(
    State(state): State<AppState>,
    _: DashAuth,
    ApiPath(name): ApiPath<String>,
    Query(q): Query<DashQuery>,
) -> Result<Html<String>, ApiError> {
    let now = state.config.clock.now();
    let n = name.clone();
    let agent = state
        .db(move |s| s.agent_by_name(&n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {name:?} not found")))?;
    let view = AgentView::of(&state, agent);
    let n = name.clone();
    let attempts = state.db(move |s| s.list_attempts(&n, 20)).await?;
    let n = name.clone();
    let issues = state
        .db(move |s| {
            s.list_issues(&IssueFilter {
                agent: Some(n),
                ..Default::default()
            })
        })
        .await?;
    let n = name.clone();
    let commands = state.db(move |s| s.list_commands(Some(&n), 30)).await?;
    let n = name.clone();
    let logs = state.db(move |s| s.list_log_uploads(&n)).await?;

    let mut b = String::new();
    let _ = write!(
        b,
        "<section id=\"agent\"><h2>{n}{dup}</h2><p>Host <b>{h}</b> · PID {pid} · Version <b>{v}</b> · Status {s} · Last seen {seen}</p>{pin}\
         <form class=\"inline\" method=\"post\" action=\"/dashboard/agents/{u}/upgrade\"><button class=\"upgrade\">Upgrade</button></form> \
         <form class=\"inline\" method=\"post\" action=\"/dashboard/agents/{u}/grab-logs\"><button class=\"grab-logs\">Grab logs</button></form> \
         <form class=\"inline\" method=\"post\" action=\"/dashboard/agents/{u}/restart\"><button class=\"restart\">Restart</button></form></section>",
        n = esc(&view.name),
        dup = if view.duplicate {
            " <span class=\"dup\">duplicate name</span>"
        } else {
            ""
        },
        h = esc(view.host.as_deref().unwrap_or("")),
        pid = view.pid.map(|p| p.to_string()).unwrap_or_default(),
        v = esc(view.version.as_deref().unwrap_or("")),
        s = badge(view.status.as_str()),
        seen = ago(view.last_seen, now),
        pin = pin_line(&view),
        u = enc(&view.name),
    );
    b.push_str("<section id=\"history\"><h2>Upgrade history</h2>");
    if attempts.is_empty() {
        b.push_str("<p class=\"muted\">No upgrade attempts.</p>");
    }
    for a in &attempts {
        timeline(&mut b, a);
    }
    b.push_str("</section><section id=\"agent-issues\"><h2>Issues</h2>");
    issues_table(&mut b, &issues);
    b.push_str("</section><section id=\"commands\"><h2>Commands</h2><table><tr><th>Id</th><th>Kind</th><th>Args</th><th>State</th><th>Queued</th><th>Message</th></tr>");
    for c in &commands {
        let waiting = if c.state == crate::model::CommandState::Queued
            && view.status == crate::model::AgentStatus::Down
        {
            " <span class=\"muted\">(waits until the agent is Up)</span>"
        } else {
            ""
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}{waiting}</td><td>{}</td><td>{}</td></tr>",
            c.id,
            esc(c.kind.as_str()),
            esc(&c.args.to_string()),
            badge(c.state.as_str()),
            ts(Some(c.created_at)),
            esc(c.message.as_deref().unwrap_or("")),
        );
    }
    b.push_str("</table></section><section id=\"logs\"><h2>Uploaded logs</h2>");
    if logs.is_empty() {
        b.push_str("<p class=\"muted\">None yet: use Grab logs.</p>");
    } else {
        b.push_str("<ul>");
        for l in &logs {
            let _ = write!(
                b,
                "<li><a href=\"/dashboard/logs/{}\">{}</a> ({} bytes)</li>",
                l.id,
                ts(Some(l.uploaded_at)),
                l.size
            );
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
    Ok(page(&name, q.msg.as_deref(), &b))
}

pub async fn log_page(
    State(state): State<AppState>,
    _: DashAuth,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    api_admin::log_text(&state, id).await
}

#[derive(Deserialize, Default)]
pub struct VersionForm {
    #[serde(default)]
    version: String,
}

/// The form's version, trimmed (empty when the form was not understood).
fn form_version(form: Result<Form<VersionForm>, FormRejection>) -> String {
    form.map(|Form(f)| f.version.trim().to_string())
        .unwrap_or_default()
}

pub async fn action_upgrade(
    State(state): State<AppState>,
    _: DashAuth,
    ApiPath(name): ApiPath<String>,
    form: Result<Form<VersionForm>, FormRejection>,
) -> Response {
    let v = form_version(form);
    let args = if v.is_empty() {
        json!({})
    } else {
        json!({ "version": v })
    };
    let to = format!("/dashboard/agents/{}", enc(&name));
    match api_admin::queue_command(&state, &name, CommandKind::Upgrade, args).await {
        Ok(id) => back(
            "/dashboard",
            &format!("Upgrade queued for {name} (command {id})."),
        ),
        Err(e) => fail(&to, e),
    }
}

/// Queue a command without arguments; the notice names it by its title.
async fn simple_action(state: &AppState, name: &str, kind: CommandKind) -> Response {
    let what = kind.title();
    match api_admin::queue_command(state, name, kind, json!({})).await {
        Ok(id) => back(
            &format!("/dashboard/agents/{}", enc(name)),
            &format!("{what} queued for {name} (command {id})."),
        ),
        Err(e) => fail("/dashboard", e),
    }
}

pub async fn action_grab_logs(
    State(state): State<AppState>,
    _: DashAuth,
    ApiPath(name): ApiPath<String>,
) -> Response {
    simple_action(&state, &name, CommandKind::GrabLogs).await
}

pub async fn action_restart(
    State(state): State<AppState>,
    _: DashAuth,
    ApiPath(name): ApiPath<String>,
) -> Response {
    simple_action(&state, &name, CommandKind::Restart).await
}

/// Moves an issue to `to`; the notice says what was `done`.
async fn issue_action(state: &AppState, id: i64, to: IssueState, done: &str) -> Response {
    match api_admin::set_issue(state, id, to).await {
        Ok(i) => back(
            "/dashboard",
            &format!("Issue {} ({}) {done}.", i.id, i.code),
        ),
        Err(e) => fail("/dashboard", e),
    }
}

pub async fn action_ack(
    State(state): State<AppState>,
    _: DashAuth,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    issue_action(&state, id, IssueState::Acknowledged, "acknowledged").await
}

pub async fn action_resolve(
    State(state): State<AppState>,
    _: DashAuth,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    issue_action(&state, id, IssueState::Resolved, "resolved").await
}

pub async fn action_readiness(
    State(state): State<AppState>,
    _: DashAuth,
    form: Result<Form<VersionForm>, FormRejection>,
) -> Response {
    let v = form_version(form);
    match api_admin::start_readiness(&state, &v).await {
        Ok(n) => back(
            &format!("/dashboard?readiness={}", enc(&v)),
            &format!("Precheck of {v} queued for {n} agents."),
        ),
        Err(e) => fail("/dashboard", e),
    }
}

pub async fn action_fleet(
    State(state): State<AppState>,
    _: DashAuth,
    form: Result<Form<VersionForm>, FormRejection>,
) -> Response {
    let v = form_version(form);
    match api_admin::apply_fleet_version(&state, &v).await {
        Ok(n) => back(
            "/dashboard",
            &format!("Fleet buildstamp set to {v}; autoUpgrade queued for {n} agents."),
        ),
        Err(e) => fail("/dashboard", e),
    }
}

/// The newest rollout: state, halt reason, per-group progress bars.
/// The version distribution as horizontal bars (agents per version, most first).
fn version_chart(b: &mut String, versions: &[(Option<String>, usize)]) {
    let total: usize = versions.iter().map(|(_, n)| n).sum();
    b.push_str("<section id=\"versions\"><h2>Versions</h2>");
    if total == 0 {
        b.push_str("<p class=\"muted\">No agents.</p></section>");
        return;
    }
    b.push_str("<table class=\"chart\">");
    for (v, n) in versions.iter().take(20) {
        let pct = *n as f64 * 100.0 / total as f64;
        let _ = write!(
            b,
            "<tr class=\"version-bar\"><td>{}</td><td style=\"width:60%\"><div style=\"background:#3b6fd4;height:14px;width:{pct:.1}%\"></div></td><td>{n} ({pct:.1}%)</td></tr>",
            esc(v.as_deref().unwrap_or("(not reported)"))
        );
    }
    b.push_str("</table></section>");
}

fn rollout_section(b: &mut String, v: &crate::api_rollout::RolloutView) {
    let r = &v.rollout;
    let _ = write!(
        b,
        "<section id=\"rollout\"><h2>Rollout {} of {}</h2><p>State: <b id=\"rollout-state\">{}</b>{}</p>",
        r.id,
        esc(&r.version),
        esc(r.state.as_str()),
        if v.blocklisted {
            " · <span class=\"dup\" id=\"rollout-blocklisted\">version blocklisted</span>"
        } else {
            ""
        }
    );
    if let Some(reason) = &r.reason {
        let _ = write!(
            b,
            "<p class=\"dup\" id=\"rollout-reason\">{}</p>",
            esc(reason)
        );
    }
    if let Some(w) = &v.waiting {
        let _ = write!(b, "<p id=\"rollout-waiting\">{}</p>", esc(w));
    }
    if let Some(n) = v.semaphore_limit {
        let _ = write!(
            b,
            "<p class=\"muted\">Max in flight (upgrade semaphore): <b id=\"rollout-max-in-flight\">{n}</b></p>"
        );
    }
    let _ = write!(
        b,
        "<table><tr><th>Group</th><th>Agents</th><th>Done</th><th>In flight</th><th>Failed</th><th>Waiting</th><th>Pinned, not in rollout</th><th>Progress</th></tr>"
    );
    for g in &v.group_progress {
        let _ = write!(
            b,
            "<tr class=\"rollout-group\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"pinned\">{}</td>\
             <td><progress value=\"{}\" max=\"{}\"></progress></td></tr>",
            esc(&g.spec.name),
            g.agents,
            g.done,
            g.in_flight,
            g.failed,
            g.waiting,
            g.pinned,
            g.done,
            g.agents.max(1)
        );
    }
    b.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_user_data_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
