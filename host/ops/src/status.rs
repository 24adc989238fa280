//! `molt status`: what is installed, what is assigned, whether the agent runs,
//! the last upgrade attempt with its stages, and open issues. Built from local
//! state first (installed meta, status file, journal, logs, report queue), so it
//! answers when the control plane is down; the control plane adds the assigned
//! version and, with an admin token, its issues and upgrade history.
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use molt_layout::Home;
use molt_protocol::{AgentStatus, AttemptResult, Stage, StageReport, StageState};
use regex::Regex;
use serde::Serialize;

use crate::cp::{self, ConfigView};
use crate::inputs::{Evidence, Line};

/// How `molt status` asks the control plane.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// Admin token: adds the control plane's open issues and upgrade history.
    pub admin_token: Option<String>,
    pub timeout: Duration,
    /// Do not contact the control plane at all.
    pub offline: bool,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self {
            admin_token: None,
            timeout: Duration::from_secs(3),
            offline: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageView {
    pub kind: String,
    pub name: String,
    pub version: String,
    pub files: usize,
}

/// One stage event of an upgrade attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageEvent {
    pub stage: Stage,
    pub state: StageState,
    pub message: String,
    pub at: Option<DateTime<Utc>>,
}

impl StageEvent {
    /// An event from the words a log line or a record carries; `None` when
    /// they are not a stage and a state of `molt-protocol`.
    fn parse(stage: &str, state: &str, message: String, at: Option<DateTime<Utc>>) -> Option<Self> {
        Some(StageEvent {
            stage: stage.trim().parse().ok()?,
            state: state.trim().parse().ok()?,
            message,
            at,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AttemptView {
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// None while running / unknown.
    pub result: Option<AttemptResult>,
    pub message: Option<String>,
    pub stages: Vec<StageEvent>,
    /// `local` (logs, queue, last-deploy) or `control plane`.
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssueView {
    pub source: String,
    pub code: String,
    pub severity: String,
    pub description: String,
    /// `control plane` or `local (not yet delivered)`.
    pub from: String,
}

impl IssueView {
    /// An issue from its JSON (a queued finding or the admin API's issue).
    fn from_json(v: &serde_json::Value, source: String, from: &str) -> IssueView {
        let text = |k: &str, default: &str| v[k].as_str().unwrap_or(default).to_string();
        IssueView {
            source,
            code: text("code", "?"),
            severity: text("severity", "?"),
            description: text("description", ""),
            from: from.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployInProgress {
    pub from_version: String,
    pub to_version: String,
    pub step: String,
    pub runner_alive: bool,
}

pub use molt_layout::Held as HeldView;

/// The agent's hold after rollback, while it lasts.
fn held_after_rollback(home: &Home) -> Option<HeldView> {
    let rec: molt_layout::HeldRecord =
        molt_layout::read_json_opt(&home.held_after_rollback_file()).ok()??;
    let h = rec.held?;
    (h.until > Utc::now()).then_some(h)
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub home: PathBuf,
    pub agent_name: Option<String>,
    pub current_version: Option<String>,
    pub installed: Vec<PackageView>,
    /// What the agent last wrote (Up, Upgrading, Upgrade Failed ...).
    pub reported_status: Option<AgentStatus>,
    pub reported_since: Option<DateTime<Utc>>,
    pub agent_pid: Option<u32>,
    pub agent_running: bool,
    /// Reported status corrected by whether the process lives: `Down` when it is gone.
    pub status: String,
    pub deploy_in_progress: Option<DeployInProgress>,
    pub assigned_version: Option<String>,
    pub assigned_source: Option<String>,
    pub assigned_packages: Vec<String>,
    pub pinned_version: Option<String>,
    pub control_plane: String,
    pub control_plane_reachable: bool,
    pub last_attempt: Option<AttemptView>,
    /// A version this agent rolled back and will not attempt again before
    /// `until` (`state/held-after-rollback.json`, written by the agent).
    pub held_after_rollback: Option<HeldView>,
    pub issues: Vec<IssueView>,
    pub queued_reports: usize,
    pub notes: Vec<String>,
}

/// `A|B|C`: the words of one protocol vocabulary as a regex alternation.
pub(crate) fn alternation(words: impl IntoIterator<Item = &'static str>) -> String {
    words
        .into_iter()
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join("|")
}

static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))")
        .expect("static regex")
});
static RUN_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Upgrade runner started \(pid \d+\): (\S+) -> (\S+)").expect("static regex")
});
static RUN_END: LazyLock<Regex> = LazyLock::new(|| {
    let results = alternation(AttemptResult::ALL.iter().map(|r| r.as_str()));
    Regex::new(&format!(r"Upgrade ({results}): (.*)$")).expect("static regex")
});

fn ts(l: &Line) -> Option<DateTime<Utc>> {
    TIMESTAMP
        .captures(&l.text)
        .and_then(|c| DateTime::parse_from_rfc3339(&c[1]).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The stage event that opens an attempt: the agent always reports Pre Upgrade
/// Check first, In Progress or Skipped.
fn opens_attempt(e: &StageEvent) -> bool {
    e.stage == Stage::PreUpgradeCheck
        && (e.state == StageState::InProgress || e.state == StageState::Skipped)
}

/// The last attempt as far as local files tell.
pub fn local_attempt(ev: &Evidence) -> Option<AttemptView> {
    // (time, order, event) from every log line that records a stage.
    let mut events: Vec<(Option<DateTime<Utc>>, usize, StageEvent)> = Vec::new();
    let mut order = 0;
    let mut runs: Vec<(Option<DateTime<Utc>>, String, String)> = Vec::new();
    let mut ends: Vec<(Option<DateTime<Utc>>, String, String)> = Vec::new();
    for l in ev.agent.iter().chain(ev.upgrade.iter()) {
        order += 1;
        let at = ts(l);
        if let Some((stage, state, message)) = molt_protocol::parse_stage_line(&l.text) {
            let e = StageEvent {
                stage,
                state,
                message,
                at,
            };
            events.push((at, order, e));
        } else if let Some(c) = RUN_START.captures(&l.text) {
            runs.push((at, c[1].to_string(), c[2].to_string()));
        } else if let Some(c) = RUN_END.captures(&l.text) {
            ends.push((at, c[1].to_string(), c[2].to_string()));
        }
    }
    // Stage reports still in the queue (the control plane was unreachable).
    for q in &ev.queued {
        if q.path.ends_with("/stages") {
            let Ok(b) = serde_json::from_value::<StageReport>(q.body.clone()) else {
                continue;
            };
            order += 1;
            let e = StageEvent {
                stage: b.stage,
                state: b.state,
                message: b.message,
                at: b.at,
            };
            if !events
                .iter()
                .any(|(_, _, x)| x.stage == e.stage && x.state == e.state && x.message == e.message)
            {
                events.push((e.at, order, e));
            }
        }
    }
    // Lines without a timestamp keep their file order after timestamped ones.
    events.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => x.cmp(&y).then(a.1.cmp(&b.1)),
        _ => a.1.cmp(&b.1),
    });
    let start = events.iter().rposition(|(_, _, e)| opens_attempt(e));
    let mut view = AttemptView {
        source: "local".into(),
        ..AttemptView::default()
    };
    let since = start.and_then(|i| events[i].0);
    if let Some(i) = start {
        view.stages = events[i..].iter().map(|(_, _, e)| e.clone()).collect();
    } else if !events.is_empty() {
        view.stages = events.iter().map(|(_, _, e)| e.clone()).collect();
    }
    let after = |t: &Option<DateTime<Utc>>| match (since, t) {
        (Some(s), Some(t)) => *t >= s,
        _ => true,
    };
    if let Some((_, from, to)) = runs.iter().rev().find(|r| after(&r.0)) {
        view.from_version = Some(from.clone());
        view.to_version = Some(to.clone());
    }
    if let Some((_, result, msg)) = ends.iter().rev().find(|r| after(&r.0)) {
        view.result = result.parse().ok();
        view.message = Some(msg.clone());
    }
    if let Some(l) = &ev.last_deploy
        && since.is_none_or(|s| l.at >= s)
    {
        view.from_version = Some(l.from_version.clone());
        view.to_version = Some(l.to_version.clone());
        view.result = Some(l.result);
        view.message = Some(l.message.clone());
    }
    if view.result.is_none()
        && let Some(f) = view
            .stages
            .iter()
            .rev()
            .find(|e| e.state == StageState::Failed)
    {
        view.result = Some(AttemptResult::Failed);
        view.message = Some(format!("{}: {}", f.stage, f.message));
    }
    if view.stages.is_empty() && view.result.is_none() && view.to_version.is_none() {
        return None;
    }
    Some(view)
}

/// Gather the status of `home`.
pub fn status(home: &Home, opts: &StatusOptions) -> StatusReport {
    let mut notes = Vec::new();
    let cfg = match ConfigView::load(home.root()) {
        Ok(c) => Some(c),
        Err(e) => {
            notes.push(format!("config: {e}"));
            None
        }
    };
    let current_version = match home.current_version() {
        Ok(v) => v,
        Err(e) => {
            notes.push(e.to_string());
            None
        }
    };
    let installed = match home.installed() {
        Ok(p) => p
            .iter()
            .map(|p| PackageView {
                kind: p.kind.clone(),
                name: p.name.clone(),
                version: p.version.clone(),
                files: p.files.len(),
            })
            .collect(),
        Err(e) => {
            notes.push(e.to_string());
            Vec::new()
        }
    };
    let ev = Evidence::gather(home, &[]);
    notes.extend(ev.unreadable.iter().cloned());
    let (reported_status, reported_since, agent_pid) = match &ev.status {
        Some(s) => (Some(s.status), Some(s.since), Some(s.pid)),
        None => (None, None, None),
    };
    let agent_running = agent_pid.is_some_and(molt_deploy::proc::alive);
    let deploy_in_progress = ev.journal.as_ref().map(|j| DeployInProgress {
        from_version: j.from_version.clone(),
        to_version: j.to_version.clone(),
        step: format!("{:?}", j.step),
        runner_alive: molt_deploy::proc::alive(j.runner_pid),
    });
    let status_word = match (&reported_status, agent_running, &deploy_in_progress) {
        (_, _, Some(d)) if d.runner_alive || ev.deploy_lock_held => {
            "Upgrading (deploy runner at work)".to_string()
        }
        (Some(s), true, _) => s.to_string(),
        (Some(s), false, _) => format!("Down (last reported {s}; its process is gone)"),
        (None, _, _) => "Down (no status written)".to_string(),
    };
    let mut report = StatusReport {
        home: home.root().to_path_buf(),
        agent_name: cfg.as_ref().and_then(|c| c.agent_name.clone()),
        current_version,
        installed,
        reported_status,
        reported_since,
        agent_pid,
        agent_running,
        status: status_word,
        deploy_in_progress,
        assigned_version: None,
        assigned_source: None,
        assigned_packages: Vec::new(),
        pinned_version: cfg.as_ref().and_then(|c| c.pinned_version.clone()),
        control_plane: String::new(),
        control_plane_reachable: false,
        last_attempt: local_attempt(&ev),
        held_after_rollback: held_after_rollback(home),
        issues: local_issues(&ev),
        queued_reports: ev.queued.len(),
        notes,
    };
    ask_control_plane(home, cfg.as_ref(), opts, &mut report);
    report
}

/// Findings reported by this agent that are still waiting in the queue.
fn local_issues(ev: &Evidence) -> Vec<IssueView> {
    let mut out = Vec::new();
    for q in ev.queued.iter().filter(|q| q.path.ends_with("/issues")) {
        let src = q.body["source"].as_str().unwrap_or("?").to_string();
        // Each report replaces the previous one of its source.
        out.retain(|i: &IssueView| i.source != src);
        for f in q.body["findings"].as_array().into_iter().flatten() {
            out.push(IssueView::from_json(
                f,
                src.clone(),
                "local (not yet delivered)",
            ));
        }
    }
    out
}

fn ask_control_plane(
    home: &Home,
    cfg: Option<&ConfigView>,
    opts: &StatusOptions,
    r: &mut StatusReport,
) {
    let Some(cfg) = cfg else {
        r.control_plane = "unknown (no readable config.toml): showing local state".into();
        return;
    };
    let Some(base) = cfg.control_plane_url.clone() else {
        r.control_plane = "not configured: showing local state".into();
        return;
    };
    if opts.offline {
        r.control_plane = format!("{base} (not asked: --offline): showing local state");
        return;
    }
    let Some(token) = cfg.token(home.root()) else {
        r.control_plane = format!("{base}: no agent token in config.toml: showing local state");
        return;
    };
    let runtime = r
        .installed
        .iter()
        .find(|p| p.kind == "runtime")
        .map(|p| p.version.clone())
        .unwrap_or_default();
    let mut q = format!(
        "/api/v1/agent/assigned?os={}&arch={}&runtime={}",
        cp::host_os(),
        cp::host_arch(),
        runtime
    );
    if let Some(p) = &cfg.pinned_version {
        q.push_str(&format!("&pinned={p}"));
    }
    match cp::get_json(&base, &q, &token, opts.timeout) {
        Ok(v) => {
            r.control_plane_reachable = true;
            r.control_plane = base.clone();
            r.assigned_version = v["version"].as_str().map(str::to_string);
            r.assigned_source = v["source"].as_str().map(str::to_string);
            r.assigned_packages = v["packages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
        }
        Err(e) => {
            r.control_plane = format!("control plane unreachable: showing local state ({e})");
            return;
        }
    }
    let (Some(admin), Some(name)) = (&opts.admin_token, &r.agent_name) else {
        return;
    };
    match cp::get_json(
        &base,
        &format!("/api/v1/admin/issues?agent={name}&open=true"),
        admin,
        opts.timeout,
    ) {
        Ok(v) => {
            r.issues.retain(|i| i.from != "control plane");
            for i in v.as_array().into_iter().flatten() {
                let source = i["source"].as_str().unwrap_or("?").to_string();
                r.issues
                    .push(IssueView::from_json(i, source, "control plane"));
            }
        }
        Err(e) => r.notes.push(format!("issues: {e}")),
    }
    match cp::get_json(
        &base,
        &format!("/api/v1/admin/agents/{name}/attempts"),
        admin,
        opts.timeout,
    ) {
        Ok(v) => {
            let arr = v.as_array().cloned().unwrap_or_default();
            // Newest first or last: take the one with the latest start.
            let newest = arr
                .iter()
                .max_by_key(|a| a["started_at"].as_str().unwrap_or("").to_string());
            if let Some(a) = newest {
                let s = |v: &serde_json::Value| {
                    v.as_str()
                        .map(str::to_string)
                        .or_else(|| (!v.is_null()).then(|| v.to_string()))
                };
                r.last_attempt = Some(AttemptView {
                    from_version: s(&a["from_version"]),
                    to_version: s(&a["to_version"]),
                    result: a["result"].as_str().and_then(|r| r.parse().ok()),
                    message: s(&a["message"]),
                    stages: a["stages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|st| {
                            let at = st["updated_at"]
                                .as_str()
                                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                                .map(|t| t.with_timezone(&Utc));
                            StageEvent::parse(
                                st["stage"].as_str()?,
                                st["state"].as_str()?,
                                s(&st["message"]).unwrap_or_default(),
                                at,
                            )
                        })
                        .collect(),
                    source: "control plane".into(),
                });
            }
        }
        Err(e) => r.notes.push(format!("upgrade history: {e}")),
    }
}

impl StatusReport {
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let name = self.agent_name.as_deref().unwrap_or("(unnamed)");
        s.push_str(&format!("Agent {name} at {}\n", self.home.display()));
        s.push_str(&format!("  Status:     {}", self.status));
        if let (Some(pid), Some(since)) = (self.agent_pid, self.reported_since) {
            s.push_str(&format!(
                " (pid {pid}, since {})",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        s.push('\n');
        s.push_str(&format!(
            "  Installed:  {}\n",
            self.current_version
                .as_deref()
                .unwrap_or("nothing (no current version)")
        ));
        for p in &self.installed {
            s.push_str(&format!(
                "    {:<8} {} ({} files)\n",
                p.kind, p.name, p.files
            ));
        }
        match (&self.assigned_version, self.control_plane_reachable) {
            (Some(a), true) => {
                let same = self.current_version.as_deref() == Some(a.as_str());
                s.push_str(&format!(
                    "  Assigned:   {a} (source {}){}\n",
                    self.assigned_source.as_deref().unwrap_or("?"),
                    if same {
                        ", up to date"
                    } else {
                        ", differs from installed"
                    }
                ));
            }
            _ => s.push_str("  Assigned:   unknown\n"),
        }
        if let Some(p) = &self.pinned_version {
            s.push_str(&format!("  Pinned:     {p}\n"));
        }
        s.push_str(&format!("  Control plane: {}\n", self.control_plane));
        if let Some(d) = &self.deploy_in_progress {
            s.push_str(&format!(
                "  Deploy in progress: {} -> {} at step {} (runner {})\n",
                d.from_version,
                d.to_version,
                d.step,
                if d.runner_alive {
                    "running"
                } else {
                    "gone: run `molt diagnose`"
                }
            ));
        }
        match &self.last_attempt {
            None => s.push_str("  Last upgrade attempt: none recorded\n"),
            Some(a) => {
                s.push_str(&format!(
                    "  Last upgrade attempt ({}): {} -> {}: {}\n",
                    a.source,
                    a.from_version.as_deref().unwrap_or("?"),
                    a.to_version.as_deref().unwrap_or("?"),
                    a.result.map_or("in progress or unknown", |r| r.as_str())
                ));
                for st in &a.stages {
                    let msg = if st.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", st.message)
                    };
                    s.push_str(&format!("    {:<26} {}{msg}\n", st.stage, st.state));
                }
                if let Some(m) = &a.message {
                    s.push_str(&format!("    result: {m}\n"));
                }
            }
        }
        if let Some(h) = &self.held_after_rollback {
            s.push_str(&format!(
                "  Held after rollback: {} until {} ({} rollback(s) in a row; the `upgrade` command or `molt upgrade now` retries now)\n",
                h.version,
                h.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                h.rollbacks
            ));
        }
        if self.issues.is_empty() {
            s.push_str("  Open issues: none known\n");
        } else {
            s.push_str(&format!("  Open issues ({}):\n", self.issues.len()));
            for i in &self.issues {
                s.push_str(&format!(
                    "    [{}] {} ({}, {}): {}\n",
                    i.severity, i.code, i.source, i.from, i.description
                ));
            }
        }
        if self.queued_reports > 0 {
            s.push_str(&format!(
                "  Reports waiting for the control plane: {}\n",
                self.queued_reports
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("  Note: {n}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_attempt_is_rebuilt_from_agent_and_runner_lines() {
        let d = tempfile::tempdir().unwrap();
        let h = Home::new(d.path());
        std::fs::create_dir_all(h.logs_dir()).unwrap();
        let log = "\
2026-11-22T10:00:00.000Z  INFO Upgrade History stage Pre Upgrade Check: In Progress stage=\"Pre Upgrade Check\" state=\"In Progress\"
2026-11-22T10:00:01.000Z  INFO Upgrade History stage Pre Upgrade Check: Failed (blocked) stage=\"Pre Upgrade Check\" state=\"Failed\"
2026-11-22T11:00:00.000Z  INFO Upgrade History stage Pre Upgrade Check: In Progress stage=\"Pre Upgrade Check\" state=\"In Progress\"
2026-11-22T11:00:01.000Z  INFO Upgrade History stage Pre Upgrade Check: Complete (0 finding(s), 0 warning(s)) stage=\"Pre Upgrade Check\" state=\"Complete\"
2026-11-22T11:00:02.000Z  INFO Upgrade History stage Download Upgrade Packages: In Progress (molt-core.v2.universal.universal.zip) stage=\"Download Upgrade Packages\" state=\"In Progress\"
<< UPGRADE LOG BEGIN >>
2026-11-22T11:00:05.000Z Upgrade runner started (pid 42): v1 -> v2
2026-11-22T11:00:09.000Z Upgrade Complete: version v2 is Up (pid 43)
<< UPGRADE LOG END >>
";
        std::fs::write(h.agent_log(), log).unwrap();
        std::fs::write(
            h.deploy_resume_log(),
            "2026-11-22T11:00:06.000Z  INFO Upgrade History stage Deploy Binary Files: Complete (versions/v2: 1 files linked) stage=\"Deploy Binary Files\" state=\"Complete\"\n",
        )
        .unwrap();
        let a = local_attempt(&Evidence::gather(&h, &[])).unwrap();
        let st: Vec<(&str, &str)> = a
            .stages
            .iter()
            .map(|e| (e.stage.as_str(), e.state.as_str()))
            .collect();
        assert_eq!(
            st,
            [
                ("Pre Upgrade Check", "In Progress"),
                ("Pre Upgrade Check", "Complete"),
                ("Download Upgrade Packages", "In Progress"),
                ("Deploy Binary Files", "Complete")
            ]
        );
        assert_eq!(a.stages[1].message, "0 finding(s), 0 warning(s)");
        assert_eq!(a.stages[3].message, "versions/v2: 1 files linked");
        assert_eq!(
            (
                a.from_version.as_deref(),
                a.to_version.as_deref(),
                a.result.map(|r| r.as_str())
            ),
            (Some("v1"), Some("v2"), Some("Complete"))
        );
    }

    /// `molt status` of `h` after the agent `pid` wrote that v1 is Up.
    fn status_after_up(h: &Home, pid: u32, opts: StatusOptions) -> StatusReport {
        h.write_status(&molt_layout::AgentStatus {
            pid,
            version: "v1".into(),
            status: AgentStatus::Up,
            since: Utc::now(),
        })
        .unwrap();
        status(h, &opts)
    }

    #[test]
    fn an_unreachable_control_plane_still_shows_local_state() {
        let d = tempfile::tempdir().unwrap();
        let h = Home::new(d.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(h.config_file(), format!("control_plane_url = \"http://127.0.0.1:{port}\"\nagent_name = \"a1\"\ntoken = \"t\"\n")).unwrap();
        std::fs::create_dir_all(h.version_dir("v1").join("meta")).unwrap();
        std::os::unix::fs::symlink("versions/v1", h.current_link()).unwrap();
        let r = status_after_up(
            &h,
            std::process::id(),
            StatusOptions {
                timeout: Duration::from_millis(500),
                ..Default::default()
            },
        );
        assert_eq!(r.status, "Up");
        assert_eq!(r.current_version.as_deref(), Some("v1"));
        assert!(!r.control_plane_reachable);
        assert!(
            r.control_plane
                .starts_with("control plane unreachable: showing local state"),
            "{}",
            r.control_plane
        );
        assert!(r.render_text().contains("Assigned:   unknown"));
    }

    #[test]
    fn a_dead_agent_process_is_shown_down() {
        let d = tempfile::tempdir().unwrap();
        let h = Home::new(d.path());
        let r = status_after_up(
            &h,
            999_999_997,
            StatusOptions {
                offline: true,
                ..Default::default()
            },
        );
        assert!(
            r.status.starts_with("Down (last reported Up"),
            "{}",
            r.status
        );
    }
}
