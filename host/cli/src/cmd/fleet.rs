//! `molt fleet`: the control plane's operator commands over its admin API
//! (rollouts, the blocklist, fleet status). The admin token comes from
//! `MOLT_ADMIN_TOKEN` or `--token-file`; `--json` prints the API's answer.
//! Exit codes: 0 done, 1 the control plane refused (or could not be reached),
//! 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use molt_protocol::RolloutState;
use serde_json::{Value, json};

#[derive(Args)]
pub struct FleetArgs {
    /// The control plane's URL.
    #[arg(
        long,
        env = "MOLT_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:8440"
    )]
    url: String,
    /// File holding the admin token (default: the `MOLT_ADMIN_TOKEN` environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM bundle of a private CA that signed the control plane's certificate.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: FleetCmd,
}

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Fleet version, the newest rollout and the blocklist.
    Status,
    /// Agents, filtered and paginated by the control plane.
    Agents {
        /// `NAME=VALUE`: only agents carrying this label (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only agents with this status (Up, Upgrading, Paused, Down, "Upgrade Failed").
        #[arg(long)]
        status: Option<String>,
        /// Only agents running this version.
        #[arg(long = "on-version", value_name = "VERSION")]
        on_version: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: usize,
        #[arg(long, default_value_t = 50)]
        per_page: usize,
    },
    /// Staged rollouts of a version.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Versions offered to no agent (halted or aborted rollouts).
    #[command(subcommand)]
    Blocklist(BlocklistCmd),
    /// Set the fleet buildstamp (queues autoUpgrade for every agent; refused
    /// while a rollout is open).
    SetVersion {
        #[arg(value_name = "VERSION")]
        target: String,
    },
    /// Pin every agent to a version (`--clear` removes the pin).
    Override {
        #[arg(value_name = "VERSION", required_unless_present = "clear")]
        target: Option<String>,
        #[arg(long, conflicts_with = "target")]
        clear: bool,
    },
    /// Pin one agent to a version from the control plane (`--clear` removes
    /// the pin; an agent's own `pinned_version` still wins).
    Pin {
        #[arg(value_name = "AGENT")]
        agent: String,
        #[arg(value_name = "VERSION", required_unless_present = "clear")]
        target: Option<String>,
        #[arg(long, conflicts_with = "target")]
        clear: bool,
    },
    /// Issues the agents reported.
    #[command(subcommand)]
    Issues(IssuesCmd),
    /// Every agent's readiness for a version (`--run` queues runPrecheck first).
    Readiness {
        #[arg(value_name = "VERSION")]
        target: String,
        #[arg(long)]
        run: bool,
    },
}

#[derive(Subcommand)]
pub enum IssuesCmd {
    List {
        #[arg(long)]
        agent: Option<String>,
        /// New, Acknowledged or Resolved.
        #[arg(long)]
        state: Option<String>,
        /// Only issues not Resolved.
        #[arg(long)]
        open: bool,
    },
    /// Acknowledge an issue.
    Ack { id: i64 },
    /// Resolve an issue.
    Resolve { id: i64 },
}

/// The fleet's version settings (`set-version`, `override`).
#[derive(serde::Serialize, serde::Deserialize)]
struct FleetOut {
    version: Option<String>,
    #[serde(rename = "override")]
    override_version: Option<String>,
    /// `set-version`: agents sent autoUpgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto_upgrade_queued: Option<u64>,
}

/// `pin`: the agent and its control-plane pin after the change.
#[derive(serde::Serialize, serde::Deserialize)]
struct PinOut {
    name: String,
    pin: Option<String>,
}

/// One issue as the API answers it.
#[derive(serde::Serialize, serde::Deserialize)]
struct IssueOut {
    id: i64,
    agent: String,
    source: String,
    code: String,
    severity: String,
    description: String,
    remediation: Option<String>,
    state: String,
    count: i64,
    first_detected: String,
    last_detected: String,
    resolved_at: Option<String>,
}

/// One agent's readiness for a version.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReadinessRow {
    agent: String,
    readiness: molt_protocol::Readiness,
    message: Option<String>,
    command_id: Option<i64>,
}

/// `molt fleet readiness`: the counts and every agent's row.
#[derive(serde::Serialize)]
struct ReadinessOut {
    version: String,
    /// runPrecheck queued for this many agents (with `--run`).
    queued: Option<u64>,
    ready: usize,
    not_ready: usize,
    pending: usize,
    not_checked: usize,
    agents: Vec<ReadinessRow>,
}

/// A typed answer of the API, or why it did not parse.
fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Fail> {
    serde_json::from_value(v)
        .map_err(|e| Fail::Api(format!("unexpected answer from the control plane: {e}")))
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Create a rollout: `--spec FILE` (the API's JSON body) or VERSION with `--group`s.
    Create {
        /// The target version (overrides the spec's).
        #[arg(value_name = "VERSION")]
        target: Option<String>,
        /// JSON body of `POST /api/v1/admin/rollouts` (`-` for stdin).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// A group, in order: `NAME label.K=V… canary=N max_in_flight=N|N% soak_secs=N
        /// failure_threshold=N|R window=DAYS@HH:MM-HH:MM[±HH:MM]… tz=ZONE jitter=SECS`
        /// (no label: the catch-all, last; `window` may repeat; `tz` an IANA zone
        /// such as Europe/Berlin for the windows without an offset).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Fleet-wide max in flight, N or N% of the rollout's agents (a group's
        /// `max_in_flight` caps it); also the upgrade semaphore's limit.
        #[arg(long, value_name = "N|N%")]
        max_in_flight: Option<String>,
        /// A group starts only when this share (0 < r <= 1) of its agents is
        /// Ready for the version (their precheck found nothing blocking).
        #[arg(long, value_name = "RATIO")]
        readiness_gate: Option<f64>,
    },
    /// A rollout's state, reason and per-group progress (default: the newest).
    Status { id: Option<i64> },
    /// Start nothing new; attempts under way finish.
    Pause { id: i64 },
    /// Continue a paused rollout, or a halted one once its version is cleared.
    Resume { id: i64 },
    /// Stop for good and blocklist the version.
    Abort {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum BlocklistCmd {
    /// The blocklisted versions and why.
    List,
    /// Offer a version again.
    Clear {
        #[arg(value_name = "VERSION")]
        blocked: String,
    },
}

/// Why a command did not succeed: usage (2) or the control plane (1).
enum Fail {
    Usage(String),
    Api(String),
}

pub fn run(a: FleetArgs) -> anyhow::Result<ExitCode> {
    match run_inner(&a) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Fail::Usage(m)) => {
            eprintln!("error: {m}");
            Ok(ExitCode::from(2))
        }
        Err(Fail::Api(m)) => {
            if a.json {
                println!("{}", json!({ "error": m }));
            }
            eprintln!("error: {m}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The admin API: the deploy runner's client (the same TLS trust rules: web
/// PKI plus --ca-bundle) and the admin token.
struct Api {
    base: String,
    agent: ureq::Agent,
    auth: String,
}

impl Api {
    /// One request: (method, URL, JSON body) to (status, body text); `Err`
    /// when no answer came back.
    fn send(&self, method: &str, url: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
        let req = self
            .agent
            .request(method, url)
            .set("Authorization", &self.auth)
            .set("Accept", "application/json");
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // Its words without its URL: the caller names the URL.
                let mut why = t.kind().to_string();
                for more in [
                    t.message().map(str::to_string),
                    std::error::Error::source(&t).map(|e| e.to_string()),
                ]
                .into_iter()
                .flatten()
                {
                    why = format!("{why}: {more}");
                }
                anyhow::bail!(why)
            }
        };
        let code = resp.status();
        Ok((code, resp.into_string()?))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Fail> {
        let url = format!("{}{}", self.base, path);
        let body = body.map(Value::to_string);
        let (code, text) = self
            .send(method, &url, body.as_deref())
            .map_err(|e| Fail::Api(format!("control plane unreachable at {url}: {e}")))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if (200..300).contains(&code) {
            Ok(v)
        } else {
            let msg = v["error"].as_str().map(str::to_string).unwrap_or(text);
            Err(Fail::Api(format!("{method} {path}: HTTP {code}: {msg}")))
        }
    }
    fn get(&self, path: &str) -> Result<Value, Fail> {
        self.call("GET", path, None)
    }
}

fn connect(a: &FleetArgs) -> Result<Api, Fail> {
    let token = match &a.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| Fail::Usage(format!("--token-file {}: {e}", f.display())))?
            .trim()
            .to_string(),
        None => std::env::var("MOLT_ADMIN_TOKEN").unwrap_or_default(),
    };
    if token.is_empty() {
        return Err(Fail::Usage(
            "no admin token: set MOLT_ADMIN_TOKEN or pass --token-file".into(),
        ));
    }
    if !a.url.starts_with("http://") && !a.url.starts_with("https://") {
        return Err(Fail::Usage(format!(
            "--url {}: must start with http:// or https://",
            a.url
        )));
    }
    let cp = molt_deploy::plan::ControlPlane {
        url: a.url.clone(),
        token: token.clone(),
        ca_bundle: a.ca_bundle.clone(),
        proxy: None,
    };
    let agent = cp
        .http(Duration::from_secs(30))
        .map_err(|e| Fail::Usage(e.to_string()))?;
    Ok(Api {
        base: a.url.trim_end_matches('/').to_string(),
        agent,
        auth: format!("Bearer {token}"),
    })
}

fn run_inner(a: &FleetArgs) -> Result<(), Fail> {
    let api = connect(a)?;
    let out = match &a.cmd {
        FleetCmd::Status => {
            let fleet = api.get("/api/v1/admin/fleet")?;
            let rollout = match api.get("/api/v1/admin/rollouts") {
                Ok(v) => v,
                Err(Fail::Api(m)) if m.contains("HTTP 404") => Value::Null,
                Err(e) => return Err(e),
            };
            let blocklist = api.get("/api/v1/admin/blocklist")?;
            let agents = api.get("/api/v1/admin/agents")?;
            let mut by_version = std::collections::BTreeMap::<String, u64>::new();
            let mut by_status = std::collections::BTreeMap::<String, u64>::new();
            for ag in agents.as_array().into_iter().flatten() {
                *by_version
                    .entry(ag["version"].as_str().unwrap_or("-").to_string())
                    .or_default() += 1;
                *by_status
                    .entry(ag["status"].as_str().unwrap_or("-").to_string())
                    .or_default() += 1;
            }
            let v = json!({
                "fleet": fleet, "rollout": rollout, "blocklist": blocklist,
                "agents": agents.as_array().map_or(0, Vec::len),
                "versions": by_version, "statuses": by_status,
            });
            if !a.json {
                println!(
                    "fleet version: {}",
                    v["fleet"]["version"].as_str().unwrap_or("(none)")
                );
                if let Some(o) = v["fleet"]["override"].as_str() {
                    println!("override: {o}");
                }
                println!("agents: {}", v["agents"]);
                for (ver, n) in &by_version {
                    println!("  {n:>6}  {ver}");
                }
                for (st, n) in &by_status {
                    println!("  {n:>6}  {st}");
                }
                if !rollout.is_null() {
                    print_rollout(&rollout);
                }
                print_blocklist(&blocklist);
            }
            v
        }
        FleetCmd::Agents {
            labels,
            status,
            on_version,
            page,
            per_page,
        } => {
            for l in labels {
                if !l.contains('=') {
                    return Err(Fail::Usage(format!("--label {l}: not NAME=VALUE")));
                }
            }
            let mut q = format!("page={page}&per_page={per_page}");
            if !labels.is_empty() {
                q.push_str(&format!("&label={}", enc(&labels.join(","))));
            }
            if let Some(s) = status {
                q.push_str(&format!("&status={}", enc(s)));
            }
            if let Some(v) = on_version {
                q.push_str(&format!("&version={}", enc(v)));
            }
            let v = api.get(&format!("/api/v1/admin/fleet/agents?{q}"))?;
            if !a.json {
                for ag in v["agents"].as_array().into_iter().flatten() {
                    let labels: Vec<String> = ag["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or("")))
                        .collect();
                    println!(
                        "{:<24} {:<15} {:<60} {}",
                        ag["name"].as_str().unwrap_or("?"),
                        ag["status"].as_str().unwrap_or("?"),
                        ag["version"].as_str().unwrap_or("-"),
                        labels.join(",")
                    );
                }
                println!(
                    "page {} of {} ({} agents)",
                    v["page"],
                    v["total"]
                        .as_u64()
                        .unwrap_or(0)
                        .div_ceil(v["per_page"].as_u64().unwrap_or(1).max(1))
                        .max(1),
                    v["total"]
                );
            }
            v
        }
        FleetCmd::Rollout(RolloutCmd::Create {
            target,
            spec,
            groups,
            max_in_flight,
            readiness_gate,
        }) => {
            let mut body = match spec {
                Some(p) => {
                    let text = if p.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())
                            .map_err(|e| Fail::Usage(format!("stdin: {e}")))?
                    } else {
                        std::fs::read_to_string(p)
                            .map_err(|e| Fail::Usage(format!("--spec {}: {e}", p.display())))?
                    };
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| Fail::Usage(format!("--spec: not JSON: {e}")))?
                }
                None => json!({}),
            };
            if let Some(v) = target {
                body["version"] = json!(v);
            }
            if let Some(m) = max_in_flight {
                body["max_in_flight"] =
                    if m.ends_with('%') {
                        json!(m)
                    } else {
                        json!(m.parse::<u64>().map_err(|_| Fail::Usage(format!(
                            "--max-in-flight {m}: not N or N%"
                        )))?)
                    };
            }
            if let Some(r) = readiness_gate {
                body["readiness_gate"] = json!(r);
            }
            if !groups.is_empty() {
                body["groups"] = Value::Array(
                    groups
                        .iter()
                        .map(|g| parse_group(g))
                        .collect::<Result<_, _>>()?,
                );
            }
            if body.get("version").is_none() || body.get("groups").is_none() {
                return Err(Fail::Usage(
                    "rollout create needs a version and groups (VERSION and --group, or --spec)"
                        .into(),
                ));
            }
            let v = api.call("POST", "/api/v1/admin/rollouts", Some(&body))?;
            if !a.json {
                println!("rollout {} of {} created", v["id"], v["version"]);
                print_rollout(&v);
            }
            v
        }
        FleetCmd::Rollout(RolloutCmd::Status { id }) => {
            let v = match id {
                Some(id) => api.get(&format!("/api/v1/admin/rollouts/{id}"))?,
                None => api.get("/api/v1/admin/rollouts")?,
            };
            if !a.json {
                print_rollout(&v);
            }
            v
        }
        FleetCmd::Rollout(RolloutCmd::Pause { id }) => {
            transition(&api, a.json, *id, "pause", None)?
        }
        FleetCmd::Rollout(RolloutCmd::Resume { id }) => {
            transition(&api, a.json, *id, "resume", None)?
        }
        FleetCmd::Rollout(RolloutCmd::Abort { id, reason }) => {
            let body = reason.as_ref().map(|r| json!({ "reason": r }));
            transition(&api, a.json, *id, "abort", body)?
        }
        FleetCmd::Blocklist(BlocklistCmd::List) => {
            let v = api.get("/api/v1/admin/blocklist")?;
            if !a.json {
                print_blocklist(&v);
            }
            v
        }
        FleetCmd::SetVersion { target: version } => {
            let put = api.call(
                "PUT",
                "/api/v1/admin/fleet",
                Some(&json!({ "version": version })),
            )?;
            let mut f: FleetOut = typed(api.get("/api/v1/admin/fleet")?)?;
            f.auto_upgrade_queued = put["auto_upgrade_queued"].as_u64();
            if !a.json {
                println!(
                    "fleet version: {} (autoUpgrade queued for {} agent(s))",
                    f.version.as_deref().unwrap_or("(none)"),
                    f.auto_upgrade_queued.unwrap_or(0)
                );
            }
            to_value(&f)
        }
        FleetCmd::Override {
            target: version,
            clear,
        } => {
            match version.as_deref().filter(|_| !clear) {
                Some(v) => {
                    api.call(
                        "PUT",
                        "/api/v1/admin/fleet/override",
                        Some(&json!({ "version": v })),
                    )?;
                }
                None => {
                    api.call("DELETE", "/api/v1/admin/fleet/override", None)?;
                }
            }
            let f: FleetOut = typed(api.get("/api/v1/admin/fleet")?)?;
            if !a.json {
                println!(
                    "override: {}",
                    f.override_version.as_deref().unwrap_or("(none)")
                );
            }
            to_value(&f)
        }
        FleetCmd::Pin {
            agent,
            target,
            clear,
        } => {
            let version = target.as_deref().filter(|_| !clear);
            let p: PinOut = typed(api.call(
                "PUT",
                &format!("/api/v1/admin/agents/{}/pin", enc(agent)),
                Some(&json!({ "version": version })),
            )?)?;
            if !a.json {
                println!("{}: pin {}", p.name, p.pin.as_deref().unwrap_or("(none)"));
            }
            to_value(&p)
        }
        FleetCmd::Issues(IssuesCmd::List { agent, state, open }) => {
            let mut q = vec![];
            if let Some(x) = agent {
                q.push(format!("agent={}", enc(x)));
            }
            if let Some(x) = state {
                q.push(format!("state={}", enc(x)));
            }
            if *open {
                q.push("open=true".into());
            }
            let list: Vec<IssueOut> =
                typed(api.get(&format!("/api/v1/admin/issues?{}", q.join("&")))?)?;
            if !a.json {
                for i in &list {
                    println!(
                        "{:>6} {:<14} {:<24} {:<9} {:<28} {}",
                        i.id, i.state, i.agent, i.severity, i.code, i.description
                    );
                }
                println!("{} issue(s)", list.len());
            }
            to_value(&list)
        }
        FleetCmd::Issues(IssuesCmd::Ack { id }) | FleetCmd::Issues(IssuesCmd::Resolve { id }) => {
            let what = if matches!(a.cmd, FleetCmd::Issues(IssuesCmd::Ack { .. })) {
                "acknowledge"
            } else {
                "resolve"
            };
            let i: IssueOut = typed(api.call(
                "POST",
                &format!("/api/v1/admin/issues/{id}/{what}"),
                Some(&json!({})),
            )?)?;
            if !a.json {
                println!("issue {} ({} on {}): {}", i.id, i.code, i.agent, i.state);
            }
            to_value(&i)
        }
        FleetCmd::Readiness {
            target: version,
            run,
        } => {
            let queued = if *run {
                let v = api.call(
                    "POST",
                    "/api/v1/admin/readiness",
                    Some(&json!({ "version": version })),
                )?;
                v["queued"].as_u64()
            } else {
                None
            };
            let agents: Vec<ReadinessRow> =
                typed(api.get(&format!("/api/v1/admin/readiness?version={}", enc(version)))?)?;
            use molt_protocol::Readiness as R;
            let n = |w: R| agents.iter().filter(|r| r.readiness == w).count();
            let out = ReadinessOut {
                version: version.clone(),
                queued,
                ready: n(R::Ready),
                not_ready: n(R::NotReady),
                pending: n(R::Pending),
                not_checked: n(R::NotChecked),
                agents,
            };
            if !a.json {
                if let Some(q) = out.queued {
                    println!("runPrecheck of {version} queued for {q} agent(s)");
                }
                println!(
                    "{version}: {} Ready, {} Not Ready, {} Pending, {} Not Checked",
                    out.ready, out.not_ready, out.pending, out.not_checked
                );
                for r in out.agents.iter().filter(|r| r.readiness != R::Ready) {
                    println!(
                        "  {:<24} {:<12} {}",
                        r.agent,
                        r.readiness,
                        r.message.as_deref().unwrap_or("")
                    );
                }
            }
            to_value(&out)
        }
        FleetCmd::Blocklist(BlocklistCmd::Clear { blocked: version }) => {
            let v = api.call(
                "DELETE",
                &format!("/api/v1/admin/blocklist/{version}"),
                None,
            )?;
            if !a.json {
                println!("{version} cleared from the blocklist");
            }
            v
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(())
}

fn transition(
    api: &Api,
    json_out: bool,
    id: i64,
    what: &str,
    body: Option<Value>,
) -> Result<Value, Fail> {
    let v = api.call(
        "POST",
        &format!("/api/v1/admin/rollouts/{id}/{what}"),
        Some(&body.unwrap_or_else(|| json!({}))),
    )?;
    if !json_out {
        print_rollout(&v);
    }
    Ok(v)
}

/// `NAME label.K=V… canary=N max_in_flight=N|N% soak_secs=N failure_threshold=N|R
/// window=DAYS@HH:MM-HH:MM±HH:MM… jitter=SECS`.
fn parse_group(s: &str) -> Result<Value, Fail> {
    let mut words = s.split_whitespace();
    let name = words
        .next()
        .ok_or_else(|| Fail::Usage("--group: empty".into()))?;
    let mut g = json!({ "name": name, "selector": {} });
    // `tz=Europe/Berlin`: the IANA zone of the windows written without an offset.
    let mut tz: Option<String> = None;
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| Fail::Usage(format!("--group {name}: `{w}` is not KEY=VALUE")))?;
        let num = |v: &str| -> Result<Value, Fail> {
            v.parse::<u64>()
                .map(Value::from)
                .or_else(|_| v.parse::<f64>().map(Value::from))
                .map_err(|_| Fail::Usage(format!("--group {name}: {k}={v} is not a number")))
        };
        if let Some(label) = k.strip_prefix("label.") {
            g["selector"][label] = json!(v);
            continue;
        }
        if k == "window" {
            match g["windows"].as_array_mut() {
                Some(w) => w.push(json!(v)),
                None => g["windows"] = json!([v]),
            }
            continue;
        }
        if k == "jitter" || k == "jitter_secs" {
            g["jitter_secs"] = num(v)?;
            continue;
        }
        if k == "tz" {
            tz = Some(v.to_string());
            continue;
        }
        g[k] = match k {
            "canary" | "soak_secs" => num(v)?,

            "max_in_flight" | "failure_threshold" if v.ends_with('%') => json!(v),
            "max_in_flight" | "failure_threshold" => num(v)?,
            _ => {
                return Err(Fail::Usage(format!(
                    "--group {name}: unknown key `{k}` (label.K, canary, max_in_flight, soak_secs, failure_threshold, window, jitter, tz)"
                )));
            }
        };
    }
    if let Some(zone) = tz {
        for w in g["windows"].as_array_mut().into_iter().flatten() {
            let text = w.as_str().unwrap_or_default().to_string();
            // Only windows without their own offset (`…-04:00+01:00`) take the zone.
            let range = text.split_once('@').map_or("", |x| x.1);
            if !range.contains('+') && range.matches('-').count() == 1 {
                *w = json!(format!("{text} {zone}"));
            }
        }
    }
    Ok(g)
}

fn print_rollout(v: &Value) {
    let state = v["state"].as_str().unwrap_or("?");
    println!(
        "rollout {} of {}: {state}{}",
        v["id"],
        v["version"].as_str().unwrap_or("?"),
        if v["blocklisted"].as_bool() == Some(true) {
            " (version blocklisted)"
        } else {
            ""
        }
    );
    if let Some(r) = v["reason"].as_str()
        && matches!(
            RolloutState::parse(state),
            Some(RolloutState::Halted | RolloutState::Aborted)
        )
    {
        println!("  reason: {r}");
    }
    if let Some(w) = v["waiting"].as_str() {
        println!("  {w}");
    }
    if let Some(n) = v["semaphore_limit"].as_u64() {
        println!("  max in flight (upgrade semaphore): {n}");
    }
    for g in v["group_progress"].as_array().into_iter().flatten() {
        println!(
            "  group {:<16} agents {:>5}  done {:>5}  in flight {:>4}  failed {:>4}  waiting {:>5}{}",
            g["name"].as_str().unwrap_or("?"),
            g["agents"],
            g["done"],
            g["in_flight"],
            g["failed"],
            g["waiting"],
            match (g["started_at"].as_str(), g["completed_at"].as_str()) {
                (_, Some(c)) => format!("  completed {c}"),
                (Some(s), None) => format!("  started {s}"),
                _ => String::new(),
            }
        );
    }
}

fn print_blocklist(v: &Value) {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("blocklist: empty");
    }
    for b in list {
        println!(
            "blocklisted {}: {}",
            b["version"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("")
        );
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' | b'=' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_takes_windows_in_a_time_zone() {
        let g = parse_group(
            "fra label.site=fra window=Mon-Fri@02:00-04:00 window=Sat@22:00-02:00+01:00 tz=Europe/Berlin",
        )
        .unwrap_or_else(|_| panic!("parses"));
        assert_eq!(
            g["windows"],
            json!(["Mon-Fri@02:00-04:00 Europe/Berlin", "Sat@22:00-02:00+01:00"])
        );
    }

    #[test]
    fn a_group_takes_windows_and_a_jitter() {
        let g = parse_group(
            "lon label.site=lon canary=1 window=Mon-Fri@02:00-04:00+00:00 window=Sat@22:00-02:00+01:00 jitter=600",
        )
        .unwrap_or_else(|_| panic!("parses"));
        assert_eq!(
            g,
            json!({"name": "lon", "selector": {"site": "lon"}, "canary": 1,
                   "windows": ["Mon-Fri@02:00-04:00+00:00", "Sat@22:00-02:00+01:00"],
                   "jitter_secs": 600})
        );
        assert!(parse_group("lon windo=x").is_err());
        assert!(parse_group("lon jitter=ten").is_err());
    }
}
